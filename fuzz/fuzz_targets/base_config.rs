//! Fuzz target: a base's config.json, as loading reads it before any tensor. The body, with the
//! properties it asserts, is `loradex::fuzzing::base_config`, where the test suite also runs it
//! over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::base_config(data));
