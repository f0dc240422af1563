//! End-to-end tests: the real `leakscope` binary, real BPF, real interpreters, real C
//! extensions compiled here. Privileged ones are `#[ignore]`d
//! (a plain `cargo test` lists them as ignored); `cargo xtask test` runs them all as root, and
//! one that cannot run fails.
mod allocator;
mod census;
mod cycles;
mod errors;
mod findings;
mod growth;
mod live;
mod native;
mod outputs;
mod overhead;
mod sites;
mod spawn;
mod support;
mod trace;
mod versions;
