//! Budgeted tracing (issue #8): `--overhead PCT` (default 10) keeps the probes' estimated
//! cost to the target under PCT%, tracing continuously ("exact") when the full cost fits and
//! in short windows ("sampled") when it does not; `--exact` forces exact mode. On both 3.11
//! builds: a service churning over a million objects a second is sampled, within its budget,
//! and still names its 100/s leak to the line, at about its rate, and none of its churn; a
//! bounded cache is not a leak; a quiet service is traced exactly and its leak found.
//!
//! Tolerances are generous (a sampled estimate from a 2-core VM shared with other work);
//! every failure prints the whole final report.
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The sites overhead_churn.py and cache_plateau.py churn at (marker comments), and their
/// types; none may ever grow.
const CHURN_MARKERS: [&str; 3] = ["CHURN-POINT", "CHURN-NODE", "CHURN-EVENT"];
const CHURN_TYPES: [&str; 3] = ["__main__.Point", "__main__.Node", "__main__.Event"];

/// The default budget, `--overhead 10`, as the report's fraction.
const BUDGET: f64 = 0.10;

/// overhead_churn.py's leak, per second.
const LEAK_RATE: f64 = 100.0;

/// Runs `trace --pid P --json --interval I --duration D` plus `extra`; it must succeed, and
/// its last report is the final one, which is returned.
fn final_report(pid: u32, interval: u32, duration: u32, extra: &[&str]) -> Value {
    final_report_links(pid, interval, duration, extra, Links::Multi)
}

/// Which links leakscope is to attach with, and its attach line must name.
#[derive(Clone, Copy, PartialEq)]
enum Links {
    /// The default on this kernel: uprobe_multi links.
    Multi,
    /// aya's perf-event links (`LEAKSCOPE_PERF_LINKS=1`), the fallback for older kernels.
    Perf,
}

fn final_report_links(
    pid: u32,
    interval: u32,
    duration: u32,
    extra: &[&str],
    links: Links,
) -> Value {
    let (p, i, d) = (pid.to_string(), interval.to_string(), duration.to_string());
    let mut args = vec![
        "trace",
        "--pid",
        &p,
        "--json",
        "--interval",
        &i,
        "--duration",
        &d,
    ];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leakscope"));
    cmd.args(&args);
    if links == Links::Perf {
        cmd.env("LEAKSCOPE_PERF_LINKS", "1");
    }
    let run = leakscope_cmd(&mut cmd, Duration::from_secs(duration as u64 + 60));
    assert_eq!(run.code, Some(0), "leakscope failed: {}", run.stderr);
    let named = match links {
        Links::Multi => "(uprobe_multi links)",
        Links::Perf => "(perf-event links",
    };
    assert!(
        run.stderr.contains(named),
        "the attach line does not say {named}: {}",
        run.stderr
    );
    let last = run.last();
    assert_eq!(last["kind"], "final", "{last:#}");
    assert_eq!(last["reason"], "duration", "{last:#}");
    last
}

/// `report[key]` as a number; fails, printing the report, when it is missing or not one.
fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in the final report: {report:#}"))
}

/// The budget fields every final report carries, consistent with each other: the traced
/// time is the fraction of the elapsed time, the estimate is a fraction, windows a count.
fn budget_fields(report: &Value) -> (f64, f64, f64) {
    let (traced_s, fraction, elapsed) = (
        num(report, "traced_s"),
        num(report, "traced_fraction"),
        num(report, "elapsed_s"),
    );
    let overhead = num(report, "estimated_overhead");
    assert!(
        (0.0..=1.0 + 1e-9).contains(&fraction) && traced_s >= 0.0 && traced_s <= elapsed + 0.5,
        "traced {traced_s} s = {fraction} of {elapsed} s? final report: {report:#}"
    );
    assert!(
        (traced_s / elapsed - fraction).abs() <= 0.01,
        "traced_fraction {fraction} is not traced_s / elapsed_s = {traced_s} / {elapsed}: \
         final report: {report:#}"
    );
    assert!(
        overhead.is_finite() && overhead >= 0.0,
        "estimated_overhead {overhead}: final report: {report:#}"
    );
    assert!(
        report["windows"].as_u64().is_some(),
        "windows is not a count: final report: {report:#}"
    );
    (traced_s, fraction, overhead)
}

