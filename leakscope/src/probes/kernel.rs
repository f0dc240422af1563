//! The kernel side, seen from user space: load the embedded BPF object, attach the plan's
//! probes to the target, drain the ring buffer, read the counters. Nothing here interprets
//! events; that is `aggregate`'s job.
use super::plan::{Plan, ProbeSpec};
use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use leakscope_common::{
    DROP_FRAME_READ_FAILED, DROP_NO_TSTATE, DROP_READ_FAILED, DROP_RINGBUF_FULL,
    DROP_STACK_MAP_FULL, EVENT_NATIVE_ALLOC, Event, MAX_PROBES, MAX_WALK_TYPES, NativeConfig,
    RawStack, StackConfig, WALK_COUNT, WALK_FILTERED, WALK_FRAMES, WALK_NS, WALK_TRUNCATED, names,
};
use object::{Object, ObjectSection, ObjectSymbol, read::elf::ElfFile64};
use std::{num::NonZeroU32, os::fd::OwnedFd};

static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakscope.bpf.o"));
pub const PROGRAMS: [&str; 8] = names::PROGRAMS;

/// The BPF object this binary embeds (empty when it was built without one).
pub fn embedded_object() -> &'static [u8] {
    BPF_OBJECT
}

/// Checks that `object` holds every program, map and global user space uses, by the names in
/// `leakscope_common::names`; the error lists everything missing. Reads the ELF file only
/// (no privileges needed), so a stale or mismatched object is named before anything loads.
pub fn check_object(object: &[u8]) -> Result<()> {
    let elf = ElfFile64::<object::Endianness>::parse(object)
        .map_err(|e| anyhow!("the embedded BPF object is not a 64-bit ELF file: {e}"))?;
    let mut found = Vec::new();
    for sym in elf.symbols() {
        let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        let Ok(section) = elf.section_by_index(index).and_then(|s| s.name()) else {
            continue;
        };
        found.push((section.to_string(), name.to_string()));
    }
    let missing = missing_parts(&found);
    if !missing.is_empty() {
        bail!(
            "the embedded BPF object does not match this leakscope: it lacks {}; rebuild it \
             with `cargo xtask build-ebpf`, then rebuild leakscope",
            missing.join(", ")
        );
    }
    Ok(())
}

/// What of `names` is not among `(section, symbol)`: programs live in `uprobe*`/`uretprobe*`
/// sections, maps in `maps`, globals in read-only data.
fn missing_parts(found: &[(String, String)]) -> Vec<String> {
    let has = |name: &str, section: &dyn Fn(&str) -> bool| {
        found.iter().any(|(s, n)| n == name && section(s))
    };
    let program = |s: &str| s.starts_with("uprobe") || s.starts_with("uretprobe");
    let map = |s: &str| s == "maps";
    let global = |s: &str| s.starts_with(".rodata");
    let mut missing = vec![];
    for name in names::PROGRAMS.iter().chain([&names::SPAWN_STOP]) {
        if !has(name, &program) {
            missing.push(format!("program {name}"));
        }
    }
    for name in names::MAPS {
        if !has(name, &map) {
            missing.push(format!("map {name}"));
        }
    }
    for name in names::GLOBALS {
        if !has(name, &global) {
            missing.push(format!("global {name}"));
        }
    }
    missing
}

/// Where `-v` sends the BPF programs' log lines: stderr, beside leakscope's own messages.
struct BpfLog;

impl log::Log for BpfLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        eprintln!("leakscope: bpf: {}", record.args());
    }

    fn flush(&self) {}
}

