//! Fuzz target: adapter references (`store::Ref::parse`) and digests (`digest::Digest::parse`).
//! Properties: `parse(display(x)) == x`; a digest has exactly one spelling; a ref's name is
//! relative `/`-separated plain components (nothing that could climb out of a directory or
//! be read as a digest), its tag a single component.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::digest::Digest;
use loradex::store::{refs::DEFAULT_TAG, Ref};
use std::path::{Component, Path};

fn check_digest(s: &str) {
    let Ok(d) = Digest::parse(s) else { return };
    let shown = d.to_string();
    assert_eq!(shown, s, "a digest has one spelling");
    assert_eq!(Digest::parse(&shown).expect("display parses"), d);
    let hex = d.hex();
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(hex.starts_with(&d.short()));
}

fn check_ref(s: &str) {
    let Ok(r) = Ref::parse(s) else { return };
    let shown = r.to_string();
    assert!(shown == s || shown == format!("{s}:{DEFAULT_TAG}"), "{s:?} displays as {shown:?}");
    assert_eq!(Ref::parse(&shown).expect("display parses"), r);
    assert!(!r.name.starts_with("sha256:") && r.name != "sha256");
    assert!(Path::new(&r.name).components().all(|c| matches!(c, Component::Normal(_))), "name {:?} escapes", r.name);
    assert!(r.name.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    assert!(!r.name.contains(['\\', '\0', ':']) && !r.tag.contains(['/', '\\', '\0', ':']));
    assert!(Path::new(&r.tag).components().all(|c| matches!(c, Component::Normal(_))) && !r.tag.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check_digest(&s);
    check_ref(&s);
    if data.len() >= 32 {
        let d = Digest::of(data);
        assert_eq!(Digest::parse(&d.to_string()).expect("a computed digest parses"), d);
    }
});
