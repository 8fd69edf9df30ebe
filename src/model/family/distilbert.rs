//! DistilBERT (`DistilBertForSequenceClassification`): its own config keys (`dim`, `n_heads`,
//! ...), `q_lin`/`k_lin`/`v_lin`/`out_lin`/`lin1`/`lin2` under `distilbert.transformer.layer`,
//! no token types, no pooler, and a two-layer head (`pre_classifier` + ReLU, `classifier`).

use super::{parse, Build, Family};
use crate::error::{Error, Result};
use crate::model::bert::{Config as EncoderConfig, EncoderNames, EncoderSpec, HeadAct, HeadNames};
use serde_json::Value;

pub static FAMILY: Family = Family {
    name: "distilbert",
    model_types: &["distilbert"],
    backbone_prefix: "distilbert.",
    backbone_roots: &["embeddings.", "transformer."],
    head_modules: &["pre_classifier", "classifier"],
    task_architecture: "DistilBertForSequenceClassification",
    build: Build::Encoder(spec),
};

/// `config.json` of a DistilBERT model.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    #[serde(default = "gelu")]
    pub activation: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn gelu() -> String {
    "gelu".into()
}

fn spec(v: &Value) -> Result<EncoderSpec> {
    let c: Config = parse("distilbert", v)?;
    if c.sinusoidal_pos_embds {
        // the table is saved either way; transformers fills it with sinusoids at init only
        return Err(Error::Model("distilbert: sinusoidal_pos_embds is not supported".into()));
    }
    let cfg = EncoderConfig {
        vocab_size: c.vocab_size,
        hidden_size: c.dim,
        num_hidden_layers: c.n_layers,
        num_attention_heads: c.n_heads,
        intermediate_size: c.hidden_dim,
        hidden_act: c.activation,
        max_position_embeddings: c.max_position_embeddings,
        type_vocab_size: 1,
        // DistilBERT's LayerNorms use eps 1e-12
        layer_norm_eps: 1e-12,
        pad_token_id: c.pad_token_id,
    };
    cfg.validate()?;
    let names = EncoderNames {
        word: "distilbert.embeddings.word_embeddings",
        position: "distilbert.embeddings.position_embeddings",
        token_type: None,
        emb_norm: "distilbert.embeddings.LayerNorm",
        layer: "distilbert.transformer.layer",
        query: "attention.q_lin",
        key: "attention.k_lin",
        value: "attention.v_lin",
        attn_out: "attention.out_lin",
        attn_norm: "sa_layer_norm",
        inter: "ffn.lin1",
        output: "ffn.lin2",
        out_norm: "output_layer_norm",
        pooler: None,
        head: HeadNames { pre: Some(("pre_classifier", HeadAct::Relu)), out: &["classifier"] },
    };
    Ok(EncoderSpec { cfg, names, position_offset: 0 })
}