pub struct Tracer {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    hits: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    walk: PerCpuArray<MapData, u64>,
    stacks: BpfHashMap<MapData, u64, RawStack>,
    walk_types: BpfHashMap<MapData, u64, u8>,
    stack_config: StackConfig,
    /// The programs' log (`-v` only), printed from `drain`.
    logger: Option<EbpfLogger<BpfLog>>,
    /// Ring-buffer records too short to be an event (counted, never decoded).
    short_records: u64,
    /// The kernel's BPF run-time stats, held on while leakscope runs (the cost model reads
    /// the programs' run time); `None` if the kernel refused.
    stats: Option<OwnedFd>,
    /// The plan's probes and, while attached, each one's link.
    specs: Vec<ProbeSpec>,
    links: Vec<(&'static str, Link)>,
    /// Links being closed on their own threads (the kernel takes ~0.1–0.2 s to retire
    /// one; the loop must not wait for that).
    detaching: Vec<std::thread::JoinHandle<()>>,
    /// The programs loaded for uprobe_multi links, when the kernel has them; `None`: aya's
    /// perf-event links (which keep trapping for ~0.2 s after each detach).
    multi: Option<super::multi::MultiPrograms>,
    pid: NonZeroU32,
}

/// One attached probe.
enum Link {
    Perf(UProbeLinkId),
    Multi(OwnedFd),
}

/// Which kind of link the probes use, for the report and `-v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// uprobe_multi links (Linux ≥ 6.6): a detach removes the breakpoints at once.
    UprobeMulti,
    /// perf-event links: the breakpoints stay for a grace period after a detach.
    PerfEvent,
}

/// How to attach.
pub struct AttachOptions {
    /// Insist on the kernel's BPF run-time stats (`--stats`); without it they are enabled
    /// when the kernel allows (the cost model uses them) and missed quietly otherwise.
    pub stats: bool,
    pub stack_config: StackConfig,
    /// Forward the BPF programs' log to stderr (`-v`).
    pub verbose: bool,
    /// Use perf-event links even where uprobe_multi links work (`LEAKSCOPE_PERF_LINKS=1`:
    /// for comparison, and to test that path on a kernel that has both).
    pub perf_links: bool,
    /// Code whose native allocations are not recorded (`--native`).
    pub native: NativeConfig,
}

/// What the kernel side counted, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_full: u64,
    pub read_failed: u64,
    pub stack_map_full: u64,
    pub no_tstate: u64,
    pub frame_read_failed: u64,
    pub walks: u64,
    pub walk_frames: u64,
    pub walk_ns: u64,
    pub walk_truncated: u64,
    /// Births not walked: their type was not in the walk filter.
    pub walk_filtered: u64,
    /// Native allocations whose stack could not be copied (kept without native frames).
    pub native_stack_failed: u64,
    /// Native allocations by the interpreter or the C library itself (not recorded).
    pub native_skipped: u64,
    /// Native returns without their entry (a call in flight when the probes attached).
    pub native_unpaired: u64,
}

/// The stack a native allocation copied: its caller's registers after the return and
/// `stack` bytes from `sp` (what `native::Unwinder` walks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeRecord {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack: Vec<u8>,
}

/// The native part of a `NativeEvent` record; `None` when it is too short to be one.
pub fn decode_native(record: &[u8]) -> Option<NativeRecord> {
    let head = size_of::<Event>();
    let word = |i: usize| -> Option<u64> {
        let b = record.get(head + 8 * i..head + 8 * i + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    };
    let (ip, sp, bp, len) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let start = head + 32;
    let len = (len as usize).min(leakscope_common::NATIVE_STACK_BYTES);
    let stack = record.get(start..start + len)?.to_vec();
    Some(NativeRecord { ip, sp, bp, stack })
}

/// One ring-buffer record as an event; `None` when it is too short to be one.
pub fn decode(record: &[u8]) -> Option<Event> {
    (record.len() >= size_of::<Event>())
        .then(|| unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<Event>()) })
}

/// Uprobes need the kernel's uprobe PMU (CONFIG_UPROBES / CONFIG_UPROBE_EVENTS).
pub fn check_uprobe_support(sysfs: &std::path::Path) -> Result<()> {
    if !sysfs.join("type").exists() {
        bail!(
            "this kernel has no uprobe support ({} is missing): leakscope needs \
             CONFIG_UPROBES and CONFIG_UPROBE_EVENTS",
            sysfs.display()
        );
    }
    Ok(())
}

