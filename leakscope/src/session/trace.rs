//! `leakscope trace`: attach, then loop: drain events in bounded batches into the pipeline,
//! emit a report every `--interval`, end on the deadline, Ctrl-C, SIGTERM or the target's
//! exit with a final report. The loop never waits behind work: a batch is at most `BATCH`
//! events, signals and clocks are looked at between batches (first), and the census that
//! adds rows on partial builds walks on its own thread.
use crate::census::{Heap, Walker};
use crate::config::{Format, Placement, TraceConfig};
use crate::cpython;
use crate::model::aggregate::{self, Aggregator, CensusTrend, TypeRow};
use crate::model::sites::{self, Sites};
use crate::probes::kernel::{self, AttachOptions, Tracer};
use crate::probes::plan::{self, Coverage, Plan};
use crate::report::{self, EndReason, Report, ReportKind};
use crate::resolve::{symbols::Symbolizer, types::Resolver};
use crate::target::{Process, interpreter::Interpreter};
use anyhow::{Context, Result, bail};
use leakscope_common::{EVENT_BIRTH, EVENT_FREE, Event, RawStack};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most events taken from the ring buffer per turn of the loop. Between two batches the
/// loop looks at signals, the deadline and the report clock, so none of them waits behind
/// a busy target. (At ~100 ns an event, a batch is a couple of milliseconds.)
pub const BATCH: usize = 16_384;

/// Events in, live set out: what user space does with every event. Reads the target only
/// through the resolver and the symbolizer (cached; a type or code object is read once).
pub struct Pipeline {
    pub resolver: Resolver,
    pub symbolizer: Option<Symbolizer>,
    pub agg: Aggregator,
    /// Events of a kind this side does not know (never silently dropped).
    pub unknown_events: u64,
}

impl Pipeline {
    pub fn new(resolver: Resolver, symbolizer: Option<Symbolizer>) -> Self {
        Pipeline {
            resolver,
            symbolizer,
            agg: Aggregator::new(),
            unknown_events: 0,
        }
    }

    /// Feeds events in order; `stack` reads a kernel stack the first time its id is seen.
    pub fn feed(&mut self, events: &[Event], stack: &mut dyn FnMut(u64) -> Option<RawStack>) {
        for e in events {
            match e.kind {
                EVENT_BIRTH => self.birth(e, stack),
                EVENT_FREE => self.agg.free(e.addr),
                _ => self.unknown_events += 1,
            }
        }
    }

    fn birth(&mut self, e: &Event, stack: &mut dyn FnMut(u64) -> Option<RawStack>) {
        if let Some(sym) = &mut self.symbolizer
            && e.type_ptr == sym.code_type()
        {
            sym.code_born(e.addr);
        }
        let birth = match self.resolver.get(e.type_ptr) {
            Some(t) if t.tracked => Some(aggregate::Birth {
                type_ptr: e.type_ptr,
                bytes: cpython::object_bytes(t.basicsize, t.itemsize, e.ob_size, t.preheader),
                preheader: t.preheader,
                site: match &mut self.symbolizer {
                    Some(sym) => sym.site(e.stack_id, &mut *stack),
                    None => 0,
                },
            }),
            _ => None,
        };
        self.agg.birth(e.addr, birth);
    }
}

/// One census as the trace uses it: counts of the types the probes cannot see.
struct CensusSample {
    /// Seconds since attach, at the middle of the walk.
    at_s: f64,
    walk_ms: f64,
    /// (type, name, objects, bytes).
    unseen: Vec<(u64, String, u64, u64)>,
}

/// The census on its own thread: a walk of 1M objects takes about 2 s, and the loop must
/// not wait for it. One walk at a time; the report uses the newest finished one.
struct CensusWorker {
    requests: mpsc::Sender<()>,
    results: mpsc::Receiver<CensusSample>,
    in_flight: bool,
}

