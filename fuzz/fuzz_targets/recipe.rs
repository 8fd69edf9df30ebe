//! Fuzz target: training recipes with --set overrides. The body, with the properties it asserts, is
//! `loradex::fuzzing::recipe`, where the test suite also runs it over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::recipe(data));
