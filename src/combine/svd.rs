//! A small, deterministic singular value decomposition for `combine`'s SVD types: one-sided
//! (Hestenes) Jacobi on `f64` matrices, plus the shortcut for a product `P·Q` of thin factors
//! (a sum of LoRA deltas), which never forms the `out × in` matrix. Owns only dense matrix
//! arithmetic; knows nothing of adapters or PEFT.
//!
//! Cost: one Jacobi sweep is `O(m·n²)` for `m × n` (`n ≤ m`, the smaller side), and a few to
//! a dozen sweeps converge. The product shortcut costs `O((out + in)·R²)` for rank `R`, so a
//! plain `svd` combination is cheap at any model size; `ties_svd` and the other pruned SVD
//! types decompose the dense delta and take seconds per module on 4096-wide layers.
//! Results are deterministic (fixed rotation order, sorted values, fixed signs), not equal
//! to LAPACK's factors: singular vectors are unique only up to sign (and rotation within
//! repeated values), so compare products `U·diag(s)·Vᵀ`, not factors.

/// A dense row-major `rows × cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// `data` in row-major order; panics if its length is not `rows * cols` (a programming
    /// error: callers build matrices from tensors whose shapes they checked).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Mat {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: {} values for {rows} x {cols}", data.len());
        Mat { rows, cols, data }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn set(&mut self, i: usize, j: usize, x: f64) {
        self.data[i * self.cols + j] = x;
    }

    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }

    /// `self · other`; panics on mismatched inner dimensions.
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul: {}x{} by {}x{}", self.rows, self.cols, other.rows, other.cols);
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let row = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let x = self.data[i * self.cols + k];
                if x == 0.0 {
                    continue;
                }
                for (o, y) in row.iter_mut().zip(&other.data[k * other.cols..(k + 1) * other.cols]) {
                    *o += x * y;
                }
            }
        }
        out
    }

    /// Columns as separate vectors.
    fn columns(&self) -> Vec<Vec<f64>> {
        (0..self.cols).map(|j| (0..self.rows).map(|i| self.at(i, j)).collect()).collect()
    }

    fn from_columns(rows: usize, cols: &[Vec<f64>]) -> Mat {
        let mut m = Mat::zeros(rows, cols.len());
        for (j, c) in cols.iter().enumerate() {
            for (i, x) in c.iter().enumerate() {
                m.set(i, j, *x);
            }
        }
        m
    }
}

/// A thin SVD `M = U·diag(s)·Vᵀ`: `u` is `m × k`, `v` is `n × k`, `s` descending and
/// non-negative. Columns whose singular value is exactly zero are zero in `u`.
#[derive(Clone, Debug)]
pub struct Svd {
    pub u: Mat,
    pub s: Vec<f64>,
    pub v: Mat,
}

impl Svd {
    /// `U·diag(s)·Vᵀ` from the first `k` triplets.
    pub fn product(&self, k: usize) -> Mat {
        let k = k.min(self.s.len());
        let mut us = Mat::zeros(self.u.rows, k);
        for i in 0..self.u.rows {
            for j in 0..k {
                us.set(i, j, self.u.at(i, j) * self.s[j]);
            }
        }
        let mut vt = Mat::zeros(k, self.v.rows);
        for j in 0..k {
            for i in 0..self.v.rows {
                vt.set(j, i, self.v.at(i, j));
            }
        }
        us.matmul(&vt)
    }
}

/// Jacobi did not reach orthogonality within `MAX_SWEEPS` sweeps (not seen in practice: the
/// method converges quadratically; this guards against non-finite input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotConverged;

/// Sweeps allowed before giving up.
const MAX_SWEEPS: usize = 80;
/// A pair of columns counts as orthogonal when `|p·q| ≤ TOL·|p|·|q|`.
const TOL: f64 = 1e-15;

/// The thin SVD of `m` (`k = min(rows, cols)`).
pub fn svd(m: &Mat) -> Result<Svd, NotConverged> {
    if m.data.iter().any(|x| !x.is_finite()) {
        return Err(NotConverged);
    }
    if m.rows < m.cols {
        // Jacobi works on the columns of the tall side: Mᵀ = U'ΣV'ᵀ gives M = V'ΣU'ᵀ
        let t = svd(&m.t())?;
        return Ok(Svd { u: t.v, s: t.s, v: t.u });
    }
    let (rows, n) = (m.rows, m.cols);
    let mut w = m.columns();
    let mut v: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    let mut converged = n < 2;
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n.saturating_sub(1) {
            for q in p + 1..n {
                let (alpha, beta, gamma) = (dot(&w[p], &w[p]), dot(&w[q], &w[q]), dot(&w[p], &w[q]));
                if gamma == 0.0 || gamma.abs() <= TOL * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + zeta.hypot(1.0));
                let c = 1.0 / t.hypot(1.0);
                let s = c * t;
                rotate(&mut w, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            converged = true;
            break;
        }
    }
    if !converged {
        return Err(NotConverged);
    }
    let mut trip: Vec<(f64, Vec<f64>, Vec<f64>)> = w
        .into_iter()
        .zip(v)
        .map(|(mut u, mut vj)| {
            let s = dot(&u, &u).sqrt();
            if s > 0.0 {
                u.iter_mut().for_each(|x| *x /= s);
            }
            // a fixed sign: the largest component of v positive (the first, on ties)
            let (mut big, mut at) = (0.0f64, 0usize);
            for (i, x) in vj.iter().enumerate() {
                if x.abs() > big {
                    (big, at) = (x.abs(), i);
                }
            }
            if vj[at] < 0.0 {
                u.iter_mut().for_each(|x| *x = -*x);
                vj.iter_mut().for_each(|x| *x = -*x);
            }
            (s, u, vj)
        })
        .collect();
    // descending; a stable sort keeps equal values in column order
    trip.sort_by(|a, b| b.0.total_cmp(&a.0));
    let s = trip.iter().map(|t| t.0).collect();
    let u = Mat::from_columns(rows, &trip.iter().map(|t| t.1.clone()).collect::<Vec<_>>());
    let v = Mat::from_columns(n, &trip.iter().map(|t| t.2.clone()).collect::<Vec<_>>());
    Ok(Svd { u, s, v })
}

/// The thin SVD of `p · q` (`p` is `m × R`, `q` is `R × n`) without forming the product:
/// `qᵀ = U₁Σ₁W₁ᵀ`, then `p·W₁·Σ₁ = U₂Σ₂W₂ᵀ`, so `p·q = U₂Σ₂(U₁W₂)ᵀ`. `k = min(m, n, R)`.
pub fn svd_of_product(p: &Mat, q: &Mat) -> Result<Svd, NotConverged> {
    assert_eq!(p.cols, q.rows, "svd_of_product: {}x{} by {}x{}", p.rows, p.cols, q.rows, q.cols);
    let first = svd(&q.t())?; // u: n × k1, v: R × k1
    let mut w1s = first.v.clone(); // R × k1, scaled by Σ₁
    for i in 0..w1s.rows {
        for j in 0..w1s.cols {
            w1s.set(i, j, w1s.at(i, j) * first.s[j]);
        }
    }
    let second = svd(&p.matmul(&w1s))?; // u: m × k2, v: k1 × k2
    let v = first.u.matmul(&second.v);
    Ok(Svd { u: second.u, s: second.s, v })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}
