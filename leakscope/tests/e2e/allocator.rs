//! The allocator census (pymalloc's arenas): it sees strs and ints, which no GC list holds,
//! grow as fast as the target leaks them, on every pyenv build; on a stripped build without
//! its debug file it says why it cannot, and the GC census still runs.
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn alloc_count(report: &Value, name: &str) -> Option<u64> {
    report["allocator"]["types"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .map(|t| t["objects"].as_u64().unwrap())
}

/// Paused snapshots one second apart: between the first and the last, the allocator's str
/// and int counts grow by what the target says it leaked (its own count, printed when each
/// pause ends), within 1% + 20.
fn leak_is_seen(label: &str, python: &Path) {
    let target = crate::support::python(python, "leak_strs.py", &["2000"]);
    let p = target.pid.to_string();
    let run = leakscope(
        &[
            "census",
            "--pid",
            &p,
            "--json",
            "--pause",
            "--interval",
            "1",
            "--count",
            "4",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(0), "{label}: {}", run.stderr);
    let reports = run.reports();
    assert_eq!(reports.len(), 4, "{label}");
    let truth: Vec<i64> = (0..4)
        .map(|_| {
            let line = target
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the target's own count");
            serde_json::from_str::<Value>(&line).unwrap()["leaked"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let (first, last) = (&reports[0], &reports[3]);
    let grew_truth = truth[3] - truth[0];
    assert!(
        grew_truth > 4000,
        "{label}: the target leaked only {grew_truth}"
    );
    for name in ["str", "int"] {
        let (a, b) = (alloc_count(first, name), alloc_count(last, name));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("{label}: no {name} row: {}", last["allocator"]);
        };
        let grew = b as i64 - a as i64;
        assert!(
            (grew - grew_truth).abs() <= grew_truth / 100 + 20,
            "{label}: {name} grew {grew}, the target leaked {grew_truth}: {}",
            last["allocator"]["stats"]
        );
        assert!(
            row(last, name).is_none(),
            "{label}: {name} is not on the GC lists"
        );
    }
    let stats = &last["allocator"]["stats"];
    assert_eq!(stats["torn_pools"], 0, "{label}: paused, nothing is torn");
    assert_eq!(stats["unreadable_pools"], 0, "{label}");
    assert_eq!(stats["bounded"], false, "{label}");
    // the 64-byte class holds the strs: it grew by at least as many blocks
    let c64 = last["allocator"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["size"] == 64)
        .unwrap();
    assert!(
        c64["delta_first"].as_i64().unwrap() >= grew_truth * 99 / 100,
        "{label}: {c64}"
    );
    eprintln!(
        "{label}: str/int +{grew_truth}; walk {:.1} ms, {} blocks, {} objects, {} unclassified",
        last["allocator"]["walk_ms"],
        stats["blocks"],
        stats["objects"],
        stats["unclassified_blocks"]
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn allocator_census_sees_leaked_strs_and_ints_on_pyenv_builds() {
    require_root();
    for v in ["3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
        leak_is_seen(&format!("pyenv {v}"), &pyenv(v));
    }
}

/// Debian's static python3.11 is stripped: pymalloc's `arenas` is a file-static with no
/// symbol, found instead in the code of the exported `_Py_GetAllocatedBlocks`
/// (`obmalloc::table_from_code`). The census works as on pyenv's builds.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn allocator_census_on_debian_python_finds_the_table_without_symbols() {
    require_root();
    let python = debian_python();
    let target = crate::support::python(&python, "leak_strs.py", &["2000"]);
    let run = leakscope(
        &["census", "--pid", &target.pid.to_string(), "--json"],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = run.last();
    assert!(
        !report["types"].as_array().unwrap().is_empty(),
        "GC census ran"
    );
    assert!(
        report.get("allocator").is_some(),
        "the arena table is found without symbols: {report}"
    );
    drop(target);
    leak_is_seen("Debian 3.11", &python);
}
