//! The live view, on a real terminal (tmux): the text report refreshes in place on the
//! alternate screen (one table on the screen, its clock moving, the tracing line with the
//! overhead estimate, a footer), and at the end the final report is what stays on the
//! normal screen. Piped output (every other test) stays plain lines.
use crate::support::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The "N.Ns since attach" of the report on the screen.
fn clock(screen: &str) -> f64 {
    let line = screen
        .lines()
        .find(|l| l.starts_with("── leakscope"))
        .unwrap_or_else(|| panic!("no report on the screen:\n{screen}"));
    let at = line.find("s since attach").unwrap();
    line[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

fn live_view(python: &Path) {
    let target = crate::support::python(python, "nested.py", &["500"]);
    let name = format!("leakscope-live-{}", target.pid);
    let cmd = format!(
        "{} trace --pid {} --interval 1 --duration 9 --exact; echo LEAKSCOPE-EXIT=$?; sleep 120",
        env!("CARGO_BIN_EXE_leakscope"),
        target.pid
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "160",
        "-y",
        "50",
        &cmd,
    ]);
    struct Session(String);
    impl Drop for Session {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _session = Session(name.clone());
    std::thread::sleep(Duration::from_secs(4));
    let first = tmux(&["capture-pane", "-p", "-t", &name]);
    assert_eq!(
        first.matches("── leakscope").count(),
        1,
        "one table:\n{first}"
    );
    assert!(first.contains("estimated overhead"), "{first}");
    assert!(first.contains("Ctrl-C for the final report"), "{first}");
    assert!(first.contains("__main__.Leak"), "{first}");
    std::thread::sleep(Duration::from_secs(2));
    let second = tmux(&["capture-pane", "-p", "-t", &name]);
    assert_eq!(
        second.matches("── leakscope").count(),
        1,
        "refreshed in place:\n{second}"
    );
    assert!(
        clock(&second) > clock(&first),
        "the report moved on:\n{first}\n{second}"
    );
    // After the end: the normal screen (and its scrollback) holds the final report only.
    let mut end = String::new();
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        end = tmux(&["capture-pane", "-p", "-S", "-1000", "-t", &name]);
        if end.contains("LEAKSCOPE-EXIT=") {
            break;
        }
    }
    assert!(end.contains("LEAKSCOPE-EXIT=0"), "{end}");
    assert_eq!(end.matches("── leakscope").count(), 1, "{end}");
    assert!(end.contains("final report (duration)"), "{end}");
    assert!(end.contains("the first report comes in 1 s"), "{end}");
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_live_view_refreshes_in_place_on_a_terminal() {
    require_root();
    live_view(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_live_view_refreshes_in_place_on_a_terminal() {
    require_root();
    live_view(&debian_python());
}
