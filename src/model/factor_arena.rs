//! One adapter's factor copies for one decoder, back to back in the order a decode step reads
//! them, in one anonymous mapping asked for huge pages. A step over rows on 32 adapters reads
//! 32 adapters' factors once each: about 840 small allocations an adapter when every pair kept
//! its own four vectors (values and scales of `A` and of `(s·B)ᵀ`), scattered over the heap,
//! each on 4 KB pages of its own. Under a VM every page missed in the TLB costs a two-level
//! walk. Here an adapter's copies span one or two 2 MB pages, and each layer's pieces sit
//! together in slot order. Owns the mapping and the typed pieces carved out of it; knows
//! nothing of adapters, slots or kernels (`lora_slots` decides what goes in).

use crate::error::{Error, Result};

/// Every piece starts on a cache line.
const ALIGN: usize = 64;
/// A transparent huge page on x86-64.
const HUGE: usize = 2 << 20;

/// Where one piece lies: its byte offset and its length in elements.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    at: usize,
    len: usize,
}

/// Element types a piece may hold (plain numbers: every bit pattern is a value).
pub trait Elem: Copy + 'static {}
impl Elem for i8 {}
impl Elem for u16 {}
impl Elem for f32 {}

/// Pieces laid out before the mapping is made (`Layout::piece`), then filled (`Layout::build`).
#[derive(Default)]
pub struct Layout<'a> {
    bytes: usize,
    parts: Vec<(Piece, &'a [u8])>,
}

impl<'a> Layout<'a> {
    /// Reserves room for a copy of `v`, after what was reserved before.
    pub fn piece<T: Elem>(&mut self, v: &'a [T]) -> Piece {
        if v.is_empty() {
            return Piece { at: 0, len: 0 };
        }
        let at = self.bytes.next_multiple_of(ALIGN);
        let bytes = std::mem::size_of_val(v);
        // SAFETY: `T` is a plain number type (`Elem`), so its memory is initialized bytes.
        let raw = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), bytes) };
        self.bytes = at + bytes;
        let p = Piece { at, len: v.len() };
        self.parts.push((p, raw));
        p
    }
    /// The mapping with every reserved piece copied in.
    pub fn build(self) -> Result<Arena> {
        let len = self.bytes;
        // arenas start at different offsets from a huge page's boundary: at one offset, the
        // pieces of every adapter for one slot would all fall in the same cache sets
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let color = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 33 % 2048 * ALIGN;
        // map a huge page more than needed, so that the arena can start past a boundary
        let mut map = memmap2::MmapMut::map_anon(color + len + HUGE).map_err(|e| Error::Model(format!("mapping {len} bytes for adapter factors: {e}")))?;
        let page = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        let start = page + color;
        // a hint only, and for whole huge pages only: a partly used one would hold up to 2 MB
        // more than was asked for (without huge pages the same bytes are read through small ones)
        #[cfg(target_os = "linux")]
        if (color + len) >= HUGE {
            let _ = map.advise_range(memmap2::Advice::HugePage, page, (color + len) / HUGE * HUGE);
        }
        for (p, raw) in &self.parts {
            map[start + p.at..][..raw.len()].copy_from_slice(raw);
        }
        let map = map.make_read_only().map_err(|e| Error::Model(format!("sealing adapter factors: {e}")))?;
        Ok(Arena { map, start, len })
    }
}

/// Pieces copied into one mapping (`Layout::build`).
pub struct Arena {
    map: memmap2::Mmap,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} bytes)", self.len)
    }
}

impl Arena {
    /// Piece `p` as the `T`s it was made from.
    pub fn get<T: Elem>(&self, p: Piece) -> &[T] {
        let bytes = &self.map[self.start..][..self.len][p.at..][..p.len * std::mem::size_of::<T>()];
        assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()), "a factor piece out of alignment");
        // SAFETY: in bounds and aligned (both checked above); `T` is a plain number type, so any
        // bytes are a value; the mapping lives as long as `self` and is read-only.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), p.len) }
    }
    /// Bytes the pieces take.
    pub fn bytes(&self) -> usize {
        self.len
    }
}
