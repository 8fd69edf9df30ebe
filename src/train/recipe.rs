//! Training recipes (TOML, described by `schemas/recipe.schema.json`) and `--set` overrides.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    SeqCls,
    CausalLm,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// CSV (`text,label` header) or JSONL, relative to the recipe file.
    pub train: PathBuf,
    #[serde(default)]
    pub validation: Option<PathBuf>,
    /// Fraction held out for validation when no validation file is given.
    #[serde(default = "d_split")]
    pub validation_split: f64,
    #[serde(default = "d_text")]
    pub text_field: String,
    #[serde(default = "d_label")]
    pub label_field: String,
    /// Label order (index i = class i); default: order of first appearance in the data.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default = "d_len")]
    pub max_seq_len: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    #[serde(default = "d_r")]
    pub r: usize,
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Absent: the task's default targets. Empty: train the head alone (a baseline that shows
    /// what the adapter buys).
    #[serde(default)]
    pub target_modules: Option<Vec<String>>,
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (PEFT's `use_dora`): a trained magnitude per output row of each target.
    #[serde(default)]
    pub use_dora: bool,
    /// PEFT's `layers_to_transform`: LoRA only in these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Modules trained fully and saved with the adapter (e.g. ["classifier"]).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for Lora {
    fn default() -> Self {
        Lora { r: d_r(), alpha: d_alpha(), dropout: 0.0, target_modules: None, use_rslora: false, use_dora: false, layers_to_transform: None, modules_to_save: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Loss,
    Accuracy,
    MacroF1,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCfg {
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default = "d_bs")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Metric that picks the best epoch's checkpoint.
    #[serde(default = "d_metric")]
    pub metric: Metric,
    /// Stop after this many epochs without improvement (0 = never).
    #[serde(default)]
    pub early_stopping_patience: usize,
}

impl Default for TrainCfg {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Ref to store the adapter under, NAME[:TAG].
    pub name: String,
    /// Base model directory (relative to the recipe) or hub repo id.
    pub base: String,
    pub task: Task,
    #[serde(default)]
    pub description: Option<String>,
    pub data: Data,
    #[serde(default)]
    pub lora: Lora,
    #[serde(default)]
    pub train: TrainCfg,
    /// Directory relative paths are resolved against.
    #[serde(skip)]
    pub dir: PathBuf,
}

fn d_split() -> f64 {
    0.2
}
fn d_text() -> String {
    "text".into()
}
fn d_label() -> String {
    "label".into()
}
fn d_len() -> usize {
    128
}
fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_epochs() -> usize {
    3
}
fn d_bs() -> usize {
    8
}
fn d_lr() -> f64 {
    2e-4
}
fn d_clip() -> f64 {
    1.0
}
fn d_seed() -> u64 {
    42
}
fn d_metric() -> Metric {
    Metric::MacroF1
}

impl Recipe {
    /// Reads a recipe, applying `key.path=value` overrides (values parsed as TOML, else strings).
    pub fn load(path: &Path, sets: &[String]) -> Result<Recipe> {
        let text = crate::util::read_text_bounded(path, crate::util::MAX_CONFIG_BYTES)?;
        Recipe::parse(&text, path, sets)
    }

    /// [`Recipe::load`] without the file read: parses recipe TOML `text` as if read from
    /// `path` (named in errors; its parent becomes the recipe's directory), then applies `sets`
    /// and validates. Touches no files, so hostile text can be fed to it directly (the fuzzer).
    pub fn parse(text: &str, path: &Path, sets: &[String]) -> Result<Recipe> {
        let mut v: toml::Value = toml::from_str(text).map_err(|e| Error::Recipe(format!("{}: {e}", path.display())))?;
        for kv in sets {
            set_path(&mut v, kv)?;
        }
        let mut r: Recipe = v.try_into().map_err(|e: toml::de::Error| Error::Recipe(format!("{}: {e}", path.display())))?;
        r.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(m));
        if self.lora.r == 0 {
            return bad("lora.r must be > 0".into());
        }
        // room for the tokenizer's special tokens ([CLS] … [SEP]) and one token of text
        if !(3..=1 << 16).contains(&self.data.max_seq_len) {
            return bad(format!("data.max_seq_len must be from 3 to 65536, not {}", self.data.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad("lora.dropout must be in [0, 1)".into());
        }
        if self.train.batch_size == 0 || self.train.epochs == 0 {
            return bad("train.batch_size and train.epochs must be > 0".into());
        }
        // a NaN is refused too (it compares as nothing)
        if self.train.learning_rate.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return bad("train.learning_rate must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.data.validation_split) {
            return bad("data.validation_split must be in [0, 1)".into());
        }
        crate::store::Ref::parse(&self.name)?;
        Ok(())
    }

    /// A path from the recipe, resolved against the recipe's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The base spec: a directory relative to the recipe if one exists there, else as given.
    pub fn base_spec(&self) -> String {
        let p = self.path(Path::new(&self.base));
        if p.is_dir() || p.is_file() {
            p.display().to_string()
        } else {
            self.base.clone()
        }
    }

    pub fn target_modules(&self) -> Vec<String> {
        if let Some(t) = &self.lora.target_modules {
            return t.clone();
        }
        match self.task {
            Task::SeqCls => vec!["query".into(), "value".into()],
            Task::CausalLm => vec!["q_proj".into(), "v_proj".into()],
        }
    }

    pub fn modules_to_save(&self) -> Vec<String> {
        match (&self.lora.modules_to_save, self.task) {
            (Some(m), _) => m.clone(),
            (None, Task::SeqCls) => vec!["classifier".into()],
            (None, Task::CausalLm) => vec![],
        }
    }
}

fn set_path(root: &mut toml::Value, kv: &str) -> Result<()> {
    let (key, val) = kv.split_once('=').ok_or_else(|| Error::Recipe(format!("--set {kv:?}: expected KEY=VALUE")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {val}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(val.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let t = cur.as_table_mut().ok_or_else(|| Error::Recipe(format!("--set {key}: {p} is not a table")))?;
        cur = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let t = cur.as_table_mut().ok_or_else(|| Error::Recipe(format!("--set {key}: not a table")))?;
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
