//! `leakscope trace`: attach, then loop: drain events in bounded batches into the pipeline,
//! emit a report every `--interval`, end on the deadline, Ctrl-C, SIGTERM or the target's
//! exit with a final report. The loop never waits behind work: a batch is at most `BATCH`
//! events, signals and clocks are looked at between batches (first), and the census that
//! adds rows on partial builds walks on its own thread.
use super::free::{CENSUS_GAP_PER_WALK, CensusWorker, FreeCounts};
use super::retention::{self, Retention};
use crate::census::{Allocator, Heap};
use crate::config::{Format, Placement, TraceConfig};
use crate::cpython;
use crate::model::aggregate::{self, Aggregator, CensusTrend, TypeRow};
use crate::model::budget::{self, Budget, Controller, Mode};
use crate::model::sites::{self, Sites};
use crate::probes::kernel::NativeRecord;
use crate::probes::kernel::{self, AttachOptions, LinkKind, Tracer, TrapCost};
use crate::probes::plan::{self, Coverage, Plan};
use crate::report::{self, EndReason, FollowStats, Report, ReportKind};
use crate::resolve::follow::{self, Verdict, Why};
use crate::resolve::native::{NativeFrames, NativeStacks};
use crate::resolve::{symbols::Symbolizer, types::Resolver};
use crate::target::{Process, interpreter::Interpreter};
use anyhow::{Result, bail};
use hashbrown::HashMap;
use leakscope_common::{
    EVENT_BIRTH, EVENT_FREE, EVENT_NATIVE_ALLOC, EVENT_NATIVE_FREE, Event, FREE_IN_GC, RawStack,
};
use std::time::{Duration, Instant};

/// Most events taken from the ring buffer per turn of the loop. Between two batches the
/// loop looks at signals, the deadline and the report clock, so none of them waits behind
/// a busy target. (At ~100 ns an event, a batch is a couple of milliseconds.)
pub const BATCH: usize = 16_384;

/// Most owning objects (bytearrays, lists) whose buffers one report re-reads.
pub const MAX_OWNED_READS: usize = 200_000;
/// Most bytes of an extension object's body searched for the native blocks it holds.
pub const MAX_HOLDER_BYTES: u64 = 512;

/// Events in, live set out: what user space does with every event. Reads the target only
/// through the resolver and the symbolizer (cached; a type or code object is read once).
pub struct Pipeline {
    pub resolver: Resolver,
    pub symbolizer: Option<Symbolizer>,
    pub agg: Aggregator,
    /// Events of a kind this side does not know (never silently dropped).
    pub unknown_events: u64,
    /// Native stacks (`--native`): unwound and symbolized here.
    pub native: Option<Box<dyn NativeFrames>>,
    /// (native return addresses, Python site) → mixed site.
    native_sites: HashMap<(Vec<u64>, u32), u32>,
    /// Native allocations whose record was missing (never silently dropped).
    pub native_unmatched: u64,
    /// Builtin types whose objects own memory beside them (type pointer, kind), and the
    /// interpreter's minor version (the dict layouts differ).
    pub owners: Vec<(u64, cpython::Owner)>,
    pub minor: u32,
    /// Extension objects whose bodies a report could not search for native blocks (over
    /// `MAX_OWNED_READS`), in all.
    pub holders_unread: u64,
}

impl Pipeline {
    pub fn new(resolver: Resolver, symbolizer: Option<Symbolizer>) -> Self {
        Pipeline {
            resolver,
            symbolizer,
            agg: Aggregator::new(),
            unknown_events: 0,
            native: None,
            native_sites: HashMap::new(),
            native_unmatched: 0,
            owners: vec![],
            minor: 0,
            holders_unread: 0,
        }
    }

    /// Re-reads what live bytearrays, lists and dicts own beside themselves (buffers, item
    /// arrays, key tables) and counts it in their bytes, so `bytearray` rows show their
    /// real size. At most `MAX_OWNED_READS` objects per call (one to three reads each).
    pub fn refresh_owned(&mut self, mem: &dyn crate::target::Memory) {
        if self.owners.is_empty() {
            return;
        }
        let types: Vec<u64> = self.owners.iter().map(|o| o.0).collect();
        for addr in self.agg.live_of(&types).into_iter().take(MAX_OWNED_READS) {
            let Some((_, kind)) = self
                .agg
                .site_of(addr)
                .and_then(|(t, _)| self.owners.iter().find(|o| o.0 == t))
                .copied()
            else {
                continue;
            };
            if let Some(n) = kind.owned_bytes(mem, addr, self.minor) {
                self.agg.set_owned(addr, n);
            }
        }
    }

    /// Native blocks held by live objects of C extensions' types (an ndarray's data, an
    /// extension object's calloc'd state) are counted with their holder (`Aggregator::adopt`):
    /// each such object's body (up to `MAX_HOLDER_BYTES`) is read and every word that is the
    /// address of a live native block claims it. At most `MAX_OWNED_READS` objects per call;
    /// the rest are counted in `holders_unread`. Only with `--native`.
    pub fn adopt_native(&mut self, mem: &dyn crate::target::Memory) {
        if self.native.is_none() {
            return;
        }
        let mut holders = vec![];
        let mut natives = 0usize;
        for (addr, t) in self.agg.live() {
            if leakscope_common::is_native(t) {
                natives += 1;
                continue;
            }
            if let Some(info) = self.resolver.get(t)
                && info.extension_dealloc
            {
                holders.push((addr, info.basicsize.min(MAX_HOLDER_BYTES)));
            }
        }
        if natives == 0 {
            return;
        }
        self.holders_unread += holders.len().saturating_sub(MAX_OWNED_READS) as u64;
        let mut body = vec![0u8; MAX_HOLDER_BYTES as usize];
        for (addr, size) in holders.into_iter().take(MAX_OWNED_READS) {
            // past ob_refcnt and ob_type
            let Some(len) = size.checked_sub(16).filter(|&n| n >= 8) else {
                continue;
            };
            let buf = &mut body[..len as usize];
            if mem.read(addr + 16, buf).is_err() {
                continue;
            }
            for w in buf.chunks_exact(8) {
                let p = u64::from_le_bytes(w.try_into().unwrap());
                if p != 0
                    && self
                        .agg
                        .site_of(p)
                        .is_some_and(|(t, _)| leakscope_common::is_native(t))
                {
                    self.agg.adopt(addr, p);
                }
            }
        }
    }

    /// Feeds events in order; `stack` reads a kernel stack the first time its id is seen.
    /// `natives` holds one record per `EVENT_NATIVE_ALLOC`, in order.
    pub fn feed(
        &mut self,
        events: &[Event],
        natives: &[NativeRecord],
        stack: &mut dyn FnMut(u64) -> Option<RawStack>,
    ) {
        let mut natives = natives.iter();
        for e in events {
            match e.kind {
                EVENT_BIRTH => self.birth(e.addr, e.type_ptr, e.ob_size, e.stack_id, stack),
                EVENT_FREE if e.type_ptr & FREE_IN_GC != 0 => self.agg.free_in_gc(e.addr),
                EVENT_FREE | EVENT_NATIVE_FREE => self.agg.free(e.addr),
                EVENT_NATIVE_ALLOC => match natives.next() {
                    Some(r) => self.native_birth(e, r, stack),
                    None => self.native_unmatched += 1,
                },
                _ => self.unknown_events += 1,
            }
        }
    }

