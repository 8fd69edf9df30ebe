//! BERT (`BertForSequenceClassification`): the reference encoder; token types, a pooler, a
//! one-layer head (`classifier`, or `score`).

use super::{parse, Build, Family};
use crate::error::Result;
use crate::model::bert::{Config, EncoderNames, EncoderSpec, HeadNames};
use serde_json::Value;

pub static FAMILY: Family = Family {
    name: "bert",
    model_types: &["bert"],
    backbone_prefix: "bert.",
    backbone_roots: &["embeddings.", "encoder.", "pooler."],
    head_modules: &["classifier", "score"],
    task_architecture: "BertForSequenceClassification",
    build: Build::Encoder(spec),
};

/// BERT's tensor names under `prefix` (`bert`); RoBERTa reuses the layer names.
pub(crate) fn names(embeddings: [&'static str; 4], layer: &'static str, pooler: Option<&'static str>, head: HeadNames) -> EncoderNames {
    let [word, position, token_type, emb_norm] = embeddings;
    EncoderNames {
        word,
        position,
        token_type: Some(token_type),
        emb_norm,
        layer,
        query: "attention.self.query",
        key: "attention.self.key",
        value: "attention.self.value",
        attn_out: "attention.output.dense",
        attn_norm: "attention.output.LayerNorm",
        inter: "intermediate.dense",
        output: "output.dense",
        out_norm: "output.LayerNorm",
        pooler,
        head,
    }
}

fn spec(v: &Value) -> Result<EncoderSpec> {
    let cfg: Config = parse("bert", v)?;
    cfg.validate()?;
    let names = names(
        ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings", "bert.embeddings.LayerNorm"],
        "bert.encoder.layer",
        Some("bert.pooler.dense"),
        HeadNames { pre: None, out: &["classifier", "score"] },
    );
    Ok(EncoderSpec { cfg, names, position_offset: 0 })
}
