//! Validated settings for each command, built from the command line by `cli`. Everything
//! downstream takes these, never clap's raw arguments.
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
    /// The process to attach to (0 with `command`).
    pub pid: u32,
    /// `trace -- PROGRAM ARGS…`: start this instead (spawn mode).
    pub command: Vec<std::ffi::OsString>,
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
    /// `--flamegraph`, `--folded`: checked writable, written safely at the end.
    pub flamegraph: Option<crate::output::OutputPath>,
    pub folded: Option<crate::output::OutputPath>,
    /// `--diff`: the flamegraph shows growth since the first report.
    pub flamegraph_diff: bool,
    /// `--prometheus`: where to serve the latest findings.
    pub prometheus: Option<std::net::SocketAddr>,
    /// `--pprof`: the same sites as a pprof profile.
    pub pprof: Option<crate::output::OutputPath>,
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

// One value per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Command {
    Trace(TraceConfig),
    Census(CensusConfig),
}
