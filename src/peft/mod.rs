//! The PEFT on-disk format: `adapter_config.json` + `adapter_model.safetensors` exactly as
//! PEFT 0.21 writes them. Parses and validates configs, maps tensor keys to module paths, and
//! writes PEFT-loadable directories. Knows nothing of the store or of model math.

pub mod safetensors;

use crate::error::{Error, IoContext, Result};
use serde_json::{Map, Value};
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
    pub rank_pattern: Patterns<usize>,
    pub alpha_pattern: Patterns<f64>,
    /// DoRA: each LoRA module also has a `lora_magnitude_vector`.
    pub use_dora: bool,
    /// `layers_to_transform`: only modules in these layer indices carry LoRA.
    pub layers_to_transform: Option<Vec<usize>>,
    /// `layers_pattern`: the name(s) of the layer list the indices count in (`layers`, `h`).
    pub layers_pattern: Vec<String>,
}

/// The layer index of a module path as PEFT reads it: the number after `{pattern}.` (any of
/// `patterns`), or with no pattern the first `.N.` after at least two leading components.
pub fn layer_index(module: &str, patterns: &[String]) -> Option<usize> {
    let parts: Vec<&str> = module.split('.').collect();
    // PEFT's regex needs a following "." (the index is not the last component)
    let idx = |i: usize| if i + 1 < parts.len() { parts[i].parse::<usize>().ok() } else { None };
    if patterns.is_empty() {
        // r".*\.[^.]*\.(\d+)\." : the last such index with at least two components before it
        (2..parts.len()).rev().find_map(idx)
    } else {
        (2..parts.len()).rev().find_map(|i| patterns.iter().any(|p| parts[i - 1] == p).then(|| idx(i)).flatten())
    }
}

/// `rank_pattern` / `alpha_pattern` as PEFT reads them: keys are regular expressions tried
/// in the file's order against a module path `m` as `(.*\.)?(KEY)$` from the start of `m`;
/// a key equal to `m` wins outright, else the first key that matches.
#[derive(Clone, Debug, Default)]
pub struct Patterns<T> {
    entries: Vec<(String, regex::Regex, T)>,
}

