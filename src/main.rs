//! The `loradex` binary: parses arguments and hands them to `cli`, which calls the library.
fn main() {
    tune_malloc();
    std::process::exit(loradex_cli::main());
}

/// Large tensors are allocated and freed every forward/backward. glibc serves them with fresh
/// `mmap`s and returns heap tops to the kernel, so every step re-faults zeroed pages (17% of a
/// training step in `perf`). Keep up to 32 MiB blocks on the heap and do not trim it.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        if std::env::var_os("LORADEX_DEFAULT_MALLOC").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        }
    }
}

#[path = "cli/mod.rs"]
mod loradex_cli;
