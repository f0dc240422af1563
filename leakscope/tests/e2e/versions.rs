//! The version matrix: one leak test (`leak_matrix.py`: a class and a builtin leaking at
//! known lines, churn beside them) against every interpreter this machine has, each build
//! the way people run it: pyenv's shared builds, Debian's static `python3.11`, and Debian
//! sid's 3.13–3.15 and bullseye's 3.9 as static executables and as `libpython3.X.so`
//! embedded in a C program. Those run in the Debian root file systems `scripts/setup`
//! builds, chrooted and in their own pid namespace (a container, traced by its host pid). Ends with a printed matrix of
//! version × build × pass/fail; any failure fails the test.
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const RATE: f64 = 300.0;
const SCRIPT: &str = "leak_matrix.py";

/// A Debian root file system `scripts/setup` builds: `sid` (3.13–3.15) or `bullseye`
/// (3.9); `LEAKSCOPE_SID_ROOT`/`LEAKSCOPE_BULLSEYE_ROOT` override where.
pub fn debian_root(suite: &str, minor: u32) -> PathBuf {
    let var = format!("LEAKSCOPE_{}_ROOT", suite.to_uppercase());
    let root = PathBuf::from(
        std::env::var(var).unwrap_or_else(|_| format!("/var/cache/leakscope/{suite}")),
    );
    assert!(
        root.join(format!("usr/bin/python3.{minor}")).exists(),
        "{} has no python3.{minor}: run scripts/setup (it builds the {suite} root file system)",
        root.display()
    );
    root
}

