//! Bad input: one clear line on stderr, a non-zero exit, never a panic or a hang.
use crate::support::*;
use std::process::Command;
use std::time::Duration;

const QUICK: Duration = Duration::from_secs(30);

fn one_line_error(run: &Run, needle: &str) {
    assert_ne!(run.code, Some(0), "must fail: {}", run.stderr);
    let lines: Vec<_> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("leakscope: error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{:?} not in {:?}",
        needle,
        lines[0]
    );
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn no_such_pid() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let run = leakscope(&["trace", "--pid", &pid.to_string()], QUICK);
    one_line_error(&run, &format!("no process with pid {pid}"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn not_python() {
    require_root();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let run = leakscope(&["trace", "--pid", &sleeper.id().to_string()], QUICK);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    one_line_error(&run, "(sleep) is not running CPython");
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn unsupported_version_names_the_supported_ones() {
    require_root();
    let target = python(&pyenv("3.8.18"), "leak.py", &["10"]);
    let run = leakscope(&["trace", "--pid", &target.pid.to_string()], QUICK);
    one_line_error(
        &run,
        "runs Python 3.8.18, which leakscope does not support (supported: 3.9, 3.10, 3.11, 3.12, 3.13, 3.14 and 3.15, default (GIL) builds)",
    );
}

/// Runs leakscope as `nobody`, with no capabilities at all.
fn as_nobody(args: &[&str]) -> Run {
    leakscope_cmd(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_leakscope"))
            .args(args),
        QUICK,
    )
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn no_privileges_names_the_capabilities() {
    require_root();
    let target = python(&pyenv("3.11.7"), "leak.py", &["10"]);
    let pid = target.pid.to_string();
    one_line_error(
        &as_nobody(&["trace", "--pid", &pid]),
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON",
    );
    one_line_error(
        &as_nobody(&["census", "--pid", &pid]),
        "census needs root, or CAP_SYS_PTRACE",
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn target_exiting_mid_trace_gives_a_final_report_and_exit_0() {
    require_root();
    let target = python(&pyenv("3.11.7"), "exits.py", &["3"]);
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &target.pid.to_string(),
            "--json",
            "--interval",
            "1",
        ],
        QUICK,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let last = run.last();
    assert_eq!(last["kind"], "final");
    assert_eq!(last["reason"], "target exited");
    assert!(row(&last, "__main__.Leak").is_some(), "{last}");
}

#[test]
fn bad_arguments_exit_non_zero() {
    let run = leakscope(&["trace", "--pid", "1", "--interval", "0"], QUICK);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("is not a positive number of seconds"),
        "{}",
        run.stderr
    );
}

#[test]
fn native_without_stacks_is_refused() {
    let run = leakscope(&["trace", "--pid", "1", "--native", "--no-stacks"], QUICK);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("--native") && run.stderr.contains("--no-stacks"),
        "{}",
        run.stderr
    );
}

/// `--native` names the C library it probed in every report (as the target names it).
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn native_names_the_c_library_it_probes() {
    require_root();
    let target = python(&pyenv("3.11.7"), "quiet.py", &[]);
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &target.pid.to_string(),
            "--native",
            "--duration",
            "1",
            "--json",
        ],
        QUICK,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let library = run.last()["native"]["library"].as_str().map(String::from);
    assert!(
        library
            .as_deref()
            .is_some_and(|l| l.ends_with("/libc.so.6")),
        "{library:?}: {}",
        run.stdout
    );
}

/// Traces `script` until `signal` arrives (after 3 s); the last line must be the final report
/// with `reason`, and the exit status 0.
fn signal_gives_the_final_report(script: &str, args: &[&str], signal: i32, reason: &str) {
    let target = python(&pyenv("3.11.7"), script, args);
    let child = Command::new(env!("CARGO_BIN_EXE_leakscope"))
        .args([
            "trace",
            "--pid",
            &target.pid.to_string(),
            "--json",
            "--interval",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(pid, signal) };
    // a hang is a failure, not a stuck test run
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["reason"].as_str()),
        (Some("final"), Some(reason))
    );
    let reports = stdout.lines().filter(|l| l.starts_with('{')).count();
    assert!(
        reports >= 3,
        "interval reports came out while tracing: {reports}"
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn ctrl_c_gives_the_final_report_and_exit_0() {
    require_root();
    signal_gives_the_final_report("leak.py", &["200"], libc::SIGINT, "interrupted");
}

/// Regression: with the ring buffer never empty, the drain loop never let the report clock,
/// the deadline or the signals run. Against a target that allocates flat out, interval
/// reports still come out and SIGTERM still ends the trace.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn sigterm_under_a_busy_target_gives_the_final_report_and_exit_0() {
    require_root();
    signal_gives_the_final_report("churn.py", &[], libc::SIGTERM, "terminated");
}
