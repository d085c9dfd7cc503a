//! SIP message layer: stream framing, a zero-copy header span index, and
//! header edits by splicing. Never re-serializes a forwarded message.

pub mod framer;
pub mod msg;
