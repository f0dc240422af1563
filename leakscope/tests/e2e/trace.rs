//! `trace` against real interpreters: leaks are found at the right rate, churn is not.
use crate::support::*;
use std::path::Path;

const RATE: f64 = 2000.0;

/// A script appending instances of its own class at RATE/s: that class is on top, growing,
/// at RATE within 10%, and nothing was lost.
fn leaking_class_on_top(interpreter: &Path) {
    let target = python(interpreter, "leak.py", &[&RATE.to_string()]);
    let run = trace(target.pid, 10, &[]);
    let last = run.last();
    assert_eq!(last["kind"], "final");
    assert_eq!(last["reason"], "duration");
    let top = &last["types"][0];
    assert_eq!(top["name"], "__main__.Leak", "report: {last}");
    assert_eq!(top["growing"], true);
    assert_rate(
        top["rate_per_s"].as_f64().unwrap(),
        RATE,
        10.0,
        "__main__.Leak",
    );
    assert_eq!(top["deaths"], 0);
    let site = &growing_sites(&last)[0];
    assert_eq!(
        frame(site, 0),
        (
            "<module>".to_string(),
            "leak.py".to_string(),
            marker_line("leak.py", "LEAK-SITE")
        )
    );
    let growing: Vec<_> = last["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["growing"] == true)
        .collect();
    assert_eq!(growing.len(), 1, "only the class leaks: {growing:?}");
    assert_no_losses(&last);
}

/// Millions of objects born and freed (dicts, tuples, floats, strings, lists, instances
/// with and without __slots__, cycles freed by the collector): no type grows in any report.
fn churn_reports_nothing_growing(interpreter: &Path, min_births: u64) {
    let target = python(interpreter, "churn.py", &[]);
    let run = trace(target.pid, 14, &[]);
    let reports = run.reports();
    assert!(reports.len() >= 7, "{} reports", reports.len());
    for r in &reports {
        let growing: Vec<_> = r["types"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["growing"] == true)
            .collect();
        assert!(growing.is_empty(), "churn reported growth: {growing:?}");
        assert!(
            growing_sites(r).is_empty(),
            "churn reported a growing site: {:?}",
            growing_sites(r)
        );
        assert_no_losses(r);
    }
    let last = reports.last().unwrap();
    let births: u64 = last["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["births"].as_u64().unwrap())
        .sum();
    assert!(births >= min_births, "only {births} births seen");
    for class in ["__main__.Plain", "__main__.Slotted"] {
        let r = row(last, class).unwrap_or_else(|| panic!("{class} not seen: {last}"));
        assert!(r["births"].as_u64().unwrap() > 100_000, "{r}");
        assert!(
            r["live"].as_u64().unwrap() <= 2,
            "{class} should be (almost) all dead: {r}"
        );
    }
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_leaking_class_is_on_top_at_its_rate() {
    require_root();
    leaking_class_on_top(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_leaking_class_is_on_top_at_its_rate() {
    require_root();
    leaking_class_on_top(&debian_python());
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_churn_reports_nothing_growing() {
    require_root();
    churn_reports_nothing_growing(&pyenv("3.11.7"), 2_000_000);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_churn_reports_nothing_growing() {
    require_root();
    churn_reports_nothing_growing(&debian_python(), 1_000_000);
}

/// The claim for every build, "all objects": builtins created inside the interpreter
/// (dicts, floats, lists) leak at a known rate and are reported at that rate, at the line
/// that made them, with no census rows.
fn sees_builtins_leaking(python: &Path, sees: &str) {
    let target = crate::support::python(python, "leak_builtins.py", &["1000"]);
    let run = trace(target.pid, 10, &[]);
    assert!(run.stderr.contains(sees), "{}", run.stderr);
    let last = run.last();
    for name in ["dict", "float", "list"] {
        let r = row(&last, name).unwrap_or_else(|| panic!("{name} missing: {last}"));
        assert_eq!(r["growing"], true, "{r}");
        assert!(r.get("census").is_none(), "no census rows: {r}");
        assert_rate(r["rate_per_s"].as_f64().unwrap(), 1000.0, 10.0, name);
    }
    for (name, marker) in [
        ("dict", "LEAK-DICT"),
        ("float", "LEAK-FLOAT"),
        ("list", "LEAK-LIST"),
    ] {
        let line = marker_line("leak_builtins.py", marker);
        assert!(
            growing_sites(&last).iter().any(|s| s["type"] == name
                && frame(s, 0) == ("<module>".into(), "leak_builtins.py".into(), line)),
            "{name} not growing at leak_builtins.py:{line}: {last}"
        );
    }
    // The churned tuples and strs die: not growing.
    for name in ["tuple", "str"] {
        assert!(
            row(&last, name).is_none_or(|r| r["growing"] == false),
            "{name} churn is not a leak: {last}"
        );
    }
    assert_no_losses(&last);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_sees_builtins_leaking() {
    require_root();
    sees_builtins_leaking(&pyenv("3.11.7"), "sees all objects;");
}

/// Debian's static LTO+PGO build inlines `_Py_NewReference`: births are taken at each
/// inlined copy, the deaths no probe sees read back from memory.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_sees_builtins_leaking() {
    require_root();
    sees_builtins_leaking(&debian_python(), "sees all objects (births at each inlined");
}

/// What a new user tried on Debian's `python3.11` and did not see before births were
/// taken at the inlined `_Py_NewReference`: leaks of dict, str, bytes, function, bytearray and list
/// objects (and of a class), each at its own line, beside churn. Every one is growing at
/// its rate within 10%, at its line; the churn's line is not growing.
fn distro_builtins_leaking(python: &Path) {
    const RATE: f64 = 300.0;
    let target = crate::support::python(python, "leak_distro.py", &[&RATE.to_string()]);
    let run = trace(target.pid, 12, &[]);
    let last = run.last();
    for (name, marker) in [
        ("dict", "LEAK-DICT"),
        ("str", "LEAK-STR"),
        ("bytes", "LEAK-BYTES"),
        ("function", "LEAK-FUNCTION"),
        ("bytearray", "LEAK-BYTEARRAY"),
        ("list", "LEAK-LIST"),
        ("__main__.Session", "LEAK-CLASS"),
    ] {
        let line = marker_line("leak_distro.py", marker);
        let site = growing_sites(&last)
            .into_iter()
            .find(|s| s["type"] == name && frame(s, 0).2 == line)
            .unwrap_or_else(|| panic!("{name} not growing at leak_distro.py:{line}: {last}"));
        assert_eq!(frame(&site, 0).1, "leak_distro.py", "{site}");
        assert_rate(site["rate_per_s"].as_f64().unwrap(), RATE, 10.0, name);
    }
    let churn = marker_line("leak_distro.py", "CHURN");
    assert!(
        !growing_sites(&last).iter().any(|s| frame(s, 0).2 == churn),
        "the churn at line {churn} is not a leak: {last}"
    );
    assert_no_losses(&last);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_builtins_leaking_at_their_lines() {
    require_root();
    distro_builtins_leaking(&debian_python());
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_builtins_leaking_at_their_lines() {
    require_root();
    distro_builtins_leaking(&pyenv("3.11.7"));
}

/// The partial plan (what an optimized build whose allocator is not understood gets):
/// builtins made inside the interpreter are not visible to the probes, and the report says
/// so instead of showing partial numbers for them. What the census can count comes from
/// the census, marked as such, at its true rate: the leaked lists from the GC lists, the
/// leaked floats from pymalloc's arenas (typed block by block; the arena table is found in
/// the code of `_Py_GetAllocatedBlocks`, with no debug file). No builtin row is counted
/// from births, and without the census no builtin appears at all.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_partial_plan_builtins_come_from_the_census_or_not_at_all() {
    require_root();
    let target = python(&debian_python(), "leak_builtins.py", &["1000"]);
    let partial = |secs: u32, extra: &[&str]| {
        let (p, d) = (target.pid.to_string(), secs.to_string());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_leakscope"));
        cmd.args([
            "trace",
            "--pid",
            &p,
            "--json",
            "--interval",
            "2",
            "--duration",
            &d,
        ])
        .arg("--exact")
        .args(extra)
        .env("LEAKSCOPE_PARTIAL_PLAN", "1");
        let run = leakscope_cmd(&mut cmd, std::time::Duration::from_secs(secs as u64 + 60));
        assert_eq!(run.code, Some(0), "leakscope failed: {}", run.stderr);
        run
    };
    let run = partial(10, &[]);
    assert!(
        run.stderr
            .contains("builtins created inside this optimized interpreter are not visible"),
        "{}",
        run.stderr
    );
    let last = run.last();
    for name in ["list", "float"] {
        let r = row(&last, name).unwrap_or_else(|| panic!("{name} missing: {last}"));
        assert_eq!(
            (
                r["census"].as_bool(),
                r["growing"].as_bool(),
                r["births"].as_u64()
            ),
            (Some(true), Some(true), Some(0)),
            "{r}"
        );
        assert_rate(
            r["rate_per_s"].as_f64().unwrap(),
            1000.0,
            10.0,
            &format!("{name} (census)"),
        );
    }
    assert!(last["census_ms"].as_f64().is_some());
    for name in ["float", "str", "dict", "list", "int", "tuple"] {
        assert!(
            row(&last, name).is_none_or(|r| r["census"] == true && r["births"] == 0),
            "{name} must come from the census only on this plan: {last}"
        );
    }
    // the churned strs die within a round: never growth
    assert!(
        row(&last, "str").is_none_or(|r| r["growing"] == false),
        "{last}"
    );
    // and without the census, no builtin at all
    let run = partial(4, &["--no-census"]);
    for name in ["list", "float", "dict"] {
        assert!(row(&run.last(), name).is_none(), "{name}: {}", run.last());
    }
}

/// Both builds: objects of C-extension types (PyObject_New and PyObject_GC_New through the
/// extension's PLT) are seen, at their rate, and their temporaries are not growth.
fn extension_types_leaking(python: &Path) {
    let ext = build_leakext(python);
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-u")
        .arg(script("leak_ext.py"))
        .arg("1000")
        .env("PYTHONPATH", &ext);
    let target = start(cmd);
    let run = trace(target.pid, 10, &[]);
    let last = run.last();
    for name in ["leakext.Blob", "leakext.Node"] {
        let r = row(&last, name).unwrap_or_else(|| panic!("{name} missing: {last}"));
        assert_eq!(r["growing"], true, "{r}");
        assert_rate(r["rate_per_s"].as_f64().unwrap(), 1000.0, 10.0, name);
        // every temporary died: deaths == births - live
        assert_eq!(
            r["births"].as_u64().unwrap() - r["live"].as_u64().unwrap(),
            r["deaths"].as_u64().unwrap()
        );
        assert!(r["deaths"].as_u64().unwrap() > 5_000, "{r}");
    }
    assert_no_losses(&last);
    let _ = std::fs::remove_dir_all(ext);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_sees_c_extension_types() {
    require_root();
    extension_types_leaking(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_sees_c_extension_types() {
    require_root();
    extension_types_leaking(&debian_python());
}

/// The text report names the leaking type with its marker; `--stats` adds probe hits and
/// the BPF programs' run time.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn text_report_with_stats() {
    require_root();
    let target = python(&pyenv("3.11.7"), "leak.py", &["500"]);
    let p = target.pid.to_string();
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &p,
            "--interval",
            "1",
            "--duration",
            "4",
            "--stats",
            // The exact report's table and stats (the budgeted one is tested in overhead.rs).
            "--exact",
        ],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let final_report = run
        .stdout
        .split("final report (duration)")
        .nth(1)
        .expect(&run.stdout);
    assert!(final_report.contains("▲ __main__.Leak"), "{final_report}");
    assert!(
        final_report.contains("_Py_NewReference+7"),
        "{final_report}"
    );
    assert!(
        final_report.contains("ns/run (kernel bpf stats)"),
        "{final_report}"
    );
    assert!(final_report.contains("lost: 0 events"), "{final_report}");
}

/// Runs leak.py in a private mount namespace whose root is a fresh directory with pyenv's
/// 3.11.7 bound at /opt/py: entered with `chroot` (maps show namespace paths, so the file is
/// found through /proc/<pid>/map_files) or with `pivot_root` like a container runtime (maps
/// show paths inside its root, found through /proc/<pid>/root).
fn containerized_leak(enter: &str) {
    let root = tempdir("root");
    for d in ["opt/py", "usr", "app", "proc", "old"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for l in ["lib", "lib64", "bin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    std::fs::copy(script("leak.py"), root.join("app/leak.py")).unwrap();
    let pyenv_dir = pyenv("3.11.7")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let r = root.display();
    let run_python = format!("/opt/py/bin/python3.11 -u /app/leak.py {RATE}");
    let how = enter;
    let enter = match how {
        "chroot" => format!("exec chroot {r} {run_python}"),
        _ => format!("cd {r} && pivot_root . old && exec {run_python}"),
    };
    // The root must be a mount point for pivot_root: bind it onto itself first.
    let sh = format!(
        "mount --bind {r} {r} && mount --bind {} {r}/opt/py && mount --bind /usr {r}/usr && {enter}",
        pyenv_dir.display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &sh])
        .env("LD_LIBRARY_PATH", "/opt/py/lib")
        .env("PYTHONHOME", "/opt/py");
    let target = start(cmd);
    let run = trace(target.pid, 10, &[]);
    assert!(
        run.stderr.contains("libpython3.11.so.1.0"),
        "{}",
        run.stderr
    );
    if how == "pivot_root" {
        // the path is the container's own, and does not exist on the host
        assert!(
            run.stderr.contains("in /opt/py/lib/libpython3.11.so.1.0"),
            "{}",
            run.stderr
        );
        assert!(!std::path::Path::new("/opt/py/lib/libpython3.11.so.1.0").exists());
    }
    assert!(
        !run.stderr.contains(&format!("in {}", pyenv_dir.display())),
        "traced the host's file? {}",
        run.stderr
    );
    let last = run.last();
    assert_eq!(last["types"][0]["name"], "__main__.Leak", "{last}");
    assert_rate(
        last["types"][0]["rate_per_s"].as_f64().unwrap(),
        RATE,
        10.0,
        how,
    );
    drop(target);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn target_in_a_chroot_is_traced() {
    require_root();
    containerized_leak("chroot");
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn target_in_a_pivot_root_container_is_traced() {
    require_root();
    containerized_leak("pivot_root");
}
