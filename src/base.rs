//! Base models on disk: a Hugging Face-style directory (`config.json`, `*.safetensors`,
//! `tokenizer.json`), a GGUF file (read by `model::gguf`), or a hub repo id fetched into the local hub cache (feature `hub`). Owns
//! architecture detection, fingerprints, module-name canonicalization and the check that an
//! adapter fits a base. Does not build tensors (that is `model`) nor touch the store.

use crate::digest::{hash_file, Digest, Hasher};
use crate::error::{Error, IoContext, Result};
use crate::peft::{self, safetensors::read_file_header, KeyKind, LoraConfig};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use crate::model::family::Arch;

/// A resolved base model directory.
#[derive(Clone, Debug)]
pub struct BaseDir {
    pub dir: PathBuf,
    pub arch: Arch,
    pub config: Value,
    pub config_bytes: Vec<u8>,
    pub weight_files: Vec<PathBuf>,
    /// A GGUF file base: `weight_files` holds just it, `config` is derived from its metadata.
    pub gguf: Option<PathBuf>,
}

impl BaseDir {
    /// Opens `spec`: an existing directory, a `.gguf` file, or (with the `hub` feature) a hub
    /// repo id.
    pub fn open(spec: &str) -> Result<BaseDir> {
        let p = Path::new(spec);
        if p.is_dir() {
            return BaseDir::open_dir(p);
        }
        if p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return BaseDir::open_gguf(p);
        }
        if p.exists() {
            return Err(Error::InvalidArgument(format!("{spec}: a base model must be a directory or a .gguf file")));
        }
        hub_download(spec).and_then(|d| BaseDir::open_dir(&d))
    }

    pub fn open_dir(dir: &Path) -> Result<BaseDir> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::Missing { path: dir.into(), what: "config.json".into() });
        }
        let config_bytes = crate::util::read_bounded(&cfg_path, crate::util::MAX_CONFIG_BYTES)?;
        let config: Value = serde_json::from_slice(&config_bytes).map_err(|e| Error::json(cfg_path.display().to_string(), e))?;
        let arch = Arch::detect(&config).map_err(|e| Error::Model(format!("{}: {e}", dir.display())))?;
        let mut weight_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .at(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        weight_files.sort();
        if weight_files.is_empty() {
            return Err(Error::Missing { path: dir.into(), what: "*.safetensors weights".into() });
        }
        Ok(BaseDir { dir: dir.canonicalize().at(dir)?, arch, config, config_bytes, weight_files, gguf: None })
    }

    /// A GGUF file (llama architecture): its config comes from the file's metadata, and its
    /// fingerprint covers the whole file (tensor data and metadata).
    pub fn open_gguf(path: &Path) -> Result<BaseDir> {
        let path = path.canonicalize().at(path)?;
        let g = crate::model::gguf::Gguf::open(&path)?;
        let config = g.hf_config()?;
        let config_bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let arch = Arch::detect(&config)?;
        Ok(BaseDir { dir, arch, config, config_bytes, weight_files: vec![path.clone()], gguf: Some(path) })
    }

    /// `eos_token_id` of `generation_config.json` (a number or a list), where a directory has
    /// one: instruction-tuned models list their end-of-turn tokens there (Gemma's
    /// `<end_of_turn>`, Llama 3's `<|eot_id|>`) beside `config.json`'s end of text.
    pub fn generation_eos(&self) -> Result<Vec<u32>> {
        let p = self.dir.join("generation_config.json");
        if self.gguf.is_some() || !p.is_file() {
            return Ok(vec![]);
        }
        let bytes = crate::util::read_bounded(&p, crate::util::MAX_CONFIG_BYTES)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::json(p.display().to_string(), e))?;
        Ok(match &v["eos_token_id"] {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
            Value::Array(a) => a.iter().filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
            _ => vec![],
        })
    }

    /// A short name for the base: the directory's or the GGUF file's, without `.gguf`.
    pub fn name(&self) -> String {
        let p = self.gguf.as_deref().unwrap_or(&self.dir);
        let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "base".into());
        n.strip_suffix(".gguf").map(str::to_string).unwrap_or(n)
    }

    /// Cheap change detector for fingerprint caching: name, size and mtime of every file.
    pub fn stamp(&self) -> Result<String> {
        let mut s = format!("{}", Digest::of(&self.config_bytes));
        for f in &self.weight_files {
            let m = std::fs::metadata(f).at(f)?;
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
            s.push_str(&format!("|{}:{}:{}", f.file_name().and_then(|n| n.to_str()).unwrap_or(""), m.len(), mtime));
        }
        Ok(s)
    }

    /// sha256 over the config's digest and every weight file's name and digest.
    pub fn fingerprint(&self) -> Result<Digest> {
        let mut h = Hasher::default();
        h.update(b"loradex-base-v1\n");
        h.update(Digest::of(&self.config_bytes).to_string().as_bytes());
        for f in &self.weight_files {
            let (d, _) = hash_file(f)?;
            h.update(format!("\n{}={d}", f.file_name().and_then(|n| n.to_str()).unwrap_or("")).as_bytes());
        }
        Ok(h.finish())
    }

    /// Every weight's shape, keyed by canonical name.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        if let Some(g) = &self.gguf {
            return Ok(crate::model::gguf::Gguf::open(g)?.hf_shapes());
        }
        let mut out = BTreeMap::new();
        for f in &self.weight_files {
            for (name, info) in read_file_header(f)? {
                out.insert(self.arch.canonical(&name), info.shape);
            }
        }
        Ok(out)
    }

    pub fn hidden_size(&self) -> Option<usize> {
        self.config.get("hidden_size").and_then(Value::as_u64).map(|x| x as usize)
    }

    /// `id2label` of config.json in index order, if present.
    pub fn labels(&self) -> Vec<String> {
        let Some(m) = self.config.get("id2label").and_then(Value::as_object) else { return vec![] };
        let mut v: Vec<(usize, String)> =
            m.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string()))).collect();
        v.sort();
        v.into_iter().map(|(_, l)| l).collect()
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

