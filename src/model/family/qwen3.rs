//! Qwen3 (`Qwen3ForCausalLM`): Qwen2's config and layout (read by `qwen2::spec_as`; Qwen3's
//! q/k/v carry no biases) plus an RMSNorm over each head of q and k before RoPE
//! (`self_attn.q_norm` / `k_norm`, one `head_dim`-long weight each, shared by the heads), and
//! usually an explicit `head_dim`.

use super::Family;
use crate::error::Result;
use crate::model::llama::DecoderSpec;
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("qwen3", &["qwen3"], "Qwen3ForCausalLM", spec);

fn spec(v: &Value) -> Result<DecoderSpec> {
    let mut s = super::qwen2::spec_as("qwen3", v)?;
    s.opts.qk_norm = true;
    Ok(s)
}
