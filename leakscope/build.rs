//! Embeds the BPF object that `cargo xtask build-ebpf` built (the one build path for it).
//! Without it the CLI still builds (so unit tests run anywhere) and says at run time how to
//! build the object. An object older than the BPF sources is refused: embedding it would
//! trace with programs that no longer match this code.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap_or(&manifest);
    let obj = root.join("target/bpfel-unknown-none/release/leakscope");
    let sources = [
        root.join("leakscope-ebpf/src"),
        root.join("leakscope-ebpf/Cargo.toml"),
        root.join("leakscope-common/src"),
        root.join("leakscope-common/Cargo.toml"),
    ];
    println!("cargo:rerun-if-changed={}", obj.display());
    for s in &sources {
        // A directory is watched recursively.
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("leakscope.bpf.o");
    let Ok(bytes) = std::fs::read(&obj) else {
        println!(
            "cargo:warning=BPF object not found at {}; run `cargo xtask build-ebpf` first \
             (the CLI will refuse to trace until then)",
            obj.display()
        );
        std::fs::write(&out, []).unwrap();
        return;
    };
    let built = modified(&obj).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut newer = vec![];
    for s in &sources {
        collect_newer(s, built, &mut newer);
    }
    if !newer.is_empty() {
        newer.sort();
        eprintln!(
            "error: the BPF object {} is older than its sources ({}): run `cargo xtask \
             build-ebpf` (or `cargo xtask build` / `cargo xtask test`, which do), then build again",
            obj.display(),
            newer.join(", ")
        );
        std::process::exit(1);
    }
    std::fs::write(&out, bytes).unwrap();
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Files under `path` (or `path` itself) modified after `built`.
fn collect_newer(path: &Path, built: SystemTime, out: &mut Vec<String>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            collect_newer(&entry.path(), built, out);
        }
    } else if modified(path).is_some_and(|m| m > built) {
        out.push(path.display().to_string());
    }
}
