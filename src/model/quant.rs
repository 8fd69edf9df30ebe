//! Frozen weight matrices for the CPU decoder and the matrix-times-rows kernels over them:
//! f32, and GGML's Q4_0 / Q4_1 / Q8_0 blocks kept quantized (activations are quantized per
//! row to 8-bit blocks and multiplied in integers, as llama.cpp does), with an AVX2 build chosen
//! at run time (other GGML types are converted into these at load: `ggml_convert`; a weight
//! remembers what it was converted from). Every output element is one
//! row's dot product in a fixed order, whatever the number of rows: a sequence's result never
//! depends on what else is in the batch. Knows nothing of models, adapters or files.

use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use super::prefetch::Pace;
use rayon::prelude::*;

/// Values per quantized block (all the formats here).
pub const QK: usize = 32;

/// The block formats with loradex's own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFmt {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl BlockFmt {
    pub fn bytes(self) -> usize {
        match self {
            BlockFmt::Q4_0 => 18,
            BlockFmt::Q4_1 => 20,
            BlockFmt::Q8_0 => 34,
        }
    }
    pub fn of(d: GgmlDType) -> Option<BlockFmt> {
        match d {
            GgmlDType::Q4_0 => Some(BlockFmt::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFmt::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFmt::Q8_0),
            _ => None,
        }
    }
}

enum Kind {
    F32(Vec<f32>),
    Blocks(BlockFmt, Vec<u8>),
    /// Blocks repacked eight rows at a time (`qx8`), on CPUs with AVX2.
    X8(BlockFmt, Vec<u8>),
}

/// A `[rows, cols]` weight (PyTorch layout: one row per output feature).
pub struct QWeight {
    pub rows: usize,
    pub cols: usize,
    kind: Kind,
    /// The GGML type it was converted from at load, if any.
    from: Option<GgmlDType>,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeight({}x{} {})", self.rows, self.cols, self.format())
    }
}

