//! The `leakscope` binary: parse, validate, run, exit. Everything else is in the library.
use clap::Parser;
use leakscope::{cli::Cli, config::Command, session};

fn main() {
    std::process::exit(run());
}

/// The exit code: 0 on success (in spawn mode the program's own; and 0 when stdout is closed
/// under us: `leakscope … | head`),
/// 1 after an error, printed as one line with its whole chain; 2 for bad arguments (clap's,
/// and values refused while validating them, such as an output file that cannot be
/// written).
fn run() -> i32 {
    let command = match Cli::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leakscope: error: {e:#}");
            return 2;
        }
    };
    let result = match command {
        Command::Trace(cfg) => session::trace::run(&cfg),
        Command::Census(cfg) => session::census::run(&cfg).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("leakscope: error: {e:#}");
            1
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