    /// A native block: its site is its native frames (from the allocating function out to
    /// the interpreter) above the calling thread's Python frames.
    fn native_birth(
        &mut self,
        e: &Event,
        r: &NativeRecord,
        stack: &mut dyn FnMut(u64) -> Option<RawStack>,
    ) {
        let site = match (&mut self.symbolizer, &mut self.native) {
            (Some(sym), Some(native)) => {
                let python = sym.site(e.stack_id, &mut *stack);
                let addrs = native.unwind(r);
                let key = (addrs, python);
                match self.native_sites.get(&key) {
                    Some(&s) => s,
                    None => {
                        let mut frames: Vec<_> =
                            key.0.iter().flat_map(|&a| native.frames(a)).collect();
                        let py = sym.sites.get(python);
                        frames.extend(py.frames.iter().cloned());
                        let truncated = py.truncated;
                        let s = sym.sites.intern(sites::Site { frames, truncated });
                        self.native_sites.insert(key, s);
                        s
                    }
                }
            }
            _ => 0,
        };
        self.agg.birth(
            e.addr,
            Some(aggregate::Birth {
                type_ptr: e.type_ptr,
                bytes: e.ob_size.max(0) as u64,
                preheader: 0,
                site,
            }),
        );
    }

    fn birth(
        &mut self,
        addr: u64,
        type_ptr: u64,
        ob_size: i64,
        stack_id: u64,
        stack: &mut dyn FnMut(u64) -> Option<RawStack>,
    ) {
        if let Some(sym) = &mut self.symbolizer
            && type_ptr == sym.code_type()
        {
            sym.code_born(addr);
        }
        let birth = match self.resolver.get(type_ptr) {
            Some(t) if t.tracked => Some(aggregate::Birth {
                type_ptr,
                bytes: cpython::object_bytes(t.basicsize, t.itemsize, ob_size, t.preheader),
                preheader: t.preheader,
                site: match &mut self.symbolizer {
                    Some(sym) => sym.site(stack_id, &mut *stack),
                    None => 0,
                },
            }),
            _ => None,
        };
        self.agg.birth(addr, birth);
    }
}

/// A row's name: the type's, or the native allocator's for native blocks.
pub fn type_name(resolver: &mut Resolver, t: u64) -> String {
    match t {
        leakscope_common::NATIVE_HEAP => "native heap".into(),
        leakscope_common::NATIVE_MMAP => "native mmap".into(),
        leakscope_common::NATIVE_PYMEM => "native PyMem".into(),
        _ => resolver
            .get(t)
            .map(|i| i.name.clone())
            .unwrap_or_else(|| format!("<type {t:#x}>")),
    }
}

/// Free signals: off, failed to set up (said in every report; `Failed` on partial builds,
/// whose census rows are missing then), or running.
// One value per trace: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum CensusRows {
    Off,
    Failed(String),
    Unavailable(String),
    On {
        worker: CensusWorker,
        trend: CensusTrend,
        rows: Vec<TypeRow>,
        /// pymalloc's size classes, as rows named by block size.
        classes: CensusTrend,
        class_rows: Vec<TypeRow>,
        allocator_error: Option<String>,
        walk_ms: Option<f64>,
        /// Under a budget, the next walk waits until then.
        next_request: Instant,
    },
}

