//! The PEFT on-disk format: `adapter_config.json` + `adapter_model.safetensors` exactly as
//! PEFT 0.21 writes them. Parses and validates configs, maps tensor keys to module paths, and
//! writes PEFT-loadable directories. Knows nothing of the store or of model math.

pub mod safetensors;

use crate::error::{Error, IoContext, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module path in saved adapters.
pub const KEY_PREFIX: &str = "base_model.model.";

/// The parts of `adapter_config.json` loradex acts on; the raw JSON is kept alongside.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    pub modules_to_save: Vec<String>,
    pub task_type: Option<String>,
    pub lora_dropout: f64,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
}

impl LoraConfig {
    /// Parses and validates a PEFT adapter config. Settings whose math loradex does not
    /// implement are refused rather than silently ignored.
    pub fn parse(bytes: &[u8]) -> Result<LoraConfig> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::json(CONFIG_FILE, e))?;
        let o = v.as_object().ok_or_else(|| Error::UnsupportedAdapter(format!("{CONFIG_FILE} is not a JSON object")))?;
        let peft_type = o.get("peft_type").and_then(Value::as_str).unwrap_or("");
        if peft_type != "LORA" {
            return Err(Error::UnknownPeftType(peft_type.to_string()));
        }
        let truthy = |k: &str| o.get(k).map(|v| !(v.is_null() || v == &Value::Bool(false))).unwrap_or(false);
        for (k, what) in [
            ("use_dora", "DoRA (use_dora)"),
            ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"),
            ("lora_bias", "lora_bias"),
            ("use_qalora", "QALoRA"),
            ("layers_to_transform", "layers_to_transform"),
            ("layer_replication", "layer_replication"),
            ("trainable_token_indices", "trainable_token_indices"),
            ("alora_invocation_tokens", "aLoRA"),
            ("target_parameters", "target_parameters"),
            ("use_bdlora", "BD-LoRA"),
        ] {
            if truthy(k) {
                return Err(Error::UnsupportedAdapter(format!("{what} is not supported")));
            }
        }
        match o.get("bias").and_then(Value::as_str).unwrap_or("none") {
            "none" => {}
            other => return Err(Error::UnsupportedAdapter(format!("bias = {other:?} (only \"none\")"))),
        }
        let r = o
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| Error::UnsupportedAdapter("r must be a positive integer".into()))? as usize;
        let lora_alpha = o.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
        let strings = |k: &str| -> Result<Vec<String>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).ok_or_else(|| Error::UnsupportedAdapter(format!("{k} must list strings"))))
                    .collect(),
                Some(_) => Err(Error::UnsupportedAdapter(format!("{k} must be a string or a list"))),
            }
        };
        let mut target_modules = strings("target_modules")?;
        target_modules.sort();
        let pattern = |k: &str| -> BTreeMap<String, f64> {
            o.get(k)
                .and_then(Value::as_object)
                .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
                .unwrap_or_default()
        };
        Ok(LoraConfig {
            r,
            lora_alpha,
            use_rslora: o.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
            target_modules,
            modules_to_save: strings("modules_to_save")?,
            task_type: o.get("task_type").and_then(Value::as_str).map(str::to_string),
            lora_dropout: o.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            rank_pattern: pattern("rank_pattern").into_iter().map(|(k, v)| (k, v as usize)).collect(),
            alpha_pattern: pattern("alpha_pattern"),
        })
    }

    /// The LoRA scale for one module, honouring `alpha_pattern` and `use_rslora` like PEFT.
    /// `rank` is the module's actual rank (from its tensors, which already honour `rank_pattern`).
    pub fn scale_for(&self, module: &str, rank: usize) -> f64 {
        let alpha = pattern_lookup(&self.alpha_pattern, module).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

/// PEFT matches pattern keys against the end of the module path.
fn pattern_lookup<T: Copy>(m: &BTreeMap<String, T>, module: &str) -> Option<T> {
    m.iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

/// What a saved tensor key means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    LoraA(String),
    LoraB(String),
    /// A fully trained module copy (`modules_to_save`): module path and parameter name.
    Saved(String, String),
}

/// Classifies a tensor key of an adapter file.
pub fn classify_key(key: &str, modules_to_save: &[String]) -> Result<KeyKind> {
    let rest = key.strip_prefix(KEY_PREFIX).ok_or_else(|| Error::TensorMismatch {
        tensor: key.into(),
        detail: format!("key does not start with {KEY_PREFIX:?}"),
    })?;
    for (suffix, a) in [(".lora_A.weight", true), (".lora_B.weight", false)] {
        if let Some(m) = rest.strip_suffix(suffix) {
            return Ok(if a { KeyKind::LoraA(m.into()) } else { KeyKind::LoraB(m.into()) });
        }
    }
    if rest.contains("lora_embedding_") || rest.contains("lora_magnitude") {
        return Err(Error::UnsupportedAdapter(format!("{key}: embedding LoRA / DoRA tensors are not supported")));
    }
    if let Some((module, param)) = rest.rsplit_once('.') {
        let module = module.strip_suffix(".modules_to_save.default").unwrap_or(module);
        let top = module.rsplit('.').next().unwrap_or(module);
        if modules_to_save.iter().any(|m| m == module || m == top) {
            return Ok(KeyKind::Saved(module.into(), param.into()));
        }
    }
    Err(Error::TensorMismatch { tensor: key.into(), detail: "neither a LoRA tensor nor a modules_to_save tensor".into() })
}

/// An adapter directory's two files, read as they are.
pub struct AdapterFiles {
    pub config_bytes: Vec<u8>,
    pub weights_bytes: Vec<u8>,
    pub config: LoraConfig,
}

/// Reads a PEFT adapter directory, validating the config and the safetensors container.
pub fn read_dir(dir: &Path) -> Result<AdapterFiles> {
    if !dir.is_dir() {
        return Err(Error::Missing { path: dir.into(), what: "adapter directory".into() });
    }
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(Error::Missing { path: dir.into(), what: CONFIG_FILE.into() });
    }
    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.is_file() {
        let what = if dir.join("adapter_model.bin").is_file() {
            format!("{WEIGHTS_FILE} (only adapter_model.bin, a pickle, is present: re-save with safe_serialization=True)")
        } else {
            WEIGHTS_FILE.into()
        };
        return Err(Error::Missing { path: dir.into(), what });
    }
    let config_bytes = std::fs::read(&cfg_path).at(&cfg_path)?;
    let weights_bytes = std::fs::read(&w_path).at(&w_path)?;
    let config = LoraConfig::parse(&config_bytes)?;
    safetensors::SafeView::parse(&weights_bytes, &w_path.display().to_string())?;
    Ok(AdapterFiles { config_bytes, weights_bytes, config })
}

