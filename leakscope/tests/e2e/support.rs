use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Privileged tests are `#[ignore]`d, so a plain `cargo test` lists them as ignored (not
/// run, and visibly so); `cargo xtask test` runs them with `--include-ignored`, as root.
/// Asked to run without root, a privileged test fails: it never passes without running.
pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "privileged test cannot run: not root (run `cargo xtask test` as root)"
    );
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn script(name: &str) -> PathBuf {
    repo().join("tests/python").join(name)
}

/// pyenv's shared, unoptimized build `X.Y.Z`; must exist on this machine.
pub fn pyenv(version: &str) -> PathBuf {
    let root = std::env::var("PYENV_ROOT")
        .unwrap_or_else(|_| format!("{}/.pyenv", std::env::var("HOME").unwrap()));
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let p = PathBuf::from(format!("{root}/versions/{version}/bin/python{minor}"));
    assert!(
        p.exists(),
        "{} is missing: these tests need pyenv's {version}",
        p.display()
    );
    p
}

/// Debian's static, LTO+PGO `python3.11`.
pub fn debian_python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3.11");
    assert!(p.exists(), "/usr/bin/python3.11 is missing");
    p
}

/// Where numpy is for `python`: `None` for Debian's python3.11 (its python3-numpy package
/// is on its path), else the directory scripts/setup unpacked a wheel into for pyenv's
/// 3.11.7 (`/var/cache/leakscope/numpy-3.11.7`).
pub fn numpy_path(python: &Path) -> Option<PathBuf> {
    if python.starts_with("/usr/bin") {
        return None;
    }
    let version = python
        .ancestors()
        .nth(2)
        .and_then(|v| v.file_name())
        .and_then(|v| v.to_str())
        .unwrap_or("?");
    let dir = PathBuf::from(format!("/var/cache/leakscope/numpy-{version}"));
    assert!(
        dir.join("numpy").exists(),
        "{} is missing: scripts/setup installs numpy there for {}",
        dir.display(),
        python.display()
    );
    Some(dir)
}

/// A running target process; killed when dropped. `lines` receives what it prints after
/// `ready`.
pub struct Target {
    pub child: Child,
    pub pid: u32,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for it to print `ready` (at most 30 s); the rest of its output is
/// drained in the background.
pub fn start(mut cmd: Command) -> Target {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("starting the target");
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    let mut target = Target { child, pid, lines };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
            let _ = target.child.kill();
            panic!(
                "target {cmd:?} did not get ready: {:?}",
                target.child.wait()
            );
        }
        if line.trim() == "ready" {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    target
}

pub fn python(interpreter: &Path, script_name: &str, args: &[&str]) -> Target {
    let mut cmd = Command::new(interpreter);
    cmd.arg("-u").arg(script(script_name)).args(args);
    start(cmd)
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The reports printed with `--json`, in order.
    pub fn reports(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("a report line is JSON"))
            .collect()
    }

    pub fn last(&self) -> Value {
        let r = self.reports();
        assert!(!r.is_empty(), "no report; stderr: {}", self.stderr);
        r.last().unwrap().clone()
    }
}

/// Runs `leakscope` with `args`; it must finish within `limit` (a hang is a failure).
pub fn leakscope(args: &[&str], limit: Duration) -> Run {
    leakscope_cmd(
        Command::new(env!("CARGO_BIN_EXE_leakscope")).args(args),
        limit,
    )
}

pub fn leakscope_cmd(cmd: &mut Command, limit: Duration) -> Run {
    let dir = tempdir("run");
    let (out, err) = (dir.join("out"), dir.join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("running leakscope");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("leakscope {cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        code: status.code(),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    };
    let _ = std::fs::remove_dir_all(dir);
    run
}

/// `trace --pid P --json --interval 2 --duration D --exact` plus `extra`: exact mode, the
/// ground truth most tests check (the budgeted default is tested in `overhead.rs`).
pub fn trace(pid: u32, duration: u32, extra: &[&str]) -> Run {
    let (p, d) = (pid.to_string(), duration.to_string());
    let mut args = vec![
        "trace",
        "--pid",
        &p,
        "--json",
        "--interval",
        "2",
        "--duration",
        &d,
        "--exact",
    ];
    args.extend_from_slice(extra);
    let run = leakscope(&args, Duration::from_secs(duration as u64 + 60));
    assert_eq!(run.code, Some(0), "leakscope failed: {}", run.stderr);
    run
}

pub fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("leakscope-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles `tests/ext/leakext.c` against `interpreter`'s headers; returns the directory
/// to put on PYTHONPATH.
pub fn build_leakext(interpreter: &Path) -> PathBuf {
    build_ext(interpreter, "leakext", &[])
}

/// Compiles `tests/ext/NAME.c` with `-O2` and `flags` against `interpreter`'s headers;
/// returns the directory to put on PYTHONPATH.
pub fn build_ext(interpreter: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let q = |expr: &str| {
        let out = Command::new(interpreter)
            .args(["-c", &format!("import sysconfig; print({expr})")])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let include = q("sysconfig.get_paths()['include']");
    let suffix = q("sysconfig.get_config_var('EXT_SUFFIX')");
    let dir = tempdir("ext");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2"])
        .args(flags)
        .args(["-I", &include, "-o"])
        .arg(dir.join(format!("{name}{suffix}")))
        .arg(repo().join(format!("tests/ext/{name}.c")))
        .status()
        .expect("running cc");
    assert!(status.success(), "compiling {name} against {include}");
    dir
}

/// The row of type `name` in a report.
pub fn row<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
}

pub fn assert_no_losses(report: &Value) {
    let l = &report["lost"];
    assert_eq!(
        (l["ringbuf_full"].as_u64(), l["kernel_read_failed"].as_u64()),
        (Some(0), Some(0)),
        "losses: {l}"
    );
}

/// `rate` within `pct`% of `truth`.
pub fn assert_rate(rate: f64, truth: f64, pct: f64, what: &str) {
    assert!(
        (rate - truth).abs() <= truth * pct / 100.0,
        "{what}: rate {rate:.1}/s, truth {truth}/s (±{pct}%)"
    );
}

/// The line of `script` that carries the comment `# MARKER`.
pub fn marker_line(script_name: &str, marker: &str) -> i64 {
    marker_in(&script(script_name), &format!("# {marker}"))
}

/// The line of `path` that ends with `tag`.
pub fn marker_in(path: &Path, tag: &str) -> i64 {
    let text = std::fs::read_to_string(path).unwrap();
    let script_name = path.display();
    let marker = tag;
    1 + text
        .lines()
        .position(|l| l.trim_end().ends_with(tag))
        .unwrap_or_else(|| panic!("{marker} not in {script_name}")) as i64
}

/// `(function, file name, line)` of a frame in a JSON site.
pub fn frame(site: &Value, i: usize) -> (String, String, i64) {
    let f = &site["frames"][i];
    let file = f["file"].as_str().unwrap_or("");
    (
        f["function"].as_str().unwrap_or("").to_string(),
        file.rsplit('/').next().unwrap().to_string(),
        f["line"].as_i64().unwrap_or(-1),
    )
}

/// The growing sites of a report.
pub fn growing_sites(report: &Value) -> Vec<Value> {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["growing"] == true)
        .cloned()
        .collect()
}
