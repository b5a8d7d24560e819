//! The `maos` binary: everything is in the library target (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    maos_cli::main()
}