/// What one probe hit costs the target beyond the BPF program's own run time: the trap,
/// measured in leakscope's own process at start (`Tracer::calibrate`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TrapCost {
    /// On an instruction the kernel emulates (push, nop, relative jumps).
    pub emulated_ns: f64,
    /// On one it must single-step out of line.
    pub stepped_ns: f64,
    /// What a thread that keeps hitting a probe loses while the kernel detaches it: its
    /// hits block until the kernel is done (tens of ms here). Paid once per probe and
    /// window by a busy target.
    pub detach_ns: f64,
}

impl TrapCost {
    /// Used when calibration cannot run: this machine's figures (README, `cargo xtask bench`).
    pub const FALLBACK: TrapCost = TrapCost {
        emulated_ns: 1_000.0,
        stepped_ns: 14_000.0,
        detach_ns: 100e6,
    };

    pub fn of(&self, emulated: bool) -> f64 {
        if emulated {
            self.emulated_ns
        } else {
            self.stepped_ns
        }
    }
}

// Calibration targets: one function whose first instruction the kernel emulates (`push`)
// and one it must single-step (`mov`), probed in leakscope's own process.
core::arch::global_asm!(
    ".globl leakscope_calibrate_emulated",
    ".type leakscope_calibrate_emulated, @function",
    "leakscope_calibrate_emulated:",
    "    push rbp",
    "    pop rbp",
    "    ret",
    ".size leakscope_calibrate_emulated, . - leakscope_calibrate_emulated",
    ".globl leakscope_calibrate_stepped",
    ".type leakscope_calibrate_stepped, @function",
    "leakscope_calibrate_stepped:",
    "    mov rax, rdi",
    "    ret",
    ".size leakscope_calibrate_stepped, . - leakscope_calibrate_stepped",
);
unsafe extern "C" {
    fn leakscope_calibrate_emulated(p: u64) -> u64;
    fn leakscope_calibrate_stepped(p: u64) -> u64;
}

/// The attach cookie calibration probes count under (never a plan's probe).
const CALIBRATION_COOKIE: u64 = MAX_PROBES as u64 - 1;

/// Offset in the file behind `addr` in this process's own mappings (`/proc/self/maps`).
fn own_file_offset(addr: u64) -> Result<(std::path::PathBuf, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(off)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(off)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        if (lo..hi).contains(&addr) {
            return Ok(("/proc/self/exe".into(), addr - lo + off));
        }
    }
    bail!("address {addr:#x} is in none of this process's mappings")
}

impl Tracer {
    /// Loads the programs and attaches every probe of `plan` to `pid`.
    pub fn attach(plan: &Plan, pid: u32, opts: &AttachOptions) -> Result<Tracer> {
        let mut t = Tracer::load(plan, pid, opts)?;
        t.attach_probes()?;
        Ok(t)
    }

