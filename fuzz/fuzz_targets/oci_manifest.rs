//! Fuzz target: OCI manifests and loradex's artifact config blob. The body, with the properties it
//! asserts, is `loradex::fuzzing::oci_manifest`, where the test suite also runs it over seeded
//! mutations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loradex::fuzzing::oci_manifest(data));