impl QWeight {
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<QWeight> {
        if data.len() != rows * cols {
            return Err(Error::Model(format!("weight of {} values for {rows}x{cols}", data.len())));
        }
        Ok(QWeight { rows, cols, kind: Kind::F32(data), from: None })
    }
    /// Raw GGML blocks, row-major (`cols / 32` blocks per row).
    pub fn blocks(fmt: BlockFmt, rows: usize, cols: usize, data: Vec<u8>) -> Result<QWeight> {
        if !cols.is_multiple_of(QK) || data.len() != rows * cols / QK * fmt.bytes() {
            return Err(Error::Model(format!("{fmt:?} weight of {} bytes for {rows}x{cols}", data.len())));
        }
        if has_avx2() && rows.is_multiple_of(8) {
            let x8 = super::qx8::repack(fmt, rows, cols, &data);
            return Ok(QWeight { rows, cols, kind: Kind::X8(fmt, x8), from: None });
        }
        Ok(QWeight { rows, cols, kind: Kind::Blocks(fmt, data), from: None })
    }
    /// Blocks converted at load from GGML type `from` (`ggml_convert`).
    pub fn converted(fmt: BlockFmt, rows: usize, cols: usize, data: Vec<u8>, from: GgmlDType) -> Result<QWeight> {
        Ok(QWeight { from: Some(from), ..QWeight::blocks(fmt, rows, cols, data)? })
    }
    pub fn format(&self) -> String {
        match &self.kind {
            Kind::F32(_) => "f32".into(),
            Kind::Blocks(f, _) | Kind::X8(f, _) => match self.from {
                Some(g) => format!("{f:?} from {g:?}"),
                None => format!("{f:?}"),
            },
        }
    }
    pub fn bytes(&self) -> usize {
        match &self.kind {
            Kind::F32(v) => v.len() * 4,
            Kind::Blocks(_, b) | Kind::X8(_, b) => b.len(),
        }
    }
    pub fn is_f32(&self) -> bool {
        matches!(self.kind, Kind::F32(_))
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(Error::Model(format!("row {r} of a {}x{} weight", self.rows, self.cols)));
        }
        match &self.kind {
            Kind::F32(v) => out.copy_from_slice(&v[r * self.cols..][..self.cols]),
            Kind::Blocks(f, b) => {
                let rb = self.cols / QK * f.bytes();
                dequantize_row(*f, &b[r * rb..][..rb], out);
            }
            Kind::X8(f, b) => super::qx8::dequantize_row(*f, b, self.cols, r, out),
        }
        Ok(())
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One row of blocks to f32 (GGML's dequantization).
pub fn dequantize_row(f: BlockFmt, blocks: &[u8], out: &mut [f32]) {
    for (blk, o) in blocks.chunks_exact(f.bytes()).zip(out.chunks_exact_mut(QK)) {
        match f {
            BlockFmt::Q4_0 => {
                let d = f16(blk);
                for j in 0..16 {
                    o[j] = ((blk[2 + j] & 15) as i32 - 8) as f32 * d;
                    o[j + 16] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            BlockFmt::Q4_1 => {
                let (d, m) = (f16(blk), f16(&blk[2..]));
                for j in 0..16 {
                    o[j] = (blk[4 + j] & 15) as f32 * d + m;
                    o[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                }
            }
            BlockFmt::Q8_0 => {
                let d = f16(blk);
                for j in 0..QK {
                    o[j] = blk[2 + j] as i8 as f32 * d;
                }
            }
        }
    }
}

/// A row's 32 values quantized to 8 bits: `x ≈ d · q`, with `s = d · Σ q`.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub struct Q8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

impl Q8 {
    pub const ZERO: Q8 = Q8 { d: 0.0, s: 0.0, qs: [0; QK] };
}

/// Quantizes one row (`len % 32 == 0`) into blocks: AVX2 where the CPU has it, else the
/// portable build; the two agree bit for bit.
pub fn quantize_row(x: &[f32], out: &mut [Q8]) {
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected; both slices are walked in whole blocks.
        return unsafe { avx::quantize_row(x, out) };
    }
    quantize_row_portable(x, out)
}

/// `quantize_row` without SIMD (round half to even, which compiles to one instruction where
/// `round` would be a libm call).
pub fn quantize_row_portable(x: &[f32], out: &mut [Q8]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut s = 0i32;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            s += *q as i32;
        }
        b.d = d;
        b.s = d * s as f32;
    }
}

/// The rows a matrix multiplies: `[n, cols]` f32, with their 8-bit form made on first need, or
/// made by whoever made the rows (`with_q8`).
pub struct Act<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub cols: usize,
    q8: std::cell::OnceCell<Vec<Q8>>,
    given: Option<&'a [Q8]>,
}

impl<'a> Act<'a> {
    pub fn new(x: &'a [f32], n: usize, cols: usize) -> Act<'a> {
        debug_assert_eq!(x.len(), n * cols);
        Act { x, n, cols, q8: Default::default(), given: None }
    }
    /// Rows whose 8-bit form is made already: `q8` must hold `quantize_row` of each row of `x`
    /// (the blocks `Act::new` would make), or nothing (made on first need, as with `new`).
    pub fn with_q8(x: &'a [f32], n: usize, cols: usize, q8: Option<&'a [Q8]>) -> Act<'a> {
        debug_assert_eq!(x.len(), n * cols);
        let given = q8.filter(|q| cols.is_multiple_of(QK) && q.len() == n * cols / QK);
        debug_assert_eq!(given.is_some(), q8.is_some(), "8-bit rows of another shape");
        // debug builds (the tests) check every such call against the rows quantized here
        #[cfg(debug_assertions)]
        if let Some(q) = given {
            let bits = |b: &Q8| (b.d.to_bits(), b.s.to_bits(), b.qs);
            for (row, made) in x.chunks(cols).zip(q.chunks(cols / QK)) {
                let mut fresh = vec![Q8::ZERO; cols / QK];
                quantize_row(row, &mut fresh);
                assert!(fresh.iter().map(bits).eq(made.iter().map(bits)), "8-bit rows made beside their rows differ from quantize_row's");
            }
        }
        Act { x, n, cols, q8: Default::default(), given }
    }
    fn q8(&self) -> &[Q8] {
        if let Some(q) = self.given {
            return q;
        }
        self.q8.get_or_init(|| {
            let nb = self.cols / QK;
            let mut v = vec![Q8::ZERO; self.n * nb];
            v.par_chunks_mut(nb).zip(self.x.par_chunks(self.cols)).for_each(|(o, x)| quantize_row(x, o));
            v
        })
    }
}

/// One row's low-rank term for a matrix call: `a = A`, `[r, cols]` row-major, and
/// `bt = (s·B)ᵀ`, `[r, rows]`, so `y += Σ_j h_j bt_j` with `h = A x`. `h` is made inside the
/// matrix call's parallel region by the first task that needs it (no serial step between
/// regions, where the other threads would fall asleep), or given.
pub struct LowRank<'a> {
    pub a: Half<'a>,
    pub bt: Half<'a>,
    pub h: std::sync::OnceLock<Vec<f32>>,
}

