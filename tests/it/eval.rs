//! `loradex eval`: the shared metrics against numbers worked out by hand, and the command end
//! to end (several refs, `--json` shape, agreement with `predict`, `--record` then `show`, and
//! the unknown-label error).

use super::common::*;
use loradex::train::Metrics;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: got {a}, want {b}");
}

/// Three labels, ten examples; rows are the true label, columns the predicted one:
///
/// ```text
///          pred a  pred b  pred c   | support
///   a        2       1       1      |   4
///   b        1       2       0      |   3
///   c        0       1       2      |   3
///   -------------------------------
///   predicted 3      4       3
/// ```
///
/// correct = 2+2+2 = 6, accuracy = 6/10.
/// precision: a 2/3, b 2/4 = 1/2, c 2/3;  recall: a 2/4 = 1/2, b 2/3, c 2/3.
/// F1 = 2PR/(P+R): a 2·(2/3)(1/2)/(7/6) = 4/7, b = 4/7 (same P, R swapped), c = 2/3.
/// macro P = (2/3 + 1/2 + 2/3)/3 = 11/18, macro R = 11/18, macro F1 = (4/7 + 4/7 + 2/3)/3 = 38/63.
/// micro P = micro R = 6 correct / 10 predicted (or true) = 0.6, micro F1 = 0.6.
#[test]
fn metrics_match_hand_computed_numbers() {
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let (a, b, c) = (0, 1, 2);
    let pairs = [(a, a), (a, a), (a, b), (a, c), (b, a), (b, b), (b, b), (c, b), (c, c), (c, c)];
    // shuffled order must not matter
    let mut order: Vec<(usize, usize)> = pairs.to_vec();
    order.reverse();
    order.swap(1, 7);
    let truth: Vec<usize> = order.iter().map(|p| p.0).collect();
    let pred: Vec<usize> = order.iter().map(|p| p.1).collect();
    let m = Metrics::compute(&truth, &pred, &labels, 0.25);
    assert_eq!(m.confusion, vec![vec![2, 1, 1], vec![1, 2, 0], vec![0, 1, 2]]);
    assert_eq!(m.examples, 10);
    close(m.loss, 0.25, "loss");
    close(m.accuracy, 0.6, "accuracy");
    let want = [("a", 2.0 / 3.0, 0.5, 4.0 / 7.0, 4), ("b", 0.5, 2.0 / 3.0, 4.0 / 7.0, 3), ("c", 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3)];
    assert_eq!(m.per_class.len(), 3);
    for (row, (l, p, r, f, s)) in m.per_class.iter().zip(want) {
        assert_eq!(row.label, l);
        close(row.precision, p, &format!("{l} precision"));
        close(row.recall, r, &format!("{l} recall"));
        close(row.f1, f, &format!("{l} f1"));
        assert_eq!(row.support, s, "{l} support");
    }
    close(m.macro_precision, 11.0 / 18.0, "macro precision");
    close(m.macro_recall, 11.0 / 18.0, "macro recall");
    close(m.macro_f1, 38.0 / 63.0, "macro f1");
    close(m.micro_precision, 0.6, "micro precision");
    close(m.micro_recall, 0.6, "micro recall");
    close(m.micro_f1, 0.6, "micro f1");

    // a label the data never shows still counts in the macro average (as 0): with a fourth
    // label "d", macro P = (2/3 + 1/2 + 2/3 + 0)/4 = 11/24; micro is unchanged
    let mut four = labels.clone();
    four.push("d".into());
    let m4 = Metrics::compute(&truth, &pred, &four, 0.0);
    close(m4.macro_precision, 11.0 / 24.0, "macro precision with an unseen label");
    close(m4.macro_f1, 38.0 / 84.0, "macro f1 with an unseen label");
    close(m4.micro_f1, 0.6, "micro f1 with an unseen label");
    assert_eq!(m4.per_class[3].support, 0);
    // training's field names are all in the JSON
    let v = serde_json::to_value(&m).unwrap();
    for k in ["accuracy", "macro_f1", "macro_precision", "macro_recall", "micro_f1", "micro_precision", "micro_recall", "per_class", "confusion", "labels", "examples", "loss"] {
        assert!(v.get(k).is_some(), "metrics JSON lacks {k}: {v}");
    }
    // metrics stored before micro/per-class existed still read
    let old = serde_json::json!({"loss": 0.1, "accuracy": 1.0, "macro_precision": 1.0, "macro_recall": 1.0, "macro_f1": 1.0,
                                 "confusion": [[1, 0], [0, 1]], "labels": ["x", "y"], "examples": 2});
    let m_old: Metrics = serde_json::from_value(old).unwrap();
    assert!(m_old.per_class.is_empty());
}

