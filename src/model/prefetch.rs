//! Cache-line hints paced across a kernel's steps. A matrix task over rows on many adapters
//! reads each row's own factors after its base kernel, and those reads stalled on memory while
//! the base kernel, compute-bound with many rows, had left the memory bus idle. `Pace` holds
//! the address ranges the task will read next and asks for a few of their lines at every step
//! of the base kernel, so that the loads overlap compute instead of stalling in one burst
//! (`now` asks for a short range at once, for what is read next). Owns no data and reads none:
//! a prefetch cannot fault, so a range is kept as plain addresses, and a hint that comes to
//! nothing changes no result.

/// One cache line.
const LINE: usize = 64;

/// The lines of some address ranges, asked for `per_step` at a time.
#[derive(Default)]
pub struct Pace {
    /// `(first line's address, lines)`.
    spans: Vec<(usize, usize)>,
    span: usize,
    line: usize,
    left: usize,
    per_step: usize,
}

impl Pace {
    /// Adds the memory of `s`, after what was added before.
    pub fn push<T>(&mut self, s: &[T]) {
        if s.is_empty() {
            return;
        }
        let a = s.as_ptr() as usize;
        let first = a & !(LINE - 1);
        let lines = (a + std::mem::size_of_val(s)).div_ceil(LINE) - first / LINE;
        self.spans.push((first, lines));
        self.left += lines;
    }
    /// Spreads the lines not yet asked for over `steps` calls of `step`.
    pub fn over(&mut self, steps: usize) {
        self.per_step = self.left.div_ceil(steps.max(1));
    }
    /// Asks for the next `per_step` lines, into L2 (the kernel's own reads keep L1).
    #[inline(always)]
    pub fn step(&mut self) {
        if self.left == 0 {
            return;
        }
        for _ in 0..self.per_step.min(self.left) {
            if let Some(a) = self.next_line() {
                prefetch_l2(a);
            }
        }
    }
    /// The next line's address, taken without a prefetch.
    #[inline(always)]
    pub fn next_line(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        let (a, n) = self.spans[self.span];
        let at = a + self.line * LINE;
        self.left -= 1;
        self.line += 1;
        if self.line == n {
            self.span += 1;
            self.line = 0;
        }
        Some(at)
    }
    /// Lines not yet asked for.
    pub fn left(&self) -> usize {
        self.left
    }
}

/// Asks for every line of `s` at once, into L1: for what the next few hundred cycles read.
pub fn now<T>(s: &[T]) {
    let a = s.as_ptr() as usize;
    let end = a + std::mem::size_of_val(s);
    let mut line = a & !(LINE - 1);
    while line < end {
        prefetch::<{ HINT_L1 }>(line);
        line += LINE;
    }
}

#[inline(always)]
fn prefetch_l2(addr: usize) {
    prefetch::<{ HINT_L2 }>(addr);
}

#[cfg(target_arch = "x86_64")]
const HINT_L1: i32 = std::arch::x86_64::_MM_HINT_T0;
#[cfg(target_arch = "x86_64")]
const HINT_L2: i32 = std::arch::x86_64::_MM_HINT_T1;
#[cfg(not(target_arch = "x86_64"))]
const HINT_L1: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const HINT_L2: i32 = 0;

#[inline(always)]
fn prefetch<const HINT: i32>(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<HINT>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