impl<'a> LowRank<'a> {
    pub fn new(a: Half<'a>, bt: Half<'a>) -> LowRank<'a> {
        LowRank { a, bt, h: Default::default() }
    }
    /// `A x` for this row's `x` (`cols` values). A task that finds it not yet made makes it
    /// itself rather than wait for another (a few hundred multiply-adds against a futex sleep);
    /// every maker computes the same bits, so which one is kept does not matter.
    fn h(&self, x: &[f32]) -> &[f32] {
        if let Some(h) = self.h.get() {
            return h;
        }
        let cols = x.len();
        let r = self.a.len() / cols.max(1);
        let mut h = vec![0f32; r];
        if let Half::I8 { q, d } = self.a {
            super::factors8::dot_rows(q, d, cols, x, &mut h);
            let _ = self.h.set(h);
            return self.h.get().expect("just set");
        }
        let mut j = 0;
        if let (Half::F16(v), true) = (self.a, has_avx2()) {
            // four rows at a time, each with the bits `dot_half` gives it alone
            while j + 4 <= r {
                // SAFETY: AVX2, FMA and F16C were detected; the kernel asserts its bounds.
                unsafe { avx::dot_f16_rows::<4>(&v[j * cols..], cols, x, &mut h[j..]) };
                j += 4;
            }
        }
        for (j, hj) in h.iter_mut().enumerate().skip(j) {
            *hj = match self.a {
                Half::F32(v) => dot_f32(&v[j * cols..][..cols], x),
                Half::F16(v) | Half::F16x8(v) => dot_half(Half::F16(&v[j * cols..][..cols]), x),
                Half::I8 { .. } | Half::I8x8 { .. } => unreachable!("8-bit factors are done above"),
            };
        }
        let _ = self.h.set(h);
        self.h.get().expect("just set")
    }
}

/// A vector in f32, or as half-precision bits; or an `[r, rows]` matrix as half-precision bits
/// blocked by 8 columns (`F16x8`, made by `block8`): each run of 8 outputs holds its `r` rows
/// of 8 values contiguously, so a range of outputs is one contiguous read. `I8` and `I8x8` are
/// a down- and an up-projection in 8 bits with their scales (`factors8`'s layout).
#[derive(Clone, Copy)]
pub enum Half<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    F16x8(&'a [u16]),
    I8 { q: &'a [i8], d: &'a [f32] },
    I8x8 { q: &'a [i8], d: &'a [f32] },
}

