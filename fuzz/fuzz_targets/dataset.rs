//! Fuzz target: training data (CSV/JSONL), label sets and the split. The body, with the properties
//! it asserts, is `loradex::fuzzing::dataset`, where the test suite also runs it over seeded
//! mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::dataset(data));
