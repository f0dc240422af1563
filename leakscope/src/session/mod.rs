//! The commands: `trace` (probes, events, reports) and `census` (GC-list and allocator
//! snapshots). Each ties the layers together for one run; what they compute lives in the
//! layers. `free`: the free signals a trace walks on its own thread; `retention`: the final
//! report's leak findings and chains; `metrics`: `--prometheus`'s HTTP endpoint; `live`: the
//! refreshing view on a terminal.
pub mod census;
pub mod free;
pub mod live;
pub mod metrics;
pub mod retention;
pub mod trace;

/// What `trace` says when it lacks privileges (also used to explain kernel EPERMs).
pub const NEEDS_PRIVILEGES: &str = "leakscope needs root, or the capabilities CAP_BPF and \
    CAP_PERFMON (to load and attach the probes) and CAP_SYS_PTRACE (to read the target's memory)";

// Capability bits (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// CapEff of /proc/self/status.
fn capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has(bit: u32) -> bool {
    capabilities() & (1 << bit) != 0
}

/// The capabilities `trace` needs are in effect.
fn can_trace() -> bool {
    has(CAP_SYS_PTRACE) && (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

/// The capability `census` needs is in effect.
fn can_read_memory() -> bool {
    has(CAP_SYS_PTRACE)
}

/// Writes one report to stdout and flushes it (a closed pipe surfaces as an io error,
/// which `main` turns into exit 0).
fn print(text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("writing the report")?;
    out.flush().context("writing the report")?;
    Ok(())
}