impl Half<'_> {
    /// Whether both are the same memory (the same adapter's factor), not merely equal values.
    fn same(&self, other: &Half) -> bool {
        match (self, other) {
            (Half::F32(a), Half::F32(b)) => std::ptr::eq(*a, *b),
            (Half::F16(a), Half::F16(b)) | (Half::F16x8(a), Half::F16x8(b)) => std::ptr::eq(*a, *b),
            (Half::I8 { q: a, .. }, Half::I8 { q: b, .. }) | (Half::I8x8 { q: a, .. }, Half::I8x8 { q: b, .. }) => std::ptr::eq(*a, *b),
            _ => false,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Half::F32(v) => v.len(),
            Half::F16(v) | Half::F16x8(v) => v.len(),
            Half::I8 { q, .. } | Half::I8x8 { q, .. } => q.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether it holds an `[r, rows]` matrix.
    pub fn fits(&self, r: usize, rows: usize) -> bool {
        match self {
            Half::F16x8(v) => v.len() == r * rows.div_ceil(8) * 8,
            Half::I8x8 { q, d } => q.len() == r * rows.div_ceil(8) * 8 && d.len() == rows.div_ceil(8),
            Half::I8 { .. } => false,
            _ => self.len() == r * rows,
        }
    }
    /// Element `(j, o)` of an `[r, rows]` matrix.
    fn at(&self, j: usize, o: usize, r: usize, rows: usize) -> f32 {
        match self {
            Half::F32(v) => v[j * rows + o],
            Half::F16(v) => half::f16::from_bits(v[j * rows + o]).to_f32(),
            Half::F16x8(v) => half::f16::from_bits(v[block8_index(j, o, r)]).to_f32(),
            Half::I8 { .. } | Half::I8x8 { .. } => unreachable!("8-bit factors go through factors8's kernels"),
        }
    }
}

fn block8_index(j: usize, o: usize, r: usize) -> usize {
    (o / 8) * r * 8 + j * 8 + o % 8
}

/// An `[r, rows]` row-major f32 matrix as `Half::F16x8` bits (the last block zero-padded).
pub fn block8(m: &[f32], r: usize, rows: usize) -> Vec<u16> {
    let mut out = vec![0u16; r * rows.div_ceil(8) * 8];
    for j in 0..r {
        for o in 0..rows {
            out[block8_index(j, o, r)] = half::f16::from_f32(m[j * rows + o]).to_bits();
        }
    }
    out
}

/// `a · x` for `a` in f32 or half precision.
pub fn dot_half(a: Half, x: &[f32]) -> f32 {
    match a {
        Half::F32(a) => dot_f32(a, x),
        Half::F16(a) if has_avx2() => {
            // SAFETY: AVX2, FMA and F16C were detected.
            unsafe { avx::dot_f16(a, x) }
        }
        Half::F16(a) => a.iter().zip(x).map(|(w, v)| half::f16::from_bits(*w).to_f32() * v).sum(),
        Half::F16x8(_) => unreachable!("a blocked matrix is not a vector"),
        Half::I8 { .. } | Half::I8x8 { .. } => unreachable!("8-bit factors go through factors8's kernels"),
    }
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The parallel tasks' output row ranges for `n` token rows: about four tasks per thread (a
/// 192-row projection in 64-row tasks left one of two threads idle a third of the time), of at
/// most 256 rows, in multiples of 8 (`qx8` groups); of 16 where the wide kernels take the groups
/// in pairs, since a task of an odd number of groups (72 rows of a 576-row projection, 24 of a
/// 192-row one) ran its last group on the 4-token kernel, a ninth to a third of those
/// projections' work. The units are shared out evenly (sizes differ by one unit at most): a
/// 576-row projection in nine tasks of 64 rows left one thread a whole task alone at the end.
fn row_tasks(rows: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    let unit = if kernels_for(n).wide { 16 } else { 8 };
    let units = rows.div_ceil(unit);
    let parts = (rayon::current_num_threads() * 4).min(units).max(units.div_ceil(256 / unit)).max(1);
    (0..parts).map(move |p| ((p * units / parts * unit).min(rows), ((p + 1) * units / parts * unit).min(rows)))
}

/// Which kernels `chunk` runs repacked groups on for `n` tokens: the wide kernels' group pairs
/// (`wide`), and among those AMX tiles for whole chunks of 16 tokens (`tiles`). `row_tasks`
/// sizes tasks and `x8_steps` counts steps by the same choice.
#[derive(Clone, Copy)]
struct Kernels {
    wide: bool,
    tiles: bool,
}

fn kernels_for(n: usize) -> Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = super::qx8::isa();
        let wide = isa.wide() && n >= super::qx8::PAIR_MIN_TOKENS;
        Kernels { wide, tiles: wide && isa == super::qx8::Isa::Amx }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = n;
        Kernels { wide: false, tiles: false }
    }
}

