//! `leakscope`: find what keeps growing in a running Python process, from outside it.
mod aggregate;
mod census;
mod disasm;
mod elf;
mod interpreter;
mod linetable;
mod pause;
mod plan;
mod process;
mod python;
mod report;
mod stacks;
mod tracer;
mod types;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::time::{Duration, Instant};

// Capability bits (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub const NEEDS_PRIVILEGES: &str = "leakscope needs root, or the capabilities CAP_BPF and \
    CAP_PERFMON (to load and attach the probes) and CAP_SYS_PTRACE (to read the target's memory)";

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace object births and deaths in a running CPython; report growth by type and by
    /// allocation site.
    #[command(after_help = "\
Examples:
  sudo leakscope trace --pid 1234                     report every 5 s until Ctrl-C
  sudo leakscope trace --pid 1234 --duration 60 --json > growth.ndjson
  sudo leakscope trace --pid 1234 --stats             also show probe hits and BPF cost
  sudo leakscope trace --pid 1234 --duration 120 --flamegraph leaks.svg

Each birth records the allocating thread's Python stack (up to 64 frames), so reports
also list the GROWING ALLOCATION SITES: type, live count, bytes, rate, and the frames
(function, file and the line being executed), innermost first.

Every report counts objects born since attach: LIVE and LIVE BYTES are the ones still
alive, +BORN/-DIED happened in the last interval, RATE/s is the slope of LIVE over the
whole trace. A type marked ▲ keeps growing: its floor (lowest LIVE within an interval)
set a new high in at least 3 of 4 intervals
(at least 4 intervals), a net gain of at least 10 objects and at least 0.5% of its births.
The final report (on Ctrl-C, --duration, or when the target exits) shows totals.")]
    Trace(TraceArgs),
    /// Count live objects by type from the target's own GC lists: no probes, no cost to the
    /// target between snapshots.
    #[command(after_help = "\
Examples:
  sudo leakscope census --pid 1234                        one snapshot
  sudo leakscope census --pid 1234 --interval 10          show_growth every 10 s until Ctrl-C
  sudo leakscope census --pid 1234 --pause                exact: stops the target while reading

The census walks every interpreter's GC generation lists (and the permanent generation) by
reading the target's memory, validating each object, and lists gc.garbage. It sees only
objects the cycle collector tracks: ints, floats, strings, bytes, dicts of atomic values and
C types without GC support are not on those lists (`leakscope trace` sees them).
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
    /// Stop the target (SIGSTOP) while its lists are read, for an exact snapshot; it is
    /// always resumed (SIGCONT) and the report says how long it was stopped.
    #[arg(long)]
    pause: bool,
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Process id of the running Python program.
    #[arg(long, short)]
    pid: u32,
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
    /// Do not walk Python stacks (types only; cheaper per event).
    #[arg(long)]
    no_stacks: bool,
    /// On builds whose probes cannot see builtins (static/LTO interpreters), do not add
    /// census rows for them (each report otherwise walks the GC lists once; see `census`).
    #[arg(long)]
    no_census: bool,
    /// At the end, write a flamegraph SVG of the surviving allocations of the growing sites
    /// (width = live bytes; the leaf frame is the type, with its live count).
    #[arg(long, value_name = "FILE.svg")]
    flamegraph: Option<std::path::PathBuf>,
    /// At the end, write the same data as folded stacks (`frame;frame;…;type bytes`).
    #[arg(long, value_name = "FILE")]
    folded: Option<std::path::PathBuf>,
    /// Attach every probe at its function's first instruction instead of the cheapest
    /// equivalent one (for measuring what that choice saves; see `cargo xtask bench`).
    #[arg(long, hide = true)]
    entry_probes: bool,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trace(args) => trace(args),
        Command::Census(args) => census(args),
    };
    if let Err(e) = result {
        // A closed stdout (`leakscope … | head`) is not an error.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(0);
        }
        eprintln!("leakscope: error: {e:#}");
        std::process::exit(1);
    }
}

