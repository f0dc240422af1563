//! Validated settings for each command, built from the command line by `cli`. Everything
//! downstream takes these, never clap's raw arguments.
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON object per report, one per line.
    Json,
}

/// Where entry probes go (see `probes::disasm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The first kernel-emulated instruction every call reaches (the default).
    Cheapest,
    /// Every function's first instruction (to measure what the choice saves).
    Entries,
}

#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub pid: u32,
    pub interval: Duration,
    /// Stop after this long (else until Ctrl-C, SIGTERM or the target's exit).
    pub duration: Option<Duration>,
    pub format: Format,
    /// Rows per table (at least 1).
    pub top: usize,
    pub stats: bool,
    /// Walk Python stacks at births.
    pub stacks: bool,
    /// Trace the C library's allocator too (`--native`).
    pub native: bool,
    /// On partial builds, add census rows for builtins the probes cannot see.
    pub census_rows: bool,
    pub flamegraph: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub placement: Placement,
    /// Show the BPF programs' log (rare failure paths) on stderr.
    pub verbose: bool,
    /// `--overhead` / `--exact`.
    pub budget: crate::model::budget::Budget,
}

#[derive(Clone, Debug)]
pub struct CensusConfig {
    pub pid: u32,
    /// Time between snapshots (zero: back to back).
    pub interval: Duration,
    /// Snapshots to take (`None`: until Ctrl-C).
    pub count: Option<u64>,
    pub format: Format,
    pub top: usize,
    pub pause: bool,
}

#[derive(Clone, Debug)]
pub enum Command {
    Trace(TraceConfig),
    Census(CensusConfig),
}