/// `y[t, o] = Σ_k x[t, k] w[o, k]` (+ the row's low-rank term), `y` is `[n, rows]`.
pub fn matmul(w: &QWeight, act: &Act, lora: &[Option<LowRank>], y: &mut [f32]) -> Result<()> {
    matmul_many(act, &mut [Job { w, lora, y }])
}

/// One weight's share of `matmul_many`.
pub struct Job<'a, 'b> {
    pub w: &'a QWeight,
    pub lora: &'a [Option<LowRank<'b>>],
    pub y: &'a mut [f32],
}

/// Several matrices over the same rows (q, k and v; gate and up) in one parallel region: one
/// barrier instead of one per matrix, and the threads share out all their row ranges.
pub fn matmul_many(act: &Act, jobs: &mut [Job]) -> Result<()> {
    let n = act.n;
    for j in jobs.iter_mut() {
        let (rows, cols) = (j.w.rows, j.w.cols);
        if act.cols != cols || j.y.len() != n * rows || j.lora.len() != n {
            return Err(Error::Model(format!("matmul of {n}x{} rows by a {rows}x{cols} weight", act.cols)));
        }
    }
    let q8 = jobs.iter().any(|j| matches!(j.w.kind, Kind::Blocks(..) | Kind::X8(..))).then(|| act.q8());
    let ptrs: Vec<SendPtr> = jobs.iter_mut().map(|j| SendPtr(j.y.as_mut_ptr())).collect();
    let mut tasks = vec![];
    for (ji, j) in jobs.iter().enumerate() {
        tasks.extend(row_tasks(j.w.rows, n).map(|(o0, o1)| (ji, o0, o1)));
    }
    let jobs = &*jobs;
    let ptrs = &ptrs;
    let x = act.x;
    tasks.into_par_iter().for_each(|(ji, o0, o1)| {
        let j = &jobs[ji];
        // SAFETY: tasks write disjoint column ranges [o0, o1) of their job's y, which outlives
        // the loop and is borrowed by nothing else meanwhile.
        let y = unsafe { std::slice::from_raw_parts_mut(ptrs[ji].0, n * j.w.rows) };
        let mut pace = factor_lines(j, n, o0, o1);
        chunk(j.w, x, n, q8, y, o0, o1, &mut pace);
        add_low_rank(j.lora, x, j.w.cols, y, j.w.rows, o0, o1);
    });
    Ok(())
}

