//! Fuzz target: what a registry sends before any blob is fetched (`registry::check_manifest`)
//! and loradex's metadata blob (`registry::ArtifactConfig::parse`). Properties: never a panic;
//! an accepted manifest names its PEFT layers by title, with sha256 digests and non-negative
//! sizes within the caps; a manifest pulled by digest is accepted only with that digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::digest::Digest;
use loradex::registry::{check_manifest, ArtifactConfig};

fuzz_target!(|data: &[u8]| {
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
});
