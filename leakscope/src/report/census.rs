//! The census report: its data (serializable) and its text rendering. Pure.
use crate::census::{AllocatorStats, CensusRow, ClassRow, MAX_OBJECTS, WalkStats};
use crate::report::{human_bytes, thousands};

/// What the allocator census adds to a snapshot (`census::pymalloc`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllocatorReport {
    /// Size classes in use now or at the last snapshot, smallest first.
    pub classes: Vec<ClassRow>,
    /// Types without GC support (never on the GC lists: str, int, float, bytes, …), by the
    /// objects found in pymalloc blocks; bytes are block sizes.
    pub types: Vec<CensusRow>,
    pub stats: AllocatorStats,
    pub walk_ms: f64,
}

/// The allocator section's caveat, said whenever it is shown.
pub const ALLOCATOR_NOTE: &str = "the allocator section counts pymalloc's blocks (at most 512 \
    bytes each): larger objects and buffers come from malloc and are not in it";

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
    /// The allocator census, or why there is none (one line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<AllocatorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator_error: Option<String>,
}

fn row_line(s: &mut String, row: &CensusRow) {
    use std::fmt::Write;
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

fn allocator_text(s: &mut String, a: &AllocatorReport, snapshot: u64, top: usize) {
    use std::fmt::Write;
    let st = &a.stats;
    let _ = writeln!(
        s,
        "  allocator (pymalloc): {} live blocks · {} · {} pools in {} arena{} · read in {:.0} ms",
        thousands(st.blocks),
        human_bytes(st.bytes),
        thousands(st.pools),
        thousands(st.arenas),
        if st.arenas == 1 { "" } else { "s" },
        a.walk_ms
    );
    // The first snapshot shows every class in use; later ones those that changed.
    let classes: Vec<&ClassRow> = a
        .classes
        .iter()
        .filter(|c| snapshot <= 1 || c.delta_last != 0)
        .collect();
    if classes.is_empty() {
        let _ = writeln!(s, "  size classes: no change since the last snapshot");
    } else {
        let _ = writeln!(
            s,
            "  {:<40} {:>11} {:>11} {:>10} {:>10}",
            "SIZE CLASS", "BLOCKS", "BYTES", "Δ LAST", "Δ FIRST"
        );
        for c in classes.iter().take(top) {
            let _ = writeln!(
                s,
                "  {:<40} {:>11} {:>11} {:>+10} {:>+10}",
                format!(
                    "{} B ({} pool{})",
                    c.size,
                    thousands(c.pools),
                    if c.pools == 1 { "" } else { "s" }
                ),
                thousands(c.blocks),
                human_bytes(c.bytes),
                c.delta_last,
                c.delta_first
            );
        }
        if classes.len() > top {
            let _ = writeln!(s, "  … {} more size classes", classes.len() - top);
        }
    }
    let _ = writeln!(
        s,
        "  {:<40} {:>11} {:>11} {:>10} {:>10}",
        "NOT ON THE GC LISTS (types without GC)", "OBJECTS", "BYTES", "Δ LAST", "Δ FIRST"
    );
    for row in a.types.iter().take(top) {
        row_line(s, row);
    }
    if a.types.len() > top {
        let _ = writeln!(
            s,
            "  … {} more types (--top N shows more)",
            a.types.len() - top
        );
    }
    let _ = writeln!(
        s,
        "  allocator walk: {} objects in {} blocks · {} blocks not an object we could validate ({}) · {} torn pools ({} blocks) · {} unreadable pools{}{}",
        thousands(st.objects),
        thousands(st.blocks),
        thousands(st.unclassified_blocks),
        human_bytes(st.unclassified_bytes),
        st.torn_pools,
        thousands(st.torn_blocks),
        st.unreadable_pools,
        if st.bad_arenas + st.unreadable_tables > 0 {
            format!(
                " · {} arena entries and {} arena tables unreadable",
                st.bad_arenas, st.unreadable_tables
            )
        } else {
            String::new()
        },
        if st.bounded {
            " · stopped at its bound"
        } else {
            ""
        }
    );
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
        row_line(&mut s, row);
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
    match (&r.allocator, &r.allocator_error) {
        (Some(a), _) => allocator_text(&mut s, a, r.snapshot, top),
        (None, Some(e)) => {
            let _ = writeln!(s, "  allocator: not available: {e}");
        }
        (None, None) => {}
    }
    let _ = writeln!(s, "  note: {}", r.not_seen);
    if r.allocator.is_some() {
        let _ = writeln!(s, "  note: {ALLOCATOR_NOTE}");
    }
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
            allocator: None,
            allocator_error: Some("no symbols".into()),
        };
        let want = "\
── leakscope census · pid 7 · snapshot 2 · 1.0s · 12,345 objects in the GC lists of 1 interpreter · read in 12 ms (target stopped for 13 ms)
  TYPE                                         OBJECTS       BYTES     Δ LAST    Δ FIRST
  __main__.Leak                                 12,345   675.1 KiB       +100       +200
  gc.garbage (uncollectable): __main__.G 3
  walk: 20,000 objects read · 0 skipped (type did not validate) · 0 list restarts · 0 lists cut
  allocator: not available: no symbols
  note: x
";
        assert_eq!(text(&r, 10), want);
    }

    #[test]
    fn census_text_with_the_allocator_section() {
        let row = |name: &str, objects, delta| CensusRow {
            name: name.into(),
            objects,
            bytes: objects * 64,
            delta_last: delta,
            delta_first: 2 * delta,
            growing: delta > 0,
        };
        let class = |size, blocks, delta| ClassRow {
            size,
            pools: 2,
            blocks,
            bytes: blocks * size,
            delta_last: delta,
            delta_first: delta,
        };
        let r = CensusReport {
            kind: "census",
            pid: 7,
            snapshot: 3,
            elapsed_s: 2.0,
            types: vec![],
            garbage: vec![],
            walk: WalkStats::default(),
            walk_ms: 1.0,
            paused_ms: None,
            not_seen: "x",
            allocator: Some(AllocatorReport {
                classes: vec![class(16, 100, 0), class(64, 2000, 1000)],
                types: vec![row("str", 2000, 1000), row("float", 10, 0)],
                stats: AllocatorStats {
                    tables: 1,
                    arenas: 1,
                    pools: 4,
                    blocks: 2100,
                    bytes: 129_600,
                    objects: 2010,
                    unclassified_blocks: 90,
                    unclassified_bytes: 1440,
                    ..Default::default()
                },
                walk_ms: 3.2,
            }),
            allocator_error: None,
        };
        let want = "\
── leakscope census · pid 7 · snapshot 3 · 2.0s · 0 objects in the GC lists of 0 interpreters · read in 1 ms (target running)
  TYPE                                         OBJECTS       BYTES     Δ LAST    Δ FIRST
  gc.garbage: empty
  walk: 0 objects read · 0 skipped (type did not validate) · 0 list restarts · 0 lists cut
  allocator (pymalloc): 2,100 live blocks · 126.6 KiB · 4 pools in 1 arena · read in 3 ms
  SIZE CLASS                                    BLOCKS       BYTES     Δ LAST    Δ FIRST
  64 B (2 pools)                                 2,000   125.0 KiB      +1000      +1000
  NOT ON THE GC LISTS (types without GC)       OBJECTS       BYTES     Δ LAST    Δ FIRST
▲ str                                            2,000   125.0 KiB      +1000      +2000
  float                                             10       640 B         +0         +0
  allocator walk: 2,010 objects in 2,100 blocks · 90 blocks not an object we could validate (1.4 KiB) · 0 torn pools (0 blocks) · 0 unreadable pools
  note: x
  note: the allocator section counts pymalloc's blocks (at most 512 bytes each): larger objects and buffers come from malloc and are not in it
";
        assert_eq!(text(&r, 10), want);
    }
}