/// What the task for outputs `o0..o1` of `j` reads after its base kernel, in that order: the
/// down-projections `A` of the rows whose `h` is not made yet, in the order `add_low_rank`
/// visits them (from row `o0 · n / rows` on: the first task on each thread makes most of them),
/// then the up-projection runs for its outputs (consecutive rows on one adapter share one run).
/// The base kernel asks for them a few lines a step: with many rows it is compute-bound and
/// leaves the memory bus idle. Measured with `bench generate`'s decode steps in turn (32 rows
/// on 32 adapters against 32 on one): the runs in one burst before the kernel, 0.77-0.78x;
/// paced with the `A`s of the task's own share of rows, 0.79-0.80x (the 32-adapter steps about
/// 0.5 ms shorter); with every row's, within the noise of that. Asked for during the previous
/// matrix call instead, 0.71-0.72x. An `A` that consecutive rows share is asked for once: asked
/// for per row, it slowed the one-adapter steps by about 1.5 ms.
fn factor_lines(j: &Job, n: usize, o0: usize, o1: usize) -> Pace {
    let mut pace = Pace::default();
    let (rows, cols) = (j.w.rows.max(1), j.w.cols.max(1));
    let start = o0 * n / rows;
    // rows on one adapter share its A: asked for once per run of them
    let mut last: Option<Half> = None;
    for t in (start..n).chain(0..start) {
        if let Some(l) = &j.lora[t] {
            if let (None, false) = (l.h.get(), last.is_some_and(|p| p.same(&l.a))) {
                match l.a {
                    Half::F32(a) => pace.push(a),
                    Half::F16(a) => pace.push(a),
                    Half::I8 { q, d } => {
                        pace.push(q);
                        pace.push(d);
                    }
                    _ => {}
                }
            }
            last = Some(l.a);
        }
    }
    last = None;
    for l in j.lora.iter().flatten() {
        if !last.is_some_and(|p| p.same(&l.bt)) {
            let r = l.a.len() / cols;
            match l.bt {
                // `[r, rows]` unblocked: a run of outputs in each of the `r` factor rows
                Half::F32(v) => (0..r).for_each(|k| pace.push(&v[(k * rows + o0).min(v.len())..(k * rows + o1).min(v.len())])),
                Half::F16x8(v) => pace.push(bt_run(v, r, o0, o1)),
                Half::I8x8 { q, d } => {
                    pace.push(bt_run(q, r, o0, o1));
                    pace.push(&d[(o0 / 8).min(d.len())..o1.div_ceil(8).min(d.len())]);
                }
                _ => {}
            }
        }
        last = Some(l.bt);
    }
    pace
}

