//! RoBERTa (`RobertaForSequenceClassification`): BERT's layers under `roberta.`, position ids
//! starting at `pad_token_id + 1`, one token type, no pooler, and a two-layer head
//! (`classifier.dense` + tanh, then `classifier.out_proj`) on the `<s>` token.

use super::{parse, Build, Family};
use crate::error::{Error, Result};
use crate::model::bert::{Config, EncoderSpec, HeadAct, HeadNames};
use serde_json::Value;

pub static FAMILY: Family = Family {
    name: "roberta",
    model_types: &["roberta"],
    backbone_prefix: "roberta.",
    backbone_roots: ROOTS,
    head_modules: HEAD_MODULES,
    task_architecture: "RobertaForSequenceClassification",
    build: Build::Encoder(spec),
};

pub(crate) const ROOTS: &[&str] = &["embeddings.", "encoder."];
pub(crate) const HEAD_MODULES: &[&str] = &["classifier", "classifier.dense", "classifier.out_proj"];

/// The RoBERTa layout (XLM-R shares it, names included).
pub(crate) fn spec(v: &Value) -> Result<EncoderSpec> {
    let cfg: Config = parse("roberta", v)?;
    cfg.validate()?;
    let pad = cfg.pad_token_id.ok_or_else(|| Error::Model("roberta config: pad_token_id is required (positions start after it)".into()))?;
    let names = super::bert::names(
        [
            "roberta.embeddings.word_embeddings",
            "roberta.embeddings.position_embeddings",
            "roberta.embeddings.token_type_embeddings",
            "roberta.embeddings.LayerNorm",
        ],
        "roberta.encoder.layer",
        Some("roberta.pooler.dense"),
        HeadNames { pre: Some(("classifier.dense", HeadAct::Tanh)), out: &["classifier.out_proj"] },
    );
    Ok(EncoderSpec { cfg, names, position_offset: pad as usize + 1 })
}
