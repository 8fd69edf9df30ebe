//! loradex: a LoRA/PEFT adapter manager. One frozen base model is loaded once and shared;
//! adapters are read and written in PEFT's own format, stored content-addressed with a SQLite
//! index, trained, combined, merged, and served per request. The library never prints: the
//! `loradex` binary (`src/main.rs`, `src/cli/`) turns arguments into calls of these modules.

pub mod adapters;
pub mod base;
pub mod combine;
pub mod digest;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod peft;
pub mod registry;
pub mod serve;
pub mod store;
pub mod synth;
pub mod train;
pub mod util;

pub use error::{Error, Result};
