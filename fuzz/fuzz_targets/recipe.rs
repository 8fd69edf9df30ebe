//! Fuzz target: training recipes (`train::recipe::Recipe::parse`, the TOML behind `loradex
//! train RECIPE`) with `--set KEY=VALUE` overrides. The input is the recipe text, then a NUL,
//! then one override per line. A recipe that parses must be one that `validate` accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::train::recipe::Recipe;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (text, sets) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let sets: Vec<String> = String::from_utf8_lossy(sets).lines().map(str::to_string).collect();
    let Ok(r) = Recipe::parse(text, Path::new("/fuzz/recipe.toml"), &sets) else { return };
    r.validate().expect("a parsed recipe is valid");
    assert!(!r.target_modules().is_empty());
    let _ = r.modules_to_save();
    let _ = r.path(&r.data.train);
});
