//! Training: gradients reach every LoRA tensor, loss falls, accuracy rises above chance,
//! same seed → same digest, and the result is a PEFT-format adapter.

use super::common::*;
use candle_core::Device;
use loradex::base::BaseDir;
use loradex::model::Engine;
use loradex::train::{Example, LoraSpec, Task, Trainer};
use std::path::Path;

fn spec(targets: &[&str], save: &[&str]) -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        use_rslora: false,
        use_dora: false,
        layers_to_transform: None,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        modules_to_save: save.iter().map(|s| s.to_string()).collect(),
        learning_rate: 1e-2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        seed: 3,
    }
}

fn assert_all_grads(tr: &mut Trainer, ex: &[Example]) {
    let refs: Vec<&Example> = ex.iter().collect();
    let (b, t, w) = tr.encode(&refs, 32).unwrap();
    // step once so B (initialized to zero) is non-zero and A's gradient cannot vanish
    tr.step(&b, &t, w.as_ref(), 1e-2).unwrap();
    let (_, grads) = tr.gradients(&b, &t, w.as_ref()).unwrap();
    assert!(!grads.is_empty());
    for (name, g) in grads {
        let g = g.unwrap_or_else(|| panic!("{name} received no gradient"));
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm.is_finite() && norm > 0.0, "{name}: gradient norm {norm}");
    }
}

/// The hand-differentiated CPU step (`model::bert_cpu`) gives the loss and gradients candle's
/// autograd gives over the differentiable forward: every module kind plus the pooler ("dense"
/// also matches `bert.pooler.dense`), the trained head, LoRA dropout on, padded rows, and both
/// GELU forms and ReLU.
#[test]
fn bert_cpu_step_matches_autograd() {
    for act in ["gelu", "gelu_new", "relu"] {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("bert");
        loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &[], 2).unwrap();
        let cfg_path = base.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["hidden_act"] = act.into();
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let e = Engine::load(BaseDir::open_dir(&base).unwrap(), Device::Cpu).unwrap();
        let mut tr = Trainer::new(e, Task::SeqCls, spec(&["query", "key", "value", "dense"], &["classifier"]), vec!["neg".into(), "pos".into()]).unwrap();
        assert!(tr.var_names().iter().any(|n| n.contains("pooler.dense.lora_A")), "{:?}", tr.var_names());
        let ex: Vec<Example> = loradex::synth::sentiment_data(6, 4)
            .into_iter()
            .map(|(t, l)| Example { text: t, completion: None, label: Some(l.into()) })
            .collect();
        let refs: Vec<&Example> = ex.iter().collect();
        let (b, t, w) = tr.encode(&refs, 32).unwrap();
        assert!(b.lens.iter().any(|&l| l < b.ids.dim(1).unwrap()), "the batch should have padded rows");
        // two steps so every B is non-zero
        for _ in 0..2 {
            tr.step(&b, &t, w.as_ref(), 1e-2).unwrap();
        }
        tr.grad_path = loradex::train::GradPath::Auto;
        let (l1, g1) = tr.gradients(&b, &t, w.as_ref()).unwrap();
        tr.grad_path = loradex::train::GradPath::Autograd;
        let (l2, g2) = tr.gradients(&b, &t, w.as_ref()).unwrap();
        assert!((l1 - l2).abs() < 1e-5 * l2.abs().max(1.0), "{act}: loss {l1} vs {l2}");
        for ((n1, a), (n2, b)) in g1.into_iter().zip(g2) {
            assert_eq!(n1, n2);
            let (a, b) = (a.unwrap_or_else(|| panic!("{act}: no gradient for {n1}")), b.unwrap());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{act}: {n1} has a zero gradient");
            let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale + 1e-6, "{act}: {n1} differs by {diff} (largest element {scale})");
        }
    }
}