fn script_file(site: &Value, i: usize) -> String {
    site["frames"][i]["file"].as_str().unwrap_or("").to_string()
}

/// No site of a churn type grows, nor any site whose innermost frame is on a churn line of
/// `script`, nor any type row of a churn type.
fn assert_no_churn_grows(report: &Value, script_name: &str) {
    let churn_lines: Vec<i64> = CHURN_MARKERS
        .iter()
        .map(|m| marker_line(script_name, m))
        .collect();
    for site in growing_sites(report) {
        let ty = site["type"].as_str().unwrap_or("");
        let (_, file, line) = frame(&site, 0);
        assert!(
            !(CHURN_TYPES.contains(&ty) || file == script_name && churn_lines.contains(&line)),
            "a churn site grows: {site:#}\nfinal report: {report:#}"
        );
    }
    for t in report["types"].as_array().unwrap() {
        assert!(
            !(CHURN_TYPES.contains(&t["name"].as_str().unwrap_or("")) && t["growing"] == true),
            "a churn type grows: {t}\nfinal report: {report:#}"
        );
    }
}

/// The growing site of `__main__.Leak` (type name ending in `.Leak`) whose innermost frame is
/// `main` at `script_name`'s LEAK-SITE line; every other growing site with its innermost
/// frame in `script_name` is a failure.
fn the_leak_site(report: &Value, script_name: &str) -> Value {
    let leak_line = marker_line(script_name, "LEAK-SITE");
    let script_path = script(script_name).display().to_string();
    let growing = growing_sites(report);
    for site in &growing {
        let (_, file, line) = frame(site, 0);
        assert!(
            file != script_name || line == leak_line,
            "a site of {script_name} other than its leak (line {leak_line}) grows: {site:#}\n\
             final report: {report:#}"
        );
    }
    let site = growing
        .into_iter()
        .find(|s| s["type"].as_str().unwrap_or("").ends_with(".Leak"))
        .unwrap_or_else(|| panic!("no growing Leak site: final report: {report:#}"));
    assert_eq!(
        frame(&site, 0),
        ("main".to_string(), script_name.to_string(), leak_line),
        "the Leak site's innermost frame: final report: {report:#}"
    );
    assert_eq!(script_file(&site, 0), script_path, "{site:#}");
    site
}