/// How one interpreter is started.
enum Build {
    /// An interpreter on this machine, run directly.
    Host(PathBuf),
    /// `/usr/bin/python3.X` of a Debian root (suite), chrooted, in a new pid namespace.
    Static(&'static str, u32),
    /// `libpython3.X.so.1.0` of a Debian root, embedded in `tests/ext/embed.c`, the same way.
    Embedded(&'static str, u32),
}

struct Case {
    label: &'static str,
    build: &'static str,
    how: Build,
}

fn cases() -> Vec<Case> {
    let mut v = vec![];
    for (label, version) in [
        ("3.9", "3.9.18"),
        ("3.10", "3.10.13"),
        ("3.11", "3.11.7"),
        ("3.12", "3.12.1"),
        ("3.13", "3.13.0"),
    ] {
        v.push(Case {
            label,
            build: "shared libpython (pyenv)",
            how: Build::Host(pyenv(version)),
        });
    }
    v.push(Case {
        label: "3.11",
        build: "static LTO+PGO (Debian 12)",
        how: Build::Host(debian_python()),
    });
    for (label, suite, minor, static_build, embedded) in [
        (
            "3.9",
            "bullseye",
            9,
            "static LTO+PGO (Debian 11, container)",
            "shared libpython, embedded (Debian 11, container)",
        ),
        (
            "3.13",
            "sid",
            13,
            "static LTO+PGO (sid, container)",
            "shared libpython, embedded (sid, container)",
        ),
        (
            "3.14",
            "sid",
            14,
            "static LTO+PGO (sid, container)",
            "shared libpython, embedded (sid, container)",
        ),
        (
            "3.15",
            "sid",
            15,
            "static LTO+PGO (sid, container)",
            "shared libpython, embedded (sid, container)",
        ),
    ] {
        v.push(Case {
            label,
            build: static_build,
            how: Build::Static(suite, minor),
        });
        v.push(Case {
            label,
            build: embedded,
            how: Build::Embedded(suite, minor),
        });
    }
    v
}

/// `tests/ext/embed.c` built against a Debian root's `libpython3.X` into `dir` (inside that
/// root). Only the Python headers come from the root: its C library headers would clash with
/// ours, so an include directory holding just its `x86_64-linux-gnu/python3.X` is made.
fn build_embed(root: &Path, minor: u32, dir: &Path) -> PathBuf {
    let out = dir.join(format!("embed3.{minor}"));
    let inside = |p: &Path| format!("/{}", p.strip_prefix(root).unwrap().display());
    let status = if root.join("usr/bin/gcc").exists() {
        // A root whose C library is older than ours (bullseye) builds it itself.
        std::fs::copy(repo().join("tests/ext/embed.c"), dir.join("embed.c")).unwrap();
        Command::new("chroot")
            .arg(root)
            .arg("gcc")
            .arg("-O2")
            .arg(format!("-I/usr/include/python3.{minor}"))
            .arg(inside(&dir.join("embed.c")))
            .arg("-o")
            .arg(inside(&out))
            .arg(format!("-lpython3.{minor}"))
            .status()
    } else {
        let inc = dir.join("include/x86_64-linux-gnu");
        std::fs::create_dir_all(&inc).unwrap();
        let arch = root.join(format!("usr/include/x86_64-linux-gnu/python3.{minor}"));
        let link = inc.join(format!("python3.{minor}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&arch, &link).unwrap();
        Command::new("cc")
            .arg("-O2")
            .arg(format!(
                "-I{}",
                root.join(format!("usr/include/python3.{minor}")).display()
            ))
            .arg(format!("-I{}", dir.join("include").display()))
            .arg(repo().join("tests/ext/embed.c"))
            .arg("-o")
            .arg(&out)
            .arg(format!(
                "-L{}",
                root.join("usr/lib/x86_64-linux-gnu").display()
            ))
            .arg(format!("-lpython3.{minor}"))
            // sid's libpython needs a newer C library than ours: resolved in the chroot.
            .arg("-Wl,--allow-shlib-undefined")
            .status()
    };
    assert!(
        status.expect("running the C compiler").success(),
        "building embed.c against 3.{minor}"
    );
    out
}

/// The pid of `parent`'s only child (`unshare --fork`'s, which is the target).
fn child_of(parent: u32) -> u32 {
    let path = format!("/proc/{parent}/task/{parent}/children");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{parent} has no child"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts the case's target; returns it and the pid to trace.
fn start_case(how: &Build, work: &Path) -> (Target, u32) {
    match how {
        Build::Host(python) => {
            let t = crate::support::python(python, SCRIPT, &[&RATE.to_string()]);
            let pid = t.pid;
            (t, pid)
        }
        Build::Static(suite, minor) | Build::Embedded(suite, minor) => {
            let root = debian_root(suite, *minor);
            let exe = match how {
                Build::Static(..) => format!("/usr/bin/python3.{minor}"),
                _ => {
                    let built = build_embed(&root, *minor, work);
                    format!("/{}", built.strip_prefix(&root).unwrap().display())
                }
            };
            let app = format!("/{}", work.strip_prefix(&root).unwrap().display());
            std::fs::copy(script(SCRIPT), work.join(SCRIPT)).unwrap();
            let mut cmd = Command::new("unshare");
            cmd.arg("--pid")
                .arg("--fork")
                .arg("--kill-child")
                .arg(format!("--mount-proc={}", root.join("proc").display()))
                .arg("chroot")
                .arg(&root)
                .arg(&exe)
                .args(if matches!(how, Build::Static(..)) {
                    &["-u"][..]
                } else {
                    &[][..]
                })
                .arg(format!("{app}/{SCRIPT}"))
                .arg(RATE.to_string())
                .env("PYTHONUNBUFFERED", "1");
            let t = start(cmd);
            let pid = child_of(t.pid);
            (t, pid)
        }
    }
}

/// One case: the class and the dict leak at their lines and rate, nothing else grows, and
/// the census finds the instances on the GC lists.
/// Returns the interpreter's version (from leakscope's attach line).
fn check_case(case: &Case) -> Result<String, String> {
    let work = match case.how {
        Build::Host(_) => tempdir("matrix"),
        Build::Static(suite, minor) | Build::Embedded(suite, minor) => {
            let d = debian_root(suite, minor)
                .join(format!("tmp/leakscope-matrix-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    };
    let (target, pid) = start_case(&case.how, &work);
    let run = trace(pid, 10, &[]);
    // The census reads the same heap through this version's GC lists: every instance
    // made so far (over 10 s at RATE) is on them.
    let census = leakscope(
        &["census", "--pid", &pid.to_string(), "--json"],
        std::time::Duration::from_secs(60),
    );
    drop(target);
    let _ = std::fs::remove_dir_all(&work);
    let version = run
        .stderr
        .split("Python ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    if !matches!(case.how, Build::Host(_)) {
        // paths as the target sees them, not the host's way to them
        let shown = match case.how {
            Build::Static(_, m) => format!("in /usr/bin/python3.{m};"),
            Build::Embedded(_, m) => {
                format!("in /usr/lib/x86_64-linux-gnu/libpython3.{m}.so.1.0;")
            }
            Build::Host(_) => unreachable!(),
        };
        if !run.stderr.contains(&shown) {
            return Err(format!(
                "the attach line does not say {shown:?}: {}",
                run.stderr
            ));
        }
    }
    let last = run.last();
    let mut problems = vec![];
    let sessions = census
        .reports()
        .last()
        .and_then(|r| row(r, "__main__.Session").and_then(|t| t["objects"].as_u64()))
        .unwrap_or(0);
    if census.code != Some(0) || (sessions as f64) < 10.0 * RATE * 0.9 {
        problems.push(format!(
            "census: {sessions} instances on the GC lists ({:?}: {})",
            census.code,
            census.stderr.trim()
        ));
    }
    for (name, marker) in [("__main__.Session", "LEAK-CLASS"), ("dict", "LEAK-DICT")] {
        let Some(t) = row(&last, name) else {
            problems.push(format!("{name} not reported"));
            continue;
        };
        let rate = t["rate_per_s"].as_f64().unwrap_or(0.0);
        if t["growing"] != true || (rate - RATE).abs() > RATE * 0.10 {
            problems.push(format!("{name}: growing {} at {rate:.0}/s", t["growing"]));
        }
        let site = growing_sites(&last).into_iter().find(|s| s["type"] == name);
        let want = (
            "serve".to_string(),
            SCRIPT.to_string(),
            marker_line(SCRIPT, marker),
        );
        match site {
            Some(s) if frame(&s, 0) == want => {}
            Some(s) => problems.push(format!("{name} at {:?}, not {want:?}", frame(&s, 0))),
            None => problems.push(format!("{name}: no growing site")),
        }
    }
    let growing: Vec<&Value> = last["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["growing"] == true)
        .filter(|t| !["__main__.Session", "dict"].contains(&t["name"].as_str().unwrap()))
        .collect();
    if !growing.is_empty() {
        problems.push(format!("false growth: {growing:?}"));
    }
    let lost = &last["lost"];
    if lost["ringbuf_full"] != 0 || lost["kernel_read_failed"] != 0 {
        problems.push(format!("losses: {lost}"));
    }
    if problems.is_empty() {
        Ok(version)
    } else {
        Err(format!("{version}: {}", problems.join("; ")))
    }
}

#[test]
#[ignore = "privileged: needs root and the sid root file system; `cargo xtask test` runs it"]
fn every_version_and_build_finds_the_leaks_at_their_lines() {
    require_root();
    let mut rows = vec![];
    for case in cases() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(&case)))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
        rows.push((case.label, case.build, result));
    }
    println!("\nversion matrix ({SCRIPT}: a class and a dict leaking at {RATE}/s, churn):");
    println!("{:<8} {:<10} {:<50} result", "version", "release", "build");
    for (label, build, result) in &rows {
        match result {
            Ok(v) => println!("{label:<8} {v:<10} {build:<50} pass"),
            Err(e) => println!("{label:<8} {:<10} {build:<50} FAIL: {e}", "?"),
        }
    }
    let failed: Vec<_> = rows.iter().filter(|r| r.2.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed",
        failed.len(),
        rows.len()
    );
}
