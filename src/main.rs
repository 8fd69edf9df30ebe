//! The `loradex` binary: parses arguments and hands them to `cli`, which calls the library.
fn main() {
    std::process::exit(loradex_cli::main());
}

#[path = "cli/mod.rs"]
mod loradex_cli;