    /// Loads the programs (nothing attached yet: the target pays nothing until
    /// `attach_probes`).
    pub fn load(plan: &Plan, pid: u32, opts: &AttachOptions) -> Result<Tracer> {
        let AttachOptions {
            stats,
            stack_config,
            verbose,
            perf_links,
            native,
        } = *opts;
        if BPF_OBJECT.is_empty() {
            bail!(
                "this leakscope was built without its BPF object: run `cargo xtask build-ebpf`, then rebuild"
            );
        }
        check_object(BPF_OBJECT)?;
        // The last cookie is the calibration probe's.
        if plan.probes.len() >= MAX_PROBES as usize {
            bail!(
                "{} probes planned, at most {MAX_PROBES} fit",
                plan.probes.len()
            );
        }
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; raising it may fail
        // (no CAP_SYS_RESOURCE) and newer kernels don't need it, so failure is fine.
        let rlim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) if stats => {
                return Err(anyhow!(e).context("enabling kernel BPF run-time stats"));
            }
            Err(_) => None,
        };
        let log_enabled = u8::from(verbose);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::LOG_ENABLED, &log_enabled, true)
            .load(BPF_OBJECT)
            .map_err(explain)?;
        // Before any map is taken out of `ebpf`: the programs are relocated against them.
        let multi = if perf_links { None } else { load_multi(&ebpf) };
        // Taken before the programs load: they refer to its ring buffer, which must stay open.
        let logger = if verbose {
            Some(
                EbpfLogger::init_with_logger(&mut ebpf, BpfLog)
                    .context("opening the BPF programs' log")?,
            )
        } else {
            None
        };
        if multi.is_none() {
            for name in PROGRAMS {
                uprobe(&mut ebpf, name)?
                    .load()
                    .map_err(|e| explain(e).context(format!("loading BPF program {name}")))?;
            }
        }
        let config = ebpf
            .map_mut(names::CONFIG)
            .with_context(|| format!("the BPF object has no map {}", names::CONFIG))?;
        Array::<_, StackConfig>::try_from(config)?
            .set(0, stack_config, 0)
            .context("writing the stack walker's settings")?;
        let native_config = ebpf
            .map_mut(names::NATIVE_CONFIG)
            .with_context(|| format!("the BPF object has no map {}", names::NATIVE_CONFIG))?;
        Array::<_, NativeConfig>::try_from(native_config)?
            .set(0, native, 0)
            .context("writing the native allocator's settings")?;
        let pid = NonZeroU32::new(pid).context("pid 0")?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the BPF object has no map {name}"))
        };
        let events = RingBuf::try_from(take(names::EVENTS)?)?;
        let hits = PerCpuArray::try_from(take(names::HITS)?)?;
        let drops = PerCpuArray::try_from(take(names::DROPS)?)?;
        let walk = PerCpuArray::try_from(take(names::WALK)?)?;
        let stacks = BpfHashMap::try_from(take(names::STACKS)?)?;
        let walk_types = BpfHashMap::try_from(take(names::WALK_TYPES)?)?;
        Ok(Tracer {
            ebpf,
            events,
            hits,
            drops,
            walk,
            stacks,
            walk_types,
            stack_config,
            logger,
            short_records: 0,
            stats,
            specs: plan.probes.clone(),
            links: vec![],
            detaching: vec![],
            multi,
            pid,
        })
    }

    pub fn link_kind(&self) -> LinkKind {
        if self.multi.is_some() {
            LinkKind::UprobeMulti
        } else {
            LinkKind::PerfEvent
        }
    }

    fn attach_one(&mut self, cookie: u64, spec: &ProbeSpec, pid: NonZeroU32) -> Result<Link> {
        match &self.multi {
            Some(multi) => multi
                .attach(
                    spec.program,
                    &spec.path,
                    spec.file_offset,
                    cookie,
                    pid.get(),
                )
                .map(Link::Multi)
                .map_err(|e| {
                    explain_anyhow(e).context(format!(
                        "attaching a uprobe at {} in {}",
                        spec.label,
                        spec.path.display()
                    ))
                }),
            None => attach_perf(&mut self.ebpf, cookie, spec, pid).map(Link::Perf),
        }
    }

    /// Detaches one link; a perf link's close is waited for here, a multi link's on a
    /// thread of its own (its breakpoints are gone once `close` starts).
    fn detach_one(&mut self, program: &str, link: Link) {
        match link {
            Link::Multi(fd) => {
                if let Ok(h) = std::thread::Builder::new()
                    .name("detach".into())
                    .spawn(move || drop(fd))
                {
                    self.detaching.push(h);
                }
            }
            Link::Perf(link) => {
                let Ok(prog) = uprobe(&mut self.ebpf, program) else {
                    return;
                };
                // Fails only for a link that is already gone. Without a thread the link is
                // closed here, when the closure holding it is dropped.
                if let Ok(owned) = prog.take_link(link)
                    && let Ok(h) = std::thread::Builder::new()
                        .name("detach".into())
                        .spawn(move || drop(owned))
                {
                    self.detaching.push(h);
                }
            }
        }
    }

    /// Attaches every probe, or none: on an error the ones attached are detached again.
    /// Frees first, births last, so a birth seen in a window has its free seen too.
    pub fn attach_probes(&mut self) -> Result<()> {
        if self.attached() {
            return Ok(());
        }
        self.settle();
        let mut order: Vec<usize> = (0..self.specs.len()).collect();
        // A native return attaches after its entry, and detaches before it: a return
        // never runs without its entry's arguments (`native_unpaired` counts the calls in
        // flight at attach).
        order.sort_by_key(|&i| {
            let p = self.specs[i].program;
            (is_birth(p), p == names::NATIVE_RET)
        });
        for i in order {
            let spec = self.specs[i].clone();
            let cookie = i as u64 | (u64::from(spec.kind) << leakscope_common::COOKIE_KIND_SHIFT);
            match self.attach_one(cookie, &spec, self.pid) {
                Ok(link) => self.links.push((self.specs[i].program, link)),
                Err(e) => {
                    self.detach_probes();
                    self.settle();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Detaches every probe, births first; a no-op when detached. The kernel takes
    /// ~0.1–0.2 s to retire a link, so each is closed on a thread of its own and `settle`
    /// waits. A uprobe_multi link's breakpoints are gone when its close starts; a perf
    /// link's stay until its close ends (`Link`).
    pub fn detach_probes(&mut self) {
        let mut links: Vec<_> = self.links.drain(..).collect();
        links.sort_by_key(|&(program, _)| (!is_birth(program), program != names::NATIVE_RET));
        for (program, link) in links {
            self.detach_one(program, link);
        }
    }

    /// Walk stacks only at births of these types (`Some`), or at every birth (`None`).
    /// Takes effect at once, attached or not; at most `MAX_WALK_TYPES` types are kept.
    pub fn set_walk_filter(&mut self, types: Option<&[u64]>) -> Result<()> {
        let old: Vec<u64> = self.walk_types.keys().filter_map(|k| k.ok()).collect();
        let new = types.unwrap_or(&[]);
        let new = &new[..new.len().min(MAX_WALK_TYPES as usize)];
        for t in new {
            self.walk_types
                .insert(t, 1, 0)
                .context("writing the walk filter")?;
        }
        for t in old.iter().filter(|t| !new.contains(t)) {
            let _ = self.walk_types.remove(t);
        }
        let mut cfg = self.stack_config;
        cfg.walk_filter = u64::from(types.is_some());
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .with_context(|| format!("the BPF object has no map {}", names::CONFIG))?;
        Array::<_, StackConfig>::try_from(map)?
            .set(0, cfg, 0)
            .context("writing the walk filter")?;
        Ok(())
    }

    /// Points the free programs at the main interpreter's `gc.collecting` (spawn mode: only
    /// known once the started program's interpreter is initialized).
    pub fn set_gc_collecting(&mut self, addr: u64) -> Result<()> {
        self.stack_config.gc_collecting = addr;
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .with_context(|| format!("the BPF object has no map {}", names::CONFIG))?;
        Array::<_, StackConfig>::try_from(map)?
            .set(0, self.stack_config, 0)
            .context("writing the stack walker's settings")?;
        Ok(())
    }

    /// Waits until every detached link is closed (its breakpoints long gone).
    pub fn settle(&mut self) {
        for h in self.detaching.drain(..) {
            let _ = h.join();
        }
    }

    pub fn attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Whether the programs' run time is being measured (kernel BPF stats on).
    pub fn has_run_time(&self) -> bool {
        self.stats.is_some()
    }

    /// The sum of every program's run time so far (kernel BPF stats), nanoseconds.
    pub fn run_time_ns(&self) -> u64 {
        self.program_stats().iter().map(|&(_, _, ns)| ns).sum()
    }

    /// Measures what a hit costs beyond the program: `free_arg0` on two functions of this
    /// process (an emulated and a single-stepped first instruction), called `calls` times
    /// each with and without the probe, minus the program's own run time. Call it before
    /// attaching to the target; it leaves no event behind (a null argument emits none).
    pub fn calibrate(&mut self, calls: u32) -> Result<TrapCost> {
        let fns: [(unsafe extern "C" fn(u64) -> u64, &str); 2] = [
            (leakscope_calibrate_emulated, "an emulated instruction"),
            (leakscope_calibrate_stepped, "a single-stepped instruction"),
        ];
        let mut cost = [0.0f64; 2];
        for (k, &(f, what)) in fns.iter().enumerate() {
            let time = |n: u32| {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    unsafe { std::hint::black_box(f(std::hint::black_box(0))) };
                }
                t.elapsed().as_nanos() as f64
            };
            let (path, offset) = own_file_offset(f as usize as u64)?;
            let spec = ProbeSpec {
                label: format!("calibration on {what}"),
                program: leakscope_common::names::FREE_ARG0,
                path,
                file_offset: offset,
                point: super::disasm::ProbePoint::default(),
                entry: super::disasm::ProbePoint::default(),
                kind: 0,
            };
            let plain = time(calls);
            let link = self
                .attach_one(CALIBRATION_COOKIE, &spec, self_pid()?)
                .with_context(|| format!("calibrating the trap cost on {what}"))?;
            let run0 = self.run_time_ns();
            let probed = time(calls);
            let run = self.run_time_ns().saturating_sub(run0) as f64;
            self.detach_one(spec.program, link);
            cost[k] = ((probed - plain - run) / calls as f64).max(0.0);
        }
        let detach_ns = self.detach_stall()?;
        Ok(TrapCost {
            emulated_ns: cost[0],
            stepped_ns: cost[1],
            detach_ns,
        })
    }

    /// A thread of ours calls a probed function in a loop while the probe is detached;
    /// what it lost is the time its calls spent beyond 2 µs each (a plain trap is well
    /// under that), over the whole detach.
    fn detach_stall(&mut self) -> Result<f64> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let f: unsafe extern "C" fn(u64) -> u64 = leakscope_calibrate_emulated;
        let (path, offset) = own_file_offset(f as usize as u64)?;
        let spec = ProbeSpec {
            label: "calibration of a detach".into(),
            program: leakscope_common::names::FREE_ARG0,
            path,
            file_offset: offset,
            point: super::disasm::ProbePoint::default(),
            entry: super::disasm::ProbePoint::default(),
            kind: 0,
        };
        let link = self
            .attach_one(CALIBRATION_COOKIE, &spec, self_pid()?)
            .context("calibrating what a detach costs")?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let looper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut excess = 0.0f64;
                while !stop.load(Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    unsafe { std::hint::black_box(f(std::hint::black_box(0))) };
                    let ns = t.elapsed().as_nanos() as f64;
                    if ns > 2_000.0 {
                        excess += ns;
                    }
                }
                excess
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.detach_one(spec.program, link);
        self.settle();
        std::thread::sleep(std::time::Duration::from_millis(10));
        stop.store(true, Ordering::Relaxed);
        looper
            .join()
            .map_err(|_| anyhow!("the calibration thread panicked"))
    }

    /// Moves at most `max` queued events into `out`; true when it stopped at `max` (more
    /// may be waiting).
    /// A native allocation's event comes with its `NativeRecord`, appended to `natives` in
    /// the same order (the pipeline takes them one per `EVENT_NATIVE_ALLOC`).
    pub fn drain(
        &mut self,
        out: &mut Vec<Event>,
        natives: &mut Vec<NativeRecord>,
        max: usize,
    ) -> bool {
        // Log lines are rare (first failures only): printing them each drain is enough.
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let mut taken = 0;
        while taken < max {
            let Some(item) = self.events.next() else {
                return false;
            };
            taken += 1;
            match decode(&item) {
                Some(e) if e.kind == EVENT_NATIVE_ALLOC => match decode_native(&item) {
                    Some(n) => {
                        out.push(e);
                        natives.push(n);
                    }
                    None => self.short_records += 1,
                },
                Some(e) => out.push(e),
                None => self.short_records += 1,
            }
        }
        true
    }

    pub fn short_records(&self) -> u64 {
        self.short_records
    }

    pub fn counters(&self) -> Counters {
        let drop = |i| Self::sum(&self.drops, i);
        let walk = |i| Self::sum(&self.walk, i);
        Counters {
            ringbuf_full: drop(DROP_RINGBUF_FULL),
            read_failed: drop(DROP_READ_FAILED),
            stack_map_full: drop(DROP_STACK_MAP_FULL),
            no_tstate: drop(DROP_NO_TSTATE),
            frame_read_failed: drop(DROP_FRAME_READ_FAILED),
            walks: walk(WALK_COUNT),
            walk_frames: walk(WALK_FRAMES),
            walk_ns: walk(WALK_NS),
            walk_truncated: walk(WALK_TRUNCATED),
            walk_filtered: walk(WALK_FILTERED),
            native_stack_failed: drop(leakscope_common::DROP_NATIVE_STACK),
            native_skipped: walk(leakscope_common::WALK_NATIVE_SKIPPED),
            native_unpaired: walk(leakscope_common::WALK_NATIVE_UNPAIRED),
        }
    }

    /// An interned stack, read back from the kernel's map.
    pub fn stack(&self, id: u64) -> Option<RawStack> {
        self.stacks.get(&id, 0).ok()
    }

    fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    pub fn hits(&self, probes: usize) -> Vec<u64> {
        (0..probes as u32)
            .map(|i| Self::sum(&self.hits, i))
            .collect()
    }

    /// `(program, runs, run time ns)` from the kernel's BPF stats (zero when they are off).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        PROGRAMS
            .iter()
            .filter_map(|&name| {
                if let Some(multi) = &self.multi {
                    let (runs, ns) = multi.stats(name)?;
                    return Some((name.to_string(), runs, ns));
                }
                let prog: &UProbe = self.ebpf.program(name)?.try_into().ok()?;
                let info = prog.info().ok()?;
                Some((
                    name.to_string(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ))
            })
            .collect()
    }
}

/// Spawn mode's stop at a program's entry (`target::spawn`): while this lives, process
/// `pid` stops itself (SIGSTOP) when it reaches `file_offset` of `exe`, a pid-scoped uprobe
/// whose program sends the signal. Dropping it takes the probe out.
pub struct StopAtEntry {
    _ebpf: Ebpf,
}

pub fn stop_at_entry(exe: &std::path::Path, file_offset: u64, pid: u32) -> Result<StopAtEntry> {
    if BPF_OBJECT.is_empty() {
        bail!(
            "this leakscope was built without its BPF object: run `cargo xtask build-ebpf`, then rebuild"
        );
    }
    check_object(BPF_OBJECT)?;
    let mut ebpf = EbpfLoader::new()
        .override_global(names::LOG_ENABLED, &0u8, true)
        .load(BPF_OBJECT)
        .map_err(explain)?;
    let prog = uprobe(&mut ebpf, names::SPAWN_STOP)?;
    prog.load()
        .map_err(|e| explain(e).context(format!("loading BPF program {}", names::SPAWN_STOP)))?;
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(file_offset),
        cookie: None,
    };
    let pid = NonZeroU32::new(pid).context("pid 0")?;
    prog.attach(point, exe, UProbeScope::OneProcess(pid))
        .map_err(|e| {
            explain(e).context(format!("attaching at {}+{file_offset:#x}", exe.display()))
        })?;
    Ok(StopAtEntry { _ebpf: ebpf })
}

