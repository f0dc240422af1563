//! Embeds the BPF object that `cargo xtask build-ebpf` built (the one build path for it).
//! Without it the CLI still builds (so unit tests run anywhere) and says at run time how to
//! build the object.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let obj = root.join("target/bpfel-unknown-none/release/leakscope");
    println!("cargo:rerun-if-changed={}", obj.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("leakscope.bpf.o");
    match std::fs::read(&obj) {
        Ok(bytes) => std::fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=BPF object not found at {}; run `cargo xtask build-ebpf` first \
                 (the CLI will refuse to trace until then)",
                obj.display()
            );
            std::fs::write(&out, []).unwrap();
        }
    }
}
