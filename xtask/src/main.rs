//! `cargo xtask <task>`: the chores around the workspace.
//!
//! - `build-ebpf`: build the BPF object (nightly, `-Z build-std=core`, `bpfel-unknown-none`,
//!   bpf-linker). The CLI's build script embeds whatever this wrote; there is no second path.
//! - `build`: `build-ebpf`, then the release CLI.
//! - `demo`: `build`, then trace the bundled leaking example for 10 s (and write its SVG).
//! - `test`: `build`, then every test one at a time: unit, contract, and the privileged ones
//!   (`#[ignore]`d so that a plain `cargo test` shows them as not run; here
//!   `--include-ignored` runs them, and each fails when it cannot run).
//! - `bench`: five workloads untraced, under leakscope's modes and under its peers (memray,
//!   tracemalloc), interleaved; slowdown tables per interpreter and the time to name a paced
//!   leak (see bench.rs; `--quick` for a smoke run).
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
            run(cargo()
                .args([
                    "test",
                    "--release",
                    "--",
                    "--test-threads=1",
                    "--include-ignored",
                ])
                .args(&args[1..]))
        }
        "demo" => {
            build()?;
            demo()
        }
        "bench" => {
            build()?;
            bench::run(&workspace_root(), &args[1..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <build-ebpf | build | demo | test [filter] | bench [--quick] [options]>"
            );
            if task == "help" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
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
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
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
    // `leakscope/build.rs` refuses an object older than the BPF sources. Cargo leaves the
    // object alone when a change needs no rebuild (a manifest edit that changes nothing), so
    // mark it as current: it was just built from these sources.
    std::fs::File::options()
        .write(true)
        .open(&obj)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .with_context(|| format!("marking {} as current", obj.display()))?;
    eprintln!("BPF object: {}", obj.display());
    Ok(())
}

fn build() -> Result<()> {
    build_ebpf()?;
    run(cargo().args(["build", "--release", "-p", "leakscope"]))
}

/// Runs `tests/python/nested.py` (1000 objects a second leaked through a chain of calls)
/// and traces it for 10 s, writing `target/demo.svg` and `target/demo.folded`.
fn demo() -> Result<()> {
    let root = workspace_root();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pyenv = format!("{home}/.pyenv/versions/3.11.7/bin/python3.11");
    let python = if Path::new(&pyenv).exists() {
        pyenv
    } else {
        "python3".to_string()
    };
    let mut target = Command::new(&python)
        .arg(root.join("tests/python/nested.py"))
        .arg("1000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {python}"))?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!(
        "$ leakscope trace --pid {} --interval 2 --duration 10 --flamegraph target/demo.svg --folded target/demo.folded",
        target.id()
    );
    let result = run(Command::new(root.join("target/release/leakscope")).args([
        "trace",
        "--pid",
        &target.id().to_string(),
        "--interval",
        "2",
        "--duration",
        "10",
        "--flamegraph",
        root.join("target/demo.svg").to_str().unwrap(),
        "--folded",
        root.join("target/demo.folded").to_str().unwrap(),
    ]));
    let _ = target.kill();
    let _ = target.wait();
    result
}
