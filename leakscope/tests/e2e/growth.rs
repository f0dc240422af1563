//! The growth rule on leaks that hide from a rising floor: a leak in bursts, whose floor
//! stalls between them, and a slow leak on a hot line, a tiny share of that line's births.
//! Both are judged by their aged survivors (`aggregate::ages_growing`).
use crate::support::*;
use serde_json::Value;
use std::path::Path;

/// The site of `type_name` at `marker` in `report`, if it is growing.
fn growing_at(report: &Value, type_name: &str, marker: &str) -> Option<Value> {
    let line = marker_line("leak_patterns.py", marker);
    growing_sites(report).into_iter().find(|s| {
        s["type"] == type_name && frame(s, 0).1 == "leak_patterns.py" && frame(s, 0).2 == line
    })
}

/// Index of the first report that flags the site, and that every later one does too.
fn flagged_from_then_on(reports: &[Value], type_name: &str, marker: &str) -> usize {
    let first = reports
        .iter()
        .position(|r| growing_at(r, type_name, marker).is_some())
        .unwrap_or_else(|| {
            panic!(
                "{type_name} at {marker} never growing; last report: {}",
                reports.last().unwrap()
            )
        });
    for (i, r) in reports.iter().enumerate().skip(first) {
        assert!(
            growing_at(r, type_name, marker).is_some(),
            "{type_name} flagged in report {first}, not in report {i} (flicker): {r}"
        );
    }
    first
}

/// 50 `Burst` objects a second for 10 s, then 10 s of nothing, over and over: flagged by the
/// end of a 60 s trace, and from the first report that flags it on, every report does.
fn bursty_leak_stays_flagged(interpreter: &Path) {
    let target = python(
        interpreter,
        "leak_patterns.py",
        &["bursty", "50", "10", "10"],
    );
    let run = trace(target.pid, 60, &[]);
    let reports = run.reports();
    let first = flagged_from_then_on(&reports, "__main__.Burst", "BURST-SITE");
    let last = reports.last().unwrap();
    let site = growing_at(last, "__main__.Burst", "BURST-SITE").unwrap();
    eprintln!(
        "bursty: flagged from {:.0} s on; final: live {}, aged {}, deaths {}",
        reports[first]["elapsed_s"].as_f64().unwrap(),
        site["live"],
        site["aged"],
        site["deaths"]
    );
    assert_eq!(site["deaths"], 0, "{site}");
    assert!(site["aged"].as_u64().unwrap() >= 500, "{site}");
    assert_eq!(frame(&site, 0).0, "bursty");
    assert_no_losses(last);
}

/// About 25,000 tokens a second born on one line, 2 a second of them kept: flagged within a
/// 40 s trace though under 0.1% of the line's births survive, and never again unflagged.
fn slow_leak_on_a_hot_line(interpreter: &Path, kind: &str, type_name: &str, marker: &str) {
    let target = python(interpreter, "leak_patterns.py", &["hot", kind, "2"]);
    let run = trace(target.pid, 40, &[]);
    let reports = run.reports();
    let first = flagged_from_then_on(&reports, type_name, marker);
    let last = reports.last().unwrap();
    let site = growing_at(last, type_name, marker).unwrap();
    let (live, births) = (
        site["live"].as_u64().unwrap(),
        site["births"].as_u64().unwrap(),
    );
    let elapsed = last["elapsed_s"].as_f64().unwrap();
    eprintln!(
        "hot {kind}: flagged from {:.0} s on; final: {births} births ({:.0}/s), live {live}, aged {}",
        reports[first]["elapsed_s"].as_f64().unwrap(),
        births as f64 / elapsed,
        site["aged"]
    );
    assert!(
        births as f64 / elapsed > 15_000.0,
        "the line is not hot: {site}"
    );
    assert!(live * 1000 < births, "over 0.1% survive: {site}");
    assert!(live >= 40 && site["aged"].as_u64().unwrap() >= 20, "{site}");
    assert_eq!(frame(&site, 0).0, "parse");
    assert_no_losses(last);
}

#[test]
#[ignore = "needs root and pyenv 3.11.7"]
fn pyenv_311_bursty_leak_is_flagged_and_stays_flagged() {
    require_root();
    bursty_leak_stays_flagged(&pyenv("3.11.7"));
}

#[test]
#[ignore = "needs root and Debian's python3.11"]
fn debian_311_bursty_leak_is_flagged_and_stays_flagged() {
    require_root();
    bursty_leak_stays_flagged(&debian_python());
}

#[test]
#[ignore = "needs root and pyenv 3.11.7"]
fn pyenv_311_slow_string_leak_on_a_hot_line() {
    require_root();
    slow_leak_on_a_hot_line(&pyenv("3.11.7"), "str", "str", "HOT-LINE");
}

/// Debian's build has no probes for strings: the hot line makes `Token` instances.
#[test]
#[ignore = "needs root and Debian's python3.11"]
fn debian_311_slow_leak_on_a_hot_line() {
    require_root();
    slow_leak_on_a_hot_line(&debian_python(), "obj", "__main__.Token", "HOT-LINE-OBJ");
}