/// Output rows `o0..o1` of `w` for the `n` rows of `x` into `y` (`[n, rows]`), asking for
/// `pf`'s lines over the way.
#[allow(clippy::too_many_arguments)]
fn chunk(w: &QWeight, x: &[f32], n: usize, q8: Option<&[Q8]>, y: &mut [f32], o0: usize, o1: usize, pf: &mut Pace) {
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    if let (Kind::X8(f, data), Some(q)) = (&w.kind, q8) {
        #[allow(unused_mut)]
        let mut g0 = o0 / 8;
        let kernels = kernels_for(n);
        pf.over(x8_steps(o1 / 8 - g0, n, nb, kernels));
        #[cfg(target_arch = "x86_64")]
        // 512-bit group pairs pay where several tokens share each weight load; a lone token is
        // bound by memory, where two interleaved group streams ran 0.6-0.7x the 256-bit kernel
        // (Zen 4). AMX tiles run chunks of 16 tokens: about even with AVX-512 at 16, up to 1.14x
        // at 32, behind it at 4-8 (`bench generate`'s kernel table). Every kernel gives the same
        // bits, so the choice is free to follow n.
        if kernels.wide {
            use super::qx8::PAIR_TOKENS as P;
            use super::qx8_amx::TILE_TOKENS as T;
            let tiles = kernels.tiles;
            while g0 + 2 <= o1 / 8 {
                let mut t = 0;
                while tiles && n - t >= super::qx8::AMX_MIN_TOKENS {
                    let k = (n - t).min(T);
                    let mut out = [[0f32; 16]; T];
                    // SAFETY: AMX (and the AVX-512 it implies) was detected; both groups lie
                    // inside data; rows t..t + k of q hold nb blocks each.
                    unsafe { super::qx8_amx::tile16(*f, data, g0, nb, q[t * nb..].as_ptr(), k, &mut out, pf) };
                    for (i, o) in out.iter().enumerate().take(k) {
                        y[(t + i) * rows + g0 * 8..][..16].copy_from_slice(o);
                    }
                    t += k;
                }
                while t < n {
                    let k = (n - t).min(P);
                    let xs: [*const Q8; P] = std::array::from_fn(|i| q[(t + i.min(k - 1)) * nb..].as_ptr());
                    let mut out = [[0f32; 16]; P];
                    // SAFETY: the ISA was detected; both groups lie inside data; each xs row holds nb blocks.
                    unsafe { super::qx8::pair512(*f, data, g0, nb, &xs, k, &mut out) };
                    pf.step();
                    for (i, o) in out.iter().enumerate().take(k) {
                        y[(t + i) * rows + g0 * 8..][..16].copy_from_slice(o);
                    }
                    t += k;
                }
                g0 += 2;
            }
        }
        #[cfg(target_arch = "x86_64")]
        let isa = super::qx8::isa();
        for g in g0..o1 / 8 {
            let mut t = 0;
            while t < n {
                let k = (n - t).min(4);
                let xs: [*const Q8; 4] = std::array::from_fn(|i| q[(t + i.min(k - 1)) * nb..].as_ptr());
                let mut out = [[0f32; 8]; 4];
                // SAFETY: X8 weights exist only where AVX2, FMA and F16C were detected; each
                // xs row holds nb blocks and the group lies inside data.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    super::qx8::group_with(isa, *f, data, g, nb, &xs, k, &mut out)
                };
                pf.step();
                for (i, o) in out.iter().enumerate().take(k) {
                    y[(t + i) * rows + g * 8..][..8].copy_from_slice(o);
                }
                t += k;
            }
        }
        return;
    }
    let avx2 = has_avx2();
    pf.over((o1 - o0) * n.div_ceil(4));
    for o in o0..o1 {
        let mut t = 0;
        while t < n {
            let g = (n - t).min(4);
            let mut out = [0f32; 4];
            match (&w.kind, q8) {
                (Kind::F32(v), _) => {
                    let wr = &v[o * cols..][..cols];
                    let xs: [&[f32]; 4] = std::array::from_fn(|i| &x[(t + i.min(g - 1)) * cols..][..cols]);
                    if avx2 {
                        // SAFETY: AVX2 and FMA were detected.
                        unsafe { avx::dot_f32_x4(wr, &xs, g, &mut out) }
                    } else {
                        for i in 0..g {
                            out[i] = dot_f32_portable(wr, xs[i]);
                        }
                    }
                }
                (Kind::Blocks(f, b), Some(q)) => {
                    let wr = &b[o * nb * f.bytes()..][..nb * f.bytes()];
                    let xs: [&[Q8]; 4] = std::array::from_fn(|i| &q[(t + i.min(g - 1)) * nb..][..nb]);
                    if avx2 {
                        // SAFETY: AVX2, FMA and F16C were detected; each row of xs holds cols / 32 blocks.
                        unsafe { avx::dot_q_x4(*f, wr, &xs, g, &mut out) }
                    } else {
                        for i in 0..g {
                            out[i] = dot_q(*f, wr, xs[i]);
                        }
                    }
                }
                _ => unreachable!("candle weights are done by the caller; blocks come with their 8-bit rows"),
            }
            for i in 0..g {
                y[(t + i) * rows + o] = out[i];
            }
            pf.step();
            t += g;
        }
    }
}

/// The `Pace::step` calls `chunk` makes over `groups` repacked groups for `n` tokens of `nb`
/// blocks on `kernels`: one per AMX block, one per other kernel call.
fn x8_steps(groups: usize, n: usize, nb: usize, kernels: Kernels) -> usize {
    if !kernels.wide {
        return groups * n.div_ceil(4);
    }
    use super::qx8::{AMX_MIN_TOKENS, PAIR_TOKENS};
    let tiled = if kernels.tiles { n / AMX_MIN_TOKENS * AMX_MIN_TOKENS } else { 0 };
    let per_pair = tiled / super::qx8_amx::TILE_TOKENS * nb + (n - tiled).div_ceil(PAIR_TOKENS);
    groups / 2 * per_pair + groups % 2 * n.div_ceil(4)
}

