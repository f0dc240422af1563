//! Spawn mode, `leakscope trace [options] -- python app.py args…`: attached before the
//! program runs any Python code (the 1,000 objects its first statement makes are all seen,
//! at their line), signals passed on, and leakscope ends with the program, with its exit
//! status. On both 3.11 builds.
use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawned_from_the_first_line(python: &Path) {
    let p = python.to_str().unwrap();
    let s = script("spawn_leak.py");
    let run = leakscope(
        &[
            "trace",
            "--json",
            "--interval",
            "1",
            "--exact",
            "--top",
            "1000",
            "--",
            p,
            s.to_str().unwrap(),
            "3",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        run.code,
        Some(3),
        "the program's exit status: {}",
        run.stderr
    );
    let last = run.last();
    assert_eq!(last["kind"], "final", "{last}");
    assert_eq!(last["reason"], "target exited", "{last}");
    let early = row(&last, "__main__.Early").unwrap_or_else(|| panic!("no Early row: {last}"));
    assert_eq!(early["births"], 1000, "every early object seen: {early}");
    let site = last["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "__main__.Early")
        .unwrap_or_else(|| panic!("no Early site: {last}"));
    assert_eq!(
        frame(site, 0),
        (
            "<listcomp>".to_string(),
            "spawn_leak.py".to_string(),
            marker_line("spawn_leak.py", "EARLY_LEAK")
        ),
        "{site:#}"
    );
    let paced = row(&last, "__main__.Paced").unwrap_or_else(|| panic!("no Paced row: {last}"));
    assert!(paced["births"].as_u64().unwrap() > 400, "{paced}");
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_spawned_program_is_traced_from_its_first_line() {
    require_root();
    spawned_from_the_first_line(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_spawned_program_is_traced_from_its_first_line() {
    require_root();
    spawned_from_the_first_line(&debian_python());
}

/// SIGTERM to leakscope reaches the program (its handler exits with 4); leakscope reports
/// and exits with that status. A program that cannot be found is one clear error.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn signals_reach_the_spawned_program_and_its_status_is_leakscope_s() {
    require_root();
    let python = pyenv("3.11.7");
    let dir = tempdir("spawn-signal");
    let (out, err) = (dir.join("out"), dir.join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_leakscope"))
        .args(["trace", "--json", "--interval", "1", "--"])
        .arg(&python)
        .arg(script("spawn_leak.py"))
        .arg("120")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&err)
        .unwrap()
        .contains("attached to pid")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never attached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "leakscope did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(4), "{stderr}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().rfind(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(last["reason"], "target exited", "{last}");
    let _ = std::fs::remove_dir_all(dir);

    let run = leakscope(
        &["trace", "--", "no-such-python-here"],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no-such-python-here: not found in PATH"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}