/// Traces until the end; the exit code is 0, or in spawn mode the program's.
pub fn run(cfg: &TraceConfig) -> Result<i32> {
    let spawned = if cfg.command.is_empty() {
        None
    } else {
        if !super::can_trace() {
            bail!("{}", super::NEEDS_PRIVILEGES);
        }
        Some(Child::start(&cfg.command)?)
    };
    let process = Process::open(spawned.as_ref().map_or(cfg.pid, |c| c.spawned.pid))?;
    if !super::can_trace() {
        bail!("{}", super::NEEDS_PRIVILEGES);
    }
    let metrics = cfg
        .prometheus
        .map(super::metrics::MetricsServer::start)
        .transpose()?;
    if let Some(m) = &metrics {
        eprintln!(
            "leakscope: serving the findings for Prometheus at http://{}/metrics",
            m.addr
        );
    }
    kernel::check_uprobe_support(std::path::Path::new("/sys/bus/event_source/devices/uprobe"))?;
    let interp = match Interpreter::find(&process) {
        Ok(i) => i,
        Err(e) if spawned.is_some() => {
            return Err(e.context(format!(
                "the program started ({}) runs no Python interpreter itself (a shell script, \
                 such as a pyenv shim, runs it in another process: give the interpreter's own \
                 path)",
                process.comm
            )));
        }
        Err(e) => return Err(e),
    };
    let mut plan = plan::plan(&process, &interp)?;
    let native = if cfg.native {
        let n = plan::native(&process, &interp)?;
        plan.probes.extend(n.probes.iter().cloned());
        Some(n)
    } else {
        None
    };
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
    // Frees inside a collection are flagged (the "cycles" section): the free programs read
    // the main interpreter's `gc.collecting`.
    let mut kernel_config = stack_config.unwrap_or_default();
    if let Some((dev, ino)) = process.foreign_pid_namespace() {
        (kernel_config.pidns_dev, kernel_config.pidns_ino) = (dev, ino);
    }
    kernel_config.gc_collecting = Heap::of(&process, &interp)
        .ok()
        .and_then(|h| h.gc_collecting_addr())
        .unwrap_or(0);
    let mut tracer = Tracer::load(
        &plan,
        process.pid,
        &AttachOptions {
            stats: cfg.stats,
            stack_config: kernel_config,
            verbose: cfg.verbose,
            perf_links: std::env::var_os("LEAKSCOPE_PERF_LINKS").is_some_and(|v| v == "1"),
            native: native.as_ref().map(native_config).unwrap_or_default(),
        },
    )?;
    // What a hit costs, measured here before the target pays anything (meanwhile, what
    // the target spends in the kernel on its own).
    let (stime0, calibration_started) = (process.system_time_s(), Instant::now());
    let trap = match tracer.calibrate(CALIBRATION_CALLS) {
        Ok(t) => t,
        Err(e) => {
            let f = TrapCost::FALLBACK;
            eprintln!(
                "leakscope: could not measure the trap cost ({e:#}); assuming {:.1} µs per hit ({:.1} µs on single-stepped instructions)",
                f.emulated_ns / 1e3,
                f.stepped_ns / 1e3
            );
            f
        }
    };
    if !tracer.has_run_time() {
        eprintln!(
            "leakscope: the kernel's BPF run-time stats are unavailable: the overhead estimate counts the traps only"
        );
    }
    let stime_idle_rate = match (stime0, process.system_time_s()) {
        (Some(a), Some(b)) => (b - a).max(0.0) / calibration_started.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    let stime_attach = process.system_time_s();
    tracer.attach_probes()?;
    let started = Instant::now();
    if let Some(c) = &spawned {
        c.resume();
        // Stopped at its entry, the program had no interpreter state yet: what is read from
        // it (the GC state the free programs check, the heap for the census and findings)
        // is there once it initialized (~20 ms; its births meanwhile wait in the ring
        // buffer).
        let deadline = Instant::now() + Duration::from_secs(10);
        while kernel_config.gc_collecting == 0 && Instant::now() < deadline && process.alive() {
            match Heap::of(&process, &interp)
                .ok()
                .and_then(|h| h.gc_collecting_addr())
            {
                Some(addr) => {
                    kernel_config.gc_collecting = addr;
                    tracer.set_gc_collecting(addr)?;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    eprintln!(
        "leakscope: attached to pid {} ({}): Python {} in {}; {} probes ({}){}; sees {}; {}. Ctrl-C for the final report.",
        process.pid,
        process.comm,
        interp.version,
        interp.target_path,
        plan.probes.len(),
        match tracer.link_kind() {
            LinkKind::UprobeMulti => "uprobe_multi links",
            LinkKind::PerfEvent => "perf-event links: each detach leaves them trapping ~0.2 s",
        },
        if symbolizer.is_some() {
            ", Python stacks"
        } else {
            ""
        },
        plan.coverage.sees(),
        match cfg.budget {
            Budget::Exact => "--exact: probes attached all the time".to_string(),
            Budget::Overhead(b) => format!(
                "overhead budget {:.0}% (a hit costs {:.2} µs, {:.1} µs single-stepped; a detach stalls a busy target {:.0} ms): measuring what tracing costs",
                b * 100.0,
                trap.emulated_ns / 1e3,
                trap.stepped_ns / 1e3,
                trap.detach_ns / 1e6
            ),
        }
    );
    let resolver = |mem| {
        Resolver::new(
            mem,
            interp.version,
            interp.ranges.clone(),
            plan.coverage != Coverage::Partial,
        )
    };
    let mut pipeline = Pipeline::new(resolver(process.memory()), symbolizer);
    pipeline.owners = cpython::Owner::ALL
        .iter()
        .filter_map(|&(kind, name)| Some((interp.runtime_addr(name)?, kind)))
        .collect();
    pipeline.minor = interp.version.minor;
    if native.is_some() && pipeline.symbolizer.is_none() {
        eprintln!(
            "leakscope: --native without Python stacks: native blocks are counted, without their C or Python frames"
        );
    }
    if native.is_some() {
        pipeline.native = Some(Box::new(NativeStacks::new(
            process.pid,
            interp.ranges.clone(),
        )));
    }
    // Free signals: on partial builds the GC lists and pymalloc's pools count the builtins
    // the probes cannot see; under a budget, pymalloc's size classes show what grows on
    // any build. Both walk on their own thread, paced.
    let gc_rows = plan.coverage == Coverage::Partial && cfg.census_rows;
    let free_signals = cfg.budget != Budget::Exact && cfg.census_rows;
    let census = if gc_rows || free_signals {
        let heap = match Heap::of(&process, &interp) {
            Ok(h) => Ok(Some(h)),
            Err(e) if gc_rows => Err(e),
            // Under a budget on a complete build the GC lists are a check, not rows.
            Err(_) => Ok(None),
        };
        let allocator = Allocator::of(&process, &interp).map_err(|e| format!("{e:#}"));
        match heap.and_then(|heap| {
            if heap.is_none() && allocator.is_err() {
                // Nothing to walk: say why once, in every report.
                bail!("{}", allocator.as_ref().err().cloned().unwrap_or_default());
            }
            CensusWorker::start(heap, allocator, resolver(process.memory()), started)
        }) {
            Ok(mut worker) => {
                worker.request();
                CensusRows::On {
                    worker,
                    trend: CensusTrend::default(),
                    rows: vec![],
                    classes: CensusTrend::default(),
                    class_rows: vec![],
                    allocator_error: None,
                    walk_ms: None,
                    next_request: started,
                }
            }
            Err(e) if gc_rows => CensusRows::Failed(format!("{e:#}")),
            Err(e) => CensusRows::Unavailable(format!("{e:#}")),
        }
    } else {
        CensusRows::Off
    };
    let mut session = Session {
        cfg,
        plan: &plan,
        pid: process.pid,
        mem: process.memory(),
        started,
        census,
        events: Vec::with_capacity(BATCH),
        natives: vec![],
        native_libc: native.as_ref().map(|n| n.libc.clone()),
        sampler: Sampler {
            ctl: Controller::new(cfg.budget),
            trap,
            hits: vec![0; plan.probes.len()],
            run_ns: tracer.run_time_ns(),
            booked: started,
            attached_at: Some(started),
            phase: Phase::Measuring,
            next: started + secs(budget::MEASURE_S),
            epoch: 0,
            observed: None,
            follow: FollowStats::default(),
            walk_types: None,
            busy: 1.0,
            stime: stime_attach,
            stime_idle_rate,
            detach_s: (trap.detach_ns / 1e9).max(MIN_DETACH_S),
            charged_s: 0.0,
            after_detach: false,
            detach_span: None,
            hit_factor: 1.0,
        },
        process: &process,
        stacks: stack_config.is_some(),
        free: FreeCounts::default(),
        retention: Heap::of(&process, &interp)
            .map_err(|e| format!("{e:#}"))
            .and_then(|heap| {
                Retention::new(
                    heap,
                    Allocator::of(&process, &interp).ok(),
                    interp.version,
                    resolver(process.memory()),
                    process.memory(),
                )
            }),
        first_folded: None,
        metrics,
        reports: 0,
        // A program leakscope started owns the terminal: plain reports then.
        live: super::live::LiveView::new(cfg.format == Format::Text && spawned.is_none()),
    };
    eprintln!(
        "leakscope: the first report comes in {:.0} s, then one every {:.0} s{}",
        cfg.interval.as_secs_f64(),
        cfg.interval.as_secs_f64(),
        if session.live.enabled() {
            " (refreshed in place; the final report stays on the screen)"
        } else {
            ""
        }
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        use tokio::time::{self, MissedTickBehavior};
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        if spawned.is_some() {
            crate::target::spawn::unblock_stop_signals();
        }
        let mut drain_tick = time::interval(Duration::from_millis(10));
        drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut alive_tick = time::interval(Duration::from_millis(100));
        alive_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut report_tick = time::interval_at(time::Instant::now() + cfg.interval, cfg.interval);
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let deadline = cfg.duration.map(|d| time::Instant::now() + d);
        let deadline_sleep = time::sleep_until(deadline.unwrap_or_else(time::Instant::now));
        tokio::pin!(deadline_sleep);
        let phase_sleep = time::sleep_until(session.sampler.next.into());
        tokio::pin!(phase_sleep);
        // A full batch means more is waiting: take the next one as soon as the loop has
        // looked at everything else (yield_now lets the runtime poll its timers and signals).
        let mut backlog = false;
        let reason = loop {
            tokio::select! {
                biased;
                // A program leakscope started gets the signal and ends the trace by exiting.
                _ = sigint.recv() => match &spawned {
                    Some(c) => c.forward(libc::SIGINT),
                    None => break EndReason::Interrupted,
                },
                _ = sigterm.recv() => match &spawned {
                    Some(c) => c.forward(libc::SIGTERM),
                    None => break EndReason::Terminated,
                },
                _ = &mut deadline_sleep, if deadline.is_some() => break EndReason::Duration,
                _ = alive_tick.tick() => {
                    if !process.alive() {
                        break EndReason::TargetExited;
                    }
                }
                _ = &mut phase_sleep => {
                    if let Err(e) = session.next_phase(&mut tracer, &mut pipeline) {
                        if !process.alive() {
                            break EndReason::TargetExited;
                        }
                        return Err(e);
                    }
                    phase_sleep.as_mut().reset(session.sampler.next.into());
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
        session.finish(
            &mut tracer,
            &mut pipeline,
            reason != EndReason::TargetExited,
        );
        session.emit(&tracer, &mut pipeline, Some(reason))?;
        let Some(c) = &spawned else {
            return anyhow::Ok(0);
        };
        // Spawn mode: leakscope ends with the program, passing signals on meanwhile.
        tracer.detach_probes();
        if c.spawned.exit_code().is_none() && reason != EndReason::TargetExited {
            eprintln!(
                "leakscope: the trace has ended; waiting for the program (pid {}) to exit \
                 (signals are passed on to it)",
                c.spawned.pid
            );
        }
        loop {
            if let Some(code) = c.spawned.exit_code() {
                return Ok(code);
            }
            tokio::select! {
                _ = sigint.recv() => c.forward(libc::SIGINT),
                _ = sigterm.recv() => c.forward(libc::SIGTERM),
                _ = time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })?;
    // Dropping the tracer detaches every probe: the target runs on untouched.
    drop(tracer);
    Ok(code)
}

/// Spawn mode's program: killed if leakscope fails before it was let run (it ran nothing
/// yet); once running it is the user's program and is left to run.
struct Child {
    spawned: crate::target::spawn::Spawned,
    resumed: std::cell::Cell<bool>,
    /// A terminal's Ctrl-C reaches the program itself: not passed on twice.
    terminal_sigint: bool,
}

impl Child {
    fn start(argv: &[std::ffi::OsString]) -> Result<Child> {
        let spawned = crate::target::spawn::Spawned::start(argv)?;
        Ok(Child {
            spawned,
            resumed: std::cell::Cell::new(false),
            terminal_sigint: crate::target::spawn::terminal_delivers_sigint(),
        })
    }

    fn resume(&self) {
        self.spawned.resume();
        self.resumed.set(true);
    }

    fn forward(&self, signal: i32) {
        if signal == libc::SIGINT && self.terminal_sigint {
            return;
        }
        self.spawned.forward(signal);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.resumed.get() {
            self.spawned.forward(libc::SIGKILL);
        } else if self.spawned.exit_code().is_none() {
            eprintln!(
                "leakscope: the program (pid {}) goes on running",
                self.spawned.pid
            );
        }
    }
}

/// What the traps cost a target's user-space code (refilled caches and TLB), as a share
/// of their kernel time: measured here with `--exact` on the bench's JSON workload (user
/// time +0.68 s for +7.24 s of kernel time) and its `--no-stacks` run (+0.60 s for +4.35 s).
const USER_SIDE_SHARE: f64 = 0.15;
/// A span whose modelled cost is at least this (ns) is busy enough with hits for the
/// target's kernel time to measure what a hit costs; the measured factor is capped.
const MIN_MODEL_NS: f64 = 10e6;
const MAX_HIT_FACTOR: f64 = 20.0;
/// A detach costs a busy target at least this much until one is measured in it (in
/// leakscope's own process it is 2–60 ms; in a target with a big heap, 100–200 ms of kernel
/// time: docs/overhead.md).
const MIN_DETACH_S: f64 = 0.1;
/// The gap after a close is booked in two spans: the detach's (the close, its drain and
/// this long after it: the traps stop 15–20 ms into a close) and the rest, in which the
/// target's own kernel rate is measured (at least `MIN_IDLE_SPAN_S`).
const DETACH_SPAN_S: f64 = 0.2;
const MIN_IDLE_SPAN_S: f64 = 0.1;
/// Calls per calibration function (about 1 ms emulated, 30 ms single-stepped).
const CALIBRATION_CALLS: u32 = 2_000;
/// In exact mode the cost is booked, and the budget checked, this often (a target that
/// starts allocating hard pays at most this long at the full cost).
const EXACT_CHECK_S: f64 = budget::MEASURE_S;
/// Sampled mode walks every birth's stack in the first windows and in every
/// `DISCOVERY_EVERY`th; in the others only those of types whose objects survive.
const DISCOVERY_WINDOWS: u32 = 3;
const DISCOVERY_EVERY: u32 = 4;
/// Fewest deaths inside collections for a site to be listed under cycles.
const MIN_COLLECTED: u64 = 10;
/// Most time spent taking what is queued when a window closes (then the rest waits).
const CLOSE_DRAIN: Duration = Duration::from_millis(500);

fn native_config(n: &plan::NativePlan) -> leakscope_common::NativeConfig {
    let mut c = leakscope_common::NativeConfig::default();
    for (i, &(lo, hi)) in n
        .skip
        .iter()
        .take(leakscope_common::NATIVE_SKIP_RANGES)
        .enumerate()
    {
        c.skip_lo[i] = lo;
        c.skip_hi[i] = hi;
    }
    c
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Attached at start, measuring what it costs.
    Measuring,
    /// Attached for good (the cost fits, or --exact); checked every `EXACT_CHECK_S`.
    Exact,
    /// Sampled: a window is open.
    Open,
    /// Sampled: between windows.
    Closed,
}

/// The sampled mode's bookkeeping: cost meter, controller, phase.
struct Sampler {
    ctl: Controller,
    trap: TrapCost,
    /// Per-probe hits and the programs' run time at the last booking.
    hits: Vec<u64>,
    run_ns: u64,
    /// When the last span was booked.
    booked: Instant,
    /// When the probes were attached (while they are).
    attached_at: Option<Instant>,
    phase: Phase,
    /// When the phase changes next.
    next: Instant,
    /// The window births are counted in.
    epoch: u32,
    /// Sampled mode: the rows of the last observation (a window's close), reports show.
    observed: Option<Observation>,
    follow: FollowStats,
    /// Types whose births the current window walks (`None`: all).
    walk_types: Option<usize>,
    /// How likely the target hits a probe during a detach (0–1), from the last span.
    busy: f64,
    /// The target's kernel time at the last booking, and its rate while detached (what it
    /// spends in the kernel on its own).
    stime: Option<f64>,
    stime_idle_rate: f64,
    /// What a detach costs the target, seconds of its time (first from calibration, then
    /// from the kernel time it burns in the gap after one), what was charged for the last
    /// one, and whether the next booking is that gap.
    detach_s: f64,
    charged_s: f64,
    after_detach: bool,
    /// The detach's span (kernel seconds, wall seconds), until the quiet span after it
    /// measures the target's own kernel rate.
    detach_span: Option<(f64, f64)>,
    /// What a hit really costs the target, as a multiple of the calibrated model (its own
    /// kernel time while busy with hits says so; at least 1).
    hit_factor: f64,
}

struct Observation {
    types: Vec<TypeRow>,
    sites: Vec<TypeRow>,
    /// Objects born in the newest window still alive, per (type, site) and per type.
    young: hashbrown::HashMap<(u64, u32), u64>,
    traced_fraction: f64,
    elapsed_s: f64,
}

struct Session<'a> {
    cfg: &'a TraceConfig,
    plan: &'a Plan,
    pid: u32,
    mem: crate::target::Mem,
    started: Instant,
    census: CensusRows,
    events: Vec<Event>,
    natives: Vec<NativeRecord>,
    /// `--native`: the C library whose allocator is probed.
    native_libc: Option<String>,
    sampler: Sampler,
    /// Births walk Python stacks.
    stacks: bool,
    /// Free signals' counts of every type over time (the check on sampled growth).
    free: FreeCounts,
    process: &'a Process,
    /// Reads the heap for the final report's findings (or why it cannot).
    retention: Result<Retention, String>,
    /// `--diff`: the first report's live bytes by stack and type, folded.
    first_folded: Option<String>,
    /// `--prometheus`: serves the latest report.
    metrics: Option<super::metrics::MetricsServer>,
    /// Reports made so far.
    reports: u64,
    /// Text reports on a terminal: refreshed in place.
    live: super::live::LiveView,
}

impl Session<'_> {
    /// One batch from the ring buffer into the pipeline; true when more is waiting.
    fn pump(&mut self, tracer: &mut Tracer, pipeline: &mut Pipeline) -> bool {
        self.events.clear();
        self.natives.clear();
        let more = tracer.drain(&mut self.events, &mut self.natives, BATCH);
        pipeline.feed(&self.events, &self.natives, &mut |id| tracer.stack(id));
        more
    }

    /// What the probes cost since the last booking (hits × trap + run time), booked with
    /// the controller; returns the mode it decided. Also notes how busy the probes were
    /// (what a detach will cost, see `close_window`).
    fn book(&mut self, tracer: &Tracer, now: Instant) -> Mode {
        let s = &mut self.sampler;
        let hits = tracer.hits(self.plan.probes.len());
        let attached_s = s
            .attached_at
            .map_or(0.0, |a| now.duration_since(a.max(s.booked)).as_secs_f64());
        let mut extra_ns = 0.0;
        // How sure it is that the target hits a probe while the kernel detaches it: a
        // probe hit every few ms is hit during a detach of tens of ms.
        let mut busy: f64 = 0.0;
        for (i, p) in self.plan.probes.iter().enumerate() {
            let dh = hits[i].saturating_sub(s.hits[i]);
            extra_ns += dh as f64 * s.trap.of(p.point.emulated);
            if attached_s > 0.0 {
                busy = busy.max((dh as f64 / attached_s * s.trap.detach_ns / 1e9).min(1.0));
            }
        }
        if attached_s > 0.0 {
            s.busy = busy;
        }
        let run_ns = tracer.run_time_ns();
        extra_ns += run_ns.saturating_sub(s.run_ns) as f64;
        // The model counts traps and programs as measured in leakscope's own process; in a
        // real target a hit costs more (its caches and TLB, the kernel's work for a big
        // process). Its own kernel time says what the hits really cost it: above its rate
        // while detached, plus what the traps cost its user-space code after them.
        let stime = self.process.system_time_s();
        let wall = now.duration_since(s.booked).as_secs_f64();
        // Only where the probes' cost dominates the target's kernel time (many hits) does
        // that time say what a hit costs; a quiet target's own system calls are not ours.
        if let (Some(now_st), Some(then_st)) = (stime, s.stime) {
            let raw = (now_st - then_st).max(0.0);
            if attached_s > 0.0 {
                let kernel = (raw - s.stime_idle_rate * wall).max(0.0);
                if extra_ns >= MIN_MODEL_NS {
                    let seen = kernel * (1.0 + USER_SIDE_SHARE) * 1e9 / extra_ns;
                    s.hit_factor = 0.5 * s.hit_factor + 0.5 * seen.clamp(1.0, MAX_HIT_FACTOR);
                }
            } else if s.after_detach {
                // The span of a busy target's detach (and the drain after it): what it
                // burnt in the kernel beyond its own rate is the detach's cost, judged once
                // that rate is measured in the quiet span that follows (`DETACH_SPAN_S`).
                if s.busy >= 0.5 {
                    s.detach_span = Some((raw, wall));
                }
            } else if wall >= MIN_IDLE_SPAN_S {
                // Detached, after the detach's span: the target's own kernel time (its
                // system calls: 60% of an asyncio server's time on loopback), which the
                // spans above are measured against. The rate a target had before its load
                // came is no baseline for it.
                s.stime_idle_rate = raw / wall;
                if let Some((d_raw, d_wall)) = s.detach_span.take() {
                    let kernel = (d_raw - s.stime_idle_rate * d_wall).max(0.0);
                    s.detach_s = 0.5 * s.detach_s + 0.5 * kernel;
                    // Measured, so what is charged at a close follows it.
                    extra_ns += (kernel - s.charged_s).max(0.0) * 1e9;
                }
            }
        }
        if attached_s > 0.0 {
            extra_ns *= s.hit_factor;
        }
        s.after_detach = false;
        s.stime = stime;
        s.hits = hits;
        s.run_ns = run_ns;
        s.booked = now;
        s.ctl.book(wall, attached_s, extra_ns / 1e9)
    }

    /// The phase's time is up: measure, open or close a window, or check exact mode.
    fn next_phase(&mut self, tracer: &mut Tracer, pipeline: &mut Pipeline) -> Result<()> {
        let now = Instant::now();
        match self.sampler.phase {
            Phase::Measuring | Phase::Exact | Phase::Open => {
                let mode = self.book(tracer, now);
                if mode == Mode::Exact && self.sampler.phase != Phase::Open {
                    self.sampler.phase = Phase::Exact;
                    self.sampler.next = now + secs(EXACT_CHECK_S);
                    return Ok(());
                }
                if self.sampler.phase == Phase::Exact {
                    // Leaving exact mode: from here on, only windows' births are new.
                    eprintln!(
                        "leakscope: tracing all the time costs {:.0}% (budget {:.0}%): sampling from now on",
                        self.sampler
                            .ctl
                            .state(0.0)
                            .cost_ratio_attached
                            .unwrap_or(0.0)
                            * 100.0,
                        self.sampler.ctl.fraction().unwrap_or(0.0) * 100.0
                    );
                }
                self.close_window(tracer, pipeline);
                if self.sampler.ctl.mode() == Mode::Exact {
                    // A window showed the full cost fits: attach for good.
                    self.open(tracer, Phase::Exact)?;
                    self.sampler.next = Instant::now() + secs(EXACT_CHECK_S);
                } else {
                    // The detach's span is booked apart from the rest of the gap.
                    self.sampler.phase = Phase::Closed;
                    self.sampler.next =
                        Instant::now() + secs(self.sampler.ctl.gap_s().min(DETACH_SPAN_S));
                }
            }
            Phase::Closed => {
                self.book(tracer, now);
                // The gap cost more than was charged (a dear detach): wait the rest out.
                let owed = self.sampler.ctl.debt_s();
                if owed > 0.01 {
                    self.sampler.next = now + secs(owed.min(budget::MAX_GAP_S));
                    return Ok(());
                }
                if self.sampler.detach_span.is_some() {
                    // The detach is judged against the target's own rate, measured first.
                    self.sampler.next = now + secs(MIN_IDLE_SPAN_S);
                    return Ok(());
                }
                let window = self.sampler.ctl.window_s(self.sampler.detach_s);
                let s = &self.sampler;
                let wait = s.ctl.wait_to_fit_s(window, s.busy * s.detach_s);
                if wait > 0.01 {
                    self.sampler.next = now + secs(wait.min(budget::MAX_GAP_S));
                    return Ok(());
                }
                self.open(tracer, Phase::Open)?;
                self.sampler.next = Instant::now() + secs(window);
            }
        }
        Ok(())
    }

    fn open(&mut self, tracer: &mut Tracer, phase: Phase) -> Result<()> {
        self.sampler.epoch += 1;
        self.choose_walks(tracer, phase);
        // Births of this window are told apart from older ones.
        tracer.attach_probes()?;
        self.sampler.attached_at = Some(Instant::now());
        self.sampler.phase = phase;
        Ok(())
    }

    /// Spends the stack walks (the dearer half of a birth's cost) on the types that matter:
    /// in sampled mode, after the first windows, only births of types with followed
    /// survivors older than a window, or whose whole count the free signals see growing,
    /// are walked, except in every `DISCOVERY_EVERY`th window, which walks all (so a new
    /// leak of another type is found and gets stacks).
    fn choose_walks(&mut self, tracer: &mut Tracer, phase: Phase) {
        if !self.stacks {
            return;
        }
        let e = self.sampler.epoch;
        let filter: Option<Vec<u64>> = match (&self.sampler.observed, phase) {
            (Some(obs), Phase::Open)
                if e > DISCOVERY_WINDOWS && !e.is_multiple_of(DISCOVERY_EVERY) =>
            {
                let mut young: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
                for (&(t, _), &n) in &obs.young {
                    *young.entry(t).or_insert(0) += n;
                }
                // ... and types the free signals count growing (born before attach, say).
                let mut types: Vec<u64> = obs
                    .types
                    .iter()
                    .filter(|r| r.growing || r.live > young.get(&r.type_ptr).copied().unwrap_or(0))
                    .map(|r| r.type_ptr)
                    .collect();
                let more: Vec<u64> = self.free.growing().filter(|t| !types.contains(t)).collect();
                types.extend(more);
                Some(types)
            }
            _ => None,
        };
        self.sampler.walk_types = filter.as_ref().map(Vec::len);
        if let Err(e) = tracer.set_walk_filter(filter.as_deref()) {
            eprintln!("leakscope: walking every stack ({e:#})");
            self.sampler.walk_types = None;
        }
    }

    /// Detach, take what is queued, check every followed object, observe.
    fn close_window(&mut self, tracer: &mut Tracer, pipeline: &mut Pipeline) {
        tracer.detach_probes();
        // A target that keeps hitting the probes pays for their detach (its hits take a
        // slow path while the kernel removes them): charged now, as last measured, and
        // corrected when the gap is booked.
        let s = &mut self.sampler;
        s.charged_s = s.busy * s.detach_s;
        s.ctl.charge(s.charged_s);
        s.after_detach = true;
        self.sampler.attached_at = None;
        self.sampler.ctl.window_closed();
        let until = Instant::now() + CLOSE_DRAIN;
        while self.pump(tracer, pipeline) && Instant::now() < until {}
        self.observe(pipeline);
        pipeline.agg.set_epoch(self.sampler.epoch + 1);
    }

    /// Sampled mode: re-reads every followed object (dead ones retired, new ones tagged)
    /// and takes the snapshot the growth rule and the reports use.
    fn observe(&mut self, pipeline: &mut Pipeline) {
        let f = &mut self.sampler.follow;
        for o in pipeline.agg.followed() {
            f.checked += 1;
            match follow::check(&*self.mem, &o) {
                Verdict::Alive { tag } => {
                    if o.tag == 0 {
                        pipeline.agg.set_tag(o.addr, tag);
                    }
                }
                Verdict::Dead(why) => {
                    match why {
                        Why::RefcountZero | Why::NotARefcount => f.dead_refcount += 1,
                        Why::OtherType => f.dead_other_type += 1,
                        Why::OtherContents => f.dead_other_contents += 1,
                        Why::Unreadable => f.dead_unreadable += 1,
                    }
                    pipeline.agg.found_dead(o.addr);
                }
            }
        }
        pipeline.adopt_native(&*self.mem);
        pipeline.refresh_owned(&*self.mem);
        let elapsed = self.started.elapsed().as_secs_f64();
        let resolver = &mut pipeline.resolver;
        let (types, sites) = pipeline
            .agg
            .snapshot(elapsed, &mut |t| type_name(resolver, t));
        let state = self.sampler.ctl.state(elapsed);
        self.sampler.observed = Some(Observation {
            types,
            sites,
            young: pipeline.agg.born_in(self.sampler.epoch),
            traced_fraction: state.traced_fraction,
            elapsed_s: elapsed,
        });
    }

    /// Inlined plans in exact mode: most deaths are inlined frees no probe sees, so
    /// before a report every live object is read again (reference count and type, as
    /// `follow::check` does, without its contents tag: an object that changes is still
    /// alive here, and a reused address was already seen as a birth). When no
    /// object can be read at all the target is gone: what was last seen stands.
    fn check_live(&mut self, pipeline: &mut Pipeline) {
        let mut dead = vec![];
        let mut unreadable = 0;
        let live = pipeline.agg.followed();
        for o in &live {
            let untagged = aggregate::Followed { tag: 0, ..*o };
            if let Verdict::Dead(why) = follow::check(&*self.mem, &untagged) {
                if why == Why::Unreadable {
                    unreadable += 1;
                }
                dead.push((o.addr, why));
            }
        }
        if !live.is_empty() && unreadable == live.len() {
            return;
        }
        let f = &mut self.sampler.follow;
        f.checked += live.len() as u64;
        for (addr, why) in dead {
            match why {
                Why::RefcountZero | Why::NotARefcount => f.dead_refcount += 1,
                Why::OtherType => f.dead_other_type += 1,
                Why::OtherContents => f.dead_other_contents += 1,
                Why::Unreadable => f.dead_unreadable += 1,
            }
            pipeline.agg.found_dead(addr);
        }
    }

    /// The trace ends: take what is queued (bounded), and in sampled mode close the last
    /// window (or check the followed objects once more).
    /// A target that exited has no memory to check: its last observation stands.
    fn finish(&mut self, tracer: &mut Tracer, pipeline: &mut Pipeline, target_alive: bool) {
        let now = Instant::now();
        if !target_alive && self.sampled() {
            self.book(tracer, now);
            tracer.detach_probes();
            return;
        }
        match self.sampler.phase {
            Phase::Measuring | Phase::Exact => {
                self.book(tracer, now);
                let until = now + Duration::from_millis(200);
                while self.pump(tracer, pipeline) && Instant::now() < until {}
            }
            Phase::Open => {
                self.book(tracer, now);
                self.close_window(tracer, pipeline);
            }
            Phase::Closed => {
                self.book(tracer, now);
                self.observe(pipeline);
            }
        }
    }

    fn sampled(&self) -> bool {
        matches!(self.sampler.phase, Phase::Open | Phase::Closed)
    }

    fn emit(
        &mut self,
        tracer: &Tracer,
        pipeline: &mut Pipeline,
        reason: Option<EndReason>,
    ) -> Result<()> {
        let cfg = self.cfg;
        if reason.is_some() {
            // The final report, and what is said while it is made, go to the normal screen.
            self.live.leave();
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let sampled = self.sampled();
        if !sampled {
            if self.plan.coverage == Coverage::Inlined {
                self.check_live(pipeline);
            }
            pipeline.adopt_native(&*self.mem);
            pipeline.refresh_owned(&*self.mem);
        }
        let Pipeline {
            resolver,
            symbolizer,
            agg,
            unknown_events,
            native_unmatched,
            holders_unread,
            ..
        } = pipeline;
        let native_unmatched = *native_unmatched;
        let holders_unread = *holders_unread;
        let held = agg.held();
        let (types, site_rows) = match (&self.sampler.observed, sampled) {
            (Some(obs), true) => {
                let mut young_types: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
                for (&(t, _), &n) in &obs.young {
                    *young_types.entry(t).or_insert(0) += n;
                }
                let scale = |r: &TypeRow, young: u64| {
                    let mut r = r.clone();
                    r.estimate = Some(budget::estimate(
                        r.live,
                        young,
                        r.rate_per_s,
                        obs.traced_fraction,
                        obs.elapsed_s,
                    ));
                    r
                };
                (
                    obs.types
                        .iter()
                        .map(|r| scale(r, young_types.get(&r.type_ptr).copied().unwrap_or(0)))
                        .collect(),
                    obs.sites
                        .iter()
                        .map(|r| {
                            scale(
                                r,
                                obs.young.get(&(r.type_ptr, r.site)).copied().unwrap_or(0),
                            )
                        })
                        .collect(),
                )
            }
            _ => agg.snapshot(elapsed, &mut |t| type_name(resolver, t)),
        };
        let (mut census_ms, mut census_error) = (None, None);
        let mut types = types;
        let mut site_rows = site_rows;
        let (mut allocator_classes, mut allocator_error) = (vec![], None);
        match &mut self.census {
            CensusRows::Off => {}
            CensusRows::Failed(e) => census_error = Some(e.clone()),
            CensusRows::Unavailable(e) => allocator_error = Some(e.clone()),
            CensusRows::On {
                worker,
                trend,
                rows,
                classes,
                class_rows,
                allocator_error: alloc_err,
                walk_ms,
                next_request,
            } => {
                if let Some(sample) = worker.take() {
                    self.free.add(sample.at_s, &sample.totals);
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
                    if let Some(c) = &sample.classes {
                        let counts = c.iter().map(|&(size, n, b)| (size, (n, b))).collect();
                        *class_rows = classes.add(sample.at_s, &counts, &mut |size| {
                            format!("pymalloc {size}-byte blocks")
                        });
                        aggregate::sort_rows(class_rows);
                    }
                    *alloc_err = sample.allocator_error;
                    *walk_ms = Some(sample.walk_ms);
                    // The walks read the heap while the target runs: under a budget, they
                    // take at most 1/(1 + CENSUS_GAP_PER_WALK) of the time.
                    if let Budget::Overhead(_) = cfg.budget {
                        *next_request = Instant::now()
                            + Duration::from_secs_f64(sample.walk_ms / 1e3 * CENSUS_GAP_PER_WALK);
                    }
                }
                if reason.is_none() && Instant::now() >= *next_request {
                    worker.request();
                }
                types.extend(rows.iter().cloned());
                aggregate::sort_rows(&mut types);
                allocator_classes = class_rows.clone();
                allocator_error = alloc_err.clone();
                census_ms = *walk_ms;
            }
        }
        if sampled {
            // Free signals first: a type whose whole count (GC lists, pymalloc's pools) has
            // stayed flat is not leaking, whatever the sampled survivors of a burst suggest.
            for r in types.iter_mut().chain(site_rows.iter_mut()) {
                if r.growing && !r.census && self.free.flat(r.type_ptr) == Some(true) {
                    r.growing = false;
                    r.free_count_flat = true;
                }
            }
            aggregate::sort_rows(&mut types);
            aggregate::sort_rows(&mut site_rows);
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
            .map(|r| site_report(r, sites))
            .collect();
        // Garbage cycles: sites where a tenth of the deaths, and at least a few, came inside
        // collections (a full collection also frees the freelists' dead objects, a few of any
        // type: not cycles).
        let mut collected: Vec<&TypeRow> = site_rows
            .iter()
            .filter(|r| r.collected >= MIN_COLLECTED && r.collected * 10 >= r.deaths)
            .collect();
        collected.sort_by(|a, b| b.collected.cmp(&a.collected).then(a.site.cmp(&b.site)));
        let cycles: Vec<report::CycleSite> = collected
            .into_iter()
            .take(cfg.top)
            .map(|r| {
                let site = sites.get(r.site);
                report::CycleSite {
                    type_name: r.name.clone(),
                    births: r.births,
                    collected: r.collected,
                    frames: site.frames.clone(),
                    truncated: site.truncated,
                }
            })
            .collect();
        let (findings, retention) = match (&mut self.retention, reason.is_some()) {
            // Native blocks have no Python referrers to read: only Python sites get findings.
            _ if reason.is_none()
                || !site_rows
                    .iter()
                    .any(|r| r.growing && r.live > 0 && !retention::is_native(r.type_ptr)) =>
            {
                (vec![], None)
            }
            _ if reason == Some(EndReason::TargetExited) || !self.process.alive() => (
                vec![],
                Some(retention::unavailable(
                    "the target exited: its heap can no longer be read".into(),
                )),
            ),
            (Ok(r), _) => {
                eprintln!(
                    "leakscope: reading the heap for leak findings (the target keeps running)…"
                );
                let (f, info) = r.findings(agg, &site_rows, &|row| site_report(row, sites));
                (f, Some(info))
            }
            (Err(e), _) => (vec![], Some(retention::unavailable(e.clone()))),
        };
        if reason.is_some() {
            self.write_graphs(&site_rows, sites, &findings)?;
        } else if cfg.flamegraph_diff && self.first_folded.is_none() {
            self.first_folded = Some(live_folded(&site_rows, sites));
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
        let mut tracing = self.sampler.ctl.state(elapsed);
        if !sampled {
            tracing.mode = Mode::Exact;
        }
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
            tracing,
            followed: (self.sampler.follow.checked > 0).then(|| self.sampler.follow.clone()),
            walk_filter_types: if sampled {
                self.sampler.walk_types
            } else {
                None
            },
            calibration: self.sampler.trap,
            types,
            census_ms,
            census_error,
            allocator_classes,
            allocator_error,
            sites: site_reports,
            cycles,
            findings,
            retention,
            live_objects: agg.live_objects() as u64,
            ignored_births: agg.ignored_births,
            native: self.native_libc.as_ref().map(|lib| report::NativeInfo {
                library: lib.clone(),
                interpreter_allocations: counters.native_skipped,
                unpaired: counters.native_unpaired,
                stack_unreadable: counters.native_stack_failed,
                unmatched: native_unmatched,
                held_blocks: held.0,
                held_bytes: held.1,
                holders_unread,
            }),
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
        self.reports += 1;
        if let Some(m) = &self.metrics {
            m.publish(report::prometheus::render(&report, self.reports));
        }
        if reason.is_none() && self.live.enabled() {
            let footer = format!(
                "refreshed every {:.0} s · Ctrl-C for the final report",
                cfg.interval.as_secs_f64()
            );
            return self.live.show(&report::text(&report, cfg.top), &footer);
        }
        self.live.leave();
        super::print(&match cfg.format {
            Format::Json => report::json(&report) + "\n",
            Format::Text => report::text(&report, cfg.top) + "\n",
        })
    }

    /// `--folded` / `--flamegraph`: the surviving allocations of the growing sites (of every
    /// site with survivors when none grows), one folded line per (site, type). With
    /// findings, each retained site is drawn under its root: the root's stack, the root's
    /// type, then the retained type.
    fn write_graphs(
        &self,
        rows: &[TypeRow],
        sites: &Sites,
        findings: &[report::FindingReport],
    ) -> Result<()> {
        let cfg = self.cfg;
        if cfg.folded.is_none() && cfg.flamegraph.is_none() && cfg.pprof.is_none() {
            return Ok(());
        }
        let any_growing = rows.iter().any(|r| r.growing && r.live > 0);
        if let Some(out) = &cfg.pprof {
            out.write(&self.pprof(rows, sites, findings, any_growing))?;
        }
        let label = |r: &report::SiteReport| {
            format!("{} ({} live)", r.type_name, report::thousands(r.live))
        };
        let folded = if findings.is_empty() {
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
            sites::folded(&entries)
        } else {
            let mut entries = vec![];
            for f in findings {
                let root = sites::Site {
                    frames: f.root.frames.clone(),
                    truncated: f.root.truncated,
                };
                let top = label(&f.root);
                entries.push((root.clone(), vec![top.clone()], f.root.live_bytes));
                for r in &f.retained {
                    // Retained sites of one type are told apart by where they were born.
                    let at = r
                        .frames
                        .first()
                        .map(|fr| format!(" at {}", fr.short_label()));
                    let leaf = label(r) + &at.unwrap_or_default();
                    entries.push((root.clone(), vec![top.clone(), leaf], r.live_bytes));
                }
            }
            // Growing native sites have no findings (no Python referrers): drawn as they are.
            for r in rows
                .iter()
                .filter(|r| r.growing && r.live > 0 && retention::is_native(r.type_ptr))
            {
                let label = format!("{} ({} live)", r.name, report::thousands(r.live));
                entries.push((sites.get(r.site).clone(), vec![label], r.live_bytes));
            }
            let refs: Vec<(&sites::Site, Vec<String>, u64)> =
                entries.iter().map(|(s, l, n)| (s, l.clone(), *n)).collect();
            sites::folded_paths(&refs)
        };
        if let Some(out) = &cfg.folded {
            out.write(folded.as_bytes())?;
        }
        if let (Some(out), true) = (&cfg.flamegraph, cfg.flamegraph_diff) {
            // Two counts a stack (inferno's differential format): its live bytes at the first
            // report and now. Width is now; red grew, blue shrank.
            let before = self.first_folded.clone().unwrap_or_default();
            let after = live_folded(rows, sites);
            let mut diff = vec![];
            inferno::differential::from_readers(
                inferno::differential::Options::default(),
                before.as_bytes(),
                after.as_bytes(),
                &mut diff,
            )?;
            let since = if self.first_folded.is_some() {
                format!(
                    "the first report ({:.0} s after attach)",
                    cfg.interval.as_secs_f64()
                )
            } else {
                "attach (the trace ended before its first report)".to_string()
            };
            let subtitle = format!(
                "pid {} · width: live bytes at the end · red: grew since {since}, blue: shrank",
                self.pid
            );
            let svg = report::flamegraph(
                &String::from_utf8_lossy(&diff),
                "leakscope: growth of live bytes by allocation site",
                &subtitle,
            )?;
            out.write(&svg)?;
        } else if let Some(out) = &cfg.flamegraph {
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
            out.write(&svg)?;
        }
        Ok(())
    }
}

impl Session<'_> {
    /// The pprof profile of the sites the flamegraph draws: each finding's root and retained
    /// sites (labelled with the finding), else the growing sites (or every surviving one).
    fn pprof(
        &self,
        rows: &[TypeRow],
        sites: &Sites,
        findings: &[report::FindingReport],
        any_growing: bool,
    ) -> Vec<u8> {
        use report::pprof::PprofSite;
        fn of(r: &report::SiteReport, finding: Option<String>) -> PprofSite<'_> {
            PprofSite {
                type_name: &r.type_name,
                frames: &r.frames,
                live: r.live,
                live_bytes: r.live_bytes,
                rate_per_s: r.rate_per_s,
                growing: r.growing,
                finding,
            }
        }
        fn of_row<'a>(r: &'a TypeRow, sites: &'a Sites) -> PprofSite<'a> {
            PprofSite {
                type_name: &r.name,
                frames: &sites.get(r.site).frames,
                live: r.live,
                live_bytes: r.live_bytes,
                rate_per_s: r.rate_per_s,
                growing: r.growing,
                finding: None,
            }
        }
        let entries: Vec<PprofSite> = if findings.is_empty() {
            rows.iter()
                .filter(|r| r.live > 0 && (r.growing || !any_growing))
                .map(|r| of_row(r, sites))
                .collect()
        } else {
            findings
                .iter()
                .flat_map(|f| {
                    let name = match f.root.frames.first() {
                        Some(fr) => format!("{} at {}", f.root.type_name, fr.short_label()),
                        None => f.root.type_name.clone(),
                    };
                    std::iter::once(of(&f.root, Some(name.clone())))
                        .chain(f.retained.iter().map(move |r| of(r, Some(name.clone()))))
                })
                .chain(
                    rows.iter()
                        .filter(|r| r.growing && r.live > 0 && retention::is_native(r.type_ptr))
                        .map(|r| of_row(r, sites)),
                )
                .collect()
        };
        let elapsed = self.started.elapsed();
        let start = std::time::SystemTime::now()
            .checked_sub(elapsed)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let p =
            report::pprof::profile(&entries, start.as_nanos() as i64, elapsed.as_nanos() as i64);
        report::pprof::encode(&p)
    }
}

/// Every surviving site's live bytes, folded, the type as the leaf (for `--diff`: the same
/// stack at two reports must be the same line).
fn live_folded(rows: &[TypeRow], sites: &Sites) -> String {
    let entries: Vec<(&sites::Site, String, u64)> = rows
        .iter()
        .filter(|r| r.live > 0)
        .map(|r| (sites.get(r.site), r.name.clone(), r.live_bytes))
        .collect();
    sites::folded(&entries)
}

/// A site row as the report shows it.
fn site_report(r: &TypeRow, sites: &Sites) -> report::SiteReport {
    let site = sites.get(r.site);
    report::SiteReport {
        type_name: r.name.clone(),
        live: r.live,
        live_bytes: r.live_bytes,
        births: r.births,
        deaths: r.deaths,
        rate_per_s: r.rate_per_s,
        growing: r.growing,
        aged: r.aged,
        frames: site.frames.clone(),
        truncated: site.truncated,
        estimate: r.estimate,
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
        p.feed(&events, &[], &mut |_| None);
        assert_eq!(p.agg.live_objects(), 6);
        assert_eq!((p.unknown_events, p.resolver.failed_reads), (0, 0));
    }

    #[test]
    fn unknown_event_kind_is_counted_not_dropped_silently() {
        // Regression: events of a kind user space did not know vanished without a count.
        let mut p = pipeline();
        p.feed(
            &[event(EVENT_BIRTH, 0x1000), event(77, 0x2000), event(0, 0)],
            &[],
            &mut |_| None,
        );
        assert_eq!(p.unknown_events, 2);
        assert_eq!(p.agg.live_objects(), 1);
    }

    /// Native frames that say which address they are.
    struct FakeNative;
    impl NativeFrames for FakeNative {
        fn unwind(&mut self, r: &NativeRecord) -> Vec<u64> {
            vec![r.ip, r.ip + 0x100]
        }
        fn frames(&mut self, addr: u64) -> Vec<sites::Frame> {
            vec![sites::Frame {
                function: format!("f{addr:x}"),
                file: String::new(),
                line: None,
                library: Some("/lib/libx.so".into()),
            }]
        }
    }

    #[test]
    fn native_blocks_live_at_their_native_sites_until_freed() {
        let mut p = pipeline();
        p.symbolizer = Some(Symbolizer::new(
            FakeMemory::new(),
            V,
            cpython::stack_layout(V).unwrap(),
            0x9999,
        ));
        p.native = Some(Box::new(FakeNative));
        let alloc = |addr, size| Event {
            kind: EVENT_NATIVE_ALLOC,
            addr,
            type_ptr: leakscope_common::NATIVE_HEAP,
            ob_size: size,
            ..Default::default()
        };
        let rec = |ip| NativeRecord {
            ip,
            ..Default::default()
        };
        let events = [
            alloc(0x5000, 4096),
            alloc(0x6000, 4096),
            alloc(0x7000, 100),
            Event {
                kind: EVENT_NATIVE_FREE,
                addr: 0x6000,
                ..Default::default()
            },
            // A record missing behind its event is counted, not guessed at.
            alloc(0x8000, 1),
        ];
        p.feed(&events, &[rec(0xa0), rec(0xa0), rec(0xb0)], &mut |_| None);
        assert_eq!(p.agg.live_objects(), 2);
        assert_eq!(p.native_unmatched, 1);
        let sym = p.symbolizer.as_ref().unwrap();
        let (a, b) = (
            p.agg.site_of(0x5000).unwrap(),
            p.agg.site_of(0x7000).unwrap(),
        );
        assert_eq!(a.0, leakscope_common::NATIVE_HEAP);
        assert_ne!(a.1, b.1, "other return addresses, other sites");
        let frames: Vec<String> = sym
            .sites
            .get(a.1)
            .frames
            .iter()
            .map(|f| f.short_label())
            .collect();
        assert_eq!(frames, ["fa0 (libx.so)", "f1a0 (libx.so)"]);
        let (_, sites) = p.agg.snapshot(1.0, &mut |t| type_name(&mut p.resolver, t));
        let bytes: u64 = sites.iter().map(|r| r.live_bytes).sum();
        assert_eq!(bytes, 4096 + 100);
        assert!(sites.iter().all(|r| r.name == "native heap"));
    }

    #[test]
    fn native_blocks_an_extension_object_points_at_are_counted_with_it() {
        // X: a C extension's type (its tp_dealloc outside the interpreter, at 0x9000_0000);
        // T: a builtin (no deallocator outside).
        const X: u64 = 0x30_0000;
        let m = FakeMemory::new();
        m.put_words(T + TP_NAME, &[T + 0x800, 32, 0]);
        m.put(T + TP_FLAGS, 0);
        m.put_bytes(T + 0x800, b"float\0\0\0");
        m.put_words(X + TP_NAME, &[X + 0x800, 96, 0, 0x9000_0000]);
        m.put(X + TP_FLAGS, 0);
        m.put_bytes(X + 0x800, b"ndarray\0");
        let mut p = Pipeline::new(Resolver::new(m, V, vec![(T, T + 0x1000)], true), None);
        p.native = Some(Box::new(FakeNative));
        let birth = |addr, type_ptr| Event {
            kind: EVENT_BIRTH,
            addr,
            type_ptr,
            ..Default::default()
        };
        let alloc = |addr, size| Event {
            kind: EVENT_NATIVE_ALLOC,
            addr,
            type_ptr: leakscope_common::NATIVE_HEAP,
            ob_size: size,
            ..Default::default()
        };
        let events = [
            alloc(0x5000, 1 << 20),
            birth(0x1000, X),
            alloc(0x6000, 4096),
            birth(0x2000, T),
        ];
        p.feed(
            &events,
            &[NativeRecord::default(), NativeRecord::default()],
            &mut |_| None,
        );
        let bodies = FakeMemory::new();
        // the array's data pointer at +16, a non-block word at +24
        bodies.put_words(0x1000, &[1, X, 0x5000, 0x7777]);
        bodies.put_words(0x1000 + 32, &[0; 8]);
        // the builtin's body points at the other block: not an extension object
        bodies.put_words(0x2000, &[1, T, 0x6000, 0]);
        p.adopt_native(&*bodies);
        assert_eq!(p.agg.held(), (1, 1 << 20));
        let (types, _) = p.agg.snapshot(1.0, &mut |t| type_name(&mut p.resolver, t));
        let row = |name: &str| types.iter().find(|r| r.name == name).unwrap().clone();
        assert_eq!(row("ndarray").live_bytes, 96 + (1 << 20));
        assert_eq!(
            (row("native heap").live, row("native heap").live_bytes),
            (1, 4096)
        );
        // searched again: nothing changes
        p.adopt_native(&*bodies);
        assert_eq!(p.agg.held(), (1, 1 << 20));
    }
}
