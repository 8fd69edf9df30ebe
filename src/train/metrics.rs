//! Classification metrics: accuracy, macro and micro precision/recall/F1, per-class rows and
//! the confusion matrix. One implementation for training's validation and `loradex eval`.

use serde::{Deserialize, Serialize};

/// One label's row: precision, recall and F1 of that label against the rest, and its support
/// (how many examples carry it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Micro averages pool every label's counts. With one label per example and every
    /// prediction a known label they all equal accuracy. (Absent from metrics stored by
    /// versions before `eval`: read as 0.)
    #[serde(default)]
    pub micro_precision: f64,
    #[serde(default)]
    pub micro_recall: f64,
    #[serde(default)]
    pub micro_f1: f64,
    /// In label order.
    #[serde(default)]
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
    pub examples: usize,
}

/// ROC AUC of `scores` for the positive examples (`positive[i]`): the probability that a
/// random positive scores above a random negative, ties counting one half (Mann–Whitney).
/// `None` without both classes.
pub fn roc_auc(positive: &[bool], scores: &[f32]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (n_pos, n_neg) = (idx.iter().filter(|&&i| positive[i]).count(), idx.iter().filter(|&&i| !positive[i]).count());
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // sum of the positives' ranks, tied scores sharing their average rank
    let (mut rank_sum, mut i) = (0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * idx[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos as f64 * n_neg as f64))
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

impl Metrics {
    /// Metrics of predictions `pred` against `truth` (indices into `labels`; pairs with an index
    /// out of range count as examples but in no cell). Macro averages are over all `labels`,
    /// including ones the data never shows (they contribute 0).
    pub fn compute(truth: &[usize], pred: &[usize], labels: &[String], loss: f64) -> Metrics {
        let k = labels.len();
        let mut c = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(pred) {
            if t < k && p < k {
                c[t][p] += 1;
            }
        }
        let n = truth.len();
        let correct: usize = (0..k).map(|i| c[i][i]).sum();
        let (mut ps, mut rs, mut fs) = (0.0, 0.0, 0.0);
        let (mut all_pred, mut all_true) = (0usize, 0usize);
        let mut per_class = Vec::with_capacity(k);
        for i in 0..k {
            let tp = c[i][i];
            let pred_i: usize = (0..k).map(|t| c[t][i]).sum();
            let true_i: usize = c[i].iter().sum();
            let (p, r) = (ratio(tp, pred_i), ratio(tp, true_i));
            let f = f1(p, r);
            ps += p;
            rs += r;
            fs += f;
            all_pred += pred_i;
            all_true += true_i;
            per_class.push(ClassMetrics { label: labels[i].clone(), precision: p, recall: r, f1: f, support: true_i });
        }
        let kf = k.max(1) as f64;
        let (micro_p, micro_r) = (ratio(correct, all_pred), ratio(correct, all_true));
        Metrics {
            loss,
            accuracy: ratio(correct, n),
            macro_precision: ps / kf,
            macro_recall: rs / kf,
            macro_f1: fs / kf,
            micro_precision: micro_p,
            micro_recall: micro_r,
            micro_f1: f1(micro_p, micro_r),
            per_class,
            confusion: c,
            labels: labels.to_vec(),
            examples: n,
        }
    }
}