/// overhead_churn.py (about 1,500 class instances per iteration, 1.3–1.5k iterations a
/// second untraced here: over 2M class instances a second on either build, 6–7M objects on
/// pyenv's) traced 50 s in the default mode: sampled, within the budget, the leak found at
/// its line and about its rate, no churn growing. (What the budget costs in fact is timed in
/// `cargo xtask bench`, not here.)
fn churn_with_leak_is_sampled(python: &Path, links: Links) {
    let target = crate::support::python(python, "overhead_churn.py", &[]);
    let report = final_report_links(target.pid, 5, 50, &["--top", "100"], links);
    assert_eq!(report["mode"], "sampled", "final report: {report:#}");
    let budget = num(&report, "overhead_budget");
    assert!(
        (budget - BUDGET).abs() < 1e-9,
        "default budget {budget}: final report: {report:#}"
    );
    let (_, fraction, overhead) = budget_fields(&report);
    assert!(
        overhead <= budget + 1e-9,
        "estimated overhead {overhead} over the budget {budget}: final report: {report:#}"
    );
    assert!(
        fraction > 0.0 && fraction < 1.0 && report["windows"].as_u64().unwrap() > 0,
        "sampled, but traced {fraction} in {} windows: final report: {report:#}",
        report["windows"]
    );

    let site = the_leak_site(&report, "overhead_churn.py");
    let estimate = &site["estimate"];
    let (rate, rate_err) = (
        estimate["rate_per_s"].as_f64(),
        estimate["rate_err"].as_f64(),
    );
    assert!(
        rate.is_some_and(|r| (0.4 * LEAK_RATE..=2.5 * LEAK_RATE).contains(&r))
            && rate_err.is_some_and(|e| e.is_finite() && e >= 0.0),
        "Leak estimate {estimate} (truth {LEAK_RATE}/s): final report: {report:#}"
    );
    for key in ["live", "live_err"] {
        assert!(
            estimate[key].as_f64().is_some_and(f64::is_finite),
            "estimate.{key}: {site:#}"
        );
    }

    assert_no_churn_grows(&report, "overhead_churn.py");
    // and the churn was seen (not growing), so the check above is not vacuous
    for ty in CHURN_TYPES {
        let churn = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} site sampled: final report: {report:#}"));
        assert!(
            churn["births"].as_u64().unwrap_or(0) > 0,
            "{churn:#}\nfinal report: {report:#}"
        );
    }
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_busy_churn_is_sampled_within_budget_and_leak_found() {
    require_root();
    churn_with_leak_is_sampled(&pyenv("3.11.7"), Links::Multi);
}

/// The same through aya's perf-event links, the path kernels before 6.6 take.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_busy_churn_sampled_through_perf_event_links() {
    require_root();
    churn_with_leak_is_sampled(&pyenv("3.11.7"), Links::Perf);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_busy_churn_is_sampled_within_budget_and_leak_found() {
    require_root();
    churn_with_leak_is_sampled(&debian_python(), Links::Multi);
}

/// cache_plateau.py: an LRU cache of 5,000 `Entry`s filled about 3 s after it starts (so
/// after attach), then evicting one and inserting one 100 times a second, under the same
/// heavy churn (so sampled). An entry lives 50 s, as long as the trace: the plateau is not a
/// leak. Its site is seen, and its live estimate is about the cache's size.
fn cache_plateau_is_not_a_leak(python: &Path) {
    let target = crate::support::python(python, "cache_plateau.py", &[]);
    let report = final_report(target.pid, 5, 50, &["--top", "100"]);
    assert_eq!(
        report["mode"], "sampled",
        "the cache must be traced under budget to test that: final report: {report:#}"
    );
    let (_, _, overhead) = budget_fields(&report);
    assert!(
        overhead <= num(&report, "overhead_budget") + 1e-9,
        "{report:#}"
    );
    let growing = growing_sites(&report);
    assert!(
        growing.is_empty(),
        "the cache plateau (or churn) grows: {growing:#?}\nfinal report: {report:#}"
    );
    let entry = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "__main__.Entry")
        .unwrap_or_else(|| panic!("no Entry site: final report: {report:#}"));
    let (_, file, line) = frame(entry, 0);
    assert_eq!(
        (file.as_str(), line),
        (
            "cache_plateau.py",
            marker_line("cache_plateau.py", "INSERT-SITE")
        ),
        "{entry:#}"
    );
    // The fill is a 2 s burst: it falls into one window, or mostly into a gap, so its
    // scaled estimate varies far more than the Poisson error the report gives (seen here:
    // 8,400 and 21,600 for 5,000). Only its order of magnitude is checked.
    let live = entry["estimate"]["live"].as_f64();
    assert!(
        live.is_some_and(|l| (1_000.0..=25_000.0).contains(&l)),
        "the cache holds 5000 entries, estimated {live:?}: {entry:#}\nfinal report: {report:#}"
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_cache_plateau_is_not_a_leak_when_sampled() {
    require_root();
    cache_plateau_is_not_a_leak(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_cache_plateau_is_not_a_leak_when_sampled() {
    require_root();
    cache_plateau_is_not_a_leak(&debian_python());
}

/// quiet.py (a few hundred objects a second, a 20/s leak) in the default mode: its full cost
/// fits the budget, so it is traced exactly, all the time, and the leak is found at its line
/// and its rate as today.
fn quiet_service_is_traced_exactly(python: &Path) {
    let target = crate::support::python(python, "quiet.py", &[]);
    let report = final_report(target.pid, 5, 30, &[]);
    assert_eq!(report["mode"], "exact", "final report: {report:#}");
    let (_, fraction, overhead) = budget_fields(&report);
    assert!(
        fraction >= 0.99,
        "traced {fraction}: final report: {report:#}"
    );
    let budget = num(&report, "overhead_budget");
    assert!(
        (budget - BUDGET).abs() < 1e-9 && overhead <= budget,
        "estimated {overhead} of a budget of {budget}: final report: {report:#}"
    );
    let site = the_leak_site(&report, "quiet.py");
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        20.0,
        15.0,
        "quiet Leak",
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_quiet_service_is_traced_exactly() {
    require_root();
    quiet_service_is_traced_exactly(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_quiet_service_is_traced_exactly() {
    require_root();
    quiet_service_is_traced_exactly(&debian_python());
}

/// `--exact` on the busy target: exact mode whatever it costs, no budget (null), the
/// estimated overhead still reported (above the default budget here), and today's exact
/// answer: the leak at its line and its rate.
fn exact_flag_traces_everything(python: &Path) {
    let target = crate::support::python(python, "overhead_churn.py", &[]);
    let report = final_report(target.pid, 2, 10, &["--exact"]);
    assert_eq!(report["mode"], "exact", "final report: {report:#}");
    assert_eq!(
        report.get("overhead_budget"),
        Some(&Value::Null),
        "--exact: overhead_budget is null: final report: {report:#}"
    );
    let (_, fraction, overhead) = budget_fields(&report);
    assert!(
        fraction >= 0.99,
        "traced {fraction}: final report: {report:#}"
    );
    assert!(
        overhead > 0.0,
        "estimated overhead {overhead}: final report: {report:#}"
    );
    let site = the_leak_site(&report, "overhead_churn.py");
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        LEAK_RATE,
        10.0,
        "Leak, --exact",
    );
    assert_no_churn_grows(&report, "overhead_churn.py");
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_exact_flag_traces_the_busy_target_exactly() {
    require_root();
    exact_flag_traces_everything(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_exact_flag_traces_the_busy_target_exactly() {
    require_root();
    exact_flag_traces_everything(&debian_python());
}

/// The text report's header says the mode, how much was traced and the budget.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_text_report_says_sampled_and_the_budget() {
    require_root();
    let target = crate::support::python(&pyenv("3.11.7"), "overhead_churn.py", &[]);
    let p = target.pid.to_string();
    let run = leakscope(
        &["trace", "--pid", &p, "--interval", "5", "--duration", "15"],
        Duration::from_secs(75),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // the last report, from its header line on
    let final_report = run
        .stdout
        .rsplit("── leakscope")
        .next()
        .filter(|r| r.contains("final report (duration)"))
        .unwrap_or_else(|| panic!("no final report: {}", run.stdout));
    for words in [
        "  sampled (",
        " windows) · traced ",
        "estimated overhead ",
        "(budget 10%)",
        "≈ RATE/s",
    ] {
        assert!(
            final_report.contains(words),
            "{words:?} not in the final report:\n{final_report}"
        );
    }
}

/// A sampled target that dies mid-trace: the final report ("target exited") keeps what the
/// last window's close found (the followed objects cannot be read any more, and are not
/// taken for dead).
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_sampled_target_that_exits_keeps_its_leak() {
    require_root();
    let target = crate::support::python(&pyenv("3.11.7"), "overhead_churn.py", &[]);
    let pid = target.pid;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(25));
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let p = pid.to_string();
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &p,
            "--json",
            "--interval",
            "5",
            "--duration",
            "60",
        ],
        Duration::from_secs(120),
    );
    killer.join().unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = run.last();
    assert_eq!(report["reason"], "target exited", "{report:#}");
    assert_eq!(report["mode"], "sampled", "{report:#}");
    the_leak_site(&report, "overhead_churn.py");
    // A dead target's heap cannot be read: no chains that all say "no holder".
    let retention = report["retention"]["error"].as_str().unwrap_or("");
    assert!(retention.contains("target exited"), "{report:#}");
    assert!(
        report["findings"].as_array().is_none_or(|f| f.is_empty()),
        "{report:#}"
    );
}
