//! The registry of model families. Each family lives in its own file and says how to detect
//! it from `config.json` (`model_type`), how its typed config maps onto one of the two shared
//! implementations (the BERT-family encoder in `model::bert`, the Llama-family decoder in
//! `model::llama` and `model::decoder`), where its backbone's modules sit under PEFT's names,
//! and which modules form its classification head. Adding a family is one file here plus one
//! line in `FAMILIES`. Owns no arithmetic and no weights: the implementations read a spec.

pub mod bert;
pub mod distilbert;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod granite;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod olmo3;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod roberta;
pub mod smollm3;
pub mod xlm_roberta;

use crate::error::{Error, Result};
use crate::model::bert::EncoderSpec;
use crate::model::llama::DecoderSpec;
use serde_json::Value;

/// Every registered family, in detection order.
static FAMILIES: &[&Family] = &[
    &bert::FAMILY,
    &roberta::FAMILY,
    &xlm_roberta::FAMILY,
    &distilbert::FAMILY,
    &llama::FAMILY,
    &mistral::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &gemma::FAMILY,
    &gemma2::FAMILY,
    &gemma3::FAMILY,
    &phi3::FAMILY,
    &smollm3::FAMILY,
    &granite::FAMILY,
    &olmo2::FAMILY,
    &olmo3::FAMILY,
];

/// How a family's config becomes a model.
pub enum Build {
    /// A sequence-classification encoder (`model::bert`).
    Encoder(fn(&Value) -> Result<EncoderSpec>),
    /// A causal LM (`model::llama` for training and merging, `model::decoder` for serving).
    Decoder(fn(&Value) -> Result<DecoderSpec>),
}

/// One architecture family, as its file declares it.
pub struct Family {
    /// loradex's name (stored with adapters as their base architecture).
    pub name: &'static str,
    /// `config.json` `model_type` values this family reads.
    pub model_types: &'static [&'static str],
    /// The attribute the task model puts its backbone under (`bert.`, `model.`): PEFT keys and
    /// loradex's module names carry it.
    pub backbone_prefix: &'static str,
    /// The backbone's top-level modules, to recognise keys saved against the bare backbone.
    pub backbone_roots: &'static [&'static str],
    /// Module names (relative to the task model) a classification head may have under
    /// `modules_to_save`: each a whole module or a submodule of one.
    pub head_modules: &'static [&'static str],
    /// The task-model class written into a merged directory's `config.json`.
    pub task_architecture: &'static str,
    pub build: Build,
}

impl Family {
    /// A decoder family: every one shares Llama's task-model layout (`model.` backbone with
    /// `embed_tokens`/`layers`/`norm`) and head names; only its name, `model_type`, class and
    /// spec differ.
    pub(crate) const fn decoder(name: &'static str, model_type: &'static [&'static str], task_architecture: &'static str, spec: fn(&Value) -> Result<DecoderSpec>) -> Family {
        Family {
            name,
            model_types: model_type,
            backbone_prefix: "model.",
            backbone_roots: &["embed_tokens.", "layers.", "norm."],
            head_modules: &["classifier", "score"],
            task_architecture,
            build: Build::Decoder(spec),
        }
    }

    pub fn is_encoder(&self) -> bool {
        matches!(self.build, Build::Encoder(_))
    }
}

/// A base's family: a copyable handle on a registered `Family`.
#[derive(Clone, Copy)]
pub struct Arch(&'static Family);

impl PartialEq for Arch {
    fn eq(&self, o: &Arch) -> bool {
        self.0.name == o.0.name
    }
}
impl Eq for Arch {}

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl Arch {
    /// The family registered under `name` (as stored with an adapter).
    pub fn by_name(name: &str) -> Option<Arch> {
        FAMILIES.iter().find(|f| f.name == name).map(|f| Arch(f))
    }

    /// The family whose `model_type` a `config.json` names.
    pub fn detect(config: &Value) -> Result<Arch> {
        let mt = config.get("model_type").and_then(Value::as_str).unwrap_or("");
        FAMILIES.iter().find(|f| f.model_types.contains(&mt)).map(|f| Arch(f)).ok_or_else(|| {
            let known: Vec<&str> = FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect();
            Error::Model(format!("unsupported model_type {mt:?} (supported: {})", known.join(", ")))
        })
    }

    pub fn family(self) -> &'static Family {
        self.0
    }
    pub fn name(self) -> &'static str {
        self.0.name
    }
    pub fn is_encoder(self) -> bool {
        self.0.is_encoder()
    }
    pub fn backbone_prefix(self) -> &'static str {
        self.0.backbone_prefix
    }

    /// Canonical (task-model) module path for a path as PEFT saved it against either the bare
    /// backbone (`encoder.layer.0...`) or the task model (`bert.encoder.layer.0...`).
    pub fn canonical(self, module: &str) -> String {
        let probe = format!("{module}.");
        if self.0.backbone_roots.iter().any(|r| probe.starts_with(r)) {
            format!("{}{module}", self.0.backbone_prefix)
        } else {
            module.to_string()
        }
    }

    /// Whether `module` (canonical) is, or lies inside, one of the family's head modules.
    pub fn is_head_module(self, module: &str) -> bool {
        self.0.head_modules.iter().any(|h| module == *h || module.starts_with(&format!("{h}.")))
    }
}

/// Reads a typed config out of `config.json`'s value.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(family: &str, v: &Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Model(format!("{family} config.json: {e}")))
}

/// Every registered family (for listings and tests).
pub fn all() -> impl Iterator<Item = Arch> {
    FAMILIES.iter().map(|f| Arch(f))
}
