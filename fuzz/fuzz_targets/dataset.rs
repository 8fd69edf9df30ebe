//! Fuzz target: training data (`train::data::parse`, CSV with RFC 4180 quoting or JSONL),
//! then the label set and the seeded stratified split. The first input byte picks the format
//! (bit 0: JSONL), whether labels are required (bit 1) and the validation fraction (high bits).
//! Properties: a split loses and invents no example; required labels are present.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::train::data;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    let _ = data::parse_csv(&String::from_utf8_lossy(rest));
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let jsonl = mode & 1 == 1;
    let need_label = mode & 2 == 2;
    let Ok(ex) = data::parse(text, Path::new("/fuzz/train"), jsonl, "text", "label", need_label) else { return };
    assert!(!ex.is_empty());
    if need_label {
        assert!(ex.iter().all(|e| e.label.is_some()));
    }
    if let Ok(labels) = data::label_set(&ex, None) {
        assert!(labels.len() >= 2);
        data::label_set(&ex, Some(&labels)).expect("the inferred label set accepts its own data");
    }
    let n = ex.len();
    let frac = f64::from(mode >> 2) / 64.0;
    let (train, val) = data::split(ex, frac, u64::from(mode));
    assert_eq!(train.len() + val.len(), n);
});
