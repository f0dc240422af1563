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
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use leakscope_common::{
    DROP_FRAME_READ_FAILED, DROP_NO_TSTATE, DROP_READ_FAILED, DROP_RINGBUF_FULL,
    DROP_STACK_MAP_FULL, Event, MAX_PROBES, RawStack, StackConfig, WALK_COUNT, WALK_FRAMES,
    WALK_NS, WALK_TRUNCATED, names,
};
use object::{Object, ObjectSection, ObjectSymbol, read::elf::ElfFile64};
use std::{num::NonZeroU32, os::fd::OwnedFd};

static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakscope.bpf.o"));
pub const PROGRAMS: [&str; 4] = names::PROGRAMS;

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
    for name in names::PROGRAMS {
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
    /// The programs' log (`-v` only), printed from `drain`.
    logger: Option<EbpfLogger<BpfLog>>,
    /// Ring-buffer records too short to be an event (counted, never decoded).
    short_records: u64,
    _stats: Option<OwnedFd>,
}

/// How to attach.
pub struct AttachOptions {
    /// Enable the kernel's BPF run-time stats while attached (`--stats`).
    pub stats: bool,
    pub stack_config: StackConfig,
    /// Forward the BPF programs' log to stderr (`-v`).
    pub verbose: bool,
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

impl Tracer {
    pub fn attach(plan: &Plan, pid: u32, opts: &AttachOptions) -> Result<Tracer> {
        let AttachOptions {
            stats,
            stack_config,
            verbose,
        } = *opts;
        if BPF_OBJECT.is_empty() {
            bail!(
                "this leakscope was built without its BPF object: run `cargo xtask build-ebpf`, then rebuild"
            );
        }
        check_object(BPF_OBJECT)?;
        if plan.probes.len() > MAX_PROBES as usize {
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

        let _stats = if stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("enabling kernel BPF run-time stats")?,
            )
        } else {
            None
        };
        let log_enabled = u8::from(verbose);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::LOG_ENABLED, &log_enabled, true)
            .load(BPF_OBJECT)
            .map_err(explain)?;
        // Taken before the programs load: they refer to its ring buffer, which must stay open.
        let logger = if verbose {
            Some(
                EbpfLogger::init_with_logger(&mut ebpf, BpfLog)
                    .context("opening the BPF programs' log")?,
            )
        } else {
            None
        };
        for name in PROGRAMS {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|e| explain(e).context(format!("loading BPF program {name}")))?;
        }
        let config = ebpf
            .map_mut(names::CONFIG)
            .with_context(|| format!("the BPF object has no map {}", names::CONFIG))?;
        Array::<_, StackConfig>::try_from(config)?
            .set(0, stack_config, 0)
            .context("writing the stack walker's settings")?;
        let pid = NonZeroU32::new(pid).context("pid 0")?;
        for (i, spec) in plan.probes.iter().enumerate() {
            attach_one(&mut ebpf, i as u64, spec, pid)?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the BPF object has no map {name}"))
        };
        let events = RingBuf::try_from(take(names::EVENTS)?)?;
        let hits = PerCpuArray::try_from(take(names::HITS)?)?;
        let drops = PerCpuArray::try_from(take(names::DROPS)?)?;
        let walk = PerCpuArray::try_from(take(names::WALK)?)?;
        let stacks = BpfHashMap::try_from(take(names::STACKS)?)?;
        Ok(Tracer {
            ebpf,
            events,
            hits,
            drops,
            walk,
            stacks,
            logger,
            short_records: 0,
            _stats,
        })
    }

    /// Moves at most `max` queued events into `out`; true when it stopped at `max` (more
    /// may be waiting).
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> bool {
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

    /// `(program, runs, run time ns)` from the kernel's BPF stats (only with `--stats`).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        PROGRAMS
            .iter()
            .filter_map(|&name| {
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

/// A program of the object as a uprobe, or an error naming it.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the BPF object has no program {name}"))?;
    prog.try_into()
        .with_context(|| format!("BPF program {name} is not a uprobe"))
}

fn attach_one(ebpf: &mut Ebpf, cookie: u64, spec: &ProbeSpec, pid: NonZeroU32) -> Result<()> {
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
        })?;
    Ok(())
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
