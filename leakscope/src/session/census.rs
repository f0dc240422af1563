//! `leakscope census`: snapshots of the GC lists and of pymalloc's arenas, one every
//! `--interval`, each optionally inside a `--pause`. A build whose allocator cannot be found
//! still gets the GC census (each report says why the allocator section is missing).
use crate::census::{self, Allocator, ClassSeries, Heap, Series, Walker};
use crate::config::{CensusConfig, Format};
use crate::report::census::{AllocatorReport, CensusReport, text};
use crate::resolve::types::Resolver;
use crate::target::{Process, interpreter::Interpreter, pause::Paused};
use anyhow::{Result, bail};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: ends the series between snapshots (during a `--pause` both are
/// held back until the target runs again, see `pause.rs`).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn run(cfg: &CensusConfig) -> Result<()> {
    let process = Process::open(cfg.pid)?;
    if !super::can_read_memory() {
        bail!("leakscope census needs root, or CAP_SYS_PTRACE (to read the target's memory)");
    }
    let interp = Interpreter::find(&process)?;
    let heap = Heap::of(&process, &interp)?;
    let allocator = Allocator::of(&process, &interp).map_err(|e| format!("{e:#}"));
    let (mut alloc_series, mut class_series) = (Series::default(), ClassSeries::default());
    let mut resolver = Resolver::new(
        process.memory(),
        interp.version,
        interp.ranges.clone(),
        true,
    );
    let mut series = Series::default();
    let started = Instant::now();
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut snapshot = 0;
    while cfg.count.is_none_or(|n| snapshot < n) && !stopped() {
        if snapshot > 0 {
            let until = Instant::now() + cfg.interval;
            while Instant::now() < until && !stopped() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if stopped() {
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
        let paused = if cfg.pause {
            Some(Paused::stop(process.pid)?)
        } else {
            None
        };
        let result = Walker::new(&heap, &mut resolver).run();
        let walk_ms = walk_started.elapsed().as_secs_f64() * 1e3;
        let alloc_started = Instant::now();
        let alloc = allocator.as_ref().ok().map(|a| a.walk(&mut resolver));
        let alloc_ms = alloc_started.elapsed().as_secs_f64() * 1e3;
        let paused_ms = paused.map(|p| p.resume().as_secs_f64() * 1e3);
        snapshot += 1;
        // Rows for the types the GC lists never hold: those without GC support.
        let alloc = alloc.map(|a| {
            let unseen: census::Counts = a
                .types
                .iter()
                .filter(|&(&t, _)| {
                    resolver
                        .get(t)
                        .is_some_and(|i| i.flags & crate::cpython::TPFLAGS_HAVE_GC == 0)
                })
                .map(|(&t, &c)| (t, c))
                .collect();
            (a, unseen)
        });
        let mut name = |t: u64| {
            resolver
                .get(t)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("<type {t:#x}>"))
        };
        let allocator_report = alloc.map(|(a, unseen)| AllocatorReport {
            classes: class_series.add(&a.classes),
            types: alloc_series.add(&unseen, &mut name),
            stats: a.stats,
            walk_ms: alloc_ms,
        });
        let report = CensusReport {
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
            allocator: allocator_report,
            allocator_error: allocator.as_ref().err().cloned(),
        };
        super::print(&match cfg.format {
            Format::Json => serde_json::to_string(&report)? + "\n",
            Format::Text => text(&report, cfg.top) + "\n",
        })?;
    }
    Ok(())
}