fn write_csv(path: &std::path::Path, rows: &[(String, &str)]) {
    let mut csv = String::from("text,label\n");
    for (t, l) in rows {
        csv.push_str(&format!("\"{t}\",{l}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

fn recipe(dir: &std::path::Path, base: &std::path::Path) -> std::path::PathBuf {
    write_csv(&dir.join("train.csv"), &loradex::synth::sentiment_data(160, 9));
    let r = format!(
        "name = \"ev/sentiment:v1\"\nbase = \"{}\"\ntask = \"seq-cls\"\n[data]\ntrain = \"train.csv\"\nvalidation_split = 0.25\nlabels = [\"neg\", \"pos\"]\nmax_seq_len = 32\n[lora]\nr = 4\nalpha = 8\ndropout = 0.0\ntarget_modules = [\"query\", \"value\"]\nmodules_to_save = [\"classifier\"]\n[train]\nepochs = 6\nbatch_size = 16\nlearning_rate = 0.01\nwarmup_steps = 4\nseed = 5\nmetric = \"accuracy\"\n",
        base.display()
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, r).unwrap();
    p
}

/// The confusion matrix `predict` gives for `adapter` on `rows`, computed here from its output.
fn predict_confusion(home: &std::path::Path, base: &std::path::Path, adapter: &str, rows: &[(String, &str)]) -> Vec<Vec<u64>> {
    let mut args = vec!["--json", "predict", "--base", base.to_str().unwrap(), "--adapter", adapter];
    for (t, _) in rows {
        args.extend(["--text", t.as_str()]);
    }
    let out = json(&ok(home, &args));
    let res = out["results"].as_array().unwrap();
    assert_eq!(res.len(), rows.len());
    let idx = |l: &str| ["neg", "pos"].iter().position(|x| *x == l).unwrap_or_else(|| panic!("label {l}"));
    let mut c = vec![vec![0u64; 2]; 2];
    for (r, (_, truth)) in res.iter().zip(rows) {
        c[idx(truth)][idx(r["label"].as_str().unwrap())] += 1;
    }
    c
}

#[test]
fn eval_compares_adapters_records_and_refuses_unknown_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("bert");
    loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &["neg", "pos"], 5).unwrap();
    let home = tmp.path().join("home");
    let r = recipe(tmp.path(), &base);
    ok(&home, &["train", r.to_str().unwrap(), "--quiet"]);
    // a second version: another seed, fewer epochs
    ok(&home, &["train", r.to_str().unwrap(), "--quiet", "--name", "ev/sentiment:v2", "--seed", "12", "--epochs", "1"]);
    let rows = loradex::synth::sentiment_data(30, 77);
    let test = tmp.path().join("test.csv");
    write_csv(&test, &rows);
    let (a, b) = ("ev/sentiment:v1", "ev/sentiment:v2");
    let out = json(&ok(&home, &["--json", "eval", a, b, "--base-head", "--data", test.to_str().unwrap(), "--base", base.to_str().unwrap(), "--batch-size", "7"]));
    assert_eq!(out["examples"], 30);
    let res = out["results"].as_array().unwrap();
    assert_eq!(res.iter().map(|c| c["ref"].as_str().unwrap()).collect::<Vec<_>>(), [a, b, "base"]);
    for (col, name) in res.iter().zip([a, b, "base"]) {
        for k in ["accuracy", "macro_f1", "macro_precision", "macro_recall", "micro_f1", "micro_precision", "micro_recall"] {
            let v = col[k].as_f64().unwrap_or_else(|| panic!("{name}: no {k} in {col}"));
            assert!((0.0..=1.0).contains(&v), "{name}: {k} = {v}");
        }
        let pc = col["per_class"].as_array().unwrap();
        assert_eq!(pc.iter().map(|r| r["label"].as_str().unwrap()).collect::<Vec<_>>(), ["neg", "pos"]);
        assert_eq!(pc.iter().map(|r| r["support"].as_u64().unwrap()).sum::<u64>(), 30);
        let conf: Vec<Vec<u64>> = serde_json::from_value(col["confusion"].clone()).unwrap();
        // accuracy is the fraction of rows where `predict` agrees with the label
        let want = if name == "base" { predict_confusion(&home, &base, "base", &rows) } else { predict_confusion(&home, &base, name, &rows) };
        assert_eq!(conf, want, "{name}: eval's confusion differs from predict's");
        let agree = (want[0][0] + want[1][1]) as f64 / 30.0;
        assert_eq!(col["accuracy"].as_f64().unwrap(), agree, "{name}");
        // one label per example: micro F1 is accuracy
        assert!((col["micro_f1"].as_f64().unwrap() - agree).abs() < 1e-12, "{name}");
        assert_eq!(col["base_head"], name == "base");
    }
    assert!(res[0]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(res[2]["digest"].is_null());
    assert!(res[0]["accuracy"].as_f64().unwrap() >= 0.7, "the trained adapter should beat chance: {}", res[0]);

    // the human table: one column per ref
    let human = ok(&home, &["eval", a, b, "--data", test.to_str().unwrap(), "--base", base.to_str().unwrap()]);
    let header = human.lines().nth(1).unwrap();
    assert!(header.contains(a) && header.contains(b), "{human}");
    assert!(human.contains("macro F1") && human.contains("true\\pred"), "{human}");

    // --record (base taken from the store), then show; the digest does not change
    let before = json(&ok(&home, &["--json", "show", a]));
    assert_eq!(before["evaluations"], serde_json::json!([]));
    let rec = json(&ok(&home, &["--json", "eval", a, "--data", test.to_str().unwrap(), "--record"]));
    let acc = rec["results"][0]["accuracy"].as_f64().unwrap();
    assert_eq!(acc, res[0]["accuracy"].as_f64().unwrap());
    let after = json(&ok(&home, &["--json", "show", a]));
    assert_eq!(after["digest"], before["digest"], "recording changed the digest");
    let evs = after["evaluations"].as_array().unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["metrics"]["accuracy"].as_f64().unwrap(), acc);
    assert_eq!(evs[0]["data_digest"], rec["data_digest"]);
    // again on the same data: replaced, not added
    ok(&home, &["eval", a, "--data", test.to_str().unwrap(), "--record"]);
    assert_eq!(json(&ok(&home, &["--json", "show", a]))["evaluations"].as_array().unwrap().len(), 1);
    let shown = ok(&home, &["show", a]);
    assert!(shown.contains("eval:") && shown.contains(&format!("accuracy {acc:.4}")), "{shown}");
    assert_eq!(json(&ok(&home, &["--json", "show", b]))["evaluations"], serde_json::json!([]));

    // a label the adapter does not know: an error naming it, before any result
    let mut bad = rows.clone();
    bad[3].1 = "meh";
    let bad_csv = tmp.path().join("bad.csv");
    write_csv(&bad_csv, &bad);
    let e = fails(&home, &["eval", a, "--data", bad_csv.to_str().unwrap(), "--record"]);
    assert!(e.contains("\"meh\"") && e.contains("example 4") && e.contains(a), "{e}");
    assert_eq!(json(&ok(&home, &["--json", "show", a]))["evaluations"].as_array().unwrap().len(), 1);

    // argument errors before any work; a base without a head of its own
    assert!(fails(&home, &["eval", a, "--data", tmp.path().join("t.txt").to_str().unwrap()]).contains(".csv or .jsonl"));
    assert!(fails(&home, &["eval", a, a, "--data", test.to_str().unwrap()]).contains("given twice"));
    let dir = tmp.path().join("exported");
    ok(&home, &["export", a, dir.to_str().unwrap()]);
    assert!(fails(&home, &["eval", dir.to_str().unwrap(), "--data", test.to_str().unwrap(), "--base", base.to_str().unwrap(), "--record"]).contains("import it first"));
    let plain = tmp.path().join("plain");
    loradex::synth::bert(&plain, &loradex::synth::Shape::tiny(), &[], 5).unwrap();
    let e = fails(&home, &["eval", "--base-head", "--data", test.to_str().unwrap(), "--base", plain.to_str().unwrap()]);
    assert!(e.contains("no classification head"), "{e}");
}

/// ROC AUC against hand-worked cases: perfect, inverted, every tie, and a mixed one
/// (positives 0.8, 0.4; negatives 0.6, 0.4, 0.1: pairs won 1 + 1 + 1 + 0 + 0.5 + 1 = 4.5 of 6).
#[test]
fn roc_auc_matches_hand_computed_numbers() {
    use loradex::train::metrics::roc_auc;
    assert_eq!(roc_auc(&[true, false], &[0.9, 0.1]), Some(1.0));
    assert_eq!(roc_auc(&[true, false], &[0.1, 0.9]), Some(0.0));
    assert_eq!(roc_auc(&[true, false, true], &[0.5, 0.5, 0.5]), Some(0.5));
    assert_eq!(roc_auc(&[true, true, false], &[0.5, 0.7, 0.2]), Some(1.0));
    let got = roc_auc(&[true, false, true, false, false], &[0.8, 0.6, 0.4, 0.4, 0.1]).unwrap();
    assert!((got - 4.5 / 6.0).abs() < 1e-12, "{got}");
    assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
}
