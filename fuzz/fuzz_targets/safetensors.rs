//! Fuzz target: adapter weights (safetensors container, PEFT keys, adapter checks and load). The
//! body, with the properties it asserts, is `loradex::fuzzing::safetensors`, where the test suite
//! also runs it over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::safetensors(data));
