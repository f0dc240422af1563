//! Reports: the data (serializable, one JSON object per line with `--json`) and its text
//! rendering. Pure: rows in, bytes out.
pub mod census;
pub mod pprof;
pub mod prometheus;

use crate::model::aggregate::TypeRow;
use crate::model::budget::{Estimate, Mode, State};
use crate::model::sites::Frame;
use serde::Serialize;
use std::fmt::Write;

/// One allocation site of one type: where surviving objects were born.
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    #[serde(rename = "type")]
    pub type_name: String,
    pub live: u64,
    pub live_bytes: u64,
    pub births: u64,
    pub deaths: u64,
    pub rate_per_s: f64,
    pub growing: bool,
    /// Live objects older than `aggregate::AGE_INTERVALS` intervals (aged survivors).
    pub aged: u64,
    /// Innermost frame first.
    pub frames: Vec<Frame>,
    /// The stack was cut (deeper than the walk goes, or a frame was unreadable).
    pub truncated: bool,
    /// Sampled mode: the counts scaled to the whole trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
}

/// A site whose objects died inside collections of the cyclic GC: garbage cycles (or
/// what they held), freed only by the collector. Not a leak; each costs collection time.
#[derive(Clone, Debug, Serialize)]
pub struct CycleSite {
    #[serde(rename = "type")]
    pub type_name: String,
    pub births: u64,
    /// Deaths inside a collection.
    pub collected: u64,
    /// Innermost frame first.
    pub frames: Vec<Frame>,
    pub truncated: bool,
}

