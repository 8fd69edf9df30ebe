//! `loradex bench …`: benchmarks that print each figure beside a baseline measured in the
//! same run (ratios), plus the goal and the PEFT reference figures from the issues.

use clap::Subcommand;
use loradex::base::BaseDir;
use loradex::error::{Error, Result};
use loradex::model::lora::Routing;
use loradex::model::{Engine, Net};
use loradex::store::{Ref, Store};
use loradex::synth;
use loradex::train::{GradPath, LoraSpec, Task, Trainer};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand)]
pub enum Which {
    /// `ls` and `prune --dry-run` over N stored adapters
    Store {
        /// Store sizes to measure, smallest first: `--n 10000,100000,1000000` draws the curve
        #[arg(long, value_delimiter = ',', default_value = "100000")]
        n: Vec<usize>,
        /// Build the benchmark store here and keep it (default: a temp dir, removed)
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Mixed-adapter batch vs single adapter vs base; activation, load from store, merge
    Model {
        /// BERT base directory (default: a random BERT-base written to a temp dir)
        #[arg(long)]
        base: Option<String>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 16)]
        seq: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Run on the GPU (a build with the `cuda` feature)
        #[arg(long)]
        cuda: bool,
    },
    /// Training throughput: r=8 q,v, batch 8, seq 128; against candle's autograd and,
    /// with --peft, against PEFT + PyTorch measured in the same run
    Train {
        #[arg(long)]
        base: Option<String>,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// A Python with torch, transformers and peft: also runs --peft-script (same setup)
        #[arg(long)]
        peft: Option<PathBuf>,
        #[arg(long, default_value = "benches/peft_train_step.py")]
        peft_script: PathBuf,
        /// Skip the autograd baseline (quicker runs while profiling)
        #[arg(long)]
        no_autograd: bool,
        /// Train on the GPU (autograd there; the PEFT script then runs on the GPU too)
        #[arg(long)]
        cuda: bool,
    },
    /// Real-model check: sentence embeddings (mean pooling) from a BERT encoder such as
    /// all-MiniLM-L6-v2; similar pairs must score above unrelated ones
    Embed {
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        base: String,
    },
    /// Generation: single-stream decode, N concurrent streams, 32 adapters vs one, TTFT;
    /// with --llamacpp, llama.cpp on the same GGUF in the same run
    Generate {
        #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
        base: String,
        /// GGUF bases: native or f32
        #[arg(long, default_value = "native")]
        dtype: String,
        /// LoRA factors beside a quantized base: int8 (the default), f16 or f32
        #[arg(long)]
        lora_factors: Option<loradex::model::factors8::FactorDtype>,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, value_delimiter = ',', default_value = "16,32")]
        streams: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A Python with llama-cpp-python: also runs --llamacpp-script
        #[arg(long)]
        llamacpp: Option<PathBuf>,
        #[arg(long, default_value = "benches/llamacpp_generate.py")]
        llamacpp_script: PathBuf,
        /// Which measurements to run (comma-separated): single, kernels, streams, adapters, factors
        #[arg(long, value_delimiter = ',', default_value = "single,kernels,streams,adapters,factors")]
        parts: Vec<super::bench_generate::Part>,
    },
    /// HTTP load: 32 concurrent clients over 16 adapters vs 1 adapter
    Serve {
        #[arg(long)]
        base: Option<String>,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 16)]
        adapters: usize,
        #[arg(long, default_value_t = 20)]
        requests_per_client: usize,
    },
}