/// `y[t, o0..o1] += Σ_j h_j bt[j, o0..o1]` for rows with a low-rank term, `h = A x[t]` (`o0`
/// a multiple of 8, as every caller's ranges are).
fn add_low_rank(lora: &[Option<LowRank>], x: &[f32], cols: usize, y: &mut [f32], rows: usize, o0: usize, o1: usize) {
    // tasks of one matrix start at different rows, so those running at once make different
    // rows' `h` instead of the same ones twice; each row's sums are the same in any order
    let n = lora.len();
    let start = if n == 0 { 0 } else { o0 * n / rows.max(1) };
    let mut order = (start..n).chain(0..start).filter_map(|t| Some((t, lora[t].as_ref()?))).peekable();
    while let Some((t, l)) = order.next() {
        // each row's factors are a separate short run (a different adapter per row, in a
        // mixed batch): fetch the next row's run while this one is added, unless it is this one
        if let Some((_, next)) = order.peek().filter(|(_, next)| !next.bt.same(&l.bt)) {
            prefetch_run(next.bt, next.a.len() / cols.max(1), o0, o1);
        }
        let h = l.h(&x[t * cols..][..cols]);
        let yt = &mut y[t * rows + o0..t * rows + o1];
        let r = h.len();
        assert!(l.bt.fits(r, rows) && o0.is_multiple_of(8), "a low-rank term of the wrong shape");
        if let Half::I8x8 { q, d } = l.bt {
            super::factors8::low_rank(h, q, d, o0, yt);
            continue;
        }
        if has_avx2() {
            // SAFETY: AVX2, FMA and F16C were detected; the assert bounds every read.
            unsafe { avx::low_rank(h, l.bt, rows, o0, yt) };
            continue;
        }
        for (j, hj) in h.iter().enumerate() {
            for (i, yv) in yt.iter_mut().enumerate() {
                *yv += hj * l.bt.at(j, o0 + i, r, rows);
            }
        }
    }
}

/// Asks the CPU to start loading the blocked up-projection run for outputs `o0..o1` into L1.
fn prefetch_run(bt: Half, r: usize, o0: usize, o1: usize) {
    match bt {
        Half::F16x8(v) => super::prefetch::now(bt_run(v, r, o0, o1)),
        Half::I8x8 { q, .. } => super::prefetch::now(bt_run(q, r, o0, o1)),
        _ => {}
    }
}

/// The part of a blocked rank-`r` up-projection (`Half::F16x8`, or `Half::I8x8`'s values)
/// that outputs `o0..o1` read: one contiguous run.
fn bt_run<T>(v: &[T], r: usize, o0: usize, o1: usize) -> &[T] {
    &v[(o0 / 8 * r * 8).min(v.len())..(o1.div_ceil(8) * r * 8).min(v.len())]
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *F.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dot product, summed in a fixed order (AVX2 + FMA where the CPU has them).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { avx::dot_f32(a, b) };
    }
    dot_f32_portable(a, b)
}

/// `y += a · x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { avx::axpy(a, x, y) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// Dot product in 8 lanes, summed in a fixed order (the portable build).
pub(crate) fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (x, y) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// A weight row of blocks times an 8-bit row (the portable build).
fn dot_q(f: BlockFmt, w: &[u8], x: &[Q8]) -> f32 {
    let mut acc = 0f32;
    for (blk, xb) in w.chunks_exact(f.bytes()).zip(x) {
        match f {
            BlockFmt::Q4_0 => {
                let mut s = 0i32;
                for j in 0..16 {
                    s += ((blk[2 + j] & 15) as i32 - 8) * xb.qs[j] as i32 + ((blk[2 + j] >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
                }
                acc += f16(blk) * xb.d * s as f32;
            }
            BlockFmt::Q4_1 => {
                let mut s = 0i32;
                for j in 0..16 {
                    s += (blk[4 + j] & 15) as i32 * xb.qs[j] as i32 + (blk[4 + j] >> 4) as i32 * xb.qs[j + 16] as i32;
                }
                acc += f16(blk) * xb.d * s as f32 + f16(&blk[2..]) * xb.s;
            }
            BlockFmt::Q8_0 => {
                let s: i32 = (0..QK).map(|j| blk[2 + j] as i8 as i32 * xb.qs[j] as i32).sum();
                acc += f16(blk) * xb.d * s as f32;
            }
        }
    }
    acc
}

#[path = "quant_avx.rs"]
pub(super) mod avx;

// attention lives in its own module; its public names stay reachable from here
pub use super::attention::{attend, attend_group, widen_f16, KvRows, Scores};