/// What an adapter file contains, once checked against a base.
#[derive(Clone, Debug, Default)]
pub struct AdapterSummary {
    /// Canonical module paths with LoRA, and their rank.
    pub lora_modules: BTreeMap<String, usize>,
    /// Canonical module paths fully replaced.
    pub saved_modules: BTreeSet<String>,
    /// Output size of a saved classification head, if any.
    pub head_labels: Option<usize>,
}

/// Checks every tensor name and shape of an adapter against the base's shapes.
pub fn check_adapter(
    arch: Arch,
    shapes: &BTreeMap<String, Vec<usize>>,
    hidden: Option<usize>,
    config: &LoraConfig,
    weights: &[u8],
) -> Result<AdapterSummary> {
    let view = peft::safetensors::SafeView::parse(weights, peft::WEIGHTS_FILE)?;
    let mut a_shapes: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let mut b_shapes: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let mut magnitudes: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let mut summary = AdapterSummary::default();
    if view.tensors.is_empty() {
        return Err(Error::TensorMismatch { tensor: peft::WEIGHTS_FILE.into(), detail: "the adapter has no tensors".into() });
    }
    for (key, info) in &view.tensors {
        if !matches!(info.dtype, peft::safetensors::Dtype::F32 | peft::safetensors::Dtype::F16 | peft::safetensors::Dtype::BF16) {
            return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("dtype {} is not a float type", info.dtype.name()) });
        }
        match peft::classify_key(key, &config.modules_to_save)? {
            KeyKind::LoraA(m) => {
                a_shapes.insert(arch.canonical(&m), (key.clone(), info.shape.clone()));
            }
            KeyKind::LoraB(m) => {
                b_shapes.insert(arch.canonical(&m), (key.clone(), info.shape.clone()));
            }
            KeyKind::EmbedA(m) | KeyKind::EmbedB(m) => {
                let module = arch.canonical(&m);
                let wname = format!("{module}.weight");
                let Some([vocab, hid]) = shapes.get(&wname).map(Vec::as_slice) else {
                    return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("the base has no embedding {wname}") });
                };
                if arch.is_encoder() {
                    return Err(Error::UnsupportedAdapter(format!("{key}: embedding LoRA is supported on decoders only")));
                }
                let is_a = key.ends_with("_A");
                let r = if is_a { info.shape.first() } else { info.shape.get(1) }.copied().unwrap_or(0);
                let want = if is_a { [r, *vocab] } else { [*hid, r] };
                if r == 0 || info.shape.as_slice() != want {
                    return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("shape {:?}, expected {want:?} for base {wname} [{vocab}, {hid}]", info.shape) });
                }
                if r != config.rank_for(&m) {
                    return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("rank {r}, but the config gives {m} rank {}", config.rank_for(&m)) });
                }
                summary.lora_modules.insert(module, r);
            }
            KeyKind::BaseLayer(m, param) => {
                let name = format!("{}.{param}", arch.canonical(&m));
                if shapes.get(&name) != Some(&info.shape) {
                    return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("a base-layer copy of shape {:?} that does not match the base's {name}", info.shape) });
                }
            }
            KeyKind::Magnitude(m) => {
                if !config.use_dora {
                    return Err(Error::TensorMismatch { tensor: key.clone(), detail: "a DoRA magnitude in an adapter whose config has no use_dora".into() });
                }
                magnitudes.insert(arch.canonical(&m), (key.clone(), info.shape.clone()));
            }
            KeyKind::Saved(m, param) => {
                let module = arch.canonical(&m);
                let base_name = format!("{module}.{param}");
                if !arch.is_head_module(&module) {
                    return Err(Error::UnsupportedAdapter(format!(
                        "{key}: modules_to_save other than the {} classification head ({:?}) is not supported",
                        arch.name(),
                        arch.family().head_modules
                    )));
                }
                // a head may have another label count than the base's, or be absent from the base
                // (a bare encoder); its input side must fit the hidden size
                let fits = match (shapes.get(&base_name), param.as_str(), info.shape.as_slice()) {
                    (Some(bs), _, _) => bs.len() == info.shape.len() && bs.get(1) == info.shape.get(1),
                    (None, "weight", [_, h]) => hidden.is_none_or(|hid| *h == hid),
                    (None, "bias", [_]) => true,
                    (None, _, _) => false,
                };
                if !fits {
                    return Err(Error::TensorMismatch {
                        tensor: key.clone(),
                        detail: format!("head {param} of shape {:?} does not fit the base (hidden size {hidden:?})", info.shape),
                    });
                }
                if param == "weight" {
                    summary.head_labels = info.shape.first().copied();
                }
                summary.saved_modules.insert(module);
            }
        }
    }
    for (module, (akey, ashape)) in &a_shapes {
        let Some((bkey, bshape)) = b_shapes.get(module) else {
            return Err(Error::TensorMismatch { tensor: akey.clone(), detail: "lora_A without its lora_B".into() });
        };
        let wname = format!("{module}.weight");
        let Some(wshape) = shapes.get(&wname) else {
            return Err(Error::TensorMismatch { tensor: akey.clone(), detail: format!("the base model has no {wname}") });
        };
        let [out_f, in_f] = wshape.as_slice() else {
            return Err(Error::TensorMismatch { tensor: akey.clone(), detail: format!("base {wname} is not a linear weight") });
        };
        let r = ashape.first().copied().unwrap_or(0);
        if ashape.as_slice() != [r, *in_f] || r == 0 {
            return Err(Error::TensorMismatch {
                tensor: akey.clone(),
                detail: format!("shape {ashape:?}, expected [r, {in_f}] for base {wname} {wshape:?}"),
            });
        }
        if bshape.as_slice() != [*out_f, r] {
            return Err(Error::TensorMismatch {
                tensor: bkey.clone(),
                detail: format!("shape {bshape:?}, expected [{out_f}, {r}] for base {wname} {wshape:?}"),
            });
        }
        let peft_name = akey.strip_prefix(peft::KEY_PREFIX).and_then(|k| k.strip_suffix(".lora_A.weight")).unwrap_or(module);
        if !config.in_layers(peft_name) {
            return Err(Error::TensorMismatch {
                tensor: akey.clone(),
                detail: format!("outside layers_to_transform {:?} (layers_pattern {:?})", config.layers_to_transform.as_deref().unwrap_or(&[]), config.layers_pattern),
            });
        }
        let want = config.rank_for(peft_name);
        if r != want {
            return Err(Error::TensorMismatch { tensor: akey.clone(), detail: format!("rank {r}, but the config gives {peft_name} rank {want} (r / rank_pattern)") });
        }
        match (magnitudes.remove(module), config.use_dora) {
            (Some((mkey, mshape)), _) if mshape.as_slice() != [*out_f] => {
                return Err(Error::TensorMismatch { tensor: mkey, detail: format!("shape {mshape:?}, expected [{out_f}] for base {wname} {wshape:?}") });
            }
            (None, true) => return Err(Error::TensorMismatch { tensor: akey.clone(), detail: "use_dora is set but the module has no lora_magnitude_vector".into() }),
            _ => {}
        }
        summary.lora_modules.insert(module.clone(), r);
    }
    if let Some((_, (mkey, _))) = magnitudes.into_iter().next() {
        return Err(Error::TensorMismatch { tensor: mkey, detail: "a DoRA magnitude without its lora_A/lora_B".into() });
    }
    if let Some((m, (bkey, _))) = b_shapes.iter().find(|(m, _)| !a_shapes.contains_key(*m)) {
        return Err(Error::TensorMismatch { tensor: bkey.clone(), detail: format!("lora_B of {m} without its lora_A") });
    }
    Ok(summary)
}

#[cfg(feature = "hub")]
fn hub_download(spec: &str) -> Result<PathBuf> {
    let (owner, name) = spec
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| Error::InvalidArgument(format!("{spec}: neither a directory nor a hub repo id (owner/name)")))?;
    let client = hf_hub::HFClientSync::new().map_err(|e| Error::Hub(e.to_string()))?;
    let patterns = ["config.json", "*.safetensors", "tokenizer.json", "tokenizer_config.json"];
    client
        .model(owner, name)
        .snapshot_download()
        .allow_patterns(patterns.iter().map(|s| s.to_string()).collect())
        .send()
        .map_err(|e| Error::Hub(format!("{spec}: {e}")))
}

#[cfg(not(feature = "hub"))]
fn hub_download(spec: &str) -> Result<PathBuf> {
    Err(Error::InvalidArgument(format!(
        "{spec}: no such directory (hub downloads need the `hub` cargo feature)"
    )))
}
