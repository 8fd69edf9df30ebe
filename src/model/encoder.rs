//! The engine's choice of backend for the one BERT-family encoder: `bert_cpu`'s hand-written
//! forward on the CPU (unless a context asks for candle's), candle's forward on accelerators
//! and under autograd. Owns only that choice; the arithmetic lives in `bert` and `bert_cpu`.

use super::bert::Bert;
use super::bert_cpu;
use super::lora::Ctx;
use crate::error::Result;
use candle_core::Tensor;

/// Classification logits per row (rows may use different adapters and heads).
pub fn classify(m: &Bert, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Vec<Vec<f32>>> {
    if !ctx.train && ctx.cpu_kernels && bert_cpu::supported(m, ids.device()) {
        return bert_cpu::classify(m, ids, type_ids, mask, ctx.routing);
    }
    m.classify(ids, type_ids, mask, ctx)
}
