//! leakscope: find what keeps growing in a running Python process, from outside it.
//!
//! The layers, from the target outwards (ARCHITECTURE.md has the map and the invariants):
//! - [`target`]: reading the target process: `/proc`, its memory (behind a trait), ELF
//!   files, finding the interpreter; `--pause`, the one place that changes its state.
//! - [`cpython`]: every CPython layout fact, per version, with where it was taken from.
//! - [`probes`]: which functions to probe and where (plan, disassembly), and the kernel side
//!   seen from user space (load, attach, drain, counters).
//! - [`resolve`]: type objects and code objects read from the target, cached; native
//!   allocations' mixed stacks.
//! - [`native`]: native stacks: CFI unwinding (framehop) and symbolization (blazesym) of the
//!   target's C frames, from its files.
//! - [`model`]: the pure core: live set, growth, allocation sites.
//! - [`census`]: the probe-free census of the GC lists.
//! - [`report`]: report data, text, JSON, folded stacks and flamegraphs. Pure.
//! - [`session`]: the `trace` and `census` commands: the loops that tie the rest together.
//! - [`config`]: validated settings, built from the command line.
//! - [`output`]: the files a trace writes: checked before it starts, written safely.
pub mod census;
pub mod cli;
pub mod config;
pub mod cpython;
pub mod model;
pub mod native;
pub mod output;
pub mod probes;
pub mod report;
pub mod resolve;
pub mod session;
pub mod target;
