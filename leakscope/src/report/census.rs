//! The census report: its data (serializable) and its text rendering. Pure.
use crate::census::{CensusRow, MAX_OBJECTS, WalkStats};
use crate::report::{human_bytes, thousands};

#[derive(Clone, Debug, serde::Serialize)]
pub struct CensusReport {
    pub kind: &'static str,
    pub pid: u32,
    pub snapshot: u64,
    pub elapsed_s: f64,
    pub types: Vec<CensusRow>,
    pub garbage: Vec<CensusRow>,
    pub walk: WalkStats,
    pub walk_ms: f64,
    /// How long the target was stopped (`--pause`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<f64>,
    pub not_seen: &'static str,
}
pub fn text(r: &CensusReport, top: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let total: u64 = r.types.iter().map(|t| t.objects).sum();
    let _ = writeln!(
        s,
        "── leakscope census · pid {} · snapshot {} · {:.1}s · {} objects in the GC lists of {} interpreter{} · read in {:.0} ms{}",
        r.pid,
        r.snapshot,
        r.elapsed_s,
        thousands(total),
        r.walk.interpreters,
        if r.walk.interpreters == 1 { "" } else { "s" },
        r.walk_ms,
        match r.paused_ms {
            Some(ms) => format!(" (target stopped for {ms:.0} ms)"),
            None => " (target running)".to_string(),
        }
    );
    let _ = writeln!(
        s,
        "  {:<40} {:>11} {:>11} {:>10} {:>10}",
        "TYPE", "OBJECTS", "BYTES", "Δ LAST", "Δ FIRST"
    );
    for row in r.types.iter().take(top) {
        let _ = writeln!(
            s,
            "{} {:<40} {:>11} {:>11} {:>+10} {:>+10}",
            if row.growing { "▲" } else { " " },
            row.name,
            thousands(row.objects),
            human_bytes(row.bytes),
            row.delta_last,
            row.delta_first
        );
    }
    if r.types.len() > top {
        let _ = writeln!(
            s,
            "  … {} more types (--top N shows more)",
            r.types.len() - top
        );
    }
    if r.garbage.is_empty() {
        let _ = writeln!(s, "  gc.garbage: empty");
    } else {
        let list: Vec<String> = r
            .garbage
            .iter()
            .map(|g| format!("{} {}", g.name, thousands(g.objects)))
            .collect();
        let _ = writeln!(s, "  gc.garbage (uncollectable): {}", list.join(", "));
    }
    let w = &r.walk;
    let _ = writeln!(
        s,
        "  walk: {} objects read · {} skipped (type did not validate) · {} list restarts · {} lists cut{}",
        thousands(w.objects),
        thousands(w.skipped_invalid),
        w.restarts,
        w.lists_cut,
        if w.bounded {
            format!(" · stopped at {} objects", thousands(MAX_OBJECTS))
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "  note: {}", r.not_seen);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_text_snapshot() {
        let r = CensusReport {
            kind: "census",
            pid: 7,
            snapshot: 2,
            elapsed_s: 1.0,
            types: vec![CensusRow {
                name: "__main__.Leak".into(),
                objects: 12345,
                bytes: 691_320,
                delta_last: 100,
                delta_first: 200,
                growing: false,
            }],
            garbage: vec![CensusRow {
                name: "__main__.G".into(),
                objects: 3,
                bytes: 168,
                delta_last: 0,
                delta_first: 0,
                growing: false,
            }],
            walk: WalkStats {
                interpreters: 1,
                lists: 4,
                objects: 20000,
                ..Default::default()
            },
            walk_ms: 12.0,
            paused_ms: Some(13.4),
            not_seen: "x",
        };
        let want = "\
── leakscope census · pid 7 · snapshot 2 · 1.0s · 12,345 objects in the GC lists of 1 interpreter · read in 12 ms (target stopped for 13 ms)
  TYPE                                         OBJECTS       BYTES     Δ LAST    Δ FIRST
  __main__.Leak                                 12,345   675.1 KiB       +100       +200
  gc.garbage (uncollectable): __main__.G 3
  walk: 20,000 objects read · 0 skipped (type did not validate) · 0 list restarts · 0 lists cut
  note: x
";
        assert_eq!(text(&r, 10), want);
    }
}
