//! Classification metrics: accuracy, macro precision/recall/F1 and the confusion matrix.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
    pub examples: usize,
}

impl Metrics {
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
        for i in 0..k {
            let tp = c[i][i] as f64;
            let pred_i: usize = (0..k).map(|t| c[t][i]).sum();
            let true_i: usize = c[i].iter().sum();
            let p = if pred_i == 0 { 0.0 } else { tp / pred_i as f64 };
            let r = if true_i == 0 { 0.0 } else { tp / true_i as f64 };
            let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
            ps += p;
            rs += r;
            fs += f;
        }
        let kf = k.max(1) as f64;
        Metrics {
            loss,
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            macro_precision: ps / kf,
            macro_recall: rs / kf,
            macro_f1: fs / kf,
            confusion: c,
            labels: labels.to_vec(),
            examples: n,
        }
    }
}
