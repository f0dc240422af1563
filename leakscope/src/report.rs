//! Reports: the data (serializable, one JSON object per line with `--json`) and its text
//! rendering. Pure: rows in, bytes out.
use crate::aggregate::TypeRow;
use serde::Serialize;
use std::fmt::Write;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Losses {
    /// Events the kernel could not queue (ring buffer full): births/frees never seen.
    pub ringbuf_full: u64,
    /// Births whose object could not be read in the probe.
    pub kernel_read_failed: u64,
    /// Births whose type object user space could not read (counted as unknown type).
    pub unreadable_types: u64,
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

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "interval" or "final".
    pub kind: &'static str,
    /// Why the trace ended (final reports): "duration", "interrupted", "target exited".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub pid: u32,
    pub elapsed_s: f64,
    pub interval_s: f64,
    pub types: Vec<TypeRow>,
    pub live_objects: u64,
    pub ignored_births: u64,
    pub lost: Losses,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<ProbeStat>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<Vec<ProgramStat>>,
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
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// The text table: growing types first (marked `▲`), at most `top` rows.
pub fn text(report: &Report, top: usize) -> String {
    let mut s = String::new();
    let finished = report.kind == "final";
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
    let (born, died) = if finished { ("BORN", "DIED") } else { ("+BORN", "-DIED") };
    let _ = writeln!(
        s,
        "  {:<40} {:>11} {:>11} {:>11} {:>11} {:>10}",
        "TYPE", "LIVE", "LIVE BYTES", born, died, "RATE/s"
    );
    let shown: Vec<&TypeRow> = report
        .types
        .iter()
        .filter(|r| r.live > 0 || r.interval_births > 0 || r.interval_deaths > 0)
        .collect();
    for r in shown.iter().take(top) {
        let (b, d) = if finished { (r.births, r.deaths) } else { (r.interval_births, r.interval_deaths) };
        let mut name = r.name.clone();
        if name.chars().count() > 40 {
            name = format!("…{}", &name[name.len() - 39..]);
        }
        let _ = writeln!(
            s,
            "{} {:<40} {:>11} {:>11} {:>11} {:>11} {:>10.1}",
            if r.growing { "▲" } else { " " },
            name,
            thousands(r.live),
            human_bytes(r.live_bytes),
            thousands(b),
            thousands(d),
            r.rate_per_s
        );
    }
    if shown.len() > top {
        let _ = writeln!(s, "  … {} more types (--top N shows more)", shown.len() - top);
    }
    let l = &report.lost;
    let _ = writeln!(
        s,
        "  lost: {} events (ring buffer full) · {} unreadable objects · {} unreadable types{}",
        thousands(l.ringbuf_full),
        thousands(l.kernel_read_failed),
        thousands(l.unreadable_types),
        if report.ignored_births > 0 {
            format!(" · {} births of builtin types not counted (not visible on this build)", thousands(report.ignored_births))
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
                format!("{}{}", p.instruction, if p.emulated { "" } else { " (stepped)" }),
                thousands(p.hits)
            );
        }
    }
    if let Some(programs) = &report.programs {
        for p in programs {
            let per = if p.runs > 0 { p.run_time_ns / p.runs } else { 0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, live: u64, growing: bool) -> TypeRow {
        TypeRow {
            type_ptr: 0,
            name: name.into(),
            live,
            live_bytes: live * 64,
            births: live + 5,
            deaths: 5,
            interval_births: 100,
            interval_deaths: 0,
            rate_per_s: live as f64 / 10.0,
            growing,
        }
    }

    fn report() -> Report {
        Report {
            kind: "interval",
            reason: None,
            pid: 42,
            elapsed_s: 10.0,
            interval_s: 2.0,
            types: vec![row("__main__.Leak", 20000, true), row("dict", 12, false), row("gone", 0, false)],
            live_objects: 20012,
            ignored_births: 0,
            lost: Losses::default(),
            probes: None,
            programs: None,
        }
    }

    #[test]
    fn text_table_snapshot() {
        let got = text(&report(), 10);
        let want = "\
── leakscope · pid 42 · report · 10.0s since attach · 20,012 live objects tracked · 1 type growing
  TYPE                                            LIVE  LIVE BYTES       +BORN       -DIED     RATE/s
▲ __main__.Leak                                 20,000     1.2 MiB         100           0     2000.0
  dict                                              12       768 B         100           0        1.2
  gone                                               0         0 B         100           0        0.0
  lost: 0 events (ring buffer full) · 0 unreadable objects · 0 unreadable types
";
        assert_eq!(got, want);
    }

    #[test]
    fn json_has_the_same_rows() {
        let v: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        assert_eq!(v["types"][0]["name"], "__main__.Leak");
        assert_eq!(v["types"][0]["growing"], true);
        assert_eq!(v["lost"]["ringbuf_full"], 0);
        assert!(v.get("reason").is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
