//! Fuzz target: adapter references and digests. The body, with the properties it asserts, is
//! `loradex::fuzzing::ref_digest`, where the test suite also runs it over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::ref_digest(data));
