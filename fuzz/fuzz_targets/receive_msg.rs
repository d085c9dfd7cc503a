//! Fuzz the transport-independent core (SPEC A.2 `receive_msg`): arbitrary
//! bytes must never panic and never hold resources.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sipedge::core::fuzz_receive_msg(data);
});