pub(super) fn tmpdir(tag: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("loradex-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

pub(super) fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?; // warm-up
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

/// A BERT base: the given directory, or a random one of BERT-base shape.
fn bert_base(spec: &Option<String>, tmp: &Path, labels: &[&str]) -> Result<BaseDir> {
    match spec {
        Some(s) => BaseDir::open(s),
        None => {
            let d = tmp.join("bert-base-random");
            synth::bert(&d, &synth::Shape::bert_base(), labels, 7)?;
            BaseDir::open_dir(&d)
        }
    }
}

/// Writes a random PEFT adapter (rank r on `targets`, optional head) for a BERT base into `dir`.
fn random_adapter(e: &Engine, dir: &Path, r: usize, targets: &[&str], seed: u64, head_labels: usize) -> Result<()> {
    random_adapter_with(e, dir, r, targets, seed, head_labels, false)
}

/// `random_adapter`, as DoRA where `dora` (a magnitude of about 1 per output row).
fn random_adapter_with(e: &Engine, dir: &Path, r: usize, targets: &[&str], seed: u64, head_labels: usize, dora: bool) -> Result<()> {
    let mut rng = loradex::util::Rng::new(seed);
    let mut rand = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| (rng.next_f32() - 0.5) * scale).collect() };
    let mut t = std::collections::BTreeMap::new();
    for (name, shape) in e.base.shapes()? {
        let Some(module) = name.strip_suffix(".weight") else { continue };
        if !targets.iter().any(|x| module.ends_with(&format!(".{x}"))) || shape.len() != 2 {
            continue;
        }
        let (out_f, in_f) = (shape[0], shape[1]);
        let p = format!("{}{module}", loradex::peft::KEY_PREFIX);
        t.insert(format!("{p}.lora_A.weight"), (vec![r, in_f], rand(r * in_f, 0.1)));
        t.insert(format!("{p}.lora_B.weight"), (vec![out_f, r], rand(out_f * r, 0.02)));
        if dora {
            t.insert(format!("{p}.lora_magnitude_vector"), (vec![out_f], rand(out_f, 0.2).into_iter().map(|x| 1.0 + x).collect()));
        }
    }
    let mut save = vec![];
    if head_labels > 0 {
        let h = e.base.hidden_size().unwrap_or(0);
        t.insert(format!("{}classifier.weight", loradex::peft::KEY_PREFIX), (vec![head_labels, h], rand(head_labels * h, 0.1)));
        t.insert(format!("{}classifier.bias", loradex::peft::KEY_PREFIX), (vec![head_labels], vec![0.0; head_labels]));
        save.push("classifier".to_string());
    }
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    let cfg = loradex::peft::new_config_json(&loradex::peft::NewConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        use_rslora: false,
        use_dora: dora,
        layers_to_transform: None,
        target_modules: &targets,
        modules_to_save: &save,
        task_type: "SEQ_CLS",
        base_model_name_or_path: None,
    });
    loradex::peft::write_dir(dir, &cfg, &loradex::peft::safetensors::write_f32(&t))
}

pub fn run(which: Which, _home: &Path) -> Result<i32> {
    match which {
        Which::Store { n, keep } => {
            for size in n {
                super::bench_store::run(size, keep.as_deref())?
            }
        }
        Which::Model { base, batch, seq, reps, cuda } => bench_model(&base, batch, seq, reps, cuda)?,
        Which::Train { base, batch, seq, steps, peft, peft_script, no_autograd, cuda } => {
            bench_train(&base, (batch, seq, steps), !no_autograd && !cuda, peft.as_deref(), &peft_script, cuda)?
        }
        Which::Embed { base } => bench_embed(&base)?,
        Which::Serve { base, clients, adapters, requests_per_client } => bench_serve(&base, clients, adapters, requests_per_client)?,
        Which::Generate { base, dtype, lora_factors, tokens, streams, reps, llamacpp, llamacpp_script, parts } => {
            super::bench_generate::run(super::bench_generate::Args { base, dtype: dtype.parse()?, lora_factors, tokens, streams, reps, llamacpp, llamacpp_script, parts })?
        }
    }
    Ok(0)
}

