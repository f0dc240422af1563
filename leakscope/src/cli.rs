//! The command line: clap's raw arguments, and their validation into `config`.
use crate::config::{CensusConfig, Command, Format, Placement, TraceConfig};
use crate::model::budget::Budget;
use crate::output::OutputPath;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "leakscope",
    version,
    about = "Find memory leaks in running Python processes, from outside, with eBPF",
    long_about = "Find memory leaks in running Python processes, from outside, with eBPF.\n\n\
        `trace` attaches uprobes to the target's interpreter and reports which object types, and \
        which allocation sites (Python stacks), keep growing. `census` counts live objects by type \
        from the garbage collector's own lists, with no probes. No restart, no code change, nothing \
        injected: the target is only read (except `census --pause`, which stops it briefly)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: RawCommand,
}

#[derive(Subcommand)]
enum RawCommand {
    /// Trace object births and deaths in a running CPython; report growth by type and by
    /// allocation site.
    #[command(after_help = "\
Examples:
  sudo leakscope trace --pid 1234                     report every 5 s until Ctrl-C
  sudo leakscope trace --pid 1234 --duration 60 --json > growth.ndjson
  sudo leakscope trace --pid 1234 --stats             also show probe hits and BPF cost
  sudo leakscope trace --pid 1234 --duration 120 --flamegraph leaks.svg
  sudo leakscope trace --pid 1234 --overhead 2        a smaller budget: sample less
  sudo leakscope trace --pid 1234 --exact             every birth and death, whatever it costs
  sudo leakscope trace --pid 1234 --native            C-extension memory too (malloc, mmap)
  sudo leakscope trace --pid 1234 --pprof leaks.pb.gz then: go tool pprof -top leaks.pb.gz
  sudo leakscope trace --pid 1234 --prometheus 127.0.0.1:9464   findings for Prometheus
  sudo leakscope trace -- python app.py --port 8080   start it, traced from its first line

Overhead: every probe hit traps into the kernel (about 1 µs, more with a stack walk), so an
allocation-heavy program would run many times slower traced all the time. leakscope
measures what its probes cost the target (hits × a trap cost it calibrates at start, plus
the BPF programs' own run time) and keeps the average under --overhead (10% by default).
A quiet target fits: it is traced continuously and exactly (\"exact\"). A busy one is
\"sampled\": the probes are attached only for short windows, objects born in a window are
followed afterwards (their deaths seen in later windows, their memory re-read between
windows so a freed or reused block is never counted as a survivor), and reports show
estimates with an uncertainty. Every report says its mode, how much of the time was
traced and the overhead it estimates it imposed.

Each birth records the allocating thread's Python stack (up to 64 frames), so reports
also list the GROWING ALLOCATION SITES: type, live count, bytes, rate, and the frames
(function, file and the line being executed), innermost first.

Every report counts objects born since attach: LIVE and LIVE BYTES are the ones still
alive, +BORN/-DIED happened in the last interval, RATE/s is the slope of LIVE over the
whole trace. A type marked ▲ keeps growing: its floor (lowest LIVE within an interval)
set a new high in at least 3 of 4 intervals
(at least 4 intervals), a net gain of at least 10 objects and at least 0.5% of its births.
The final report (on Ctrl-C, SIGTERM, --duration, or when the target exits) shows totals.
In sampled mode the counts are of the objects born in windows; a site grows when its
followed survivors keep accumulating, and ESTIMATE scales them to the whole time.")]
    Trace(TraceArgs),
    /// Count live objects by type from the target's own GC lists and pymalloc's arenas: no
    /// probes, no cost to the target between snapshots.
    #[command(after_help = "\
Examples:
  sudo leakscope census --pid 1234                        one snapshot
  sudo leakscope census --pid 1234 --interval 10          show_growth every 10 s until Ctrl-C
  sudo leakscope census --pid 1234 --pause                exact: stops the target while reading

The census walks every interpreter's GC generation lists (and the permanent generation) by
reading the target's memory, validating each object, and lists gc.garbage. It sees only
objects the cycle collector tracks: ints, floats, strings, bytes, dicts of atomic values and
C types without GC support are not on those lists (`leakscope trace` sees them).
Each snapshot also walks pymalloc's arenas (the allocator section): live blocks per size
class, and objects of the types without GC support (str, int, float, bytes, ...) found in
its blocks, with their change. It sees only blocks of at most 512 bytes (larger ones come
from malloc). Where the arena table cannot be found (a 3.9-3.11 build stripped of its
`arenas` symbol whose code does not show it either; 3.14+, whose per-interpreter pointer
to it is in no table yet) the report says so and the GC census runs alone.
Without --pause the target keeps running and the counts are as of a moving heap.
With --pause the target is stopped (SIGSTOP) for the walk and always resumed (SIGCONT);
the report says for how long.")]
    Census(CensusArgs),
}

#[derive(clap::Args)]
struct CensusArgs {
    /// Process id of the running Python program.
    #[arg(long, short)]
    pid: u32,
    /// Repeat every this many seconds, showing growth per type between snapshots.
    #[arg(long, short, value_parser = positive_secs)]
    interval: Option<f64>,
    /// Stop after this many snapshots (default: 1, or until Ctrl-C with --interval).
    #[arg(long, short)]
    count: Option<u64>,
    /// Write each snapshot as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Rows per table.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Stop the target (SIGSTOP) while its lists and arenas are read, for an exact snapshot; it is
    /// always resumed (SIGCONT) and the report says how long it was stopped.
    #[arg(long)]
    pause: bool,
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Process id of the running Python program.
    #[arg(
        long,
        short,
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    pid: Option<u32>,
    /// Instead of --pid: the program to start (after `--`), traced before it runs any
    /// Python code. Signals leakscope gets are passed on to it; leakscope ends when it does,
    /// with its exit status.
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    command: Vec<std::ffi::OsString>,
    /// Seconds between reports.
    #[arg(long, short, default_value_t = 5.0, value_parser = positive_secs)]
    interval: f64,
    /// Stop after this many seconds and print the final report (default: until Ctrl-C or
    /// until the target exits).
    #[arg(long, short, value_parser = positive_secs)]
    duration: Option<f64>,
    /// Write each report as one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Rows per table.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Add probe hit counts and the BPF programs' own run time (kernel BPF stats).
    #[arg(long)]
    stats: bool,
    /// Budget for the extra CPU time the probes cost the target, in percent of its own
    /// time: the probes stay attached all the time when that fits, only during sampling
    /// windows otherwise.
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = percent,
          conflicts_with = "exact")]
    overhead: f64,
    /// Keep the probes attached all the time, whatever it costs (today's allocation-heavy
    /// code runs 10–30x slower); the reports still say what it cost.
    #[arg(long)]
    exact: bool,
    /// Do not walk Python stacks (types only; cheaper per event).
    #[arg(long)]
    no_stacks: bool,
    /// Also trace native memory: the C library's malloc, calloc, realloc, the aligned
    /// allocators and anonymous mmap, with free and munmap, and the interpreter's PyMem_*
    /// when an extension calls them. Blocks allocated by C extensions and the libraries
    /// they call are reported as `native heap` / `native mmap` / `native PyMem` rows at
    /// mixed stacks (the C functions, then the Python line that called in); the
    /// interpreter's own allocations (pymalloc's arenas, large objects) are not. A block
    /// whose address a live extension object keeps (an ndarray's data) counts in that
    /// object's bytes instead. Off by default: the allocator probes trap on every malloc and free of the process,
    /// and their cost counts in --overhead. Needs the stack walks (not with --no-stacks).
    #[arg(long, conflicts_with = "no_stacks")]
    native: bool,
    /// On builds whose probes cannot see builtins (static/LTO interpreters), do not add
    /// census rows for them (a census otherwise walks the GC lists, on its own thread, once
    /// per report; see `census`).
    #[arg(long)]
    no_census: bool,
    /// At the end, write a flamegraph SVG of the surviving allocations of the growing sites
    /// (width = live bytes; the leaf frame is the type, with its live count).
    #[arg(long, value_name = "FILE.svg")]
    flamegraph: Option<PathBuf>,
    /// Draw the flamegraph as growth: every surviving site's live bytes at the first report
    /// against the end (inferno's differential flamegraph: width = bytes at the end, red =
    /// grew, blue = shrank), so that what grew stands out from what was merely alive.
    #[arg(long, requires = "flamegraph")]
    diff: bool,
    /// At the end, write the same data as folded stacks (`frame;frame;…;type bytes`).
    #[arg(long, value_name = "FILE")]
    folded: Option<PathBuf>,
    /// At the end, write the same sites as a gzip-compressed pprof profile (for `go tool
    /// pprof`, Pyroscope, Parca, Grafana): sample types inuse_objects, inuse_space (the
    /// default) and growth_objects (per second); the type is the leaf frame; labels type,
    /// growing, finding. Try `go tool pprof -top FILE` or `-traces`.
    #[arg(long, value_name = "FILE.pb.gz")]
    pprof: Option<PathBuf>,
    /// Serve the latest report's findings at http://ADDR/metrics in Prometheus' text
    /// format: per site (type, innermost frame, growing) live objects, live bytes and growth
    /// per second; the estimated overhead and traced fraction. For example 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR:PORT")]
    prometheus: Option<std::net::SocketAddr>,
    /// Show the BPF programs' own log on stderr: their rare failure paths (a failed read,
    /// an unexpected thread state), each logged once per probe.
    #[arg(long, short)]
    verbose: bool,
    /// Attach every probe at its function's first instruction instead of the cheapest
    /// equivalent one (for measuring what that choice saves; see `cargo xtask bench`).
    #[arg(long, hide = true)]
    entry_probes: bool,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!("{s:?} is not a percentage in (0, 100]")),
    }
}