/// Capabilities `trace` needs, in effect.
fn has_privileges() -> bool {
    let caps = capabilities();
    let has = |bit: u32| caps & (1 << bit) != 0;
    has(CAP_SYS_PTRACE) && (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

fn trace(args: TraceArgs) -> Result<()> {
    let process = process::Process::open(args.pid)?;
    if !has_privileges() {
        bail!("{NEEDS_PRIVILEGES}");
    }
    tracer::check_uprobe_support(std::path::Path::new("/sys/bus/event_source/devices/uprobe"))?;
    let interp = interpreter::Interpreter::find(&process)?;
    let mut plan = plan::plan(&process, &interp)?;
    if args.entry_probes {
        plan.at_entries();
    }
    let stack_config = if args.no_stacks {
        None
    } else {
        plan::stack_config(&interp, args.stats)
    };
    let symbolizer = stack_config.and_then(|_| {
        let layout = python::stack_layout(interp.version)?;
        let code_type = interp.runtime_addr("PyCode_Type")?;
        Some(stacks::Symbolizer::new(
            process.memory(),
            interp.version,
            layout,
            code_type,
        ))
    });
    let mut tracer = tracer::Tracer::attach(
        &plan,
        process.pid,
        args.stats,
        stack_config.unwrap_or_default(),
    )?;
    let started = Instant::now();
    eprintln!(
        "leakscope: attached to pid {} ({}): Python {} in {}; {} probes{}; sees {}. Ctrl-C for the final report.",
        process.pid,
        process.comm,
        interp.version,
        interp.target_path,
        plan.probes.len(),
        if symbolizer.is_some() {
            ", Python stacks"
        } else {
            ""
        },
        plan.coverage.sees()
    );
    let resolver = types::Resolver::new(
        process.memory(),
        interp.version,
        interp.ranges.clone(),
        plan.coverage == plan::Coverage::Complete,
    );
    let mut state = State {
        resolver,
        symbolizer,
        agg: aggregate::Aggregator::new(),
        events: Vec::with_capacity(1 << 16),
    };
    let census = if plan.coverage == plan::Coverage::Partial && !args.no_census {
        census::Heap::of(&process, &interp)
            .ok()
            .map(|heap| (heap, aggregate::CensusTrend::default()))
    } else {
        None
    };
    let mut session = Session {
        args: &args,
        plan: &plan,
        pid: process.pid,
        started,
        census,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut drain_tick = tokio::time::interval(Duration::from_millis(10));
        let period = Duration::from_secs_f64(args.interval);
        let mut report_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
        let mut ticks = 0u64;
        let reason = loop {
            tokio::select! {
                _ = drain_tick.tick() => {
                    state.pump(&mut tracer);
                    ticks += 1;
                    if ticks.is_multiple_of(10) && !process.alive() {
                        break "target exited";
                    }
                }
                _ = report_tick.tick() => {
                    state.pump(&mut tracer);
                    session.emit(&tracer, &mut state, None)?;
                }
                _ = tokio::signal::ctrl_c() => break "interrupted",
                _ = sigterm.recv() => break "terminated",
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break "duration",
            }
        };
        state.pump(&mut tracer);
        session.emit(&tracer, &mut state, Some(reason))?;
        anyhow::Ok(())
    })?;
    // Dropping the tracer detaches every probe: the target runs on untouched.
    drop(tracer);
    Ok(())
}

/// Everything user space keeps between reports.
struct State {
    resolver: types::Resolver,
    symbolizer: Option<stacks::Symbolizer>,
    agg: aggregate::Aggregator,
    events: Vec<leakscope_common::Event>,
}

impl State {
    /// Drains the ring buffer into the aggregator.
    fn pump(&mut self, tracer: &mut tracer::Tracer) {
        use leakscope_common::{EVENT_BIRTH, EVENT_FREE};
        tracer.drain(&mut self.events);
        for e in self.events.drain(..) {
            match e.kind {
                EVENT_BIRTH => {
                    if let Some(sym) = &mut self.symbolizer
                        && e.type_ptr == sym.code_type()
                    {
                        sym.code_born(e.addr);
                    }
                    let birth = self
                        .resolver
                        .get(e.type_ptr)
                        .and_then(|t| t.tracked.then_some((t.basicsize, t.itemsize, t.preheader)));
                    let birth = birth.map(|(basicsize, itemsize, preheader)| aggregate::Birth {
                        type_ptr: e.type_ptr,
                        bytes: python::object_bytes(basicsize, itemsize, e.ob_size, preheader),
                        preheader,
                        site: match &mut self.symbolizer {
                            Some(sym) => sym.site(e.stack_id, |id| tracer.stack(id)),
                            None => 0,
                        },
                    });
                    self.agg.birth(e.addr, birth);
                }
                EVENT_FREE => self.agg.free(e.addr),
                _ => {}
            }
        }
    }
}

struct Session<'a> {
    args: &'a TraceArgs,
    plan: &'a plan::Plan,
    pid: u32,
    started: Instant,
    /// Partial builds: the census that adds rows for what the probes cannot see.
    census: Option<(census::Heap, aggregate::CensusTrend)>,
}

