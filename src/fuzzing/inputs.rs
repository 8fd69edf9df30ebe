//! Fuzz bodies for the text inputs: `adapter_config.json`, a base's `config.json`, refs and
//! digests, training recipes and data, HTTP request bodies, and what an OCI registry sends.
//! See the parent module.

use crate::base::Arch;
use crate::digest::Digest;
use crate::model::family::Build;
use crate::peft::{classify_key, new_config_json, LoraConfig, NewConfig, KEY_PREFIX};
use crate::registry::{check_manifest, ArtifactConfig};
use crate::serve::request::{parse_chat, parse_classify, parse_completion, query_adapter, PromptIn, MAX_TEXTS};
use crate::store::{refs::DEFAULT_TAG, Ref};
use crate::train::{data, recipe::Recipe};
use std::path::{Component, Path};

/// `adapter_config.json` (`LoraConfig::parse`) and what is asked of a parsed config:
/// `scale_for` on module paths built from its own `rank_pattern`/`alpha_pattern` keys and
/// target modules, key classification against its `modules_to_save`, and the round trip
/// through `new_config_json` (the config loradex writes for the same settings must parse back
/// to the same settings).
pub fn adapter_config(data: &[u8]) {
    let Ok(c) = LoraConfig::parse(data) else { return };
    assert!(c.r > 0, "parse accepted r = 0");
    let mut modules: Vec<String> = vec!["model.layers.0.self_attn.q_proj".into(), "bert.encoder.layer.1.attention.self.value".into()];
    for k in c.rank_pattern.keys().chain(c.alpha_pattern.keys()).chain(c.target_modules.iter().map(String::as_str)) {
        modules.push(k.to_string());
        modules.push(format!("model.layers.0.{k}"));
        modules.push(format!("x{k}"));
    }
    for m in &modules {
        for rank in [1, c.r, 7] {
            let _ = c.scale_for(m, rank);
        }
        assert!(c.rank_for(m) > 0, "rank_pattern gave rank 0");
        for suffix in [".lora_A.weight", ".lora_B.weight", ".weight", ".modules_to_save.default.weight"] {
            let _ = classify_key(&format!("{KEY_PREFIX}{m}{suffix}"), &c.modules_to_save);
        }
    }
    let task = c.task_type.clone().unwrap_or_default();
    let written = new_config_json(&NewConfig::of(&c, &task));
    let back = LoraConfig::parse(&written).expect("a config loradex writes parses");
    assert_eq!(back.r, c.r);
    assert_eq!(back.lora_alpha, c.lora_alpha);
    assert_eq!(back.lora_dropout, c.lora_dropout);
    assert_eq!(back.use_rslora, c.use_rslora);
    assert_eq!(back.use_dora, c.use_dora);
    assert_eq!(back.layers_to_transform, c.layers_to_transform);
    assert_eq!(back.target_modules, c.target_modules);
    assert_eq!(back.modules_to_save, c.modules_to_save);
}

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

/// A base's `config.json` as loading reads it, before any tensor: the family it names, its
/// typed config and spec, and what a decoder derives from the spec (head sizes, RoPE
/// frequencies and their cos/sin scale, which layers are local, windows, the score scale).
/// Properties: never a panic; a decoder spec whose RoPE loads has finite, non-negative
/// frequencies and a finite, positive scale.
pub fn base_config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(arch) = Arch::detect(&v) else { return };
    let spec = match arch.family().build {
        Build::Encoder(spec) => {
            let _ = spec(&v);
            return;
        }
        Build::Decoder(spec) => spec,
    };
    let Ok(s) = spec(&v) else { return };
    let Ok((_, hd)) = s.cfg.dims() else { return };
    // a decoder builds its tables once the weights' shapes agree, so a head this wide never
    // gets that far; the frequencies are not worth gigabytes here
    if hd > 1 << 16 {
        return;
    }
    if let Ok((global, local, mscale)) = s.inv_freqs(hd) {
        for f in global.iter().chain(local.iter().flatten()) {
            assert!(f.is_finite() && *f >= 0.0, "a RoPE frequency of {f}");
        }
        if let Some(m) = mscale {
            assert!(m.is_finite() && m > 0.0, "cos and sin scaled by {m}");
        }
    }
    for l in 0..s.cfg.num_hidden_layers.min(300) {
        let local = s.is_local(l);
        let _ = (s.has_rope(l), s.window_start(local, 7));
    }
    let _ = (s.attn_scale(hd), s.slots(), s.rotary_dims(hd), s.layer_norms());
}

