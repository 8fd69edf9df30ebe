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