impl<T: Copy> Patterns<T> {
    /// The value for `module` (a path like `model.layers.0.self_attn.q_proj`), if any key matches.
    pub fn lookup(&self, module: &str) -> Option<T> {
        if let Some((_, _, v)) = self.entries.iter().find(|(k, _, _)| k == module) {
            return Some(*v);
        }
        self.entries.iter().find(|(_, re, _)| re.is_match(module)).map(|(_, _, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys in the file's order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _, _)| k.as_str())
    }
}

/// A JSON object's entries in document order (serde_json's `Map` sorts them; PEFT's first
/// matching pattern depends on the order).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, Value>()? {
                    v.push((k, x));
                }
                Ok(Ordered(v))
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(vec![]))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(serde::Deserialize)]
struct PatternFields {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

/// Most pattern keys, and bytes per key, a config may have (each compiles to a regex).
const MAX_PATTERNS: usize = 4096;
const MAX_PATTERN_LEN: usize = 1024;

fn patterns<T>(field: &str, entries: Option<Ordered>, value: impl Fn(&Value) -> Option<T>, what: &str) -> Result<Patterns<T>> {
    let entries = entries.map(|o| o.0).unwrap_or_default();
    if entries.len() > MAX_PATTERNS {
        return Err(Error::UnsupportedAdapter(format!("{field}: more than {MAX_PATTERNS} keys")));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let v = value(&v).ok_or_else(|| Error::UnsupportedAdapter(format!("{field}[{k:?}] must be {what}")))?;
        if k.len() > MAX_PATTERN_LEN {
            return Err(Error::UnsupportedAdapter(format!("{field}: a key longer than {MAX_PATTERN_LEN} bytes")));
        }
        let re = regex::RegexBuilder::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| Error::UnsupportedAdapter(format!("{field} key {k:?} is not a regular expression loradex can match: {e}")))?;
        out.push((k, re, v));
    }
    Ok(Patterns { entries: out })
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
            ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"),
            ("lora_bias", "lora_bias"),
            ("use_qalora", "QALoRA"),
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
        let typed = |k: &str, what: &str| Error::UnsupportedAdapter(format!("{k} must be {what}"));
        let lora_alpha = match o.get("lora_alpha") {
            None | Some(Value::Null) => 8.0,
            Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| typed("lora_alpha", "a number"))?,
        };
        let flag = |k: &str| -> Result<bool> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| typed(k, "true or false")),
            }
        };
        let lora_dropout = match o.get("lora_dropout") {
            None | Some(Value::Null) => 0.0,
            Some(v) => v.as_f64().filter(|d| (0.0..=1.0).contains(d)).ok_or_else(|| typed("lora_dropout", "a number in [0, 1]"))?,
        };
        let task_type = match o.get("task_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(typed("task_type", "a string or null")),
        };
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
        for k in ["rank_pattern", "alpha_pattern"] {
            if !matches!(o.get(k), None | Some(Value::Null) | Some(Value::Object(_))) {
                return Err(typed(k, "an object"));
            }
        }
        // a second, order-keeping pass over the bytes, only where a pattern has keys
        let has_keys = |k: &str| o.get(k).and_then(Value::as_object).is_some_and(|m| !m.is_empty());
        let fields = if has_keys("rank_pattern") || has_keys("alpha_pattern") {
            serde_json::from_slice(bytes).map_err(|e| Error::json(CONFIG_FILE, e))?
        } else {
            PatternFields { rank_pattern: None, alpha_pattern: None }
        };
        let rank_pattern = patterns("rank_pattern", fields.rank_pattern, |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize), "a positive integer")?;
        let alpha_pattern = patterns("alpha_pattern", fields.alpha_pattern, |v| v.as_f64().filter(|a| a.is_finite()), "a number")?;
        Ok(LoraConfig {
            r,
            lora_alpha,
            use_rslora: flag("use_rslora")?,
            target_modules,
            modules_to_save: strings("modules_to_save")?,
            task_type,
            lora_dropout,
            rank_pattern,
            alpha_pattern,
            use_dora: flag("use_dora")?,
            layers_to_transform: match o.get("layers_to_transform") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(vec![n.as_u64().ok_or_else(|| typed("layers_to_transform", "a layer index or a list of them"))? as usize]),
                Some(Value::Array(a)) => Some(
                    a.iter().map(|v| v.as_u64().map(|n| n as usize).ok_or_else(|| typed("layers_to_transform", "a layer index or a list of them"))).collect::<Result<_>>()?,
                ),
                Some(_) => return Err(typed("layers_to_transform", "a layer index or a list of them")),
            },
            layers_pattern: strings("layers_pattern")?,
        })
    }

    /// Whether PEFT would put LoRA on `module` given `layers_to_transform` (always without it).
    pub fn in_layers(&self, module: &str) -> bool {
        match &self.layers_to_transform {
            None => true,
            Some(layers) => layer_index(module, &self.layers_pattern).is_some_and(|i| layers.contains(&i)),
        }
    }

    /// The rank PEFT gives one module (`module` as PEFT names it, without `base_model.model.`).
    pub fn rank_for(&self, module: &str) -> usize {
        self.rank_pattern.lookup(module).unwrap_or(self.r)
    }

    /// The LoRA scale for one module, honouring `alpha_pattern` and `use_rslora` like PEFT.
    /// `rank` is the module's actual rank (from its tensors, checked against `rank_for`).
    pub fn scale_for(&self, module: &str, rank: usize) -> f64 {
        let alpha = self.alpha_pattern.lookup(module).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

/// What a saved tensor key means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    LoraA(String),
    LoraB(String),
    /// A fully trained module copy (`modules_to_save`): module path and parameter name.
    Saved(String, String),
    /// A DoRA magnitude vector (`[out]`) of a LoRA module.
    Magnitude(String),
    /// An embedding LoRA's `lora_embedding_A` (`[r, vocab]`) / `lora_embedding_B` (`[hidden, r]`).
    EmbedA(String),
    EmbedB(String),
    /// A copy of a LoRA module's base layer PEFT saves beside it (`embed_tokens.base_layer`).
    BaseLayer(String, String),
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
    for suffix in [".lora_magnitude_vector", ".lora_magnitude_vector.weight"] {
        if let Some(m) = rest.strip_suffix(suffix) {
            return Ok(KeyKind::Magnitude(m.into()));
        }
    }
    for (suffix, a) in [(".lora_embedding_A", true), (".lora_embedding_B", false)] {
        if let Some(m) = rest.strip_suffix(suffix) {
            return Ok(if a { KeyKind::EmbedA(m.into()) } else { KeyKind::EmbedB(m.into()) });
        }
    }
    if let Some((m, param)) = rest.rsplit_once(".base_layer.") {
        return Ok(KeyKind::BaseLayer(m.into(), param.into()));
    }
    if rest.contains("lora_embedding_") {
        return Err(Error::UnsupportedAdapter(format!("{key}: not an embedding LoRA tensor PEFT writes")));
    }
    if let Some((module, param)) = rest.rsplit_once('.') {
        let module = module.replace(".modules_to_save.default", "");
        // PEFT's rule: a saved module is named whole or by a dotted suffix, and the key lies
        // in it or in one of its submodules (`classifier` holds `classifier.dense.weight`)
        let parts: Vec<&str> = module.split('.').collect();
        let inside = (1..=parts.len()).any(|n| {
            let ancestor = parts[..n].join(".");
            modules_to_save.iter().any(|m| ancestor == *m || ancestor.ends_with(&format!(".{m}")))
        });
        if inside {
            return Ok(KeyKind::Saved(module, param.into()));
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
    if !cfg_path.exists() {
        return Err(Error::Missing { path: dir.into(), what: CONFIG_FILE.into() });
    }
    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.exists() {
        let what = if dir.join("adapter_model.bin").is_file() {
            format!("{WEIGHTS_FILE} (only adapter_model.bin, a pickle, is present: re-save with safe_serialization=True)")
        } else {
            WEIGHTS_FILE.into()
        };
        return Err(Error::Missing { path: dir.into(), what });
    }
    let config_bytes = crate::util::read_bounded(&cfg_path, crate::util::MAX_CONFIG_BYTES)?;
    let weights_bytes = crate::util::read_bounded(&w_path, crate::util::MAX_WEIGHTS_BYTES)?;
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
    pub use_dora: bool,
    pub layers_to_transform: Option<&'a [usize]>,
    pub target_modules: &'a [String],
    pub modules_to_save: &'a [String],
    pub task_type: &'a str,
    pub base_model_name_or_path: Option<&'a str>,
}

impl<'a> NewConfig<'a> {
    /// The settings of a parsed config, to write it again as loradex writes its own.
    pub fn of(c: &'a LoraConfig, task_type: &'a str) -> NewConfig<'a> {
        NewConfig {
            r: c.r,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            use_rslora: c.use_rslora,
            use_dora: c.use_dora,
            layers_to_transform: c.layers_to_transform.as_deref(),
            target_modules: &c.target_modules,
            modules_to_save: &c.modules_to_save,
            task_type,
            base_model_name_or_path: None,
        }
    }
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
        ("layers_to_transform", c.layers_to_transform.map(|l| Value::from(l.to_vec())).unwrap_or(Value::Null)),
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
        ("use_dora", c.use_dora.into()),
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