/// A program of the object as a uprobe, or an error naming it.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the BPF object has no program {name}"))?;
    prog.try_into()
        .with_context(|| format!("BPF program {name} is not a uprobe"))
}

/// Births attach last and detach first (a native allocation is a birth).
fn is_birth(program: &str) -> bool {
    program.starts_with("birth") || program == names::NATIVE_ENTER || program == names::NATIVE_RET
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_probes();
        self.settle();
    }
}

fn self_pid() -> Result<NonZeroU32> {
    NonZeroU32::new(std::process::id()).context("pid 0")
}

/// The programs for uprobe_multi links, when this kernel can attach one (tried on a
/// function of leakscope's own process); `None` otherwise.
fn load_multi(ebpf: &Ebpf) -> Option<super::multi::MultiPrograms> {
    let multi = super::multi::MultiPrograms::load(ebpf, BPF_OBJECT, &PROGRAMS)
        .inspect_err(|e| log::debug!("no uprobe_multi programs: {e:#}"))
        .ok()?;
    let f: unsafe extern "C" fn(u64) -> u64 = leakscope_calibrate_stepped;
    let (path, offset) = own_file_offset(f as usize as u64).ok()?;
    let link = multi
        .attach(
            names::FREE_ARG0,
            &path,
            offset,
            CALIBRATION_COOKIE,
            std::process::id(),
        )
        .inspect_err(|e| log::debug!("no uprobe_multi links: {e:#}"))
        .ok()?;
    // Its close waits a grace period; nothing calls the function meanwhile.
    std::thread::spawn(move || drop(link));
    Some(multi)
}

