//! Glue between the PEFT format, base models and the store: importing a PEFT directory,
//! exporting a stored adapter, and fetching an adapter named by a store ref or a directory
//! path for inference (checking it belongs to the loaded base).

use crate::base::{check_adapter, AdapterSummary, BaseDir};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::peft::{self, AdapterFiles};
use crate::store::{Ref, Store};
use std::path::Path;

/// Labels for an adapter's head: given ones (must match the head size), else the base's
/// `id2label` when the sizes agree, else `LABEL_i`.
pub fn labels_for(summary: &AdapterSummary, base: &BaseDir, given: Option<Vec<String>>) -> Result<Vec<String>> {
    let base_labels = base.labels();
    let n = summary.head_labels.unwrap_or(base_labels.len());
    if let Some(g) = given {
        if summary.head_labels.is_some_and(|h| h != g.len()) {
            return Err(Error::InvalidArgument(format!("{} labels given but the adapter's head has {n} outputs", g.len())));
        }
        return Ok(g);
    }
    if base_labels.len() == n {
        return Ok(base_labels);
    }
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// Validates a PEFT directory against `base` and stores it under `name`.
pub fn import_dir(store: &mut Store, dir: &Path, name: &Ref, base: &BaseDir, labels: Option<Vec<String>>) -> Result<Digest> {
    let files = peft::read_dir(dir)?;
    let shapes = base.shapes()?;
    let summary = check_adapter(base.arch, &shapes, base.hidden_size(), &files.config, &files.weights_bytes)?;
    let labels = labels_for(&summary, base, labels)?;
    let fp = store.base_fingerprint(base)?;
    let provenance = serde_json::json!({
        "source": "import",
        "path": dir.canonicalize().unwrap_or(dir.to_path_buf()).display().to_string(),
        "base_path": base.dir.display().to_string(),
        "loradex": env!("CARGO_PKG_VERSION"),
    });
    store.add(
        crate::store::NewAdapter {
            config_bytes: &files.config_bytes,
            weights_bytes: &files.weights_bytes,
            config: &files.config,
            base_fingerprint: fp,
            base_arch: base.arch.name(),
            labels,
            metrics: None,
            provenance,
        },
        name,
    )
}

/// Writes a stored adapter as a PEFT directory, byte for byte as it was stored.
pub fn export(store: &Store, spec: &str, out: &Path) -> Result<Digest> {
    let d = store.resolve(spec)?;
    let (_, cfg, w) = store.adapter_files(&d)?;
    peft::write_dir(out, &cfg, &w)?;
    Ok(d)
}

/// An adapter ready to be built on a device.
pub struct Fetched {
    pub id: String,
    pub digest: Option<Digest>,
    pub config_bytes: Vec<u8>,
    pub weights_bytes: Vec<u8>,
    pub labels: Vec<String>,
}

/// `spec` is an existing PEFT directory or a store ref/digest. Store adapters must have been
/// made for the base with fingerprint `base_fp`.
pub fn fetch(spec: &str, store: Option<&Store>, base: &BaseDir, base_fp: Option<&Digest>) -> Result<Fetched> {
    let p = Path::new(spec);
    if p.is_dir() {
        let AdapterFiles { config_bytes, weights_bytes, config } = peft::read_dir(p)?;
        let summary = check_adapter(base.arch, &base.shapes()?, base.hidden_size(), &config, &weights_bytes)?;
        let labels = labels_for(&summary, base, None)?;
        return Ok(Fetched { id: spec.to_string(), digest: None, config_bytes, weights_bytes, labels });
    }
    let store = store.ok_or_else(|| Error::NotFound(format!("{spec}: no such directory and no store")))?;
    let d = store.resolve(spec)?;
    let (m, config_bytes, weights_bytes) = store.adapter_files(&d)?;
    if let Some(fp) = base_fp {
        if &m.base_fingerprint != fp {
            return Err(Error::WrongBase { expected: m.base_fingerprint.to_string(), got: fp.to_string() });
        }
    }
    Ok(Fetched { id: spec.to_string(), digest: Some(d), config_bytes, weights_bytes, labels: m.labels })
}