/// One leak: a root site and the growing sites it retains (`model::findings`).
#[derive(Clone, Debug, Serialize)]
pub struct FindingReport {
    pub root: SiteReport,
    /// Retained sites, most bytes a second first.
    pub retained: Vec<SiteReport>,
    /// The group's totals: root and retained.
    pub objects: u64,
    pub bytes: u64,
    pub rate_per_s: f64,
    pub bytes_per_s: f64,
    /// What keeps one of the root's objects alive, outward from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    /// The leaked object first, then each holder outward.
    pub links: Vec<LinkReport>,
    pub end: crate::model::chains::End,
    /// The root in words: "global LEAKS of module __main__", "a cycle the collector cannot
    /// break", ...
    pub kept_by: String,
    /// Every link read again after the search, and still there. False: the heap moved
    /// under the read, and the chain is what was seen, not confirmed.
    pub confirmed: bool,
    /// A C-level holder (found by scanning its memory) is on the chain.
    pub through_c_holder: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkReport {
    #[serde(rename = "type")]
    pub type_name: String,
    pub address: String,
    /// How this link holds the previous one (`['key']`, `.attr`, `[3]`, `.__self__`, ...;
    /// empty for the first link).
    pub holds: String,
    /// A C extension's object whose reference was found by a scan: the collector does not
    /// traverse it.
    pub c_holder: bool,
}

/// How the retention chains were read.
#[derive(Clone, Debug, Serialize)]
pub struct RetentionInfo {
    pub ms: f64,
    /// Whether the target was stopped while its heap was read (never, today).
    pub paused: bool,
    pub objects: u64,
    pub references: u64,
    pub scanned: u64,
    /// Threads' running frames read (their locals are roots).
    pub frames: u64,
    /// A bound was hit: a referrer may be missing.
    pub bounded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sampled mode: what re-reading followed objects between windows found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowStats {
    /// Checks made (one per followed object per gap).
    pub checked: u64,
    /// Found dead: reference count 0, a free-list pointer over it, another type, other
    /// contents, or unreadable.
    pub dead_refcount: u64,
    pub dead_other_type: u64,
    pub dead_other_contents: u64,
    pub dead_unreadable: u64,
}

/// What stack walking cost and lost (with `--stats`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalkStats {
    pub walks: u64,
    pub frames: u64,
    pub ns: u64,
    pub truncated: u64,
}

/// `--native`: the C library probed, and the allocations it did not record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NativeInfo {
    /// The C library, as the target names it.
    pub library: String,
    /// Allocations made by the interpreter itself or inside the C library (pymalloc's
    /// arenas, objects too large for pymalloc): Python objects, not native leaks.
    pub interpreter_allocations: u64,
    /// Returns without their entry (calls in flight when the probes attached).
    pub unpaired: u64,
    /// Allocations whose stack could not be copied: kept, without native frames.
    pub stack_unreadable: u64,
    /// Native records missing behind their event (a kernel/user-space mismatch).
    pub unmatched: u64,
    /// Live native blocks held by live objects of extension types, counted in those
    /// objects' bytes (not in native rows), and their bytes.
    pub held_blocks: u64,
    pub held_bytes: u64,
    /// Extension objects not searched for the blocks they hold (too many to read).
    pub holders_unread: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Losses {
    /// Events the kernel could not queue (ring buffer full): births/frees never seen.
    pub ringbuf_full: u64,
    /// Births whose object could not be read in the probe.
    pub kernel_read_failed: u64,
    /// Births whose type object user space could not read (counted as unknown type).
    pub unreadable_types: u64,
    /// Births without a stack: no Python thread state for the allocating thread.
    pub no_thread_state: u64,
    /// Stacks not stored because the kernel's stack map was full.
    pub stack_map_full: u64,
    /// Stack walks cut short by an unreadable frame.
    pub frame_read_failed: u64,
    /// Stacks user space could not read back from the kernel map.
    pub unreadable_stacks: u64,
    /// Ring-buffer records shorter than an event (a kernel/user-space mismatch): dropped.
    pub short_records: u64,
    /// Events of a kind this user space does not know: dropped.
    pub unknown_events: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeStat {
    pub probe: String,
    pub instruction: String,
    pub emulated: bool,
    pub hits: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStat {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// An interval report, or the final one (totals instead of the last interval's counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Interval,
    Final,
}

/// Why a trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndReason {
    /// `--duration` ran out.
    #[serde(rename = "duration")]
    Duration,
    /// Ctrl-C (SIGINT).
    #[serde(rename = "interrupted")]
    Interrupted,
    /// SIGTERM.
    #[serde(rename = "terminated")]
    Terminated,
    #[serde(rename = "target exited")]
    TargetExited,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::Duration => "duration",
            EndReason::Interrupted => "interrupted",
            EndReason::Terminated => "terminated",
            EndReason::TargetExited => "target exited",
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: ReportKind,
    /// Why the trace ended (final reports only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    pub pid: u32,
    pub elapsed_s: f64,
    pub interval_s: f64,
    /// How it was traced: mode, time attached, estimated overhead, budget.
    #[serde(flatten)]
    pub tracing: State,
    /// Sampled mode: the checks of followed objects between windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followed: Option<FollowStats>,
    /// Sampled mode: this window walks stacks only at births of this many types (those
    /// with survivors); absent when every birth is walked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walk_filter_types: Option<usize>,
    /// What the cost model takes a hit and a detach to cost (measured at start).
    pub calibration: crate::probes::kernel::TrapCost,
    pub types: Vec<TypeRow>,
    /// Time of the census that added `census` rows (partial builds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census_ms: Option<f64>,
    /// Why this partial build's report has no census rows although they were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census_error: Option<String>,
    /// Free signal: pymalloc's size classes whose live block count moved since the first
    /// allocator census (names like "pymalloc 64-byte blocks"; growing first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocator_classes: Vec<TypeRow>,
    /// Why there is no allocator census (when one was wanted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator_error: Option<String>,
    /// Allocation sites, growing ones first (at most `--top`).
    pub sites: Vec<SiteReport>,
    /// Sites whose objects the cyclic collector freed, most collected first (at most
    /// `--top`).
    pub cycles: Vec<CycleSite>,
    /// Final reports: growing sites grouped into leaks, root first (`model::findings`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionInfo>,
    pub live_objects: u64,
    pub ignored_births: u64,
    /// `--native`: where the allocator probes are and what they did not record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeInfo>,
    pub lost: Losses,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<ProbeStat>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<Vec<ProgramStat>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walk: Option<WalkStats>,
}

pub fn json(report: &Report) -> String {
    serde_json::to_string(report).expect("reports always serialize")
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `name` in at most `width` characters: a long one keeps its end (the most specific part of
/// a qualified name), after an ellipsis. Counts characters, never slices inside one.
pub fn fit(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// The text table: growing types first (marked `▲`), at most `top` rows.
pub fn text(report: &Report, top: usize) -> String {
    let mut s = String::new();
    let finished = report.kind == ReportKind::Final;
    let title = match &report.reason {
        Some(r) => format!("final report ({r})"),
        None => "report".to_string(),
    };
    let growing = report.types.iter().filter(|r| r.growing).count();
    let _ = writeln!(
        s,
        "── leakscope · pid {} · {} · {:.1}s since attach · {} live objects tracked · {} growing",
        report.pid,
        title,
        report.elapsed_s,
        thousands(report.live_objects),
        match growing {
            0 => "no type".to_string(),
            1 => "1 type".to_string(),
            n => format!("{n} types"),
        },
    );
    let _ = writeln!(s, "  {}", tracing_line(&report.tracing, report.elapsed_s));
    let sampled = report.tracing.mode == Mode::Sampled;
    let (born, died) = if finished {
        ("BORN", "DIED")
    } else {
        ("+BORN", "-DIED")
    };
    let _ = writeln!(
        s,
        "  {:<40} {:>11} {:>11} {:>11} {:>11} {:>10}",
        "TYPE",
        "LIVE",
        "LIVE BYTES",
        born,
        died,
        if sampled { "≈ RATE/s" } else { "RATE/s" }
    );
    let shown: Vec<&TypeRow> = report
        .types
        .iter()
        .filter(|r| r.live > 0 || r.interval_births > 0 || r.interval_deaths > 0)
        .collect();
    for r in shown.iter().take(top) {
        let (b, d) = if finished {
            (r.births, r.deaths)
        } else {
            (r.interval_births, r.interval_deaths)
        };
        let (b, d) = if r.census {
            ("census".to_string(), "·".to_string())
        } else {
            (thousands(b), thousands(d))
        };
        let name = fit(&r.name, 40);
        let rate = match &r.estimate {
            Some(e) => format!("{:.1}±{:.1}", e.rate_per_s, e.rate_err),
            None => format!("{:.1}", r.rate_per_s),
        };
        let _ = writeln!(
            s,
            "{} {:<40} {:>11} {:>11} {:>11} {:>11} {:>10}",
            if r.growing { "▲" } else { " " },
            name,
            thousands(r.live),
            human_bytes(r.live_bytes),
            b,
            d,
            rate
        );
    }
    if shown.iter().any(|r| r.census) {
        let _ = writeln!(
            s,
            "  (census rows: every live object of a builtin type these probes cannot see, counted on the GC lists)"
        );
    }
    if shown.len() > top {
        let _ = writeln!(
            s,
            "  … {} more types (--top N shows more)",
            shown.len() - top
        );
    }
    if let Some(e) = &report.census_error {
        let _ = writeln!(
            s,
            "  census rows: unavailable on this build ({e}); builtins are not shown"
        );
    }
    let flat: Vec<&str> = report
        .types
        .iter()
        .filter(|r| r.free_count_flat)
        .map(|r| r.name.as_str())
        .collect();
    if !flat.is_empty() {
        let _ = writeln!(
            s,
            "  not growing although their followed objects are: {} (the GC lists and pymalloc's pools count them flat)",
            flat.join(", ")
        );
    }
    if sampled {
        let _ = writeln!(
            s,
            "  (sampled: LIVE, BORN, DIED count the objects born in sampling windows and followed since; ≈ RATE/s is scaled to the whole time, ± one standard error{})",
            match report.walk_filter_types {
                Some(n) => format!(
                    "; stacks are walked only for the {n} type{} with survivors, and for all in every 4th window",
                    if n == 1 { "" } else { "s" }
                ),
                None => String::new(),
            }
        );
    }
    free_signals_text(&mut s, report);
    findings_text(&mut s, report);
    sites_text(&mut s, report);
    cycles_text(&mut s, report);
    if let Some(f) = &report.followed {
        let _ = writeln!(
            s,
            "  {}: {} checks · found dead: {} by refcount, {} reused by another type, {} with other contents, {} unreadable",
            if sampled {
                "followed between windows"
            } else {
                "read back for the deaths no probe sees"
            },
            thousands(f.checked),
            thousands(f.dead_refcount),
            thousands(f.dead_other_type),
            thousands(f.dead_other_contents),
            thousands(f.dead_unreadable)
        );
    }
    if let Some(n) = &report.native {
        let _ = writeln!(
            s,
            "  native: {} · {} allocations by the interpreter itself not counted as native{}{}",
            n.library,
            thousands(n.interpreter_allocations),
            if n.held_blocks + n.holders_unread > 0 {
                format!(
                    " · {} blocks ({}) held by extension objects, counted with them{}",
                    thousands(n.held_blocks),
                    human_bytes(n.held_bytes),
                    if n.holders_unread > 0 {
                        format!(" ({} objects not searched)", thousands(n.holders_unread))
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            },
            if n.unpaired + n.stack_unreadable + n.unmatched > 0 {
                format!(
                    " · {} returns without their entry, {} stacks unreadable, {} records missing",
                    thousands(n.unpaired),
                    thousands(n.stack_unreadable),
                    thousands(n.unmatched)
                )
            } else {
                String::new()
            }
        );
    }
    let l = &report.lost;
    let _ = writeln!(
        s,
        "  lost: {} events (ring buffer full) · {} unreadable objects · {} unreadable types{}{}{}",
        thousands(l.ringbuf_full),
        thousands(l.kernel_read_failed),
        thousands(l.unreadable_types),
        if l.short_records + l.unknown_events > 0 {
            format!(
                " · {} short records, {} events of unknown kind (kernel and user space disagree)",
                thousands(l.short_records),
                thousands(l.unknown_events)
            )
        } else {
            String::new()
        },
        if l.no_thread_state + l.stack_map_full + l.frame_read_failed + l.unreadable_stacks > 0 {
            format!(
                " · stacks: {} without thread state, {} map full, {} cut by unreadable frames, {} unreadable",
                thousands(l.no_thread_state),
                thousands(l.stack_map_full),
                thousands(l.frame_read_failed),
                thousands(l.unreadable_stacks)
            )
        } else {
            String::new()
        },
        if report.ignored_births > 0 {
            format!(
                " · {} births of builtin types not counted (not visible on this build)",
                thousands(report.ignored_births)
            )
        } else {
            String::new()
        }
    );
    if let Some(probes) = &report.probes {
        let _ = writeln!(s, "  {:<44} {:<24} {:>12}", "PROBE", "INSTRUCTION", "HITS");
        for p in probes {
            let _ = writeln!(
                s,
                "  {:<44} {:<24} {:>12}",
                p.probe,
                format!(
                    "{}{}",
                    p.instruction,
                    if p.emulated { "" } else { " (stepped)" }
                ),
                thousands(p.hits)
            );
        }
    }
    if let Some(w) = &report.walk {
        let _ = writeln!(
            s,
            "  stack walks: {} · {:.1} frames each · {} ns each · {} truncated at {} frames",
            thousands(w.walks),
            if w.walks > 0 {
                w.frames as f64 / w.walks as f64
            } else {
                0.0
            },
            w.ns.checked_div(w.walks).unwrap_or(0),
            thousands(w.truncated),
            leakscope_common::MAX_FRAMES
        );
    }
    if let Some(programs) = &report.programs {
        for p in programs {
            let per = p.run_time_ns.checked_div(p.runs).unwrap_or(0);
            let _ = writeln!(
                s,
                "  bpf program {:<14} {:>12} runs {:>8} ns/run (kernel bpf stats)",
                p.program,
                thousands(p.runs),
                per
            );
        }
    }
    s
}

/// "exact · traced 100% of 60.0 s · estimated overhead 31.2% (--exact: no budget)".
pub fn tracing_line(t: &State, elapsed_s: f64) -> String {
    let pct = |f: f64| {
        let p = f * 100.0;
        if p >= 10.0 || p == 0.0 {
            format!("{p:.0}%")
        } else {
            format!("{p:.1}%")
        }
    };
    let mode = match t.mode {
        Mode::Exact => "exact".to_string(),
        Mode::Sampled => format!(
            "sampled ({} window{})",
            t.windows,
            if t.windows == 1 { "" } else { "s" }
        ),
    };
    let budget = match t.overhead_budget {
        Some(b) => format!("budget {}", pct(b)),
        None => "--exact: no budget".to_string(),
    };
    let full = match (t.mode, t.cost_ratio_attached) {
        (Mode::Sampled, Some(r)) => {
            format!(" · tracing all the time would cost {}", pct(r))
        }
        _ => String::new(),
    };
    format!(
        "{mode} · traced {} of {elapsed_s:.1} s · estimated overhead {} ({budget}){full}",
        pct(t.traced_fraction),
        pct(t.estimated_overhead),
    )
}

/// The allocator's size classes: the growing ones by name, the rest summed up.
fn free_signals_text(s: &mut String, report: &Report) {
    let c = &report.allocator_classes;
    if c.is_empty() {
        if let Some(e) = &report.allocator_error {
            let _ = writeln!(s, "  allocator census: unavailable ({e})");
        }
        return;
    }
    let growing: Vec<String> = c
        .iter()
        .filter(|r| r.growing)
        .map(|r| {
            format!(
                "{} ({} live, {:+.0}/s)",
                r.name
                    .trim_start_matches("pymalloc ")
                    .trim_end_matches(" blocks"),
                thousands(r.live),
                r.rate_per_s
            )
        })
        .collect();
    let (blocks, bytes) = c
        .iter()
        .fold((0, 0), |(n, b), r| (n + r.live, b + r.live_bytes));
    let _ = writeln!(
        s,
        "  allocator census (pymalloc pools, free): {} blocks in classes that moved, {} · growing: {}",
        thousands(blocks),
        human_bytes(bytes),
        if growing.is_empty() {
            "none".to_string()
        } else {
            growing.join(", ")
        }
    );
}

/// Frames shown per site in the text report (innermost first).
pub const SITE_FRAMES: usize = 6;

fn sites_text(s: &mut String, report: &Report) {
    let growing: Vec<&SiteReport> = report.sites.iter().filter(|x| x.growing).collect();
    if growing.is_empty() {
        return;
    }
    let _ = writeln!(s, "  GROWING ALLOCATION SITES (innermost frame first)");
    for site in growing {
        let _ = match &site.estimate {
            Some(_) => writeln!(s, "▲ {} · {}", site.type_name, site_counts(site)),
            None => writeln!(
                s,
                "▲ {} · {} live{} · {} · {:.1}/s",
                site.type_name,
                thousands(site.live),
                if site.aged > 0 {
                    format!(" ({} aged)", thousands(site.aged))
                } else {
                    String::new()
                },
                human_bytes(site.live_bytes),
                site.rate_per_s
            ),
        };
        for f in site.frames.iter().take(SITE_FRAMES) {
            let _ = writeln!(s, "      {}", f.label());
        }
        if site.frames.is_empty() {
            let _ = writeln!(s, "      [no Python stack]");
        }
        let more = site.frames.len().saturating_sub(SITE_FRAMES);
        match (more, site.truncated) {
            (0, false) => {}
            (0, true) => {
                let _ = writeln!(s, "      … (truncated)");
            }
            (n, t) => {
                let _ = writeln!(
                    s,
                    "      … {n} more frames{}",
                    if t { " (truncated)" } else { "" }
                );
            }
        }
    }
}

/// Counts of a site in a finding: exact, or (sampled) followed and estimated in all.
fn site_counts(site: &SiteReport) -> String {
    match &site.estimate {
        Some(e) => format!(
            "{} followed live, ≈ {}±{} in all · ≈ {:.1}±{:.1}/s",
            thousands(site.live),
            thousands(e.live.round() as u64),
            thousands(e.live_err.round() as u64),
            e.rate_per_s,
            e.rate_err
        ),
        None => format!(
            "{} live · {} · {:.1}/s",
            thousands(site.live),
            human_bytes(site.live_bytes),
            site.rate_per_s
        ),
    }
}

/// One line for a site in a finding: type, counts, where.
fn site_line(site: &SiteReport) -> String {
    let at = site
        .frames
        .first()
        .map_or("[no Python stack]".to_string(), |f| f.label());
    format!("{} · {} · {at}", site.type_name, site_counts(site))
}

fn findings_text(s: &mut String, report: &Report) {
    if report.findings.is_empty() && report.retention.is_none() {
        return;
    }
    let _ = writeln!(
        s,
        "  LEAK FINDINGS (each: the root to fix, what it retains, and what keeps it alive)"
    );
    if let Some(r) = &report.retention {
        let _ = writeln!(
            s,
            "  (heap read from outside: {} objects, {} references, {} running frames{} in {:.1} s; the target was {}paused{})",
            thousands(r.objects),
            thousands(r.references),
            thousands(r.frames),
            if r.scanned > 0 {
                format!(
                    ", {} objects scanned for lack of a layout",
                    thousands(r.scanned)
                )
            } else {
                String::new()
            },
            r.ms / 1e3,
            if r.paused { "" } else { "not " },
            if r.bounded {
                "; a bound was hit, chains may miss a holder"
            } else {
                ""
            }
        );
        if let Some(e) = &r.error {
            let _ = writeln!(s, "  no retention chains: {e}");
        }
    }
    for (i, f) in report.findings.iter().enumerate() {
        let _ = writeln!(
            s,
            "● {}. {} · {}",
            i + 1,
            f.root.type_name,
            site_counts(&f.root)
        );
        for fr in f.root.frames.iter().take(SITE_FRAMES) {
            let _ = writeln!(s, "      {}", fr.label());
        }
        if f.root.frames.is_empty() {
            let _ = writeln!(s, "      [no Python stack]");
        }
        if !f.retained.is_empty() {
            let _ = writeln!(
                s,
                "    retains {} growing site{}; with them{}: {} objects · {} · {}/s",
                f.retained.len(),
                if f.retained.len() == 1 { "" } else { "s" },
                if f.root.estimate.is_some() {
                    " (followed)"
                } else {
                    ""
                },
                thousands(f.objects),
                human_bytes(f.bytes),
                human_bytes(f.bytes_per_s.round() as u64)
            );
            for r in &f.retained {
                let _ = writeln!(s, "      ↳ {}", site_line(r));
            }
        }
        match &f.chain {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "    kept alive by: {}{}",
                    c.kept_by,
                    if c.confirmed {
                        ""
                    } else {
                        " (not confirmed: the heap moved while it was read)"
                    }
                );
                let path: Vec<String> = c
                    .links
                    .iter()
                    .map(|l| {
                        let mut t = l.type_name.clone();
                        if l.c_holder {
                            t.push_str(" (C, not traversed)");
                        } else if !l.holds.is_empty() {
                            t = format!("{t} {}", l.holds);
                        }
                        t
                    })
                    .collect();
                let _ = writeln!(s, "      {}", path.join(" ← "));
            }
            None => {
                let _ = writeln!(s, "    kept alive by: (no chain read)");
            }
        }
    }
}

fn cycles_text(s: &mut String, report: &Report) {
    if report.cycles.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "  FREED ONLY BY THE CYCLIC COLLECTOR (garbage cycles: not leaks; each costs collection time)"
    );
    for c in &report.cycles {
        let _ = writeln!(
            s,
            "↻ {} · {} collected of {} born",
            c.type_name,
            thousands(c.collected),
            thousands(c.births)
        );
        for f in c.frames.iter().take(SITE_FRAMES) {
            let _ = writeln!(s, "      {}", f.label());
        }
        if c.frames.is_empty() {
            let _ = writeln!(s, "      [no Python stack]");
        }
    }
}

/// The flamegraph SVG of folded stacks (see `stacks::folded`): width is live bytes.
pub fn flamegraph(folded: &str, title: &str, subtitle: &str) -> std::io::Result<Vec<u8>> {
    use inferno::flamegraph::{
        self, Options,
        color::{BasicPalette, Palette},
    };
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "bytes".to_string();
    opts.name_type = "Frame:".to_string();
    opts.colors = Palette::Basic(BasicPalette::Mem);
    opts.deterministic = true;
    let mut svg = Vec::new();
    if folded.is_empty() {
        // inferno refuses empty input; an empty graph still says what it is.
        flamegraph::from_lines(&mut opts, ["[nothing survived] 1"], &mut svg)?;
    } else {
        flamegraph::from_lines(&mut opts, folded.lines(), &mut svg)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, live: u64, growing: bool) -> TypeRow {
        TypeRow {
            type_ptr: 0,
            site: 0,
            name: name.into(),
            live,
            live_bytes: live * 64,
            births: live + 5,
            deaths: 5,
            interval_births: 100,
            interval_deaths: 0,
            rate_per_s: live as f64 / 10.0,
            growing,
            aged: 0,
            collected: 0,
            census: false,
            estimate: None,
            free_count_flat: false,
        }
    }

    fn exact(overhead: f64) -> State {
        State {
            mode: Mode::Exact,
            traced_s: 10.0,
            traced_fraction: 1.0,
            estimated_overhead: overhead,
            overhead_budget: Some(0.10),
            windows: 0,
            cost_ratio_attached: Some(overhead),
            mode_switches: 0,
        }
    }

    /// A report with one growing site (also for the other output formats' tests).
    pub(super) fn report() -> Report {
        Report {
            kind: ReportKind::Interval,
            reason: None,
            pid: 42,
            elapsed_s: 10.0,
            interval_s: 2.0,
            tracing: exact(0.021),
            followed: None,
            walk_filter_types: None,
            calibration: crate::probes::kernel::TrapCost::FALLBACK,
            types: vec![
                row("__main__.Leak", 20000, true),
                row("dict", 12, false),
                row("gone", 0, false),
            ],
            census_ms: None,
            census_error: None,
            allocator_classes: vec![],
            allocator_error: None,
            sites: vec![SiteReport {
                type_name: "__main__.Leak".into(),
                live: 20000,
                live_bytes: 20000 * 64,
                births: 20000,
                deaths: 0,
                rate_per_s: 2000.0,
                growing: true,
                aged: 16000,
                frames: vec![
                    Frame {
                        function: "level3".into(),
                        file: "app.py".into(),
                        line: Some(7),
                        library: None,
                    },
                    Frame {
                        function: "<module>".into(),
                        file: "app.py".into(),
                        line: Some(20),
                        library: None,
                    },
                ],
                truncated: false,
                estimate: None,
            }],
            cycles: vec![CycleSite {
                type_name: "__main__.Node".into(),
                births: 5000,
                collected: 4990,
                frames: vec![Frame {
                    function: "make_pair".into(),
                    file: "app.py".into(),
                    line: Some(12),
                    library: None,
                }],
                truncated: false,
            }],
            findings: vec![],
            retention: None,
            live_objects: 20012,
            ignored_births: 0,
            native: None,
            lost: Losses::default(),
            probes: None,
            programs: None,
            walk: None,
        }
    }

    #[test]
    fn long_non_ascii_type_name_does_not_panic() {
        // Regression: the table counted characters, then sliced bytes, and panicked inside a
        // multi-byte character.
        let mut r = report();
        r.types[0].name = format!("модуль.{}", "Класс".repeat(10));
        let t = text(&r, 10);
        let line = t.lines().nth(3).unwrap();
        assert!(line.starts_with("▲ …"), "{line}");
        assert!(line.contains("КлассКласс"), "{line}");
        assert_eq!(fit("ab", 40), "ab");
        assert_eq!(fit("αβγδε", 3), "…δε");
    }

    #[test]
    fn failed_census_setup_is_said_in_the_report() {
        // Regression: on a partial build, a census that could not be set up left the report
        // without census rows and without saying why.
        let mut r = report();
        r.census_error = Some("Python 3.11.2: _PyRuntime not found".into());
        assert!(
            text(&r, 10).contains(
                "census rows: unavailable on this build (Python 3.11.2: _PyRuntime not found)"
            ),
            "{}",
            text(&r, 10)
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap()["census_error"],
            "Python 3.11.2: _PyRuntime not found"
        );
    }

    #[test]
    fn short_records_and_unknown_events_are_shown() {
        // Regression: they vanished without a count.
        let mut r = report();
        r.lost.short_records = 2;
        r.lost.unknown_events = 3;
        assert!(
            text(&r, 10).contains("2 short records, 3 events of unknown kind"),
            "{}",
            text(&r, 10)
        );
    }

    #[test]
    fn text_table_snapshot() {
        let got = text(&report(), 10);
        let want = "\
── leakscope · pid 42 · report · 10.0s since attach · 20,012 live objects tracked · 1 type growing
  exact · traced 100% of 10.0 s · estimated overhead 2.1% (budget 10%)
  TYPE                                            LIVE  LIVE BYTES       +BORN       -DIED     RATE/s
▲ __main__.Leak                                 20,000     1.2 MiB         100           0     2000.0
  dict                                              12       768 B         100           0        1.2
  gone                                               0         0 B         100           0        0.0
  GROWING ALLOCATION SITES (innermost frame first)
▲ __main__.Leak · 20,000 live (16,000 aged) · 1.2 MiB · 2000.0/s
      level3 (app.py:7)
      <module> (app.py:20)
  FREED ONLY BY THE CYCLIC COLLECTOR (garbage cycles: not leaks; each costs collection time)
↻ __main__.Node · 4,990 collected of 5,000 born
      make_pair (app.py:12)
  lost: 0 events (ring buffer full) · 0 unreadable objects · 0 unreadable types
";
        assert_eq!(got, want);
    }

    #[test]
    fn a_finding_shows_its_root_what_it_retains_and_its_chain() {
        let mut r = report();
        let root = r.sites[0].clone();
        let mut dict = root.clone();
        dict.type_name = "dict".into();
        r.findings = vec![FindingReport {
            root,
            retained: vec![dict],
            objects: 40_000,
            bytes: 2_560_000,
            rate_per_s: 4000.0,
            bytes_per_s: 256_000.0,
            chain: Some(ChainReport {
                links: vec![
                    LinkReport {
                        type_name: "__main__.Leak".into(),
                        address: "0x10".into(),
                        holds: String::new(),
                        c_holder: false,
                    },
                    LinkReport {
                        type_name: "leakext.Handle".into(),
                        address: "0x20".into(),
                        holds: "(+0x10)".into(),
                        c_holder: true,
                    },
                    LinkReport {
                        type_name: "__main__.Leak".into(),
                        address: "0x10".into(),
                        holds: ".handle".into(),
                        c_holder: false,
                    },
                ],
                end: crate::model::chains::End::Cycle,
                kept_by: "a cycle the collector cannot break".into(),
                confirmed: false,
                through_c_holder: true,
            }),
        }];
        r.retention = Some(RetentionInfo {
            ms: 420.0,
            paused: false,
            objects: 75_000,
            references: 180_000,
            scanned: 0,
            frames: 2,
            bounded: false,
            error: None,
        });
        let got = text(&r, 20);
        for want in [
            "  LEAK FINDINGS (each: the root to fix, what it retains, and what keeps it alive)",
            "  (heap read from outside: 75,000 objects, 180,000 references, 2 running frames in 0.4 s; the target was not paused)",
            "● 1. __main__.Leak · 20,000 live · 1.2 MiB · 2000.0/s",
            "    retains 1 growing site; with them: 40,000 objects · 2.4 MiB · 250.0 KiB/s",
            "      ↳ dict · 20,000 live · 1.2 MiB · 2000.0/s · level3 (app.py:7)",
            "    kept alive by: a cycle the collector cannot break (not confirmed: the heap moved while it was read)",
            "      __main__.Leak ← leakext.Handle (C, not traversed) ← __main__.Leak .handle",
        ] {
            assert!(got.contains(want), "missing {want:?} in:\n{got}");
        }
        assert!(got.find("LEAK FINDINGS") < got.find("GROWING ALLOCATION SITES"));
    }

    #[test]
    fn a_sampled_report_says_so_and_shows_estimates_with_their_error() {
        let mut r = report();
        r.tracing = State {
            mode: Mode::Sampled,
            traced_s: 0.9,
            traced_fraction: 0.09,
            estimated_overhead: 0.078,
            windows: 4,
            cost_ratio_attached: Some(2.4),
            ..exact(0.0)
        };
        let e = Estimate {
            live: 22222.2,
            live_err: 157.1,
            rate_per_s: 2222.2,
            rate_err: 15.7,
        };
        r.types[0].estimate = Some(e);
        r.sites[0].estimate = Some(e);
        r.followed = Some(FollowStats {
            checked: 900,
            dead_refcount: 7,
            ..Default::default()
        });
        let t = text(&r, 10);
        assert!(
            t.contains(
                "  sampled (4 windows) · traced 9.0% of 10.0 s · estimated overhead 7.8% (budget 10%) · tracing all the time would cost 240%"
            ),
            "{t}"
        );
        assert!(t.contains("2222.2±15.7"), "{t}");
        assert!(
            t.contains(
                "▲ __main__.Leak · 20,000 followed live, ≈ 22,222±157 in all · ≈ 2222.2±15.7/s"
            ),
            "{t}"
        );
        assert!(
            t.contains("followed between windows: 900 checks · found dead: 7 by refcount"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["mode"], "sampled");
        assert_eq!(v["traced_fraction"], 0.09);
        assert_eq!(v["overhead_budget"], 0.10);
        assert_eq!(v["sites"][0]["estimate"]["rate_per_s"], 2222.2);
        assert_eq!(v["followed"]["checked"], 900);
    }

    #[test]
    fn json_has_the_same_rows() {
        let v: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        assert_eq!(v["types"][0]["name"], "__main__.Leak");
        assert_eq!(v["types"][0]["growing"], true);
        assert_eq!(v["lost"]["ringbuf_full"], 0);
        assert!(v.get("reason").is_none());
        assert_eq!(v["mode"], "exact");
        assert_eq!(v["estimated_overhead"], 0.021);
        assert!(v.get("followed").is_none());
        assert!(v["types"][0].get("estimate").is_none());
    }

    #[test]
    fn flamegraph_is_deterministic_svg_naming_the_frames() {
        let folded = "<module> (app.py:20);level3 (app.py:7);__main__.Leak (20,000 live) 1280000\n";
        let a = flamegraph(folded, "t", "s").unwrap();
        let b = flamegraph(folded, "t", "s").unwrap();
        assert_eq!(a, b);
        let svg = String::from_utf8(a).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..60]);
        assert!(svg.contains("level3 (app.py:7)"));
        assert!(svg.contains("__main__.Leak (20,000 live)"));
        assert!(svg.contains("1,280,000 bytes"), "tooltip counts bytes");
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