impl CensusWorker {
    fn start(heap: Heap, mut resolver: Resolver, started: Instant) -> Result<CensusWorker> {
        let (requests, rx) = mpsc::channel::<()>();
        let (tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("census".into())
            .spawn(move || {
                for () in rx {
                    let t0 = started.elapsed().as_secs_f64();
                    let walk_started = Instant::now();
                    let census = Walker::new(&heap, &mut resolver).run();
                    let walk_s = walk_started.elapsed().as_secs_f64();
                    let unseen = census
                        .types
                        .into_iter()
                        .filter_map(|(t, (n, b))| {
                            let info = resolver.get(t)?;
                            (!info.tracked).then(|| (t, info.name.clone(), n, b))
                        })
                        .collect();
                    resolver.revalidate();
                    let sample = CensusSample {
                        at_s: t0 + walk_s / 2.0,
                        walk_ms: walk_s * 1e3,
                        unseen,
                    };
                    if tx.send(sample).is_err() {
                        break;
                    }
                }
            })
            .context("starting the census thread")?;
        Ok(CensusWorker {
            requests,
            results,
            in_flight: false,
        })
    }

    /// Asks for a walk unless one is under way.
    fn request(&mut self) {
        if !self.in_flight && self.requests.send(()).is_ok() {
            self.in_flight = true;
        }
    }

    /// The newest finished walk, if one finished since the last call.
    fn take(&mut self) -> Option<CensusSample> {
        let mut newest = None;
        while let Ok(s) = self.results.try_recv() {
            self.in_flight = false;
            newest = Some(s);
        }
        newest
    }
}

/// Census rows on partial builds: off, failed to set up (said in every report), or running.
enum CensusRows {
    Off,
    Failed(String),
    On {
        worker: CensusWorker,
        trend: CensusTrend,
        rows: Vec<TypeRow>,
        walk_ms: Option<f64>,
    },
}

pub fn run(cfg: &TraceConfig) -> Result<()> {
    let process = Process::open(cfg.pid)?;
    if !super::can_trace() {
        bail!("{}", super::NEEDS_PRIVILEGES);
    }
    kernel::check_uprobe_support(std::path::Path::new("/sys/bus/event_source/devices/uprobe"))?;
    let interp = Interpreter::find(&process)?;
    let mut plan = plan::plan(&process, &interp)?;
    if cfg.placement == Placement::Entries {
        plan.at_entries();
    }
    // 3.13+: the layout comes from the interpreter's own _Py_DebugOffsets, cross-checked.
    let layout = if cfg.stacks {
        match cpython::stack_layout_from(interp.version, interp.binary.section(".PyRuntime")) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("leakscope: tracing without Python stacks: {e}");
                None
            }
        }
    } else {
        None
    };
    let stack_config = layout
        .as_ref()
        .and_then(|l| plan::stack_config(&interp, l, cfg.stats));
    let symbolizer = stack_config.and(layout).and_then(|layout| {
        let code_type = interp.runtime_addr("PyCode_Type")?;
        Some(Symbolizer::new(
            process.memory(),
            interp.version,
            layout,
            code_type,
        ))
    });
    let mut tracer = Tracer::attach(
        &plan,
        process.pid,
        &AttachOptions {
            stats: cfg.stats,
            stack_config: stack_config.unwrap_or_default(),
            verbose: cfg.verbose,
        },
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
    let resolver = |mem| {
        Resolver::new(
            mem,
            interp.version,
            interp.ranges.clone(),
            plan.coverage == Coverage::Complete,
        )
    };
    let mut pipeline = Pipeline::new(resolver(process.memory()), symbolizer);
    let census = if plan.coverage == Coverage::Partial && cfg.census_rows {
        match Heap::of(&process, &interp)
            .and_then(|heap| CensusWorker::start(heap, resolver(process.memory()), started))
        {
            Ok(mut worker) => {
                worker.request();
                CensusRows::On {
                    worker,
                    trend: CensusTrend::default(),
                    rows: vec![],
                    walk_ms: None,
                }
            }
            Err(e) => CensusRows::Failed(format!("{e:#}")),
        }
    } else {
        CensusRows::Off
    };
    let mut session = Session {
        cfg,
        plan: &plan,
        pid: process.pid,
        started,
        census,
        events: Vec::with_capacity(BATCH),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        use tokio::time::{self, MissedTickBehavior};
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut drain_tick = time::interval(Duration::from_millis(10));
        drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut alive_tick = time::interval(Duration::from_millis(100));
        alive_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut report_tick = time::interval_at(time::Instant::now() + cfg.interval, cfg.interval);
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let deadline = cfg.duration.map(|d| time::Instant::now() + d);
        let deadline_sleep = time::sleep_until(deadline.unwrap_or_else(time::Instant::now));
        tokio::pin!(deadline_sleep);
        // A full batch means more is waiting: take the next one as soon as the loop has
        // looked at everything else (yield_now lets the runtime poll its timers and signals).
        let mut backlog = false;
        let reason = loop {
            tokio::select! {
                biased;
                _ = sigint.recv() => break EndReason::Interrupted,
                _ = sigterm.recv() => break EndReason::Terminated,
                _ = &mut deadline_sleep, if deadline.is_some() => break EndReason::Duration,
                _ = alive_tick.tick() => {
                    if !process.alive() {
                        break EndReason::TargetExited;
                    }
                }
                _ = report_tick.tick() => session.emit(&tracer, &mut pipeline, None)?,
                _ = tokio::task::yield_now(), if backlog => {
                    backlog = session.pump(&mut tracer, &mut pipeline);
                }
                _ = drain_tick.tick(), if !backlog => {
                    backlog = session.pump(&mut tracer, &mut pipeline);
                }
            }
        };
        // What is queued now belongs to the trace; take it, but within a bounded time.
        let until = Instant::now() + Duration::from_millis(200);
        while session.pump(&mut tracer, &mut pipeline) && Instant::now() < until {}
        session.emit(&tracer, &mut pipeline, Some(reason))?;
        anyhow::Ok(())
    })?;
    // Dropping the tracer detaches every probe: the target runs on untouched.
    drop(tracer);
    Ok(())
}

