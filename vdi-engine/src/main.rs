//! The `vdi-engine` program: the reference VDI engine's command line (see
//! [`vdi_engine::cli`]).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    vdi_engine::cli::main()
}
