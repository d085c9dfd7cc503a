//! Zero-copy SIP message index: start line + header spans over the bytes.