struct Session<'a> {
    cfg: &'a TraceConfig,
    plan: &'a Plan,
    pid: u32,
    started: Instant,
    census: CensusRows,
    events: Vec<Event>,
}

impl Session<'_> {
    /// One batch from the ring buffer into the pipeline; true when more is waiting.
    fn pump(&mut self, tracer: &mut Tracer, pipeline: &mut Pipeline) -> bool {
        self.events.clear();
        let more = tracer.drain(&mut self.events, BATCH);
        pipeline.feed(&self.events, &mut |id| tracer.stack(id));
        more
    }

    fn emit(
        &mut self,
        tracer: &Tracer,
        pipeline: &mut Pipeline,
        reason: Option<EndReason>,
    ) -> Result<()> {
        let cfg = self.cfg;
        let elapsed = self.started.elapsed().as_secs_f64();
        let Pipeline {
            resolver,
            symbolizer,
            agg,
            unknown_events,
        } = pipeline;
        let (mut types, site_rows) = agg.snapshot(elapsed, &mut |t| {
            resolver
                .get(t)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("<type {t:#x}>"))
        });
        let (mut census_ms, mut census_error) = (None, None);
        match &mut self.census {
            CensusRows::Off => {}
            CensusRows::Failed(e) => census_error = Some(e.clone()),
            CensusRows::On {
                worker,
                trend,
                rows,
                walk_ms,
            } => {
                if let Some(sample) = worker.take() {
                    let counts = sample
                        .unseen
                        .iter()
                        .map(|&(t, _, n, b)| (t, (n, b)))
                        .collect();
                    let names: hashbrown::HashMap<u64, String> = sample
                        .unseen
                        .into_iter()
                        .map(|(t, name, _, _)| (t, name))
                        .collect();
                    *rows = trend.add(sample.at_s, &counts, &mut |t| {
                        names.get(&t).cloned().unwrap_or_default()
                    });
                    *walk_ms = Some(sample.walk_ms);
                }
                if reason.is_none() {
                    worker.request();
                }
                types.extend(rows.iter().cloned());
                aggregate::sort_rows(&mut types);
                census_ms = *walk_ms;
            }
        }
        resolver.revalidate();
        let empty = Sites::default();
        let sites = symbolizer.as_ref().map_or(&empty, |s| &s.sites);
        // Sites with survivors, or with births in this interval (in the whole trace, for the
        // final report): a churning site shows up, as not growing.
        let site_reports: Vec<report::SiteReport> = site_rows
            .iter()
            .filter(|r| r.live > 0 || r.interval_births > 0 || (reason.is_some() && r.births > 0))
            .take(cfg.top)
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
        let counters = tracer.counters();
        let (probes, programs) = if cfg.stats {
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
        let report = Report {
            kind: if reason.is_some() {
                ReportKind::Final
            } else {
                ReportKind::Interval
            },
            reason,
            pid: self.pid,
            elapsed_s: elapsed,
            interval_s: cfg.interval.as_secs_f64(),
            types,
            census_ms,
            census_error,
            sites: site_reports,
            live_objects: agg.live_objects() as u64,
            ignored_births: agg.ignored_births,
            lost: report::Losses {
                ringbuf_full: counters.ringbuf_full,
                kernel_read_failed: counters.read_failed,
                unreadable_types: resolver.failed_reads,
                no_thread_state: counters.no_tstate,
                stack_map_full: counters.stack_map_full,
                frame_read_failed: counters.frame_read_failed,
                unreadable_stacks,
                short_records: tracer.short_records(),
                unknown_events: *unknown_events,
            },
            probes,
            programs,
            walk: cfg.stats.then_some(report::WalkStats {
                walks: counters.walks,
                frames: counters.walk_frames,
                ns: counters.walk_ns,
                truncated: counters.walk_truncated,
            }),
        };
        super::print(&match cfg.format {
            Format::Json => report::json(&report) + "\n",
            Format::Text => report::text(&report, cfg.top) + "\n",
        })
    }

    /// `--folded` / `--flamegraph`: the surviving allocations of the growing sites (of every
    /// site with survivors when none grows), one folded line per (site, type).
    fn write_graphs(&self, rows: &[TypeRow], sites: &Sites) -> Result<()> {
        let cfg = self.cfg;
        if cfg.folded.is_none() && cfg.flamegraph.is_none() {
            return Ok(());
        }
        let any_growing = rows.iter().any(|r| r.growing && r.live > 0);
        let entries: Vec<(&sites::Site, String, u64)> = rows
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
        let folded = sites::folded(&entries);
        if let Some(path) = &cfg.folded {
            std::fs::write(path, &folded).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &cfg.flamegraph {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::{TP_FLAGS, TP_NAME, Version};
    use crate::target::FakeMemory;

    const V: Version = Version {
        major: 3,
        minor: 11,
        patch: 7,
    };
    const T: u64 = 0x20_0000;

    fn pipeline() -> Pipeline {
        let m = FakeMemory::new();
        m.put_words(T + TP_NAME, &[T + 0x800, 32, 0]);
        m.put(T + TP_FLAGS, 0);
        m.put_bytes(T + 0x800, b"float\0\0\0");
        Pipeline::new(Resolver::new(m, V, vec![], true), None)
    }

    fn event(kind: u32, addr: u64) -> Event {
        Event {
            kind,
            addr,
            type_ptr: T,
            ..Default::default()
        }
    }

    #[test]
    fn births_and_frees_through_the_pipeline_keep_the_live_set() {
        let mut p = pipeline();
        let events: Vec<Event> = (0..10)
            .map(|i| event(EVENT_BIRTH, 0x1000 + 32 * i))
            .chain((0..4).map(|i| event(EVENT_FREE, 0x1000 + 32 * i)))
            .collect();
        p.feed(&events, &mut |_| None);
        assert_eq!(p.agg.live_objects(), 6);
        assert_eq!((p.unknown_events, p.resolver.failed_reads), (0, 0));
    }

    #[test]
    fn unknown_event_kind_is_counted_not_dropped_silently() {
        // Regression: events of a kind user space did not know vanished without a count.
        let mut p = pipeline();
        p.feed(
            &[event(EVENT_BIRTH, 0x1000), event(77, 0x2000), event(0, 0)],
            &mut |_| None,
        );
        assert_eq!(p.unknown_events, 2);
        assert_eq!(p.agg.live_objects(), 1);
    }
}