/// The vectorizable erf and exp behind the fast GELU (and the decoder's SiLU) stay within f32
/// rounding of the exact ones.
#[test]
fn fast_erf_and_exp_are_accurate() {
    use loradex::model::bert_cpu::{erf, exp_neg};
    let (mut e_erf, mut e_exp) = (0f64, 0f64);
    for i in -60_000i32..=60_000 {
        let x = i as f32 * 1e-4;
        e_erf = e_erf.max((erf(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs());
        let y = -(i.abs() as f32) * 1.45e-3; // down to -87, where it clamps
        let exact = (y as f64).exp();
        e_exp = e_exp.max((exp_neg(y) as f64 - exact).abs() / exact);
    }
    assert!(e_erf < 1e-6, "erf error {e_erf}");
    assert!(e_exp < 1e-6, "exp relative error {e_exp}");
    assert!(exp_neg(-1e4) < 1e-37 && exp_neg(-1e4) >= 0.0);
    // the decoder's SiLU, built on it, on both sides of zero and far out (where e^-x overflows)
    use loradex::model::llama::silu;
    let mut e_silu = 0f64;
    for i in -100_000i32..=100_000 {
        let x = i as f32 * 1e-3;
        let exact = x as f64 / (1.0 + (-(x as f64)).exp());
        // relative, but absolute below 1e-30 (past -87, exp_neg's clamp, the exact value is
        // smaller still; both are nothing beside a hidden state)
        e_silu = e_silu.max((silu(x) as f64 - exact).abs() / exact.abs().max(1e-30));
    }
    assert!(e_silu < 2e-6, "silu relative error {e_silu}");
    assert!(silu(-1e4).abs() < 1e-30 && silu(1e4) == 1e4 && silu(0.0) == 0.0);
    assert!(silu(f32::NAN).is_nan());
}

#[test]
fn every_lora_tensor_receives_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("bert");
    loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &[], 1).unwrap();
    let e = Engine::load(BaseDir::open_dir(&base).unwrap(), device()).unwrap();
    let all = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"];
    let mut tr = Trainer::new(e, Task::SeqCls, spec(&all, &["classifier"]), vec!["neg".into(), "pos".into()]).unwrap();
    // 2 layers x 6 modules x (A, B) + classifier weight and bias
    assert_eq!(tr.var_names().len(), 2 * 6 * 2 + 2, "{:?}", tr.var_names());
    let ex: Vec<Example> = loradex::synth::sentiment_data(8, 1)
        .into_iter()
        .map(|(t, l)| Example { text: t, completion: None, label: Some(l.into()) })
        .collect();
    assert_all_grads(&mut tr, &ex);

    let e = Engine::load(BaseDir::open_dir(&llama().join("base")).unwrap(), device()).unwrap();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let mut tr = Trainer::new(e, Task::CausalLm, spec(&targets, &[]), vec![]).unwrap();
    assert_eq!(tr.var_names().len(), 2 * 7 * 2);
    let ex = vec![
        Example { text: "where is my refund".into(), completion: Some(" the agent was very kind".into()), label: None },
        Example { text: "this product is great".into(), completion: None, label: None },
    ];
    assert_all_grads(&mut tr, &ex);
}