fn attach_perf(
    ebpf: &mut Ebpf,
    cookie: u64,
    spec: &ProbeSpec,
    pid: NonZeroU32,
) -> Result<UProbeLinkId> {
    let prog = uprobe(ebpf, spec.program)?;
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(spec.file_offset),
        cookie: Some(cookie),
    };
    prog.attach(point, &spec.path, UProbeScope::OneProcess(pid))
        .map_err(|e| {
            explain(e).context(format!(
                "attaching a uprobe at {} in {}",
                spec.label,
                spec.path.display()
            ))
        })
}

fn explain_anyhow(e: anyhow::Error) -> anyhow::Error {
    let eperm = e.chain().any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
    });
    if eperm {
        e.context(crate::session::NEEDS_PRIVILEGES)
    } else {
        e
    }
}

/// Turns permission errors into the sentence a user needs.
fn explain<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    let text = format!("{e:#}").to_lowercase();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut eperm = text.contains("operation not permitted") || text.contains("permission denied");
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            eperm |= matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        }
        source = s.source();
    }
    if eperm {
        anyhow!(e).context(crate::session::NEEDS_PRIVILEGES)
    } else {
        anyhow!(e)
    }
}

#[cfg(test)]
mod tests {
    use leakscope_common::names;

    #[test]
    fn a_short_record_is_not_an_event() {
        let e = leakscope_common::Event {
            kind: 1,
            addr: 0x1000,
            ..Default::default()
        };
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                (&e as *const leakscope_common::Event).cast(),
                size_of_val(&e),
            )
        };
        assert_eq!(super::decode(bytes), Some(e));
        assert_eq!(super::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_mismatched_object_names_everything_it_lacks() {
        let found = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|&(s, n)| (s.to_string(), n.to_string()))
                .collect()
        };
        let mut all: Vec<(&str, &str)> = vec![];
        all.extend(names::PROGRAMS.map(|p| ("uprobe", p)));
        all.push(("uprobe", names::SPAWN_STOP));
        all.extend(names::MAPS.map(|m| ("maps", m)));
        all.extend(names::GLOBALS.map(|g| (".rodata", g)));
        assert!(super::missing_parts(&found(&all)).is_empty());
        // A map under a program's name is not the map; a stale object lacks new parts.
        let stale: Vec<_> = all
            .iter()
            .copied()
            .filter(|&(_, n)| n != names::LOGGED && n != names::LOG_ENABLED)
            .map(|(s, n)| {
                if n == names::HITS {
                    ("uprobe", n)
                } else {
                    (s, n)
                }
            })
            .collect();
        assert_eq!(
            super::missing_parts(&found(&stale)),
            ["map HITS", "map LOGGED", "global LOG_ENABLED"]
        );
    }

    #[test]
    fn a_non_elf_object_is_an_error_not_a_panic() {
        let err = super::check_object(b"not an object").unwrap_err();
        assert!(format!("{err}").contains("not a 64-bit ELF"), "{err}");
    }

    #[test]
    fn the_embedded_object_has_everything_user_space_uses() {
        // Built without the object (`cargo test --lib` anywhere): nothing to check here;
        // `tests/bpf.rs` insists on it.
        if super::embedded_object().is_empty() {
            eprintln!("no embedded BPF object: run `cargo xtask build-ebpf` to check it");
            return;
        }
        if let Err(e) = super::check_object(super::embedded_object()) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn a_kernel_without_uprobes_is_named() {
        let err =
            super::check_uprobe_support(std::path::Path::new("/nonexistent/uprobe")).unwrap_err();
        assert!(format!("{err}").contains("no uprobe support"), "{err}");
        assert!(format!("{err}").contains("CONFIG_UPROBES"), "{err}");
    }
}