impl Session<'_> {
    fn emit(
        &mut self,
        tracer: &tracer::Tracer,
        state: &mut State,
        reason: Option<&str>,
    ) -> Result<()> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let State {
            resolver,
            symbolizer,
            agg,
            ..
        } = state;
        let (mut types, site_rows) = agg.snapshot(elapsed, &mut |t| {
            resolver
                .get(t)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("<type {t:#x}>"))
        });
        let mut census_ms = None;
        if let Some((heap, trend)) = &mut self.census {
            let walk_started = Instant::now();
            let result = census::Walker::new(heap, resolver).run();
            census_ms = Some(walk_started.elapsed().as_secs_f64() * 1e3);
            let unseen: census::Counts = result
                .types
                .into_iter()
                .filter(|(t, _)| resolver.get(*t).is_some_and(|i| !i.tracked))
                .collect();
            let mut name = |t: u64| resolver.get(t).map(|i| i.name.clone()).unwrap_or_default();
            types.extend(trend.add(elapsed, &unseen, &mut name));
            aggregate::sort_rows(&mut types);
        }
        resolver.revalidate();
        let empty = stacks::Sites::default();
        let sites = symbolizer.as_ref().map_or(&empty, |s| &s.sites);
        let site_reports: Vec<report::SiteReport> = site_rows
            .iter()
            .filter(|r| r.live > 0)
            .take(self.args.top)
            .map(|r| {
                let site = sites.get(r.site);
                report::SiteReport {
                    type_name: r.name.clone(),
                    live: r.live,
                    live_bytes: r.live_bytes,
                    births: r.births,
                    deaths: r.deaths,
                    rate_per_s: r.rate_per_s,
                    growing: r.growing,
                    frames: site.frames.clone(),
                    truncated: site.truncated,
                }
            })
            .collect();
        if reason.is_some() {
            self.write_graphs(&site_rows, sites)?;
        }
        let unreadable_stacks = symbolizer.as_ref().map_or(0, |s| s.unreadable_stacks);
        if let Some(s) = symbolizer {
            s.revalidate();
        }
        let walk = tracer.walk();
        let drops = tracer.drops();
        let (probes, programs) = if self.args.stats {
            let hits = tracer.hits(self.plan.probes.len());
            (
                Some(
                    self.plan
                        .probes
                        .iter()
                        .zip(hits)
                        .map(|(p, hits)| report::ProbeStat {
                            probe: p.label.clone(),
                            instruction: p.point.instruction.clone(),
                            emulated: p.point.emulated,
                            hits,
                        })
                        .collect(),
                ),
                Some(
                    tracer
                        .program_stats()
                        .into_iter()
                        .map(|(program, runs, run_time_ns)| report::ProgramStat {
                            program,
                            runs,
                            run_time_ns,
                        })
                        .collect(),
                ),
            )
        } else {
            (None, None)
        };
        let report = report::Report {
            kind: if reason.is_some() {
                "final"
            } else {
                "interval"
            },
            reason: reason.map(str::to_string),
            pid: self.pid,
            elapsed_s: elapsed,
            interval_s: self.args.interval,
            types,
            census_ms,
            sites: site_reports,
            live_objects: agg.live_objects() as u64,
            ignored_births: agg.ignored_births,
            lost: report::Losses {
                ringbuf_full: drops[leakscope_common::DROP_RINGBUF_FULL as usize],
                kernel_read_failed: drops[leakscope_common::DROP_READ_FAILED as usize],
                unreadable_types: resolver.failed_reads,
                no_thread_state: drops[leakscope_common::DROP_NO_TSTATE as usize],
                stack_map_full: drops[leakscope_common::DROP_STACK_MAP_FULL as usize],
                frame_read_failed: drops[leakscope_common::DROP_FRAME_READ_FAILED as usize],
                unreadable_stacks,
            },
            probes,
            programs,
            walk: self.args.stats.then(|| report::WalkStats {
                walks: walk[leakscope_common::WALK_COUNT as usize],
                frames: walk[leakscope_common::WALK_FRAMES as usize],
                ns: walk[leakscope_common::WALK_NS as usize],
                truncated: walk[leakscope_common::WALK_TRUNCATED as usize],
            }),
        };
        let text = if self.args.json {
            report::json(&report) + "\n"
        } else {
            report::text(&report, self.args.top) + "\n"
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .context("writing the report")?;
        out.flush()?;
        Ok(())
    }
}