fn write_recipe(dir: &Path, base: &Path, seed: u64) -> std::path::PathBuf {
    let data = loradex::synth::sentiment_data(160, 9);
    let mut csv = String::from("text,label\n");
    for (t, l) in data {
        csv.push_str(&format!("\"{t}\",{l}\n"));
    }
    std::fs::write(dir.join("train.csv"), csv).unwrap();
    let recipe = format!(
        r#"name = "test/sentiment:v1"
base = "{}"
task = "seq-cls"
[data]
train = "train.csv"
validation_split = 0.25
labels = ["neg", "pos"]
max_seq_len = 32
[lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = ["query", "value"]
modules_to_save = ["classifier"]
[train]
epochs = 6
batch_size = 16
learning_rate = 0.01
warmup_steps = 4
weight_decay = 0.0
seed = {seed}
metric = "accuracy"
"#,
        base.display()
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, recipe).unwrap();
    p
}

#[test]
fn training_learns_is_reproducible_and_exports_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("bert");
    loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &[], 5).unwrap();
    let recipe = write_recipe(tmp.path(), &base, 11);
    let home = tmp.path().join("home");
    let rep = json(&ok(&home, &["--json", "train", recipe.to_str().unwrap()]));
    let hist = rep["history"].as_array().unwrap();
    let first_loss = hist[0]["train_loss"].as_f64().unwrap();
    let last_loss = hist.last().unwrap()["train_loss"].as_f64().unwrap();
    assert!(last_loss < first_loss * 0.8, "loss did not fall: {first_loss} -> {last_loss}");
    let acc = rep["best_metrics"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "validation accuracy {acc} not above chance (0.5)");
    assert_eq!(rep["validation_examples"], 40);
    let cm = rep["best_metrics"]["confusion"].as_array().unwrap();
    assert_eq!(cm.iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).sum::<u64>()).sum::<u64>(), 40);
    let digest = rep["digest"].as_str().unwrap().to_string();
    // show carries the metrics and provenance
    let show = json(&ok(&home, &["--json", "show", "test/sentiment:v1"]));
    assert_eq!(show["metrics"]["validation"]["accuracy"].as_f64().unwrap(), acc);
    assert_eq!(show["provenance"]["source"], "train");
    assert_eq!(show["labels"], serde_json::json!(["neg", "pos"]));
    // same seed, same digest (in another store, on one thread instead of the machine's count:
    // the hand-written step's reductions do not depend on how work is split)
    let home2 = tmp.path().join("home2");
    let args = ["--home", home2.to_str().unwrap(), "--json", "train", recipe.to_str().unwrap(), "--name", "other:v1"];
    let o = std::process::Command::new(bin()).args(args).env("RAYON_NUM_THREADS", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep2 = json(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(rep2["digest"].as_str().unwrap(), digest, "same seed gave another adapter");
    // another seed, another adapter
    let rep3 = json(&ok(&home2, &["--json", "train", recipe.to_str().unwrap(), "--seed", "12", "--epochs", "1"]));
    assert_ne!(rep3["digest"].as_str().unwrap(), digest);
    // export: the same config fields as PEFT 0.21 and PEFT key names
    let out = tmp.path().join("export");
    ok(&home, &["export", "test/sentiment:v1", out.to_str().unwrap()]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    let peft_cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(bert().join("adapter/adapter_config.json")).unwrap()).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&cfg), keys(&peft_cfg), "config fields differ from PEFT 0.21's");
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["r"], 4);
    let w = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let view = loradex::peft::safetensors::SafeView::parse(&w, "x").unwrap();
    let names: Vec<&String> = view.tensors.keys().collect();
    assert!(names.contains(&&"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight".to_string()), "{names:?}");
    assert!(names.contains(&&"base_model.model.classifier.weight".to_string()), "{names:?}");
    // the exported directory predicts like the stored adapter
    let a = json(&ok(&home, &["--json", "predict", "--base", base.to_str().unwrap(), "--adapter", "test/sentiment:v1", "--text", "a wonderful film", "--text", "awful and boring"]));
    let b = json(&ok(&home, &["--json", "predict", "--base", base.to_str().unwrap(), "--adapter", out.to_str().unwrap(), "--text", "a wonderful film", "--text", "awful and boring"]));
    assert_eq!(a["results"][0]["logits"], b["results"][0]["logits"]);
    assert_eq!(a["results"][0]["label"], "pos");
    assert_eq!(a["results"][1]["label"], "neg");
    // merged prediction equals unmerged, and merge writes a reloadable model
    let m = json(&ok(&home, &["--json", "predict", "--base", base.to_str().unwrap(), "--adapter", "test/sentiment:v1", "--merged", "--text", "a wonderful film", "--text", "awful and boring"]));
    for i in 0..2 {
        let (x, y) = (&a["results"][i]["logits"], &m["results"][i]["logits"]);
        for j in 0..2 {
            assert!((x[j].as_f64().unwrap() - y[j].as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

#[test]
fn causal_lm_sft_loss_falls_on_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut jl = String::new();
    for _ in 0..6 {
        jl.push_str("{\"prompt\": \"where is my refund\", \"completion\": \" the agent was very kind\"}\n");
        jl.push_str("{\"prompt\": \"the delivery was\", \"completion\": \" late and i am upset\"}\n");
    }
    std::fs::write(tmp.path().join("sft.jsonl"), jl).unwrap();
    let recipe = format!(
        "name = \"sft:v1\"\nbase = \"{}\"\ntask = \"causal-lm\"\n[data]\ntrain = \"sft.jsonl\"\nvalidation_split = 0.0\n[lora]\nr = 8\nalpha = 16\ntarget_modules = [\"q_proj\", \"v_proj\", \"o_proj\"]\n[train]\nepochs = 5\nbatch_size = 4\nlearning_rate = 0.02\nmetric = \"loss\"\n",
        llama().join("base").display()
    );
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    let home = tmp.path().join("home");
    let rep = json(&ok(&home, &["--json", "train", tmp.path().join("r.toml").to_str().unwrap()]));
    let h = rep["history"].as_array().unwrap();
    let l0 = h[0]["train_loss"].as_f64().unwrap();
    let l1 = h.last().unwrap()["train_loss"].as_f64().unwrap();
    // the fixture's random 32-wide model caps how far logits can move (loss floor ~5.4 of
    // ln(300) = 5.7): a working optimizer still takes a clear step down, a broken one none
    assert!(l1 < l0 - 0.1, "SFT loss did not fall: {l0} -> {l1}");
    let show = json(&ok(&home, &["--json", "show", "sft:v1"]));
    assert_eq!(show["task"], "CAUSAL_LM");
    // the trained adapter generates through the store ref
    let g = json(&ok(&home, &["--json", "generate", "--base", llama().join("base").to_str().unwrap(), "--adapter", "sft:v1", "--prompt", "where is my refund", "--max-new-tokens", "4"]));
    assert!(!g["new_ids"].as_array().unwrap().is_empty());
}

#[test]
fn recipe_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let p = tmp.path().join("r.toml");
    std::fs::write(&p, "name = \"x\"\nbase = \"nowhere\"\ntask = \"seq-cls\"\n[data]\ntrain = \"t.csv\"\n[lora]\nr = 0\n").unwrap();
    assert!(fails(&home, &["train", p.to_str().unwrap()]).contains("lora.r must be > 0"));
    std::fs::write(&p, "name = \"x\"\nbase = \"nowhere\"\ntask = \"seq-cls\"\nbogus = 1\n[data]\ntrain = \"t.csv\"\n").unwrap();
    assert!(fails(&home, &["train", p.to_str().unwrap()]).contains("unknown field"));
    std::fs::write(&p, "name = \"x\"\nbase = \"nowhere\"\ntask = \"seq-cls\"\n[data]\ntrain = \"t.csv\"\n").unwrap();
    let e = fails(&home, &["train", p.to_str().unwrap(), "--set", "lora.r=2"]);
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn frozen_linear_gradient_equals_candles_own() {
    use candle_core::{Tensor, Var};
    use loradex::model::lora::{Ctx, LoraLinear, Routing};
    let dev = Device::Cpu;
    let w = Tensor::from_vec((0..20).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), (5, 4), &dev).unwrap();
    let b = Tensor::from_vec(vec![0.1f32, -0.2, 0.3, 0.0, 0.5], 5, &dev).unwrap();
    let lin = LoraLinear::new("m".into(), w, Some(b));
    let c = Tensor::from_vec((0..30).map(|i| (i as f32 * 0.11).cos()).collect::<Vec<_>>(), (2, 3, 5), &dev).unwrap();
    let x = Var::from_vec((0..24).map(|i| i as f32 * 0.05 - 0.4).collect::<Vec<_>>(), (2, 3, 4), &dev).unwrap();
    let routing = Routing::base(2);
    let grad = |train: bool| {
        let mut ctx = Ctx::infer(&routing);
        ctx.train = train;
        // `* 1` makes x an op output, as activations are in a real forward
        let xin = (x.as_tensor() * 1.0).unwrap();
        let y = lin.forward(&xin, &ctx).unwrap();
        let loss = (y * &c).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        (loss.to_scalar::<f32>().unwrap(), g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    let (l_train, g_train) = grad(true);
    let (l_plain, g_plain) = grad(false);
    assert!((l_train - l_plain).abs() < 1e-6);
    assert!(max_abs_diff(&g_train, &g_plain) < 1e-6, "{g_train:?} vs {g_plain:?}");
}

/// The training forms of LayerNorm, RMSNorm and softmax (fused kernel forward, hand-written
/// backward) give the values and input gradients of their plain compositions under autograd.
#[test]
fn fused_norm_and_softmax_backward_equal_the_composed_forms() {
    use candle_core::{Tensor, Var, D};
    use loradex::model::lora::{layer_norm, rms_norm, softmax};
    let dev = device();
    let n = 3 * 5 * 16;
    let x = Var::from_vec((0..n).map(|i| ((i * 37 % 101) as f32 * 0.07).sin() * 2.0).collect::<Vec<_>>(), (3, 5, 16), &dev).unwrap();
    let w = Tensor::from_vec((0..16).map(|i| 0.5 + i as f32 * 0.1).collect::<Vec<_>>(), 16, &dev).unwrap();
    let b = Tensor::from_vec((0..16).map(|i| i as f32 * 0.01 - 0.05).collect::<Vec<_>>(), 16, &dev).unwrap();
    let c = Tensor::from_vec((0..n).map(|i| ((i * 13 % 29) as f32 * 0.3).cos()).collect::<Vec<_>>(), (3, 5, 16), &dev).unwrap();
    let eps = 1e-5;
    let grad = |f: &dyn Fn(&Tensor) -> Tensor| {
        let xin = (x.as_tensor() * 1.0).unwrap(); // an op output, as activations are
        let y = f(&xin);
        let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    type Form<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let cases: [(&str, Form, Form); 3] = [
        (
            "layer_norm",
            Box::new(|x| layer_norm(x, &w, &b, eps, true).unwrap()),
            Box::new(|x| {
                let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
                let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap()
            }),
        ),
        (
            "rms_norm",
            Box::new(|x| rms_norm(x, &w, eps, true).unwrap()),
            Box::new(|x| {
                let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap()
            }),
        ),
        (
            "softmax",
            Box::new(|x| softmax(x, true).unwrap()),
            Box::new(|x| {
                let e = x.broadcast_sub(&x.max_keepdim(D::Minus1).unwrap().detach()).unwrap().exp().unwrap();
                e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
            }),
        ),
    ];
    for (name, ours, composed) in &cases {
        let (y1, g1) = grad(ours.as_ref());
        let (y2, g2) = grad(composed.as_ref());
        assert!(max_abs_diff(&y1, &y2) < 1e-5, "{name}: values differ by {}", max_abs_diff(&y1, &y2));
        let scale = g2.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0 && max_abs_diff(&g1, &g2) < 1e-4 * scale, "{name}: gradients differ by {}", max_abs_diff(&g1, &g2));
    }
}

/// `target_modules = []` trains the head alone (the baseline a domain's LoRA is compared with),
/// rather than falling back to the default targets; with no head either, it is an error.
#[test]
fn empty_target_modules_train_only_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("bert");
    loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &[], 3).unwrap();
    let recipe = write_recipe(tmp.path(), &base, 1);
    let home = tmp.path().join("home");
    ok(&home, &["train", recipe.to_str().unwrap(), "--quiet", "--set", "lora.target_modules=[]", "--name", "t/head:v1"]);
    let show = json(&ok(&home, &["--json", "show", "t/head:v1"]));
    assert_eq!(show["target_modules"], serde_json::json!([]), "{show}");
    let out = tmp.path().join("out");
    ok(&home, &["export", "t/head:v1", out.to_str().unwrap()]);
    let ts = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = ts.keys().collect();
    keys.sort();
    assert_eq!(keys, ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]);
    let err = fails(&home, &["train", recipe.to_str().unwrap(), "--quiet", "--set", "lora.target_modules=[]", "--set", "lora.modules_to_save=[]", "--name", "t/none:v1"]);
    assert!(err.contains("nothing to train") || err.contains("classifier"), "{err}");
}
