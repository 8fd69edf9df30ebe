//! `loradex bench generate`: decode throughput of the CPU decoder and the continuous-batching
//! scheduler on one base (SmolLM2-135M Q4_1 by default), each figure beside a baseline
//! measured in the same run: one adapter against the base, N streams against one stream,
//! 32 adapters against one adapter; time to first token under load. With `--llamacpp
//! PYTHON`, llama.cpp (llama-cpp-python) on the same file and thread count, same run.

use loradex::base::BaseDir;
use loradex::error::{Error, Result};
use loradex::model::generation::{Event, SamplingParams};
use loradex::model::gguf::LoadDtype;
use loradex::model::lora::LoadedAdapter;
use loradex::model::{Engine, Prompt, Tok};
use loradex::serve::llm::{GenEvent, GenRequest, Limits, Llm};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub struct Args {
    pub base: String,
    pub dtype: LoadDtype,
    pub lora_factors: Option<loradex::model::factors8::FactorDtype>,
    pub tokens: usize,
    pub streams: Vec<usize>,
    pub reps: usize,
    pub llamacpp: Option<std::path::PathBuf>,
    pub llamacpp_script: std::path::PathBuf,
    pub parts: Vec<Part>,
}

/// One section of the benchmark, so that a comparison between builds can run only the part it
/// is about (the whole run takes minutes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// Single-stream decode, base and one adapter (and llama.cpp's, with --llamacpp).
    Single,
    /// The quantized matmul alone and whole decodes, per ISA.
    Kernels,
    /// N streams against one stream, in alternating rounds.
    Streams,
    /// N streams on N adapters against N streams on one adapter.
    Adapters,
    /// How far f16 and int8 factors move the outputs from f32 factors (`bench_factors`).
    Factors,
}

const PROMPT: &str = "Write a long story about a dragon who learns to bake bread in a small village.";

/// One sequence's speed, best of its runs.
struct Single {
    /// Decode tokens/s: tokens after the first over the time since the first.
    decode: f64,
    /// Every new token over the whole call, the prompt's prefill included (as the N-stream
    /// end-to-end figures count theirs).
    end_to_end: f64,
    ids: Vec<u32>,
}

fn single(e: &Engine, prompt: &[u32], tokens: usize, adapter: Option<Arc<LoadedAdapter>>, reps: usize) -> Result<Single> {
    let what = if adapter.is_some() { "single stream, one adapter" } else { "single stream, base" };
    let bar = super::progress::tokens(what, (tokens * reps.max(1)) as u64);
    let mut best = Single { decode: 0.0, end_to_end: 0.0, ids: vec![] };
    for _ in 0..reps.max(1) {
        let mut first = None;
        let mut n = 0usize;
        let params = SamplingParams { max_tokens: tokens, ..Default::default() };
        let t0 = Instant::now();
        let g = e.generate(prompt.to_vec(), params, adapter.clone(), &mut |ev| {
            if matches!(ev, Event::Token { .. } | Event::Done { id: Some(_), .. }) {
                n += 1;
                bar.inc(1);
                first.get_or_insert_with(Instant::now);
            }
        })?;
        let (dt, whole) = (first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0), t0.elapsed().as_secs_f64());
        if n > 1 && dt > 0.0 {
            best.decode = best.decode.max((n - 1) as f64 / dt);
        }
        if n > 0 && whole > 0.0 {
            best.end_to_end = best.end_to_end.max(n as f64 / whole);
        }
        best.ids = g.new_ids;
    }
    bar.finish_and_clear();
    Ok(best)
}

struct Load {
    /// All tokens over the whole run, prompts' prefill included.
    tok_per_s: f64,
    /// Tokens over the window where every stream decodes (like the single-stream figure, which
    /// times tokens after the first); `None` when the streams never all decode at once.
    decode_tok_per_s: Option<f64>,
    tokens: usize,
    ttft: Vec<f64>,
    /// Sequences per decoder step, on average: how full the batch ran.
    rows_per_step: f64,
}

