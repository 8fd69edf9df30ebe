//! Command-line interface: turns validated arguments into library calls and prints results
//! (human tables, or `--json`). The only place (with `bench`) that writes to stdout/stderr.

mod bench;
mod bench_factors;
mod bench_generate;
mod progress;
mod bench_store;
mod eval;
mod registry;
mod store_print;
use store_print::{ls_print, prune_print, show_print};

use clap::{Parser, Subcommand};
use loradex::adapters;
use loradex::base::BaseDir;
use loradex::combine::{self, SignMethod};
use loradex::error::{Error, Result};
use loradex::model::lora::Routing;
use loradex::model::Engine;
use loradex::store::{self, PrunePolicy, Ref, Store};
use loradex::util::parse_duration;
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "loradex", version, about = "LoRA/PEFT adapter manager: store, train, merge and serve adapters on one shared base model")]
struct Cli {
    /// Store directory (default: $LORADEX_HOME, else $XDG_DATA_HOME/loradex)
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Store a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
    Import {
        dir: PathBuf,
        #[arg(long, value_name = "NAME[:TAG]")]
        name: String,
        /// Base model directory (or hub repo id) the adapter was trained on
        #[arg(long)]
        base: String,
        /// Label names of the classification head, comma-separated
        #[arg(long, value_delimiter = ',')]
        labels: Option<Vec<String>>,
    },
    /// Write a stored adapter as a PEFT-loadable directory
    Export { r#ref: String, out: PathBuf },
    /// Upload a stored adapter to an OCI registry as an artifact; prints the manifest digest
    Push {
        r#ref: String,
        /// REGISTRY/REPO[:TAG]
        target: String,
        /// A repository of the same registry that may hold the blobs (cross-repository mount
        /// instead of an upload); repeatable. The repository a pulled adapter came from is tried too
        #[arg(long, value_name = "REPO")]
        mount_from: Vec<String>,
        #[command(flatten)]
        remote: registry::RemoteArgs,
    },
    /// Download an adapter artifact from an OCI registry, verify every blob, and store it
    Pull {
        /// REGISTRY/REPO[:TAG|@sha256:...]
        source: String,
        /// Store it under NAME[:TAG] (default: REPO:TAG)
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        remote: registry::RemoteArgs,
    },
    /// List stored adapters
    Ls {
        /// Only adapters for this base model directory
        #[arg(long)]
        base: Option<String>,
        /// Only refs whose name (or NAME:TAG, if the glob has a ':') matches this glob
        #[arg(long, value_name = "GLOB")]
        name: Option<String>,
        /// Start after this row (a NAME:TAG, or the digest of a <none> row): the last row of
        /// the previous page, for scripts paging through a large store
        #[arg(long, value_name = "REF")]
        after: Option<String>,
        /// At most N rows
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one adapter's manifest
    Show { r#ref: String },
    /// Point NEWREF at the adapter REF names
    Tag { r#ref: String, new_ref: String },
    /// Remove a ref (an adapter left without refs is removed from the index)
    Rm { r#ref: String },
    /// Remove adapters by age/use policy, then sweep their blobs
    Prune {
        /// Always keep the N newest adapters of each name
        #[arg(long)]
        keep_last: Option<usize>,
        /// Only adapters created longer ago than DUR (e.g. 30d, 12h)
        #[arg(long, value_name = "DUR")]
        older_than: Option<String>,
        /// Only adapters not used for DUR
        #[arg(long, value_name = "DUR")]
        unused_for: Option<String>,
        /// Grace period for unreferenced blobs
        #[arg(long, value_name = "DUR", default_value = "1h")]
        grace: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark-and-sweep blobs no adapter references (older than the grace period)
    Gc {
        #[arg(long, value_name = "DUR", default_value = "1h")]
        grace: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every blob and report corrupt or missing ones (exit 1 if any)
    Verify,
    /// Classify texts with a BERT base, optionally through adapters
    Predict {
        #[arg(long)]
        base: String,
        /// Store ref or PEFT directory; one for all texts, or one per text (`base` = none)
        #[arg(long)]
        adapter: Vec<String>,
        /// Merge the (single) adapter into the weights instead of applying it unmerged
        #[arg(long)]
        merged: bool,
        #[arg(long, required = true, num_args = 1..)]
        text: Vec<String>,
        #[arg(long)]
        cuda: bool,
    },
    /// Generate text with a Llama-family base: a directory or a .gguf file (greedy unless
    /// --temperature > 0)
    Generate {
        #[arg(long)]
        base: String,
        #[arg(long)]
        adapter: Option<String>,
        #[arg(long)]
        prompt: String,
        /// Send --prompt as a user message through the base's chat template
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user's
        #[arg(long, requires = "chat")]
        system: Option<String>,
        #[arg(long, alias = "max-tokens", default_value_t = 32)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Keep the K most likely tokens (0: all)
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long)]
        seed: Option<u64>,
        /// End the text before this string (repeatable)
        #[arg(long)]
        stop: Vec<String>,
        /// Print text as it is generated
        #[arg(long)]
        stream: bool,
        /// GGUF bases: native (keep quantized blocks) or f32 (dequantize at load)
        #[arg(long, default_value = "native")]
        dtype: String,
        /// Beside a quantized base, read LoRA factors in int8 (the default: a scale per block,
        /// a quarter of f32's memory traffic a step), f16 or f32
        #[arg(long)]
        lora_factors: Option<loradex::model::factors8::FactorDtype>,
        #[arg(long)]
        cuda: bool,
    },
    /// Merge an adapter into the base and write a standalone model directory
    Merge {
        r#ref: String,
        #[arg(long)]
        base: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Combine stored adapters into a new stored adapter, as PEFT's add_weighted_adapter does
    Combine {
        /// linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd,
        /// dare_ties_svd, magnitude_prune or magnitude_prune_svd
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_method)]
        method: combine::Method,
        /// An input adapter (store ref or digest) and its weight; repeat for each input
        #[arg(long = "adapter", value_name = "REF=WEIGHT", required = true, value_parser = parse_weighted)]
        adapters: Vec<(String, f64)>,
        /// Fraction of values kept by ties*, dare_* and magnitude_prune*, in (0, 1]
        #[arg(long, value_name = "D")]
        density: Option<f64>,
        /// Sign election of ties* and dare_ties*: total (default) or frequency
        #[arg(long, value_name = "METHOD", value_parser = parse_sign)]
        majority_sign_method: Option<SignMethod>,
        /// Seed of dare_*'s random drop (default 0; loradex's generator, not PyTorch's)
        #[arg(long, value_name = "S")]
        seed: Option<u64>,
        /// Rank of an SVD type's result (default: the largest input rank)
        #[arg(long, value_name = "R")]
        svd_rank: Option<usize>,
        /// Clamp an SVD type's factors at this quantile of their values, in [0, 1]
        #[arg(long, value_name = "Q")]
        svd_clamp: Option<f64>,
        #[arg(long, value_name = "NAME[:TAG]")]
        name: String,
    },
    /// Train a LoRA adapter from a recipe (TOML) and store it
    Train {
        recipe: PathBuf,
        /// Override a recipe field: --set key=value (repeatable)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Override the ref to store under
        #[arg(long)]
        name: Option<String>,
        /// Override the base model
        #[arg(long)]
        base: Option<String>,
        /// Override the number of epochs
        #[arg(long)]
        epochs: Option<usize>,
        /// Override the seed
        #[arg(long)]
        seed: Option<u64>,
        /// No progress bar
        #[arg(long)]
        quiet: bool,
        /// Train on the GPU (a build with the `cuda` feature)
        #[arg(long)]
        cuda: bool,
    },
    /// Score classification adapters side by side on labelled data (accuracy, precision,
    /// recall, F1, confusion)
    Eval(eval::EvalArgs),
    /// Serve classification and completions over HTTP with per-request adapters
    Serve {
        #[arg(long)]
        base: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Bound on resident adapter bytes (LRU): tensors, plus the copies decoders make of them
        #[arg(long, default_value_t = 256 << 20)]
        cache_bytes: usize,
        /// Most rows in one forward
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        /// Most requests waiting before 503
        #[arg(long, default_value_t = 256)]
        max_queue: usize,
        /// Require `Authorization: Bearer TOKEN` (also $LORADEX_TOKEN)
        #[arg(long, env = "LORADEX_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        cuda: bool,
        /// Generation: sequences decoded together in the continuous batch
        #[arg(long, default_value_t = 32)]
        max_running: usize,
        /// Generation: KV cache budget in bytes; a request reserves prompt + max_tokens
        #[arg(long, default_value_t = 1 << 30)]
        kv_cache_bytes: usize,
        /// Generation: requests waiting for a slot before 503
        #[arg(long, default_value_t = 256)]
        max_waiting: usize,
        /// Generation: prompt tokens prefilled per step (bounds other streams' stalls)
        #[arg(long, default_value_t = 512)]
        prefill_tokens: usize,
        /// GGUF bases: native (keep quantized blocks) or f32 (dequantize at load)
        #[arg(long, default_value = "native")]
        dtype: String,
        /// Beside a quantized base, read LoRA factors in int8 (the default: a scale per block,
        /// a quarter of f32's memory traffic a step), f16 or f32
        #[arg(long)]
        lora_factors: Option<loradex::model::factors8::FactorDtype>,
        /// Request log lines on stderr: text, or json (one object per line) for machines
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Pull adapters missing from the store from REGISTRY/PREFIX/NAME:TAG on first use
        #[arg(long, value_name = "REGISTRY/PREFIX")]
        registry: Option<String>,
        #[command(flatten)]
        remote: registry::RemoteArgs,
    },
    /// Benchmarks that print ratios against a baseline measured in the same run
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let home = cli.home.clone().unwrap_or_else(store::default_home);
    match run(cli, home) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn open_store(home: &std::path::Path) -> Result<Store> {
    Store::open(home)
}

/// Loads a base and, when a store is at hand, its fingerprint.
fn load_engine(base: &str, store: &Store, cuda: bool) -> Result<(Engine, loradex::digest::Digest)> {
    let b = BaseDir::open(base)?;
    let fp = store.base_fingerprint(&b)?;
    Ok((Engine::load(b, loradex::model::device(cuda)?)?, fp))
}

/// Fetches an adapter (store ref or PEFT directory) for `e`'s base, marks a stored one as
/// used (for `prune --unused-for`), and builds its tensors.
fn use_adapter(
    spec: &str,
    s: &Store,
    e: &Engine,
    fp: &loradex::digest::Digest,
) -> Result<std::sync::Arc<loradex::model::lora::LoadedAdapter>> {
    let f = adapters::fetch(spec, Some(s), &e.base, Some(fp))?;
    if let Some(d) = f.digest {
        s.touch(&d)?;
    }
    e.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels)
}

fn run(cli: Cli, home: PathBuf) -> Result<i32> {
    let js = cli.json;
    match cli.cmd {
        Cmd::Import { dir, name, base, labels } => {
            let name = Ref::parse(&name)?;
            let base = BaseDir::open(&base)?;
            let mut s = open_store(&home)?;
            let d = adapters::import_dir(&mut s, &dir, &name, &base, labels)?;
            if js {
                print_json(&s.manifest(&d)?);
            } else {
                println!("{d}");
            }
        }
        Cmd::Export { r#ref, out } => {
            let s = open_store(&home)?;
            let d = adapters::export(&s, &r#ref, &out)?;
            if js {
                print_json(&json!({"digest": d, "out": out}));
            } else {
                println!("{d} -> {}", out.display());
            }
        }
        Cmd::Push { r#ref, target, mount_from, remote } => registry::push(&open_store(&home)?, &r#ref, &target, &remote.remote()?, &mount_from, js)?,
        Cmd::Pull { source, name, remote } => registry::pull(&mut open_store(&home)?, &source, name.as_deref(), &remote.remote()?, js)?,
        Cmd::Ls { base, name, after, limit } => {
            let s = open_store(&home)?;
            let fp = match base {
                Some(b) => Some(s.base_fingerprint(&BaseDir::open(&b)?)?),
                None => None,
            };
            ls_print(&s, &store::ListQuery { base: fp, name, after, limit }, js)?;
        }
        Cmd::Show { r#ref } => {
            let s = open_store(&home)?;
            let m = s.manifest(&s.resolve(&r#ref)?)?;
            if js {
                print_json(&m);
            } else {
                show_print(&m);
            }
        }
        Cmd::Tag { r#ref, new_ref } => {
            let new_ref = Ref::parse(&new_ref)?;
            let mut s = open_store(&home)?;
            let d = s.tag(&r#ref, &new_ref)?;
            if js {
                print_json(&json!({"ref": new_ref.to_string(), "digest": d}));
            } else {
                println!("{new_ref} -> {d}");
            }
        }
        Cmd::Rm { r#ref } => {
            let mut s = open_store(&home)?;
            let d = s.rm(&r#ref)?;
            if js {
                print_json(&json!({"removed": r#ref, "digest": d}));
            } else {
                println!("removed {}", r#ref);
            }
        }
        Cmd::Prune { keep_last, older_than, unused_for, grace, dry_run } => {
            let policy = PrunePolicy {
                keep_last,
                older_than: older_than.as_deref().map(parse_duration).transpose()?,
                unused_for: unused_for.as_deref().map(parse_duration).transpose()?,
                grace: parse_duration(&grace)?,
            };
            let mut s = open_store(&home)?;
            prune_print(&mut s, &policy, dry_run, js)?;
        }
        Cmd::Gc { grace, dry_run } => {
            let mut s = open_store(&home)?;
            let rep = s.gc(parse_duration(&grace)?, dry_run)?;
            if js {
                print_json(&rep);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} blob(s) ({} bytes), {} temp file(s); {} referenced, {} within grace",
                    rep.removed.len(),
                    rep.removed_bytes,
                    rep.temp_files_removed,
                    rep.referenced,
                    rep.kept_in_grace
                );
            }
        }
        Cmd::Verify => {
            let s = open_store(&home)?;
            let rep = s.verify()?;
            let integrity = s.integrity_check()?;
            if js {
                print_json(&json!({"report": rep, "index_integrity": integrity, "ok": rep.ok() && integrity == "ok"}));
            } else {
                for c in &rep.corrupt {
                    println!("CORRUPT {c}");
                }
                for m in &rep.missing {
                    println!("MISSING {m}");
                }
                for s in &rep.stray {
                    println!("STRAY   {s}");
                }
                println!("checked {} blob(s), {} bytes; index: {integrity}", rep.checked, rep.bytes);
            }
            if !rep.ok() || integrity != "ok" {
                return Ok(1);
            }
        }
        Cmd::Predict { base, adapter, merged, text, cuda } => predict(&home, &base, &adapter, merged, &text, cuda, js)?,
        Cmd::Generate { base, adapter, prompt, chat, system, max_new_tokens, temperature, top_p, top_k, seed, stop, stream, dtype, lora_factors, cuda } => {
            use loradex::model::{chat::Message, generation::{Event, SamplingParams}, Prompt};
            let params = SamplingParams { max_tokens: max_new_tokens, temperature, top_p, top_k, seed, stop };
            params.validate()?;
            let prompt = if chat {
                let mut m: Vec<Message> = system.into_iter().map(|c| Message { role: "system".into(), content: c }).collect();
                m.push(Message { role: "user".into(), content: prompt });
                Prompt::Chat(m)
            } else {
                Prompt::Text(prompt)
            };
            let s = open_store(&home)?;
            let b = BaseDir::open(&base)?;
            let fp = s.base_fingerprint(&b)?;
            let mut e = Engine::load_with(b, loradex::model::device(cuda)?, dtype.parse()?)?;
            if let Some(f) = lora_factors {
                e.set_lora_factors(f)?;
            }
            let a = adapter.as_deref().map(|spec| use_adapter(spec, &s, &e, &fp)).transpose()?;
            let ids = e.prompt_ids(&prompt)?;
            let live = stream && !js;
            let g = e.generate(ids, params, a, &mut |ev| {
                if let (true, Event::Token { text, .. } | Event::Done { text, .. }) = (live, ev) {
                    use std::io::Write;
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
            })?;
            if js {
                let all: Vec<u32> = g.prompt_ids.iter().chain(&g.new_ids).copied().collect();
                print_json(&json!({"prompt_ids": g.prompt_ids, "ids": all, "new_ids": g.new_ids, "text": g.text, "finish_reason": g.finish_reason, "adapter": adapter}));
            } else if live {
                println!();
            } else {
                println!("{}", g.text);
            }
        }
        Cmd::Merge { r#ref, base, out } => {
            let s = open_store(&home)?;
            let (mut e, fp) = load_engine(&base, &s, false)?;
            let f = adapters::fetch(&r#ref, Some(&s), &e.base, Some(&fp))?;
            let a = e.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels)?;
            e.merge(&a, 1.0)?;
            e.save_dir(&out)?;
            if js {
                print_json(&json!({"adapter": r#ref, "digest": f.digest, "out": out}));
            } else {
                println!("merged {} into {}", r#ref, out.display());
            }
        }
        Cmd::Combine { method, adapters, density, majority_sign_method, seed, svd_rank, svd_clamp, name } => {
            // every argument checked before the store is opened
            let spec = combine::Spec::new(method, combine::Params { density, majority_sign_method, seed, svd_rank, svd_clamp })?;
            let name = Ref::parse(&name)?;
            let mut s = open_store(&home)?;
            let (d, c) = adapters::combine_stored(&mut s, &adapters, &spec, &name)?;
            if c.method != spec.method() {
                eprintln!("note: a single adapter is combined {} (as PEFT does)", c.method);
            }
            if js {
                print_json(&s.manifest(&d)?);
            } else {
                println!("{d}");
            }
        }
        Cmd::Train { recipe, sets, name, base, epochs, seed, quiet, cuda } => {
            let mut r = loradex::train::Recipe::load(&recipe, &sets)?;
            if let Some(n) = name {
                r.name = n;
            }
            if let Some(b) = base {
                r.base = b;
            }
            if let Some(e) = epochs {
                r.train.epochs = e;
            }
            if let Some(s) = seed {
                r.train.seed = s;
            }
            loradex::util::flush_denormals();
            let mut s = open_store(&home)?;
            let bar = (!quiet && !js).then(progress::TrainBar::new);
            let report = loradex::train::train_and_store(&r, &mut s, &loradex::model::device(cuda)?, &mut |p| {
                if let Some(b) = &bar {
                    b.update(p)
                }
            });
            if let Some(b) = &bar {
                b.finish();
            }
            let report = report?;
            if js {
                print_json(&report);
            } else {
                println!("{} {}", report.r#ref, report.digest);
                if let Some(m) = &report.best_metrics {
                    println!("{}", serde_json::to_string(m).unwrap_or_default());
                }
            }
        }
        Cmd::Serve { base, addr, cache_bytes, max_batch, max_queue, token, cuda, max_running, kv_cache_bytes, max_waiting, prefill_tokens, dtype, lora_factors, log_format, registry, remote } => {
            let registry = match registry {
                Some(prefix) => {
                    loradex::registry::parse_reference(&format!("{}/probe:probe", prefix.trim_end_matches('/')))?;
                    Some((prefix.trim_end_matches('/').to_string(), remote.remote()?))
                }
                None => None,
            };
            let dtype = dtype.parse()?;
            loradex::serve::http::init_logging(log_format.parse()?);
            let opts = loradex::serve::Options {
                addr,
                cache_bytes,
                max_batch,
                max_queue,
                token,
                cuda,
                max_running,
                kv_cache_bytes,
                max_waiting,
                prefill_tokens,
                dtype,
                lora_factors,
                registry,
                ..loradex::serve::Options::new(base, home)
            };
            loradex::serve::run_blocking(opts, |addr| eprintln!("loradex serving on http://{addr}"))?;
        }
        Cmd::Eval(args) => eval::run(args.request()?, || open_store(&home), js)?,
        Cmd::Bench { which } => return bench::run(which, &home),
    }
    Ok(0)
}

fn parse_method(s: &str) -> std::result::Result<combine::Method, String> {
    s.parse().map_err(|e: combine::CombineError| e.to_string())
}

fn parse_sign(s: &str) -> std::result::Result<SignMethod, String> {
    s.parse().map_err(|e: combine::CombineError| e.to_string())
}

/// `REF=WEIGHT`: refs never contain `=`, so the last one splits.
fn parse_weighted(s: &str) -> std::result::Result<(String, f64), String> {
    let (r, w) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: expected REF=WEIGHT"))?;
    if r.is_empty() {
        return Err(format!("{s:?}: no adapter before '='"));
    }
    let w: f64 = w.trim().parse().map_err(|_| format!("{s:?}: weight {w:?} is not a number"))?;
    if !w.is_finite() {
        return Err(format!("{s:?}: weight must be finite"));
    }
    Ok((r.to_string(), w))
}

/// Streams the listing to stdout (table, or a JSON array) as the store yields it.
fn predict(home: &std::path::Path, base: &str, specs: &[String], merged: bool, texts: &[String], cuda: bool, js: bool) -> Result<()> {
    let s = open_store(home)?;
    let (mut e, fp) = load_engine(base, &s, cuda)?;
    let is_none = |a: &str| a == "base" || a == "none";
    let mut loaded = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for spec in specs {
        if is_none(spec) || names.contains(spec) {
            continue;
        }
        loaded.push(use_adapter(spec, &s, &e, &fp)?);
        names.push(spec.clone());
    }
    let slot = |spec: &str| if is_none(spec) { None } else { names.iter().position(|n| n == spec) };
    let rows: Vec<Option<usize>> = match specs.len() {
        0 => vec![None; texts.len()],
        1 => vec![slot(&specs[0]); texts.len()],
        n if n == texts.len() => specs.iter().map(|s| slot(s)).collect(),
        n => {
            return Err(Error::InvalidArgument(format!(
                "{n} adapters for {} texts: give one adapter for all texts or one per text",
                texts.len()
            )))
        }
    };
    let routing = if merged {
        if loaded.len() != 1 {
            return Err(Error::InvalidArgument("--merged needs exactly one adapter".into()));
        }
        let a = loaded[0].clone();
        e.merge(&a, 1.0)?;
        Routing::base(texts.len())
    } else {
        Routing { adapters: loaded, rows: rows.clone() }
    };
    let preds = e.classify(texts, &routing)?;
    if js {
        let results: Vec<_> = preds
            .iter()
            .zip(texts)
            .zip(&rows)
            .map(|((p, t), r)| {
                json!({"text": t, "adapter": r.map(|i| names[i].clone()), "label": p.label, "index": p.index,
                       "probabilities": p.probabilities, "logits": p.logits})
            })
            .collect();
        print_json(&json!({"base": fp, "merged": merged, "results": results}));
    } else {
        for (p, t) in preds.iter().zip(texts) {
            let prob = p.probabilities.get(p.index).copied().unwrap_or(0.0);
            println!("{}\t{:.3}\t{}", p.label, prob, t);
        }
    }
    Ok(())
}