fn top(n: usize) -> Result<usize> {
    if n == 0 {
        bail!("--top must be at least 1");
    }
    Ok(n)
}

/// An output file must be writable where it is asked for: checked before attaching, so a
/// typo does not cost a whole trace.
fn output_file(flag: &str, path: Option<PathBuf>) -> Result<Option<OutputPath>> {
    path.map(|p| OutputPath::check(flag, &p)).transpose()
}

impl Cli {
    /// Validates the raw arguments into a configuration.
    pub fn into_config(self) -> Result<Command> {
        Ok(match self.command {
            RawCommand::Trace(a) => Command::Trace(TraceConfig {
                pid: a.pid.unwrap_or(0),
                command: a.command,
                interval: Duration::from_secs_f64(a.interval),
                duration: a.duration.map(Duration::from_secs_f64),
                format: if a.json { Format::Json } else { Format::Text },
                top: top(a.top)?,
                stats: a.stats,
                stacks: !a.no_stacks,
                native: a.native,
                census_rows: !a.no_census,
                flamegraph: output_file("--flamegraph", a.flamegraph)?,
                folded: output_file("--folded", a.folded)?,
                pprof: output_file("--pprof", a.pprof)?,
                flamegraph_diff: a.diff,
                prometheus: a.prometheus,
                placement: if a.entry_probes {
                    Placement::Entries
                } else {
                    Placement::Cheapest
                },
                verbose: a.verbose,
                budget: if a.exact {
                    Budget::Exact
                } else {
                    Budget::Overhead(a.overhead / 100.0)
                },
            }),
            RawCommand::Census(a) => {
                if a.count == Some(0) {
                    bail!("--count must be at least 1");
                }
                Command::Census(CensusConfig {
                    pid: a.pid,
                    interval: Duration::from_secs_f64(a.interval.unwrap_or(0.0)),
                    count: match (a.count, a.interval) {
                        (Some(n), _) => Some(n),
                        (None, Some(_)) => None,
                        (None, None) => Some(1),
                    },
                    format: if a.json { Format::Json } else { Format::Text },
                    top: top(a.top)?,
                    pause: a.pause,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command> {
        Cli::try_parse_from(std::iter::once("leakscope").chain(args.iter().copied()))?.into_config()
    }

    #[test]
    fn trace_defaults() {
        let Command::Trace(c) = parse(&["trace", "--pid", "7"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.pid, c.interval, c.duration),
            (7, Duration::from_secs(5), None)
        );
        assert_eq!(
            (c.format, c.top, c.stacks, c.census_rows),
            (Format::Text, 20, true, true)
        );
        assert_eq!(c.placement, Placement::Cheapest);
        assert_eq!(c.budget, Budget::Overhead(0.10));
    }

    #[test]
    fn overhead_is_a_percentage_and_exact_excludes_it() {
        let budget = |args: &[&str]| match parse(args).unwrap() {
            Command::Trace(c) => c.budget,
            _ => panic!(),
        };
        assert_eq!(
            budget(&["trace", "-p", "1", "--overhead", "2.5"]),
            Budget::Overhead(0.025)
        );
        assert_eq!(
            budget(&["trace", "-p", "1", "--overhead", "5%"]),
            Budget::Overhead(0.05)
        );
        assert_eq!(budget(&["trace", "-p", "1", "--exact"]), Budget::Exact);
        let err = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert!(err(&["trace", "-p", "1", "--overhead", "0"]).contains("percentage"));
        assert!(err(&["trace", "-p", "1", "--overhead", "150"]).contains("percentage"));
        assert!(err(&["trace", "-p", "1", "--overhead", "5", "--exact"]).contains("--exact"));
    }

    #[test]
    fn census_count_defaults_to_one_snapshot_or_forever_with_an_interval() {
        let count = |args: &[&str]| match parse(args).unwrap() {
            Command::Census(c) => c.count,
            _ => panic!(),
        };
        assert_eq!(count(&["census", "-p", "1"]), Some(1));
        assert_eq!(count(&["census", "-p", "1", "-i", "2"]), None);
        assert_eq!(count(&["census", "-p", "1", "-c", "3"]), Some(3));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert!(err(&["trace", "-p", "1", "--top", "0"]).contains("--top"));
        assert!(err(&["census", "-p", "1", "--count", "0"]).contains("--count"));
        assert!(err(&["trace", "-p", "1", "-i", "0"]).contains("positive number of seconds"));
        assert!(err(&["trace", "-p", "1", "-d", "inf"]).contains("positive number of seconds"));
        assert!(
            err(&["trace", "-p", "1", "--flamegraph", "/nonexistent/dir/x.svg"])
                .contains("no such directory")
        );
    }
}