fn bench_model(base: &Option<String>, batch: usize, seq: usize, reps: usize, cuda: bool) -> Result<()> {
    let tmp = tmpdir("model")?;
    let b = bert_base(base, &tmp, &["neg", "pos"])?;
    let mut e = Engine::load(b.clone(), loradex::model::device(cuda)?)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let on = if cuda { "GPU".to_string() } else { format!("{threads} threads") };
    println!("bench model: BERT hidden {} layers {}, batch {batch} x {seq} tokens, {on}", hidden(&e), layers(&e));
    // adapters: 64 rank-8 q,v adapters with heads
    let n_ad = batch.max(1);
    let mut adapters = vec![];
    for i in 0..n_ad {
        let d = tmp.join(format!("ad{i}"));
        random_adapter(&e, &d, 8, &["query", "value"], 100 + i as u64, 2)?;
        let f = loradex::peft::read_dir(&d)?;
        adapters.push(e.adapter(&format!("ad{i}"), &f.config_bytes, &f.weights_bytes, vec![])?);
    }
    // the same rows on DoRA adapters, and on per-request mixes of two LoRA adapters (rank 16)
    let mut doras = vec![];
    for i in 0..n_ad {
        let d = tmp.join(format!("dora{i}"));
        random_adapter_with(&e, &d, 8, &["query", "value"], 300 + i as u64, 2, true)?;
        let f = loradex::peft::read_dir(&d)?;
        doras.push(e.adapter(&format!("dora{i}"), &f.config_bytes, &f.weights_bytes, vec![])?);
    }
    let mixes: Vec<_> = (0..n_ad)
        .map(|i| loradex::model::lora::LoadedAdapter::mix(&format!("mix{i}"), &[(&adapters[i], 0.7), (&adapters[(i + 1) % n_ad], 0.3)]).map(std::sync::Arc::new))
        .collect::<Result<_>>()?;
    let tok = e.tok()?;
    let words = synth::WORDS;
    let rows: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
        .map(|i| {
            let text: Vec<&str> = (0..seq.saturating_sub(2)).map(|j| words[(i * 7 + j * 3) % words.len()]).collect();
            let (mut ids, mut tt) = tok.encode(&text.join(" "), seq).expect("encodes");
            ids.truncate(seq);
            tt.truncate(seq);
            (ids, tt)
        })
        .collect();
    let bt = loradex::model::pad_batch(&rows, tok.pad_id, &e.device)?;
    // interleave the three variants round by round so machine noise hits them alike;
    // report the best and the median round of each
    let single = Routing::single(adapters[0].clone(), batch);
    let mixed = Routing { adapters: adapters.clone(), rows: (0..batch).map(|i| Some(i % n_ad)).collect() };
    // the fourth variant: the base through candle's forward instead of the hand-written CPU one
    let dora_mixed = Routing { adapters: doras.clone(), rows: (0..batch).map(|i| Some(i % n_ad)).collect() };
    let mix_rows = Routing { adapters: mixes.clone(), rows: (0..batch).map(|i| Some(i % n_ad)).collect() };
    let variants = [(Routing::base(batch), true), (single, true), (mixed, true), (Routing::base(batch), false), (dora_mixed, true), (mix_rows, true)];
    let Net::Encoder(m) = &e.net else { unreachable!("bench model loads a BERT base") };
    let mut secs = vec![vec![]; variants.len()];
    for round in 0..=reps {
        for (i, (r, kernels)) in variants.iter().enumerate() {
            let mut ctx = loradex::model::lora::Ctx::infer(r);
            ctx.cpu_kernels = *kernels;
            let t = Instant::now();
            loradex::model::encoder::classify(m, &bt.ids, &bt.type_ids, &bt.mask, &ctx)?;
            if round > 0 {
                secs[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[0], v[v.len() / 2])
    };
    let (base_t, base_m) = stat(&mut secs[0]);
    let (single_t, single_m) = stat(&mut secs[1]);
    let (mixed_t, mixed_m) = stat(&mut secs[2]);
    let (candle_t, candle_m) = stat(&mut secs[3]);
    let (dora_t, dora_m) = stat(&mut secs[4]);
    let (mix_t, mix_m) = stat(&mut secs[5]);
    let rps = |t: f64| batch as f64 / t;
    println!("  ({reps} interleaved rounds; best round, median in brackets)");
    println!("  base, candle's forward     {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s", candle_t * 1e3, candle_m * 1e3, rps(candle_t));
    println!(
        "  base alone                 {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s  ({:.2}x candle's forward)",
        base_t * 1e3,
        base_m * 1e3,
        rps(base_t),
        candle_t / base_t
    );
    println!(
        "  one adapter                {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s  ({:.2}x base)",
        single_t * 1e3,
        single_m * 1e3,
        rps(single_t),
        base_t / single_t
    );
    println!(
        "  {n_ad} adapters mixed          {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s  ({:.2}x one adapter, median {:.2}x; goal >= 0.9x, PEFT on GPU: 0.1x)",
        mixed_t * 1e3,
        mixed_m * 1e3,
        rps(mixed_t),
        single_t / mixed_t,
        single_m / mixed_m
    );
    println!(
        "  {n_ad} DoRA adapters mixed     {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s  ({:.2}x the {n_ad} LoRA adapters, median {:.2}x: a DoRA row's cost)",
        dora_t * 1e3,
        dora_m * 1e3,
        rps(dora_t),
        mixed_t / dora_t,
        mixed_m / dora_m
    );
    println!(
        "  {n_ad} two-adapter mixes       {:>8.1} ms/batch [{:.1}] {:>8.1} rows/s  ({:.2}x the {n_ad} LoRA adapters, median {:.2}x: a per-request mix row's cost)",
        mix_t * 1e3,
        mix_m * 1e3,
        rps(mix_t),
        mixed_t / mix_t,
        mixed_m / mix_m
    );
    // activation of a resident adapter: cache lookup + routing for a request
    let mut cache: std::collections::HashMap<String, std::sync::Arc<loradex::model::lora::LoadedAdapter>> =
        adapters.iter().map(|a| (a.id.clone(), a.clone())).collect();
    cache.insert("x".into(), adapters[0].clone());
    let n_act = 100_000;
    let t = Instant::now();
    let mut sink = 0usize;
    for i in 0..n_act {
        let a = cache.get(&format!("ad{}", i % n_ad)).expect("resident").clone();
        sink += Routing::single(a, 1).rows.len();
    }
    let act = t.elapsed().as_secs_f64() / n_act as f64;
    println!("  activate resident adapter  {:>8.4} ms  (goal < 0.1 ms) [{sink}]", act * 1e3);
    // load from the store: resolve + read blobs + build tensors
    let home = tmp.join("store");
    let mut s = Store::open(&home)?;
    let dir = tmp.join("load-me");
    random_adapter(&e, &dir, 8, &["query", "value"], 999, 0)?;
    let size = std::fs::metadata(dir.join("adapter_model.safetensors")).map(|m| m.len()).unwrap_or(0);
    loradex::adapters::import_dir(&mut s, &dir, &Ref::parse("bench/qv:latest")?, &b, None)?;
    let fp = s.base_fingerprint(&b)?;
    let load_t = time(20, || {
        let f = loradex::adapters::fetch("bench/qv:latest", Some(&s), &e.base, Some(&fp))?;
        e.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels)
    })?;
    let parse_only = time(20, || {
        let f = loradex::peft::read_dir(&dir)?;
        Ok(f.weights_bytes.len())
    })?;
    println!(
        "  load from store ({:.2} MB)  {:>8.2} ms  (baseline read of the PEFT dir: {:.2} ms, {:.1}x; goal < 5 ms; PEFT load_adapter: 123 ms)",
        size as f64 / 1e6,
        load_t * 1e3,
        parse_only * 1e3,
        load_t / parse_only
    );
    let f = loradex::adapters::fetch("bench/qv:latest", Some(&s), &e.base, Some(&fp))?;
    let a = e.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels)?;
    let merge_t = time(5, || {
        e.merge(&a, 1.0)?;
        e.merge(&a, -1.0)
    })? / 2.0;
    println!("  merge into base            {:>8.2} ms  (goal: beat PEFT merge, 20 ms on 2 threads)", merge_t * 1e3);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn bench_embed(base: &str) -> Result<()> {
    let e = Engine::load(BaseDir::open(base)?, candle_core::Device::Cpu)?;
    let Net::Encoder(m) = &e.net else { return Err(Error::Model("bench embed needs a BERT base".into())) };
    let s: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "A man is riding a white horse on an enclosed ground.",
        "The new movie is awesome.",
        "The new movie is so great.",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let bt = e.tok()?.batch(&s, 128, &e.device)?;
    let r = Routing::base(s.len());
    let ctx = loradex::model::lora::Ctx::infer(&r);
    let t = Instant::now();
    let h = m.encode(&bt.ids, &bt.type_ids, &bt.mask, &ctx)?;
    let emb = loradex::model::bert::mean_pool(&h, &bt.mask)?;
    let secs = t.elapsed().as_secs_f64();
    let norm = emb.sqr()?.sum_keepdim(1)?.sqrt()?;
    let emb = emb.broadcast_div(&norm)?;
    let sims = emb.matmul(&emb.t()?)?.to_vec2::<f32>()?;
    println!("bench embed: {} ({} sentences in {:.1} ms)", e.base.dir.display(), s.len(), secs * 1e3);
    for (i, j) in [(0, 1), (2, 3), (4, 5), (0, 2), (0, 4), (2, 5)] {
        println!("  cos {:.3}  {:?} ~ {:?}", sims[i][j], s[i], s[j]);
    }
    let related = sims[0][1].min(sims[2][3]).min(sims[4][5]);
    let unrelated = sims[0][2].max(sims[0][4]).max(sims[2][5]);
    println!("  weakest related pair {related:.3} vs strongest unrelated pair {unrelated:.3}: {}", if related > unrelated { "ok" } else { "WRONG" });
    Ok(())
}

fn hidden(e: &Engine) -> usize {
    e.base.hidden_size().unwrap_or(0)
}
fn layers(e: &Engine) -> usize {
    e.base.config.get("num_hidden_layers").and_then(|v| v.as_u64()).unwrap_or(0) as usize
}

fn bench_train(base: &Option<String>, (batch, seq, steps): (usize, usize, usize), autograd: bool, peft: Option<&Path>, peft_script: &Path, cuda: bool) -> Result<()> {
    let tmp = tmpdir("train")?;
    let b = bert_base(base, &tmp, &["neg", "pos"])?;
    let e = Engine::load(b, loradex::model::device(cuda)?)?;
    let spec = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.1,
        use_rslora: false,
        use_dora: false,
        layers_to_transform: None,
        target_modules: vec!["query".into(), "value".into()],
        modules_to_save: vec!["classifier".into()],
        learning_rate: 2e-4,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 1,
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let on = if cuda { "GPU (autograd)".to_string() } else { format!("{threads} threads") };
    println!("bench train: BERT hidden {} layers {}, r=8 q,v + head, batch {batch} x {seq} tokens, {on}", hidden(&e), layers(&e));
    let mut tr = Trainer::new(e, Task::SeqCls, spec, vec!["neg".into(), "pos".into()])?;
    let words = synth::WORDS;
    let texts: Vec<loradex::train::Example> = (0..batch)
        .map(|i| loradex::train::Example {
            text: (0..seq).map(|j| words[(i * 5 + j * 3) % words.len()]).collect::<Vec<_>>().join(" "),
            completion: None,
            label: Some(if i % 2 == 0 { "neg" } else { "pos" }.into()),
        })
        .collect();
    let refs: Vec<&loradex::train::Example> = texts.iter().collect();
    let (bt, targets, _) = tr.encode(&refs, seq)?;
    let fwd = time(steps, || {
        let Net::Encoder(m) = &tr.engine.net else { unreachable!() };
        let r = Routing::base(batch);
        m.pooled(&bt.ids, &bt.type_ids, &bt.mask, &loradex::model::lora::Ctx::infer(&r))
    })?;
    let autograd = if autograd {
        tr.grad_path = GradPath::Autograd;
        let t = time(1, || tr.step(&bt, &targets, None, 2e-4))?;
        tr.grad_path = GradPath::Auto;
        t
    } else {
        f64::NAN
    };
    tr.step(&bt, &targets, None, 2e-4)?; // warm-up
    let bar = super::progress::counter("train steps");
    bar.set_length(steps.max(1) as u64);
    let mut times = vec![];
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        tr.step(&bt, &targets, None, 2e-4)?;
        times.push(t.elapsed().as_secs_f64());
        bar.inc(1);
    }
    bar.finish_and_clear();
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let (f, bw, o) = tr.last_timing;
    println!("  baseline: candle inference forward   {fwd:>8.3} s/batch");
    // --no-autograd leaves the autograd baseline unmeasured (NaN): say so instead of "NaNx"
    let vs_autograd = if autograd.is_nan() {
        println!("  baseline: candle autograd step       not run (--no-autograd)");
        String::new()
    } else {
        println!("  baseline: candle autograd step       {autograd:>8.3} s/step");
        format!("; {:.2}x faster than autograd", autograd / mean)
    };
    println!(
        "  train step (fwd+bwd+AdamW)           {best:>8.3} s/step best of {}, {mean:.3} s mean  {:.1} samples/s  ({:.2}x forward{vs_autograd})",
        times.len(),
        batch as f64 / mean,
        mean / fwd,
    );
    println!("  last step: forward {f:.3} s, backward {bw:.3} s, clip + AdamW {o:.3} s");
    match peft {
        None => println!("  PEFT + PyTorch: pass --peft PYTHON (with torch, transformers, peft) to measure it in this run"),
        Some(py) => {
            let spin = super::progress::spinner("PEFT + PyTorch train steps");
            let out = std::process::Command::new(py)
                .arg(peft_script)
                .env("THREADS", threads.to_string())
                .env("STEPS", times.len().to_string())
                .env("DEVICE", if cuda { "cuda" } else { "cpu" })
                .output()
                .map_err(|e| Error::io(py, e))?;
            spin.finish_and_clear();
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |k: &str| text.split(k).nth(1).and_then(|t| t.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok());
            let (Some(p_best), Some(p_mean)) = (field("best_s "), field("mean_s ")) else {
                return Err(Error::Model(format!("{}: no step times in its output: {text}{}", peft_script.display(), String::from_utf8_lossy(&out.stderr))));
            };
            println!("  PEFT + PyTorch (this run)            {p_best:>8.3} s/step best of {}, {p_mean:.3} s mean", times.len());
            println!("  -> loradex vs PEFT: {:.2}x best to best, {:.2}x mean to mean (goal >= 1)", p_best / best, p_mean / mean);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn bench_serve(base: &Option<String>, clients: usize, n_adapters: usize, per_client: usize) -> Result<()> {
    let tmp = tmpdir("serve")?;
    let b = match base {
        Some(s) => BaseDir::open(s)?,
        None => {
            let d = tmp.join("bert-small");
            synth::bert(&d, &synth::Shape { hidden: 384, layers: 6, heads: 12, intermediate: 1536, max_positions: 512, init_std: 0.02 }, &["neg", "pos"], 3)?;
            BaseDir::open_dir(&d)?
        }
    };
    let home = tmp.join("home");
    let mut s = Store::open(&home)?;
    let e = Engine::load(b.clone(), candle_core::Device::Cpu)?;
    for i in 0..n_adapters {
        let d = tmp.join(format!("ad{i}"));
        random_adapter(&e, &d, 8, &["query", "value"], 500 + i as u64, 2)?;
        loradex::adapters::import_dir(&mut s, &d, &Ref::parse(&format!("bench/a{i}"))?, &b, None)?;
    }
    drop(s);
    drop(e);
    let opts = loradex::serve::Options {
        addr: "127.0.0.1:0".into(),
        cache_bytes: 1 << 30,
        max_batch: 64,
        max_queue: 1024,
        ..loradex::serve::Options::new(b.dir.display().to_string(), home.clone())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = loradex::serve::run_blocking(opts, move |a| {
            let _ = tx.send(a);
        });
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(120)).map_err(|_| Error::Model("server did not start".into()))?;
    println!("bench serve: {clients} clients x {per_client} requests (2 texts each), loopback {addr}");
    let run = |adapters: usize| -> Result<(f64, Vec<f64>)> {
        let t = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                std::thread::spawn(move || -> std::result::Result<Vec<f64>, String> {
                    let mut lat = vec![];
                    for k in 0..per_client {
                        let a = (c + k) % adapters;
                        let body = format!("{{\"adapter\":\"bench/a{a}\",\"texts\":[\"the movie was great\",\"awful plot and boring acting\"]}}");
                        let t0 = Instant::now();
                        let (status, _) = http_post(addr, "/v1/classify", &body).map_err(|e| e.to_string())?;
                        if status != 200 {
                            return Err(format!("status {status}"));
                        }
                        lat.push(t0.elapsed().as_secs_f64());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = vec![];
        for h in handles {
            all.extend(h.join().map_err(|_| Error::Model("client panicked".into()))?.map_err(Error::Model)?);
        }
        let secs = t.elapsed().as_secs_f64();
        all.sort_by(|a, b| a.total_cmp(b));
        Ok((all.len() as f64 / secs, all))
    };
    run(n_adapters)?; // warm-up: loads every adapter
    let (one_rps, one_lat) = run(1)?;
    let (many_rps, many_lat) = run(n_adapters)?;
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] * 1e3;
    println!("  1 adapter    {:>8.1} req/s  p50 {:>7.1} ms  p99 {:>7.1} ms", one_rps, pct(&one_lat, 0.5), pct(&one_lat, 0.99));
    println!(
        "  {n_adapters} adapters  {:>8.1} req/s  p50 {:>7.1} ms  p99 {:>7.1} ms  ({:.2}x one adapter; goal >= 0.9)",
        many_rps,
        pct(&many_lat, 0.5),
        pct(&many_lat, 0.99),
        many_rps / one_rps
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Minimal HTTP/1.1 POST over loopback (the load generator needs nothing more).
pub fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
