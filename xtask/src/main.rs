//! `cargo xtask <task>`: the chores around the workspace.
//!
//! - `build-ebpf`: build the BPF object (nightly, `-Z build-std=core`, `bpfel-unknown-none`,
//!   bpf-linker). The CLI's build script embeds whatever this wrote; there is no second path.
//! - `build`: `build-ebpf`, then the release CLI.
//! - `test`: `build`, then every test (unit, and privileged end to end) one at a time.
//! - `bench`: traced against untraced runs of a fixed workload, side by side (see bench.rs).
mod bench;

use anyhow::{Context, Result, bail};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    match task {
        "build-ebpf" => build_ebpf(),
        "build" => build(),
        "test" => {
            build()?;
            run(cargo().args(["test", "--release", "--", "--test-threads=1"]).args(&args[1..]))
        }
        "bench" => {
            build()?;
            bench::run(&workspace_root(), &args[1..])
        }
        _ => {
            eprintln!("usage: cargo xtask <build-ebpf | build | test [filter] | bench [--quick]>");
            if task == "help" { Ok(()) } else { bail!("unknown task {task:?}") }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Where `build-ebpf` leaves the object; `leakscope/build.rs` reads the same path.
pub const BPF_OBJECT: &str = "target/bpfel-unknown-none/release/leakscope";

fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("leakscope-ebpf"))
        // The stable toolchain's cargo sets these; the nightly build must not inherit them.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf")
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    run(&mut cmd).context(
        "building the BPF object needs: rustup toolchain nightly with rust-src, and bpf-linker \
         (see README.md, Requirements)",
    )?;
    let obj = root.join(BPF_OBJECT);
    if !obj.exists() {
        bail!("{} was not produced", obj.display());
    }
    eprintln!("BPF object: {}", obj.display());
    Ok(())
}

fn build() -> Result<()> {
    build_ebpf()?;
    run(cargo().args(["build", "--release", "-p", "leakscope"]))
}
