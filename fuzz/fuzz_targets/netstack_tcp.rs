//! Fuzz TCP segment input on listening, half-open, established, closing
//! and TIME_WAIT connections (SPEC B.3, B.4): the input drives a session
//! of segments near the sequence numbers the stack expects, clock steps
//! and socket calls (`sipedge::netstack::tcp::fuzzing`). Never a panic,
//! never more than the configured caps, and everything ends once closed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sipedge::netstack::tcp::fuzzing::run(data);
});