/// Adapter references (`store::Ref::parse`) and digests (`digest::Digest::parse`).
/// Properties: `parse(display(x)) == x`; a digest has exactly one spelling; a ref's name is
/// relative `/`-separated plain components (nothing that could climb out of a directory or be
/// read as a digest), its tag a single component.
pub fn ref_digest(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    check_digest(&s);
    check_ref(&s);
    if data.len() >= 32 {
        let d = Digest::of(data);
        assert_eq!(Digest::parse(&d.to_string()).expect("a computed digest parses"), d);
    }
}

/// Training recipes (`Recipe::parse`, the TOML behind `loradex train RECIPE`) with `--set
/// KEY=VALUE` overrides. The input is the recipe text, then a NUL, then one override per line.
/// A recipe that parses must be one that `validate` accepts.
pub fn recipe(data: &[u8]) {
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
}

/// Training data (`train::data::parse`, CSV with RFC 4180 quoting or JSONL), then the label
/// set and the seeded stratified split. The first input byte picks the format (bit 0: JSONL),
/// whether labels are required (bit 1) and the validation fraction (high bits). Properties: a
/// split loses and invents no example; required labels are present.
pub fn dataset(input: &[u8]) {
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
}

/// The HTTP request body parsers of every endpoint (`serve::request`), which see untrusted
/// bytes before anything else. The input is one byte choosing the endpoint and whether an
/// adapter header/query is present, then the body. Whatever parses must be a request the
/// server can act on: non-empty texts within the limit, one agreed adapter, valid sampling
/// parameters.
pub fn http_bodies(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let header = (sel & 0x10 != 0).then_some("en/sentiment:v1");
    let query = (sel & 0x20 != 0).then_some("adapter=en%2Fsentiment%3Av1&x=1");
    match sel % 3 {
        0 => {
            if let Ok(r) = parse_classify(body) {
                assert!(!r.texts.is_empty() && r.texts.len() <= MAX_TEXTS);
                assert!(r.adapter.as_deref() != Some(""));
            }
        }
        k => {
            let parsed = if k == 1 { parse_completion(body, header, query) } else { parse_chat(body, header, query) };
            if let Ok(r) = parsed {
                assert!(!r.model.is_empty());
                assert!(r.params.validate().is_ok());
                assert!(r.adapter.as_deref() != Some(""));
                if header.is_some() || query.is_some() {
                    assert_eq!(r.adapter.as_deref(), Some("en/sentiment:v1"), "outside names must agree with the body");
                }
                match &r.prompt {
                    PromptIn::Ids(ids) => assert!(!ids.is_empty()),
                    PromptIn::Chat(m) => assert!(!m.is_empty()),
                    PromptIn::Text(_) => {}
                }
            }
        }
    }
    let _ = query_adapter(std::str::from_utf8(body).ok());
}

/// What a registry sends before any blob is fetched (`registry::check_manifest`) and
/// loradex's metadata blob (`ArtifactConfig::parse`). Properties: never a panic; an accepted
/// manifest names its PEFT layers by title, with sha256 digests and non-negative sizes within
/// the caps; a manifest pulled by digest is accepted only with that digest.
pub fn oci_manifest(data: &[u8]) {
    let _ = ArtifactConfig::parse(data, "fuzz");
    if let Ok(m) = check_manifest(data, None, "fuzz") {
        let title = |i: usize| m.layers[i].annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.title")).cloned();
        assert_eq!(title(m.config_layer).as_deref(), Some("adapter_config.json"));
        assert_eq!(title(m.weights_layer).as_deref(), Some("adapter_model.safetensors"));
        for d in [&m.config, &m.layers[m.config_layer], &m.layers[m.weights_layer]] {
            assert!(d.size >= 0 && Digest::parse(&d.digest).is_ok());
        }
        let own = Digest::of(data).to_string();
        assert!(check_manifest(data, Some(&own), "fuzz").is_ok());
        assert!(check_manifest(data, Some("sha256:0000000000000000000000000000000000000000000000000000000000000000"), "fuzz").is_err());
    }
}
