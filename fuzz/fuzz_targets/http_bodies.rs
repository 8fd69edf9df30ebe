//! Fuzz target: every endpoint's HTTP request body parser. The body, with the properties it
//! asserts, is `loradex::fuzzing::http_bodies`, where the test suite also runs it over seeded
//! mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::http_bodies(data));
