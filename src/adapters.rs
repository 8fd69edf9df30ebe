//! Glue between the PEFT format, base models and the store: importing a PEFT directory,
//! exporting a stored adapter, combining stored adapters into a new one (`combine` does the
//! algebra), and fetching an adapter named by a store ref or a directory path for inference
//! (checking it belongs to the loaded base).

use crate::base::{check_adapter, AdapterSummary, Arch, BaseDir};
use crate::combine::{self, CombineError};
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
            config_blob: crate::store::BlobSource::Bytes(&files.config_bytes),
            weights_blob: crate::store::BlobSource::Bytes(&files.weights_bytes),
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

/// Combines stored adapters (refs or digests, each with its weight) as `spec` says and stores
/// the result under `name`, with provenance naming the inputs' digests, weights and the
/// parameters. The inputs must share a base, a task and labels.
pub fn combine_stored(store: &mut Store, inputs: &[(String, f64)], spec: &combine::Spec, name: &Ref) -> Result<(Digest, combine::Combined)> {
    let mut loaded = Vec::with_capacity(inputs.len());
    for (spec_ref, weight) in inputs {
        let d = store.resolve(spec_ref)?;
        let (m, config, weights) = store.adapter_files(&d)?;
        loaded.push((spec_ref.as_str(), *weight, d, m, config, weights));
    }
    let Some((first_ref, _, _, first, _, _)) = loaded.first() else { return Err(CombineError::NoInputs.into()) };
    for (r, _, _, m, _, _) in &loaded[1..] {
        let (a, b) = (first_ref.to_string(), r.to_string());
        if m.base_fingerprint != first.base_fingerprint {
            let (base_a, base_b) = (first.base_fingerprint.to_string(), m.base_fingerprint.to_string());
            return Err(CombineError::BaseMismatch { a, b, base_a, base_b }.into());
        }
        if m.task != first.task {
            let task = |t: &Option<String>| t.clone().unwrap_or_else(|| "none".into());
            return Err(CombineError::TaskMismatch { a, b, task_a: task(&first.task), task_b: task(&m.task) }.into());
        }
        if m.labels != first.labels {
            return Err(CombineError::LabelsMismatch { a, b, labels_a: first.labels.clone(), labels_b: m.labels.clone() }.into());
        }
    }
    let arch = Arch::by_name(&first.base_arch);
    let ins: Vec<combine::Input> = loaded
        .iter()
        .map(|(r, w, _, _, c, ws)| combine::Input { name: r, config_bytes: c, weights_bytes: ws, weight: *w })
        .collect();
    let c = combine::combine(arch, &ins, spec)?;
    let config = peft::LoraConfig::parse(&c.config_bytes)?;
    let provenance = serde_json::json!({
        "source": "combine",
        "type": spec.method().name(),
        "applied_type": c.method.name(),
        "parameters": spec.params(),
        "inputs": loaded.iter().map(|(r, w, d, _, _, _)| serde_json::json!({"ref": r, "digest": d, "weight": w})).collect::<Vec<_>>(),
        "rank": c.rank,
        "peft_agreement": c.method.peft_agreement(),
        "loradex": env!("CARGO_PKG_VERSION"),
    });
    let d = store.add(
        crate::store::NewAdapter {
            config_blob: crate::store::BlobSource::Bytes(&c.config_bytes),
            weights_blob: crate::store::BlobSource::Bytes(&c.weights_bytes),
            config: &config,
            base_fingerprint: first.base_fingerprint,
            base_arch: &first.base_arch,
            labels: first.labels.clone(),
            metrics: None,
            provenance,
        },
        name,
    )?;
    Ok((d, c))
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
