//! End-to-end tests: the real `leakscope` binary, real BPF, real interpreters, real C
//! extensions compiled here. They need root; in CI (CI set) a test that cannot run fails.
mod census;
mod errors;
mod sites;
mod support;
mod trace;
