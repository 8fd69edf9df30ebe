//! `bench generate --parts factors`: how far reading LoRA factors in half precision or in
//! 8 bits moves a quantized base's outputs from f32 factors, beside how far a change of one
//! part in 10,000 in the f32 factors moves them. The base rounds its activations to 8 bits
//! before every quantized product, so any change in what reaches it flips some of those
//! roundings: that second figure is the floor no factor precision gets under. Prints figures;
//! decides nothing (the default precision is `factors8::FactorDtype`'s to document).

use loradex::base::BaseDir;
use loradex::error::{Error, Result};
use loradex::model::decoder::{Decoder, Row};
use loradex::model::factors8::FactorDtype;
use loradex::model::gguf::LoadDtype;
use loradex::model::llama::argmax;
use loradex::model::lora::LoadedAdapter;
use loradex::model::Engine;
use std::sync::Arc;

/// Relative change of every up-projection value for the floor.
const NUDGE: f32 = 1e-4;

pub fn run(base: &str, dtype: LoadDtype, prompt: &[u32], tokens: usize) -> Result<()> {
    let load = |f: Option<FactorDtype>| -> Result<Arc<Decoder>> {
        let mut e = Engine::load_with(BaseDir::open(base)?, candle_core::Device::Cpu, dtype)?;
        if let Some(f) = f {
            e.set_lora_factors(f)?;
        }
        e.decoder.clone().ok_or_else(|| Error::Model("bench generate needs a Llama-family base on the CPU".into()))
    };
    if load(None)?.lora_factors() == FactorDtype::F32 {
        println!("LoRA factor precision: skipped (an f32 base reads f32 factors)");
        return Ok(());
    }
    let exact = load(Some(FactorDtype::F32))?;
    // each decoder its own copy of the same adapter (an adapter resolves its slots for one)
    let adapter = |dec: &Decoder, nudge: f32| loradex::synth::decoder_adapter_scaled(dec, 8, 1, 1.0 + nudge);
    let a = adapter(&exact, 0.0)?;
    // the prompt and a greedy continuation under f32 factors, fed to every variant alike
    let mut ids = Vec::with_capacity(prompt.len() + tokens);
    let mut want: Vec<Vec<f32>> = Vec::with_capacity(prompt.len() + tokens);
    let mut cache = exact.cache(prompt.len() + tokens, None);
    for i in 0..prompt.len() + tokens {
        let t = match prompt.get(i) {
            Some(&t) => t,
            None => argmax(want.last().expect("a prompt of at least one token")),
        };
        ids.push(t);
        want.push(exact.step(&mut [Row { tokens: &[t], cache: &mut cache, adapter: Some(&a) }])?.remove(0));
    }
    let base_only = along(&exact, &ids, None)?;
    println!(
        "LoRA factor precision beside the quantized base (one random rank-8 adapter; {} prompt and {tokens} greedy positions, each variant fed the same tokens), against f32 factors:",
        prompt.len()
    );
    let show = |name: &str, got: &[Vec<f32>], note: &str| {
        let kl = want.iter().zip(got).map(|(p, q)| kl(p, q)).sum::<f64>() / want.len().max(1) as f64;
        let top1 = want.iter().zip(got).filter(|(p, q)| argmax(p) == argmax(q)).count();
        let worst = want.iter().flatten().zip(got.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("  {name:30} mean KL {kl:.2e}; top-1 the same at {top1}/{} positions; worst |logit change| {worst:.3}{note}", want.len());
    };
    for f in [FactorDtype::F16, FactorDtype::Int8] {
        let dec = load(Some(f))?;
        show(&format!("{f}"), &along(&dec, &ids, Some(&adapter(&dec, 0.0)?))?, "");
    }
    let nudged = adapter(&exact, NUDGE)?;
    show("f32, every B times (1 + 1e-4)", &along(&exact, &ids, Some(&nudged))?, "  <- the floor");
    show("no adapter at all", &base_only, "  <- what the adapter itself does");
    Ok(())
}

/// Every position's logits of `ids` fed one token a step.
fn along(dec: &Decoder, ids: &[u32], adapter: Option<&LoadedAdapter>) -> Result<Vec<Vec<f32>>> {
    let mut cache = dec.cache(ids.len(), None);
    ids.iter().map(|t| Ok(dec.step(&mut [Row { tokens: std::slice::from_ref(t), cache: &mut cache, adapter }])?.remove(0))).collect()
}

/// KL(softmax(p) ‖ softmax(q)), in f64.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |l: &[f32]| {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        l.iter().map(|&x| x as f64 - z).collect::<Vec<_>>()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}