/// Writes a PEFT-loadable directory atomically file by file.
pub fn write_dir(dir: &Path, config_bytes: &[u8], weights_bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    crate::util::atomic_write(&dir.join(WEIGHTS_FILE), weights_bytes)?;
    crate::util::atomic_write(&dir.join(CONFIG_FILE), config_bytes)
}

/// Settings of an adapter loradex trains itself.
pub struct NewConfig<'a> {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    pub target_modules: &'a [String],
    pub modules_to_save: &'a [String],
    pub task_type: &'a str,
    pub base_model_name_or_path: Option<&'a str>,
}

/// An `adapter_config.json` with every field PEFT 0.21 writes, in its order (sorted keys).
pub fn new_config_json(c: &NewConfig) -> Vec<u8> {
    let mut m = Map::new();
    let null = Value::Null;
    let mut targets = c.target_modules.to_vec();
    targets.sort();
    for (k, v) in [
        ("alora_invocation_tokens", null.clone()),
        ("alpha_pattern", Value::Object(Map::new())),
        ("arrow_config", null.clone()),
        ("auto_mapping", null.clone()),
        ("base_model_name_or_path", c.base_model_name_or_path.map(Value::from).unwrap_or(Value::Null)),
        ("bias", "none".into()),
        ("corda_config", null.clone()),
        ("ensure_weight_tying", false.into()),
        ("eva_config", null.clone()),
        ("exclude_modules", null.clone()),
        ("fan_in_fan_out", false.into()),
        ("inference_mode", true.into()),
        ("init_lora_weights", true.into()),
        ("kasa_config", null.clone()),
        ("layer_replication", null.clone()),
        ("layers_pattern", null.clone()),
        ("layers_to_transform", null.clone()),
        ("loftq_config", Value::Object(Map::new())),
        ("lora_alpha", num(c.alpha)),
        ("lora_bias", false.into()),
        ("lora_dropout", Value::from(c.dropout)),
        ("lora_ga_config", null.clone()),
        ("megatron_config", null.clone()),
        ("megatron_core", "megatron.core".into()),
        (
            "modules_to_save",
            if c.modules_to_save.is_empty() { null.clone() } else { Value::from(c.modules_to_save.to_vec()) },
        ),
        ("monteclora_config", null.clone()),
        ("peft_type", "LORA".into()),
        ("peft_version", "0.21.0".into()),
        ("qalora_group_size", 16.into()),
        ("r", c.r.into()),
        ("rank_pattern", Value::Object(Map::new())),
        ("revision", null.clone()),
        ("target_modules", Value::from(targets)),
        ("target_parameters", null.clone()),
        ("task_type", c.task_type.into()),
        ("trainable_token_indices", null.clone()),
        ("use_bdlora", null.clone()),
        ("use_dora", false.into()),
        ("use_qalora", false.into()),
        ("use_rslora", c.use_rslora.into()),
        ("velora_config", null.clone()),
    ] {
        m.insert(k.to_string(), v);
    }
    let mut out = serde_json::to_vec_pretty(&Value::Object(m)).expect("config serializes");
    out.push(b'\n');
    out
}

/// Integral alphas are written as integers, as Python's json does for ints.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}