impl Session<'_> {
    /// `--folded` / `--flamegraph`: the surviving allocations of the growing sites (of every
    /// site with survivors when none grows), one folded line per (site, type).
    fn write_graphs(&self, rows: &[aggregate::TypeRow], sites: &stacks::Sites) -> Result<()> {
        if self.args.folded.is_none() && self.args.flamegraph.is_none() {
            return Ok(());
        }
        let any_growing = rows.iter().any(|r| r.growing && r.live > 0);
        let entries: Vec<(&stacks::Site, String, u64)> = rows
            .iter()
            .filter(|r| r.live > 0 && (r.growing || !any_growing))
            .map(|r| {
                (
                    sites.get(r.site),
                    format!("{} ({} live)", r.name, report::thousands(r.live)),
                    r.live_bytes,
                )
            })
            .collect();
        let folded = stacks::folded(&entries);
        if let Some(path) = &self.args.folded {
            std::fs::write(path, &folded).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.args.flamegraph {
            let title = if any_growing {
                "leakscope: growing allocation sites"
            } else {
                "leakscope: surviving allocations (no site is growing)"
            };
            let subtitle = format!(
                "pid {} · live bytes of objects born since attach, by Python stack and type",
                self.pid
            );
            let svg = report::flamegraph(&folded, title, &subtitle)?;
            std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn census(args: CensusArgs) -> Result<()> {
    let process = process::Process::open(args.pid)?;
    if capabilities() & (1 << CAP_SYS_PTRACE) == 0 {
        bail!("leakscope census needs root, or CAP_SYS_PTRACE (to read the target's memory)");
    }
    let interp = interpreter::Interpreter::find(&process)?;
    let heap = census::Heap::of(&process, &interp)?;
    let mut resolver = types::Resolver::new(
        process.memory(),
        interp.version,
        interp.ranges.clone(),
        true,
    );
    let mut series = census::Series::default();
    let started = Instant::now();
    let count = args
        .count
        .unwrap_or(if args.interval.is_some() { u64::MAX } else { 1 });
    let mut snapshot = 0;
    // Ctrl-C between snapshots ends the series (during a --pause it is held back, see pause.rs).
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while snapshot < count && !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        if snapshot > 0 {
            let until = Instant::now() + Duration::from_secs_f64(args.interval.unwrap_or(0.0));
            while Instant::now() < until && !STOP.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        if !process.alive() {
            if snapshot == 0 {
                bail!("process {} exited", process.pid);
            }
            eprintln!("leakscope: process {} exited", process.pid);
            break;
        }
        let walk_started = Instant::now();
        let paused = if args.pause {
            Some(pause::Paused::stop(process.pid)?)
        } else {
            None
        };
        let result = census::Walker::new(&heap, &mut resolver).run();
        let walk_ms = walk_started.elapsed().as_secs_f64() * 1e3;
        let paused_ms = paused.map(|p| p.resume().as_secs_f64() * 1e3);
        snapshot += 1;
        let mut name = |t: u64| {
            resolver
                .get(t)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("<type {t:#x}>"))
        };
        let report = census::CensusReport {
            kind: "census",
            pid: process.pid,
            snapshot,
            elapsed_s: started.elapsed().as_secs_f64(),
            types: series.add(&result.types, &mut name),
            garbage: census::plain_rows(&result.garbage, &mut name),
            walk: result.stats,
            walk_ms,
            paused_ms,
            not_seen: census::BLIND_SPOT,
        };
        let text = if args.json {
            serde_json::to_string(&report)? + "\n"
        } else {
            census::text(&report, args.top) + "\n"
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .context("writing the report")?;
        out.flush()?;
    }
    Ok(())
}

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