/// `adapters.len()` concurrent streams through the scheduler (row i on `adapters[i]`).
fn streams(e: &Engine, tok: &Arc<Tok>, prompt: &[u32], tokens: usize, adapters: &[Option<Arc<LoadedAdapter>>]) -> Result<Load> {
    let dec = e.decoder.clone().ok_or_else(|| Error::Model("bench generate needs the CPU decoder".into()))?;
    let n = adapters.len();
    let limits = Limits { max_running: n, max_waiting: n, kv_bytes: usize::MAX / 2, prefill_tokens: 512 };
    let metrics: Arc<loradex::serve::metrics::Metrics> = Default::default();
    let llm = Llm::start(dec, tok.clone(), limits, metrics.clone())?;
    let distinct = adapters.iter().filter_map(|a| a.as_ref().map(|a| Arc::as_ptr(a) as usize)).collect::<std::collections::HashSet<_>>().len();
    let bar = super::progress::tokens(&format!("{n} streams, {distinct} distinct adapters"), (n * tokens) as u64);
    let t0 = Instant::now();
    let mut rxs = vec![];
    for a in adapters {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let params = SamplingParams { max_tokens: tokens, ..Default::default() };
        llm.submit(GenRequest { prompt: prompt.to_vec(), params, adapter: a.clone(), events: tx })
            .map_err(|r| Error::Model(format!("submit refused: {r:?}")))?;
        rxs.push(rx);
    }
    // one reader per stream, so each token is timed when it arrives
    let readers: Vec<_> = rxs
        .into_iter()
        .map(|mut rx| {
            let bar = bar.clone();
            std::thread::spawn(move || -> Result<(usize, Vec<f64>)> {
                let mut times = vec![];
                loop {
                    match rx.blocking_recv() {
                        Some(GenEvent::Token { .. }) => {
                            times.push(t0.elapsed().as_secs_f64());
                            bar.inc(1);
                        }
                        Some(GenEvent::Done { completion_tokens, .. }) => {
                            if times.is_empty() {
                                times.push(t0.elapsed().as_secs_f64());
                            }
                            return Ok((completion_tokens, times));
                        }
                        Some(GenEvent::Error(m)) => return Err(Error::Model(m)),
                        None => return Err(Error::Model("the scheduler stopped".into())),
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    let mut times = vec![];
    for r in readers {
        let (n, t) = r.join().map_err(|_| Error::Model("a reader thread panicked".into()))??;
        total += n;
        times.push(t);
    }
    let wall = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let ttft: Vec<f64> = times.iter().map(|t| t[0]).collect();
    // steady decode: from the moment every stream has its first token (all prompts prefilled)
    // to the moment the first stream ends, every stream decodes in each step
    let (from, to) = (ttft.iter().copied().fold(0f64, f64::max), times.iter().map(|t| *t.last().unwrap_or(&0.0)).fold(f64::MAX, f64::min));
    let in_window: usize = times.iter().map(|t| t.iter().filter(|x| **x > from && **x <= to).count()).sum();
    let decode_tok_per_s = (to > from && in_window > 0).then(|| in_window as f64 / (to - from));
    use std::sync::atomic::Ordering::Relaxed;
    let rows_per_step = metrics.llm_step_rows.load(Relaxed) as f64 / metrics.llm_steps.load(Relaxed).max(1) as f64;
    Ok(Load { tok_per_s: total as f64 / wall, decode_tok_per_s, tokens: total, ttft, rows_per_step })
}

/// The median: the mean of the middle two for an even count (`pct` would take the upper).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

/// The quantized matrix kernel alone, on each ISA this CPU runs: a SmolLM2-sized `up_proj`
/// (1536 × 576, Q4_1 blocks with random contents) times 1 to 32 token rows, ISAs interleaved
/// in rounds and the best round kept (the shared machine drifts), in GMAC/s and against AVX2.
fn kernel_table(reps: usize) -> Result<()> {
    use loradex::model::quant::{matmul, Act, BlockFmt, QWeight};
    use loradex::model::qx8::{self, Isa};
    let best = qx8::isa();
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    if isas.len() < 2 {
        return Ok(());
    }
    let (rows, cols) = (1536usize, 576usize);
    let mut rng = loradex::util::Rng::new(5);
    let mut raw = vec![];
    for _ in 0..rows * cols / 32 {
        raw.extend_from_slice(&half::f16::from_f32(rng.next_f32() * 0.02).to_le_bytes());
        raw.extend_from_slice(&half::f16::from_f32(-rng.next_f32() * 0.1).to_le_bytes());
        raw.extend((0..16).map(|_| rng.next_u64() as u8));
    }
    let w = QWeight::blocks(BlockFmt::Q4_1, rows, cols, raw)?;
    let tokens = [1usize, 4, 8, 16, 32];
    let mut gmacs = vec![vec![0f64; tokens.len()]; isas.len()];
    for _ in 0..reps.max(3) {
        for (ii, &isa) in isas.iter().enumerate() {
            qx8::set_isa(isa).map_err(Error::Model)?;
            for (ti, &n) in tokens.iter().enumerate() {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
                let mut y = vec![0f32; n * rows];
                let none: Vec<Option<loradex::model::quant::LowRank>> = (0..n).map(|_| None).collect();
                let calls = (2048 / n).max(16);
                let t = Instant::now();
                for _ in 0..calls {
                    // a fresh Act per call: the activation rows are quantized each time, as in a step
                    matmul(&w, &Act::new(&x, n, cols), &none, &mut y)?;
                }
                let g = (calls * n * rows * cols) as f64 / t.elapsed().as_secs_f64() / 1e9;
                gmacs[ii][ti] = gmacs[ii][ti].max(g);
            }
        }
    }
    qx8::set_isa(best).map_err(Error::Model)?;
    println!("quantized matmul alone ({rows}x{cols} Q4_1, activations quantized per call), GMAC/s, best of {} interleaved rounds:", reps.max(3));
    println!("  {:12} {}", "tokens", tokens.iter().map(|n| format!("{n:>14}")).collect::<String>());
    for (ii, isa) in isas.iter().enumerate() {
        let cells: String = tokens.iter().enumerate().map(|(ti, _)| format!("{:>6.1} ({:.2}x)", gmacs[ii][ti], gmacs[ii][ti] / gmacs[0][ti])).collect();
        println!("  {:12} {cells}", isa.name());
    }
    Ok(())
}

/// The integer kernels on each ISA this CPU runs, same run: single stream and 16 streams,
/// against the AVX2 build. The outputs are bit-identical; only the time differs.
fn kernel_isas(e: &Engine, tok: &Arc<Tok>, prompt: &[u32], tokens: usize, reps: usize) -> Result<()> {
    use loradex::model::qx8::{self, Isa};
    let best = qx8::isa();
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    if isas.len() < 2 {
        println!("integer kernels: {} (the only build this CPU runs)", best.name());
        return Ok(());
    }
    println!("integer kernels by ISA (bit-identical outputs), same run:");
    let mut base = None;
    for isa in isas {
        qx8::set_isa(isa).map_err(Error::Model)?;
        let Single { decode: one, ids, .. } = single(e, prompt, tokens, None, reps)?;
        let sixteen = streams(e, tok, prompt, tokens, &vec![None; 16])?.tok_per_s;
        let (b1, b16, bids) = base.get_or_insert((one, sixteen, ids.clone())).clone();
        println!(
            "  {:12} single {one:6.1} tok/s ({:.2}x avx2), 16 streams {sixteen:6.1} tok/s ({:.2}x avx2){}",
            isa.name(),
            one / b1,
            sixteen / b16,
            if ids == bids { "" } else { "  IDS DIFFER" }
        );
    }
    qx8::set_isa(best).map_err(Error::Model)?;
    println!("  in use: {}", best.name());
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if a.llamacpp.is_some() && !a.parts.contains(&Part::Single) {
        return Err(Error::InvalidArgument("--llamacpp is compared with the single stream: add `single` to --parts".into()));
    }
    if !Path::new(&a.base).exists() {
        return Err(Error::InvalidArgument(format!("{}: not found (scripts/fetch-models.sh fetches SmolLM2)", a.base)));
    }
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let mut e = Engine::load_with(BaseDir::open(&a.base)?, candle_core::Device::Cpu, a.dtype)?;
    if let Some(f) = a.lora_factors {
        e.set_lora_factors(f)?;
    }
    let dec = e.decoder.clone().ok_or_else(|| Error::Model("bench generate needs a Llama-family base on the CPU".into()))?;
    println!(
        "base {} ({} weights, {:.1} MB), loaded in {:.2} s; {threads} threads",
        a.base,
        dec.weight_format(),
        dec.weight_bytes() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let tok = Arc::new(Tok::new(e.tok()?.inner.clone(), Some(e.tok()?.pad_id))?);
    // an instruction model answers at length through its chat template
    let prompt = match e.chat {
        Some(_) => e.prompt_ids(&Prompt::Chat(vec![loradex::model::chat::Message { role: "user".into(), content: PROMPT.into() }]))?,
        None => e.prompt_ids(&Prompt::Text(PROMPT.into()))?,
    };
    println!("prompt: {} tokens", prompt.len());
    let one = Arc::new(loradex::synth::decoder_adapter(&dec, 8, 1)?);
    println!(
        "adapters: rank 8 on all 7 projections ({:.1} MB each in f32; read in {} beside a quantized base, --lora-factors)",
        one.bytes as f64 / 1e6,
        dec.lora_factors()
    );

    let on = |p: Part| a.parts.contains(&p);
    // the base's single-stream speed, for the llama.cpp comparison
    let mut base_tps = None;
    if on(Part::Single) {
        // base and adapter in alternating rounds, a ratio per round (the host's drift hits both)
        let (mut b_best, mut a_best, mut ratios, mut ids) = (0f64, 0f64, vec![], vec![]);
        for _ in 0..a.reps.max(1) {
            let Single { decode: b, ids: i, .. } = single(&e, &prompt, a.tokens, None, 1)?;
            let ad = single(&e, &prompt, a.tokens, Some(one.clone()), 1)?.decode;
            (b_best, a_best, ids) = (b_best.max(b), a_best.max(ad), i);
            ratios.push(ad / b);
        }
        println!("single stream, {} new tokens, greedy, best of {}:", a.tokens, a.reps.max(1));
        println!("  base:          {b_best:7.1} tok/s");
        println!(
            "  one adapter:   {a_best:7.1} tok/s; median of {} alternating rounds {:.2}x the base (goal >= 0.90: the adapter costs <= 10%)",
            ratios.len(),
            median(&ratios)
        );
        println!("  first 32 greedy ids: {:?}", &ids[..ids.len().min(32)]);
        base_tps = Some(b_best);
    }
    if on(Part::Kernels) {
        kernel_table(a.reps)?;
        kernel_isas(&e, &tok, &prompt, a.tokens, a.reps)?;
    }
    for &n in a.streams.iter().filter(|_| on(Part::Streams)) {
        // N streams and one stream in alternating rounds, a ratio per round: the shared host's
        // speed moved up to 3x between runs minutes apart, and a single stream timed once at
        // the start set every later ratio against whatever the host did then
        let (mut end, mut steady, mut like) = (vec![], vec![], vec![]);
        let mut best: Option<Load> = None;
        for round in 0..a.reps.max(1) {
            let one = single(&e, &prompt, a.tokens, None, 1)?;
            let one_tps = one.decode;
            let l = streams(&e, &tok, &prompt, a.tokens, &vec![None; n])?;
            end.push(l.tok_per_s / one_tps);
            like.push(l.tok_per_s / one.end_to_end);
            let s = l.decode_tok_per_s.map(|d| d / one_tps);
            steady.extend(s);
            println!(
                "  round {}: one stream {one_tps:7.1} tok/s ({:.1} end to end); {n} streams {:7.1} tok/s end to end = {:.2}x ({:.2}x end to end on both sides){}",
                round + 1,
                one.end_to_end,
                l.tok_per_s,
                l.tok_per_s / one_tps,
                l.tok_per_s / one.end_to_end,
                s.map(|r| format!(", steady decode {r:.2}x")).unwrap_or_default()
            );
            if best.as_ref().is_none_or(|b| l.decode_tok_per_s.unwrap_or(l.tok_per_s) > b.decode_tok_per_s.unwrap_or(b.tok_per_s)) {
                best = Some(l);
            }
        }
        let l = best.expect("at least one round");
        println!(
            "{n:2} streams, base: best {:7.1} tok/s aggregate end to end, prefill included ({} tokens, {:.1} rows a step); median of {} rounds against the single stream of the same round: {:.2}x",
            l.tok_per_s,
            l.tokens,
            l.rows_per_step,
            end.len(),
            median(&end),
        );
        println!("    end to end on both sides (the single stream's prefill counted too): median {:.2}x", median(&like));
        if let Some(d) = l.decode_tok_per_s {
            println!(
                "    steady decode (all {n} decoding, timed as the single stream is): best {d:7.1} tok/s; median {:.2}x one stream{}",
                median(&steady),
                if n == 16 { " (goal >= 4x)" } else { "" }
            );
        }
    }
    if on(Part::Adapters) {
        adapters_vs_one(&e, &tok, &prompt, &a, &one)?;
    }
    if on(Part::Factors) {
        super::bench_factors::run(&a.base, a.dtype, &prompt, 48)?;
    }
    if let (Some(py), Some(base_tps)) = (&a.llamacpp, base_tps) {
        println!("llama.cpp (llama-cpp-python) on the same file, {threads} threads, same run:");
        let spin = super::progress::spinner("llama.cpp single stream and 16 sequences");
        let out = std::process::Command::new(py)
            .arg(&a.llamacpp_script)
            .args(["--model", &a.base, "--threads", &threads.to_string(), "--tokens", &a.tokens.to_string()])
            .output()
            .map_err(|e| Error::io(py.display().to_string(), e))?;
        spin.finish_and_clear();
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            // a crash (a signal) leaves no message of its own
            println!("  llama.cpp run failed ({}): no llama.cpp figures in this run", out.status);
        }
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("llama.cpp single-stream:").and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok()) {
                println!("  loradex single stream / llama.cpp single stream: {:.2}x (goal >= 1.0)", base_tps / v);
            }
        }
    }
    Ok(())
}

/// `a` and `b` (one row per adapter entry) prefilled with `prompt`, then `tokens` greedy
/// decode steps of each in turn, straight on the decoder: the seconds of each side's steps.
/// Rounds of whole runs drift with a shared host's speed over seconds; two steps a few
/// milliseconds apart see the same host.
fn steps_in_turn(dec: &loradex::model::decoder::Decoder, prompt: &[u32], tokens: usize, a: &[Option<Arc<LoadedAdapter>>], b: &[Option<Arc<LoadedAdapter>>]) -> Result<(Vec<f64>, Vec<f64>)> {
    use loradex::model::decoder::Row;
    let room = prompt.len() + tokens + 1;
    let side = |ads: &[Option<Arc<LoadedAdapter>>]| -> Result<(Vec<loradex::model::kv_cache::SeqCache>, Vec<u32>)> {
        let mut caches: Vec<_> = ads.iter().map(|_| dec.cache(room, None)).collect();
        let mut rows: Vec<Row> = caches.iter_mut().zip(ads).map(|(c, ad)| Row { tokens: prompt, cache: c, adapter: ad.as_deref() }).collect();
        let next = dec.step(&mut rows)?.iter().map(|l| loradex::model::llama::argmax(l)).collect();
        Ok((caches, next))
    };
    let (mut ca, mut na) = side(a)?;
    let (mut cb, mut nb) = side(b)?;
    let timed = |caches: &mut [loradex::model::kv_cache::SeqCache], next: &mut Vec<u32>, ads: &[Option<Arc<LoadedAdapter>>]| -> Result<f64> {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut rows: Vec<Row> = caches.iter_mut().zip(ads).zip(&toks).map(|((c, ad), t)| Row { tokens: t, cache: c, adapter: ad.as_deref() }).collect();
        let t = Instant::now();
        let logits = dec.step(&mut rows)?;
        let dt = t.elapsed().as_secs_f64();
        *next = logits.iter().map(|l| loradex::model::llama::argmax(l)).collect();
        Ok(dt)
    };
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..tokens {
        ta.push(timed(&mut ca, &mut na, a)?);
        tb.push(timed(&mut cb, &mut nb, b)?);
    }
    Ok((ta, tb))
}

/// N streams on N adapters against N streams on one adapter (N the most streams asked for), in
/// alternating rounds; and time to first token under that load.
fn adapters_vs_one(e: &Engine, tok: &Arc<Tok>, prompt: &[u32], a: &Args, one: &Arc<LoadedAdapter>) -> Result<()> {
    let dec = e.decoder.clone().ok_or_else(|| Error::Model("bench generate needs the CPU decoder".into()))?;
    let n = a.streams.iter().copied().max().unwrap_or(32);
    let same: Vec<_> = (0..n).map(|_| Some(one.clone())).collect();
    let many: Vec<_> = (0..n).map(|i| loradex::synth::decoder_adapter(&dec, 8, 100 + i as u64).map(|x| Some(Arc::new(x)))).collect::<Result<_>>()?;
    // the first step of each adapter makes its half-precision copies (once per adapter, kept
    // with it): timed apart here, so that the rounds compare resident adapters (the one
    // adapter's are made first)
    streams(e, tok, prompt, 1, &same[..1])?;
    let t = Instant::now();
    streams(e, tok, prompt, 1, &many)?;
    println!(
        "first use of {n} adapters (each one's {} factor copies made, then kept): {:.2} s for {n} one-token requests at once",
        dec.lora_factors(),
        t.elapsed().as_secs_f64()
    );
    // one adapter and n adapters in alternating rounds, a ratio per round: the shared
    // machine's drift over a run (often 20-30%) then hits both sides of each ratio alike
    let (mut end, mut steady) = (vec![], vec![]);
    let mut ln = None;
    for round in 0..a.reps.max(1) {
        let l1 = streams(e, tok, prompt, a.tokens, &same)?;
        let lm = streams(e, tok, prompt, a.tokens, &many)?;
        end.push(lm.tok_per_s / l1.tok_per_s);
        let s = l1.decode_tok_per_s.zip(lm.decode_tok_per_s).map(|(d1, dn)| dn / d1);
        steady.extend(s);
        println!(
            "  round {}: {n} streams on one adapter {:7.1} tok/s, on {n} adapters {:7.1} tok/s aggregate = {:.2}x{}",
            round + 1,
            l1.tok_per_s,
            lm.tok_per_s,
            lm.tok_per_s / l1.tok_per_s,
            s.map(|r| format!("; steady decode {r:.2}x")).unwrap_or_default()
        );
        ln = Some(lm);
    }
    let ln = ln.expect("at least one round");
    println!("{n} streams on {n} adapters vs one adapter, median of {} rounds: {:.2}x end to end (goal >= 0.90)", end.len(), median(&end));
    if !steady.is_empty() {
        println!("    steady decode: {:.2}x", median(&steady));
    }
    let (t1, tm) = steps_in_turn(&dec, prompt, a.tokens, &same, &many)?;
    let r: Vec<f64> = t1.iter().zip(&tm).map(|(a, b)| a / b).collect();
    println!(
        "    decode steps in turn (the decoder alone, one {n}-row step on each side after the other, {} pairs): median {:.2}x, middle half {:.2}-{:.2}x; median step {:.1} ms on one adapter, {:.1} ms on {n}",
        r.len(),
        pct(&r, 0.5),
        pct(&r, 0.25),
        pct(&r, 0.75),
        pct(&t1, 0.5) * 1e3,
        pct(&tm, 0.5) * 1e3
    );
    println!(
        "time to first token under that load ({n} adapters, {n} requests at once): p50 {:.0} ms, p99 {:.0} ms",
        pct(&ln.ttft, 0.5) * 1e3,
        pct(&ln.ttft, 0.99) * 1e3
    );
    Ok(())
}
