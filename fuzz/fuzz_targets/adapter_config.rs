//! Fuzz target: adapter_config.json parsing and the config round trip. The body, with the
//! properties it asserts, is `loradex::fuzzing::adapter_config`, where the test suite also runs it
//! over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::adapter_config(data));
