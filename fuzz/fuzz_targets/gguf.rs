//! Fuzz target: GGUF bases: header, tensor extents, config, tokenizer, chat template, decoder load.
//! The body, with the properties it asserts, is `loradex::fuzzing::gguf`, where the test suite also
//! runs it over seeded mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::gguf(data));
