//! Property tests for the frame receive path. STUB: to be written.
