//! `cargo xtask bench`: what tracing costs a Python program, leakscope beside its peers, in
//! one run.
//!
//! Five workloads (`tests/python/bench/*.py`) run under every mode: untraced; `leakscope
//! trace` in its default mode, with `--exact`, with `--exact --no-stacks`; censuses back to
//! back; `memray attach` (a capture file, `--aggregate`, `--trace-python-allocators`); and
//! `python -X tracemalloc=1`. Rounds are interleaved (every workload under every mode, then
//! the next round), so a noisy machine hits every mode alike; each cell is the median of the
//! rounds, as a slowdown: traced work time ÷ untraced work time (the default mode's cell, the
//! goal's, is the median of pairs: each run side by side with an untraced one of its size,
//! both told to go at once, one on each core, since this VM's speed moves in steps within
//! minutes). Each workload times its own
//! work inside the process, after a `ready`/`go` handshake, so attaching is not timed.
//! Then, per interpreter: how long the default mode takes to name a paced leak added to the
//! workload it slowed down most.
//!
//! The peers are installed here, idempotently: a venv per interpreter under `target/` with
//! memray (which injects itself with gdb: `scripts/setup` installs it). Every mode runs the
//! venv's python, so all modes of a table use the same interpreter. Needs root.
use anyhow::{Context, Result, bail};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The memray the bench installs (pinned, so runs compare).
const MEMRAY_VERSION: &str = "1.20.0";
/// How long the time-to-name run waits for the report that names the leak.
const NAME_WITHIN: Duration = Duration::from_secs(90);
/// How long a workload may take to print its time (the slowest mode on the heaviest one).
const WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a tracer may take to attach (memray's gdb injection takes a second or two).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The default mode's runs do this many times the work (see `Ctx::n`).
const LONG: u32 = 6;

struct Workload {
    key: &'static str,
    label: &'static str,
    script: &'static str,
    /// Sized so the untraced run takes about 1–2 s on pyenv 3.11.7 on the bench machine.
    n: u32,
    quick_n: u32,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        key: "json",
        label: "JSON round trips",
        script: "json_roundtrip.py",
        n: 90,
        quick_n: 10,
    },
    Workload {
        key: "orm",
        label: "ORM-like object graph",
        script: "orm_graph.py",
        n: 120,
        quick_n: 15,
    },
    Workload {
        key: "regex",
        label: "regex tokens → Counter",
        script: "regex_tokens.py",
        n: 200,
        quick_n: 25,
    },
    Workload {
        key: "async",
        label: "asyncio server, 32 clients",
        script: "async_server.py",
        n: 800,
        quick_n: 100,
    },
    Workload {
        key: "micro",
        label: "micro loop (allocation only)",
        script: "micro.py",
        n: 3_000_000,
        quick_n: 300_000,
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    /// Untraced at `LONG`× the size: the baseline of `Trace`.
    UntracedLong,
    Trace,
    /// The default mode with `--native` (the C library's allocator probed too).
    TraceNative,
    Exact,
    ExactNoStacks,
    Census,
    Memray,
    MemrayAggregate,
    MemrayPyAlloc,
    Tracemalloc,
}

const MODES: [Mode; 11] = [
    Mode::Untraced,
    Mode::UntracedLong,
    Mode::Trace,
    Mode::TraceNative,
    Mode::Exact,
    Mode::ExactNoStacks,
    Mode::Census,
    Mode::Memray,
    Mode::MemrayAggregate,
    Mode::MemrayPyAlloc,
    Mode::Tracemalloc,
];

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::UntracedLong => "untraced-long",
            Mode::Trace => "trace",
            Mode::TraceNative => "trace-native",
            Mode::Exact => "exact",
            Mode::ExactNoStacks => "exact-no-stacks",
            Mode::Census => "census",
            Mode::Memray => "memray",
            Mode::MemrayAggregate => "memray-aggregate",
            Mode::MemrayPyAlloc => "memray-pyalloc",
            Mode::Tracemalloc => "tracemalloc",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::UntracedLong => "untraced, 6× work",
            Mode::Trace => "trace (default: --overhead 10), 6× work",
            Mode::TraceNative => "trace --native (default budget), 6× work",
            Mode::Exact => "trace --exact",
            Mode::ExactNoStacks => "--exact --no-stacks",
            Mode::Census => "census loop",
            Mode::Memray => "memray",
            Mode::MemrayAggregate => "memray --aggregate",
            Mode::MemrayPyAlloc => "memray --trace-python-allocators",
            Mode::Tracemalloc => "tracemalloc",
        }
    }

    fn leakscope_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::Trace => Some(&[]),
            Mode::TraceNative => Some(&["--native"]),
            Mode::Exact => Some(&["--exact"]),
            Mode::ExactNoStacks => Some(&["--exact", "--no-stacks"]),
            _ => None,
        }
    }

    /// The untraced run of the same size, which this mode's time is divided by.
    fn base(self) -> Mode {
        if matches!(self, Mode::Trace | Mode::TraceNative) {
            Mode::UntracedLong
        } else {
            Mode::Untraced
        }
    }

    /// The peers: run side by side with an untraced run too (once a round), so their ratios
    /// are taken like the default mode's.
    fn is_peer(self) -> bool {
        self.memray_flags().is_some() || self == Mode::Tracemalloc
    }

    fn memray_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::Memray => Some(&[]),
            Mode::MemrayAggregate => Some(&["--aggregate"]),
            Mode::MemrayPyAlloc => Some(&["--trace-python-allocators"]),
            _ => None,
        }
    }
}

struct Opts {
    quick: bool,
    rounds: usize,
    leakscope: PathBuf,
    workloads: Vec<&'static Workload>,
    modes: Vec<Mode>,
    interps: Vec<&'static str>,
    name: bool,
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--rounds N] [--leakscope PATH] \
[--workloads json,orm,regex,async,micro] [--modes untraced,trace,trace-native,exact,exact-no-stacks,census,\
memray,memray-aggregate,memray-pyalloc,tracemalloc] [--interpreters pyenv,debian] [--no-name]";

impl Opts {
    fn parse(root: &Path, args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            rounds: 3,
            leakscope: root.join("target/release/leakscope"),
            workloads: WORKLOADS.iter().collect(),
            modes: MODES.to_vec(),
            interps: vec!["pyenv", "debian"],
            name: true,
        };
        let mut rounds = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .with_context(|| format!("{a} needs a value; {USAGE}"))
            };
            match a.as_str() {
                "--quick" => o.quick = true,
                "--no-name" => o.name = false,
                "--rounds" => rounds = Some(value()?.parse().context("--rounds")?),
                "--leakscope" => o.leakscope = PathBuf::from(value()?),
                "--workloads" => {
                    o.workloads = list(value()?, &WORKLOADS, |w| w.key)?;
                }
                "--modes" => {
                    o.modes = list(value()?, &MODES, |m| m.key())?
                        .into_iter()
                        .copied()
                        .collect();
                    if (o.modes.contains(&Mode::Trace) || o.modes.contains(&Mode::TraceNative))
                        && !o.modes.contains(&Mode::UntracedLong)
                    {
                        o.modes.insert(0, Mode::UntracedLong);
                    }
                    if !o.modes.contains(&Mode::Untraced) {
                        o.modes.insert(0, Mode::Untraced);
                    }
                }
                "--interpreters" => {
                    o.interps = list(value()?, &["pyenv", "debian"], |k| k)?
                        .into_iter()
                        .copied()
                        .collect();
                }
                _ => bail!("unknown option {a:?}; {USAGE}"),
            }
        }
        o.rounds = rounds.unwrap_or(if o.quick { 1 } else { 3 });
        if o.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        Ok(o)
    }
}

/// The items of `all` named in a comma-separated list, in `all`'s order.
fn list<'a, T>(value: &str, all: &'a [T], key: impl Fn(&T) -> &str) -> Result<Vec<&'a T>> {
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    for n in &names {
        if !all.iter().any(|x| key(x) == *n) {
            let known: Vec<&str> = all.iter().map(&key).collect();
            bail!("unknown name {n:?} (known: {})", known.join(", "));
        }
    }
    Ok(all.iter().filter(|x| names.contains(&key(x))).collect())
}

/// One interpreter with its venv: the python every mode runs, and memray if it could be
/// installed (else why not).
struct Env {
    label: String,
    python: PathBuf,
    memray: std::result::Result<PathBuf, String>,
}

/// The venv of `base` at `venv`, created and given memray if it is not there yet.
fn ensure_env(label: &str, base: &Path, venv: &Path) -> Result<Env> {
    if !base.exists() {
        bail!("{label}: {} not found", base.display());
    }
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("bench: creating {} ({})", venv.display(), base.display());
        let out = Command::new(base)
            .args(["-m", "venv"])
            .arg(venv)
            .output()
            .with_context(|| format!("running {} -m venv", base.display()))?;
        if !out.status.success() {
            let why = last_line(&out.stderr);
            let _ = std::fs::remove_dir_all(venv);
            // Without a venv every mode but memray still runs, on the interpreter itself.
            return Ok(Env {
                label: label.into(),
                python: base.into(),
                memray: Err(format!(
                    "no venv of {} ({why}; scripts/setup installs python3.11-venv)",
                    base.display()
                )),
            });
        }
    }
    let memray = venv.join("bin/memray");
    let has = |m: &Path| {
        m.exists()
            && Command::new(&python)
                .args([
                    "-c",
                    &format!("import memray; assert memray.__version__ == {MEMRAY_VERSION:?}"),
                ])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    };
    let memray = if has(&memray) {
        Ok(memray)
    } else {
        let spec = format!("memray=={MEMRAY_VERSION}");
        eprintln!("bench: pip install {spec} into {}", venv.display());
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &spec,
            ])
            .output()
            .context("running pip")?;
        if out.status.success() && has(&memray) {
            Ok(memray)
        } else {
            Err(format!(
                "pip install {spec} failed: {}",
                last_line(&out.stderr)
            ))
        }
    };
    let memray = memray.and_then(|m| {
        if which("gdb") {
            Ok(m)
        } else {
            Err("memray attach needs gdb (scripts/setup installs it)".into())
        }
    });
    Ok(Env {
        label: label.into(),
        python,
        memray,
    })
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// The leakscope under test and what it supports.
struct Leakscope {
    bin: PathBuf,
    has_exact: bool,
    has_native: bool,
    /// `census --interval` for back-to-back snapshots: "0" where the CLI takes it, else a
    /// millisecond (found out at the first census run).
    census_interval: Cell<&'static str>,
}

impl Leakscope {
    fn probe(bin: &Path) -> Result<Leakscope> {
        let out = Command::new(bin)
            .args(["trace", "--help"])
            .output()
            .with_context(|| {
                format!(
                    "running {} (build it: cargo build --release)",
                    bin.display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "{} trace --help failed: {}",
                bin.display(),
                last_line(&out.stderr)
            );
        }
        Ok(Leakscope {
            bin: bin.into(),
            has_exact: String::from_utf8_lossy(&out.stdout).contains("--exact"),
            has_native: String::from_utf8_lossy(&out.stdout).contains("--native"),
            census_interval: Cell::new("0"),
        })
    }
}

/// The pids of the running children, for `on_signal`: Ctrl-C or SIGTERM kills them too
/// (a child stopped by gdb, or a tracer in its own loop, would not die of the terminal's
/// SIGINT alone). Slots are 0 when free.
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe only: atomics, kill(2), _exit(2).
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    unsafe { libc::_exit(128 + sig) };
}

fn kill_children_on_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn register(pid: u32) {
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

fn unregister(pid: u32) {
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid as i32, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A child process, killed and reaped when dropped (every exit path, errors and panics
/// included), with its stdout and stderr read by threads: lines come through a channel (so
/// every wait has a timeout) and the last few are kept for error messages.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Receiver<String>>,
    stderr: Option<Receiver<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `cmd` with stdin, stdout and stderr piped (stdout and stderr unless already set).
    fn spawn(name: impl Into<String>, cmd: &mut Command, stdout: bool) -> Result<Proc> {
        let name = name.into();
        cmd.stdin(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{name}: cannot start {:?}", cmd.get_program()))?;
        register(child.id());
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().map(|s| reader(s, tail.clone()));
        let stderr = child.stderr.take().map(|s| reader(s, tail.clone()));
        Ok(Proc {
            name,
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            tail,
        })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| self.fail(&format!("cannot write to it ({e})")))
    }

    /// The next stdout line, within `timeout`.
    fn line(&mut self, timeout: Duration, waiting_for: &str) -> Result<String> {
        let rx = self.stdout.as_ref().context("stdout not piped")?;
        match rx.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.fail(&format!("no {waiting_for} within {} s", timeout.as_secs())))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.fail(&format!("closed its output before {waiting_for}")))
            }
        }
    }

    /// Waits, within `timeout`, for a stderr line containing `needle`.
    fn stderr_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let rx = self.stderr.as_ref().context("stderr not piped")?;
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.fail(&format!("no {needle:?} within {} s", timeout.as_secs())));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(&format!("exited before saying {needle:?}")));
                }
            }
        }
    }

    /// Waits for the process to exit, within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.fail(&format!("did not finish within {} s", timeout.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A workload's last line: its work time in seconds.
    fn work_time(&mut self) -> Result<f64> {
        let l = self.line(WORK_TIMEOUT, "work time")?;
        l.trim()
            .parse()
            .map_err(|_| self.fail(&format!("printed {l:?} instead of its work time")))
    }

    /// Fails if the process has exited (a tracer must outlive the work it is measured on).
    fn still_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(_) => Err(self.fail("exited during the work")),
        }
    }

    /// A one-line error: who, what, the exit status if it exited, its last output line.
    fn fail(&mut self, what: &str) -> anyhow::Error {
        // Give the reader threads a moment to collect what a dying process printed last.
        std::thread::sleep(Duration::from_millis(50));
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" ({s})"),
            _ => String::new(),
        };
        let tail = self.tail.lock().unwrap();
        let last = tail
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty() && l.trim() != "ready")
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        anyhow::anyhow!("{}: {what}{status}{last}", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(self.child.id());
    }
}

fn reader(
    stream: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            {
                let mut t = tail.lock().unwrap();
                if t.len() == 8 {
                    t.pop_front();
                }
                t.push_back(line.chars().take(300).collect());
            }
            // The receiver may be gone (nobody reads this stream any more): keep draining,
            // so the child never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    rx
}

struct Ctx<'a> {
    root: &'a Path,
    opts: &'a Opts,
    leakscope: &'a Leakscope,
    tmp: PathBuf,
}

impl Ctx<'_> {
    fn script(&self, w: &Workload) -> PathBuf {
        self.root.join("tests/python/bench").join(w.script)
    }

    /// The workload's size for `mode`: the default mode runs `LONG` times the work (its
    /// windows and gaps last seconds, and its first window and detach cost the same on a
    /// short run as on a long one), against an untraced run of the same size.
    fn n(&self, w: &Workload, mode: Mode) -> u32 {
        let n = if self.opts.quick { w.quick_n } else { w.n };
        if matches!(mode, Mode::Trace | Mode::TraceNative | Mode::UntracedLong) {
            n * LONG
        } else {
            n
        }
    }

    /// Starts a workload and waits for its `ready`.
    fn start(&self, env: &Env, w: &Workload, mode: Mode, extra: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new(&env.python);
        if mode == Mode::Tracemalloc {
            cmd.args(["-X", "tracemalloc=1"]);
        }
        cmd.arg(self.script(w))
            .arg(self.n(w, mode).to_string())
            .args(extra);
        let mut p = Proc::spawn(
            format!("workload {} ({})", w.key, mode.key()),
            &mut cmd,
            true,
        )?;
        let l = p.line(Duration::from_secs(60), "\"ready\"")?;
        if l.trim() != "ready" {
            return Err(p.fail(&format!("printed {l:?} instead of \"ready\"")));
        }
        Ok(p)
    }

    /// `leakscope trace` attached to `pid`, once it says so.
    fn trace(&self, pid: &str, flags: &[&str], json_interval: Option<&str>) -> Result<Proc> {
        let mut cmd = Command::new(&self.leakscope.bin);
        cmd.args(["trace", "--pid", pid, "--json", "--interval"])
            .arg(json_interval.unwrap_or("3600"))
            .args(flags);
        let name = format!("leakscope trace {}", flags.join(" "));
        let mut p = Proc::spawn(name.trim_end(), &mut cmd, json_interval.is_some())?;
        p.stderr_line("leakscope: attached", ATTACH_TIMEOUT)?;
        Ok(p)
    }

    /// `leakscope census` back to back on `pid`, once its first snapshot is out.
    fn census(&self, pid: &str) -> Result<Proc> {
        loop {
            let interval = self.leakscope.census_interval.get();
            let mut cmd = Command::new(&self.leakscope.bin);
            cmd.args(["census", "--pid", pid, "--json", "--interval", interval]);
            let mut p = Proc::spawn(
                format!("leakscope census --interval {interval}"),
                &mut cmd,
                true,
            )?;
            match p.line(ATTACH_TIMEOUT, "first snapshot") {
                Ok(_) => return Ok(p),
                // A CLI that refuses `--interval 0` (a usage error exits 2): a millisecond is
                // back to back too.
                Err(_)
                    if interval == "0"
                        && p.wait(Duration::from_secs(5)).ok().and_then(|s| s.code())
                            == Some(2) =>
                {
                    self.leakscope.census_interval.set("0.001");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `memray attach -o FILE` on `pid`; it returns once the tracker is active.
    fn memray(&self, memray: &Path, pid: &str, flags: &[&str]) -> Result<PathBuf> {
        let out = self.tmp.join(format!("memray-{pid}.bin"));
        let mut cmd = Command::new(memray);
        cmd.args(["attach", "--method", "gdb", "-f", "-o"])
            .arg(&out)
            .args(flags)
            .arg(pid);
        let mut p = Proc::spawn(
            format!("memray attach {}", flags.join(" ")).trim_end(),
            &mut cmd,
            true,
        )?;
        let status = p.wait(ATTACH_TIMEOUT)?;
        if !status.success() {
            return Err(p.fail("failed"));
        }
        Ok(out)
    }

    /// One run of one workload under one mode: its work time in seconds.
    fn measure(&self, env: &Env, w: &Workload, mode: Mode) -> Result<f64> {
        let mut target = self.start(env, w, mode, &[])?;
        let pid = target.pid();
        let mut capture = None;
        let mut tracer = None;
        if let Some(flags) = mode.leakscope_flags() {
            tracer = Some(self.trace(&pid, flags, None)?);
        } else if mode == Mode::Census {
            tracer = Some(self.census(&pid)?);
        } else if let Some(flags) = mode.memray_flags() {
            let memray = env.memray.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            capture = Some(self.memray(memray, &pid, flags)?);
        }
        let result = (|| {
            target.send("go")?;
            let secs = target.work_time()?;
            if let Some(t) = tracer.as_mut() {
                t.still_running()?;
            }
            Ok(secs)
        })();
        drop(target);
        drop(tracer);
        if let Some(c) = capture {
            let _ = std::fs::remove_file(c);
        }
        result
    }

    /// `mode` (a leakscope mode or a peer) and an untraced run of the same size started
    /// together: (traced, untraced) work times. Both wait at `ready` until the tracer is
    /// attached (memray: injected).
    fn measure_side_by_side(
        &self,
        env: &Env,
        w: &Workload,
        mode: Mode,
        traced_first: bool,
    ) -> Result<(f64, f64)> {
        let mut base = self.start(env, w, mode.base(), &[])?;
        let mut target = self.start(env, w, mode, &[])?;
        let pid = target.pid();
        let mut tracer = None;
        let mut capture = None;
        if let Some(flags) = mode.leakscope_flags() {
            tracer = Some(self.trace(&pid, flags, None)?);
        } else if let Some(flags) = mode.memray_flags() {
            let memray = env.memray.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            capture = Some(self.memray(memray, &pid, flags)?);
        }
        let result = (|| {
            if traced_first {
                target.send("go")?;
                base.send("go")?;
            } else {
                base.send("go")?;
                target.send("go")?;
            }
            // The untraced run's line waits in its reader meanwhile.
            let traced = target.work_time()?;
            if let Some(t) = tracer.as_mut() {
                t.still_running()?;
            }
            let untraced = base.work_time()?;
            Ok((traced, untraced))
        })();
        drop(target);
        drop(tracer);
        if let Some(c) = capture {
            let _ = std::fs::remove_file(c);
        }
        result
    }

    /// Seconds after attach until a default-mode report names the paced leak as a growing
    /// site at its line, or why not.
    fn time_to_name(&self, env: &Env, w: &Workload) -> Result<String> {
        let harness = self.root.join("tests/python/bench/_harness.py");
        let text = std::fs::read_to_string(&harness)?;
        let line = text
            .lines()
            .position(|l| l.contains("# paced-leak line"))
            .context("_harness.py has no `# paced-leak line`")? as i64
            + 1;
        let secs = NAME_WITHIN.as_secs() + 30;
        let mut target = self.start(env, w, Mode::Trace, &["--paced-leak", &secs.to_string()])?;
        let mut tracer = self.trace(&target.pid(), &[], Some("1"))?;
        let attached = Instant::now();
        target.send("go")?;
        let deadline = attached + NAME_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(format!("not named in {} s", NAME_WITHIN.as_secs()));
            }
            let l = match tracer.line(left, "report") {
                Ok(l) => l,
                Err(_) if Instant::now() >= deadline => continue,
                Err(e) => return Err(e),
            };
            let Ok(report) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            let named = report["sites"].as_array().is_some_and(|sites| {
                sites.iter().any(|s| {
                    s["growing"] == true
                        && s["type"].as_str().is_some_and(|t| t.ends_with("PacedLeak"))
                        && s["frames"][0]["line"].as_i64() == Some(line)
                        && s["frames"][0]["file"]
                            .as_str()
                            .is_some_and(|f| f.ends_with("_harness.py"))
                })
            });
            if named {
                let at = report["elapsed_s"].as_f64().unwrap_or(0.0);
                return Ok(format!(
                    "named after {at:.1} s (PacedLeak at _harness.py:{line}, 100/s)"
                ));
            }
        }
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let opts = Opts::parse(root, args)?;
    kill_children_on_signals();
    let leakscope = Leakscope::probe(&opts.leakscope)?;
    let tmp = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp)?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| format!("{home}/.pyenv"));
    let mut envs = vec![];
    for key in &opts.interps {
        envs.push(match *key {
            "pyenv" => ensure_env(
                "pyenv 3.11.7 (shared libpython)",
                &PathBuf::from(format!("{pyenv}/versions/3.11.7/bin/python3.11")),
                &root.join("target/bench-venv"),
            )?,
            _ => ensure_env(
                "Debian /usr/bin/python3.11 (static, LTO)",
                Path::new("/usr/bin/python3.11"),
                &root.join("target/bench-venv-debian"),
            )?,
        });
    }
    let ctx = Ctx {
        root,
        opts: &opts,
        leakscope: &leakscope,
        tmp,
    };
    println!(
        "leakscope bench: {} round(s){}, interleaved; cell = median traced work time ÷ median untraced; load average at start: {}",
        opts.rounds,
        if opts.quick {
            " (--quick: small sizes)"
        } else {
            ""
        },
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    let commit = Command::new("git")
        .args(["-C"])
        .arg(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "leakscope: {} (tree {commit}); memray: {}; {} cores",
        leakscope.bin.display(),
        MEMRAY_VERSION,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !leakscope.has_exact {
        println!("note: this leakscope has no --exact: `trace` is its default (exact) mode");
    }
    for env in &envs {
        let table = measure_all(&ctx, env)?;
        print_table(&ctx, env, &table);
        if opts.name {
            // Every workload, not only the one it slowed down most: which that is is noise
            // when all of them sit near 1.0×, and the leak must be found in each.
            println!("time to name a paced leak (`leakscope trace --interval 1`):");
            for row in &table {
                let verdict = ctx
                    .time_to_name(env, row.workload)
                    .unwrap_or_else(|e| format!("failed: {e:#}"));
                println!("  {:<18} {verdict}", row.workload.label);
            }
        }
        println!();
    }
    print_legend(&ctx);
    Ok(())
}

struct Row {
    workload: &'static Workload,
    /// Per mode (in `opts.modes` order): the work times, or why the mode could not run.
    times: Vec<std::result::Result<Vec<f64>, String>>,
    modes: Vec<Mode>,
    /// Per mode: its runs paired with an untraced run of the same size at the same time
    /// (`measure_pair`), traced ÷ untraced per pair. This VM's speed moves by ±25% within
    /// minutes, in steps, so the goal's cell compares runs that saw the same machine.
    pairs: Vec<Vec<f64>>,
}

impl Row {
    fn median(&self, mode: Mode) -> Option<f64> {
        let i = self.modes.iter().position(|m| *m == mode)?;
        median(self.times[i].as_ref().ok()?)
    }

    fn ratio(&self, mode: Mode) -> Option<f64> {
        let i = self.modes.iter().position(|m| *m == mode)?;
        if !self.pairs[i].is_empty() {
            return median(&self.pairs[i]);
        }
        Some(self.median(mode)? / self.median(mode.base())?)
    }
}

/// The middle value (the mean of the middle two of an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Default-mode pairs per round: the goal's cell gets more samples than the others
/// (`trace --native` gets one a round).
const PAIRS_PER_ROUND: usize = 4;

/// Every workload under every mode, `rounds` times, round-robin; a mode that fails is
/// reported once (one line) and not run again.
fn measure_all(ctx: &Ctx, env: &Env) -> Result<Vec<Row>> {
    let modes = ctx.opts.modes.clone();
    let mut rows: Vec<Row> = ctx
        .opts
        .workloads
        .iter()
        .map(|w| Row {
            workload: w,
            times: modes
                .iter()
                .map(|m| match unavailable(ctx, env, *m) {
                    Some(why) => Err(why),
                    None => Ok(vec![]),
                })
                .collect(),
            modes: modes.clone(),
            pairs: vec![vec![]; modes.len()],
        })
        .collect();
    let long = modes.iter().position(|m| *m == Mode::UntracedLong);
    let short = modes.iter().position(|m| *m == Mode::Untraced);
    for round in 0..ctx.opts.rounds {
        eprintln!(
            "bench: {}: round {}/{}",
            env.label,
            round + 1,
            ctx.opts.rounds
        );
        for row in rows.iter_mut() {
            // Start each round at another mode, so no mode always runs first (or after the
            // same neighbour).
            for k in 0..modes.len() {
                let i = (k + round) % modes.len();
                if row.times[i].is_err() {
                    continue;
                }
                match (modes[i], long) {
                    // Run with the default mode's, as a pair.
                    (Mode::UntracedLong, _) if modes.contains(&Mode::Trace) => continue,
                    (Mode::Trace | Mode::TraceNative, Some(l)) if row.times[l].is_ok() => {
                        let n = if modes[i] == Mode::Trace {
                            PAIRS_PER_ROUND
                        } else {
                            1
                        };
                        for p in 0..n {
                            measure_pair(ctx, env, row, i, Some(l), round * n + p);
                        }
                        continue;
                    }
                    // A peer beside an untraced run; the untraced column keeps its own runs.
                    (m, _) if m.is_peer() && short.is_some_and(|u| row.times[u].is_ok()) => {
                        measure_pair(ctx, env, row, i, None, round);
                        continue;
                    }
                    _ => {}
                }
                let Ok(times) = &mut row.times[i] else {
                    continue;
                };
                match ctx.measure(env, row.workload, modes[i]) {
                    Ok(secs) => {
                        eprintln!(
                            "bench:   {} / {}: {secs:.2} s",
                            row.workload.key,
                            modes[i].key()
                        );
                        times.push(secs)
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        eprintln!("bench: {} / {}: {e}", row.workload.key, modes[i].key());
                        if modes[i] == Mode::Untraced {
                            bail!("{}: untraced run failed: {e}", row.workload.key);
                        }
                        row.times[i] = Err("failed".into());
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// `modes[traced]` (a leakscope mode on the long work) and an untraced run of the same
/// size (`modes[long]`) at the same time, one on each core, told to go together: both
/// times kept, and their ratio as a pair. Run one after the other, a pair read 0.84× or
/// 1.28× when the VM changed speed between its runs (docs/overhead.md); side by side both
/// see the same machine. Which one is told first alternates.
/// `long`: where the untraced time is kept, if it is (a peer's is not: the untraced column
/// holds runs made alone).
fn measure_pair(
    ctx: &Ctx,
    env: &Env,
    row: &mut Row,
    traced: usize,
    long: Option<usize>,
    pair: usize,
) {
    let mode = row.modes[traced];
    match ctx.measure_side_by_side(env, row.workload, mode, pair.is_multiple_of(2)) {
        Ok((t, base)) => {
            let key = row.workload.key;
            eprintln!("bench:   {key} / {}: {t:.2} s", mode.key());
            let b = mode.base().key();
            eprintln!("bench:   {key} / {b} beside it: {base:.2} s");
            eprintln!("bench:   {key} / {} ÷ {b}: {:.3}", mode.key(), t / base);
            if let Ok(v) = &mut row.times[traced] {
                v.push(t);
            }
            if let Some(Ok(v)) = long.map(|l| &mut row.times[l]) {
                v.push(base);
            }
            row.pairs[traced].push(t / base);
        }
        Err(e) => {
            eprintln!("bench: {} / {}: {e:#}", row.workload.key, mode.key());
            row.times[traced] = Err("failed".into());
        }
    }
}

/// Why `mode` cannot run here, if it cannot.
fn unavailable(ctx: &Ctx, env: &Env, mode: Mode) -> Option<String> {
    if matches!(mode, Mode::Exact | Mode::ExactNoStacks) && !ctx.leakscope.has_exact {
        return Some("n/a (this leakscope has no --exact)".into());
    }
    if mode == Mode::TraceNative && !ctx.leakscope.has_native {
        return Some("n/a (this leakscope has no --native)".into());
    }
    if let (Some(_), Err(e)) = (mode.memray_flags(), &env.memray) {
        return Some(format!("n/a ({e})"));
    }
    None
}

fn print_table(ctx: &Ctx, env: &Env, rows: &[Row]) {
    let modes = &ctx.opts.modes;
    println!();
    println!("{} — {}", env.label, env.python.display());
    println!();
    let mut header = vec!["workload".to_string(), "untraced".into()];
    header.extend(
        modes
            .iter()
            .filter(|m| !matches!(m, Mode::Untraced | Mode::UntracedLong))
            .map(|m| m.header().to_string()),
    );
    println!("| {} |", header.join(" | "));
    println!(
        "|---|{}",
        header[1..].iter().map(|_| "---:|").collect::<String>()
    );
    for row in rows {
        let mut cells = vec![row.workload.label.to_string()];
        cells.push(match row.median(Mode::Untraced) {
            Some(s) => format!("{s:.2} s"),
            None => "failed".into(),
        });
        for (i, m) in modes.iter().enumerate() {
            if matches!(m, Mode::Untraced | Mode::UntracedLong) {
                continue;
            }
            cells.push(match (&row.times[i], row.ratio(*m)) {
                (Err(why), _) => why.clone(),
                (Ok(_), Some(r)) if row.pairs[i].len() > 1 => {
                    let lo = row.pairs[i].iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = row.pairs[i].iter().copied().fold(0.0, f64::max);
                    format!("{r:.2}× ({lo:.2}–{hi:.2})")
                }
                (Ok(_), Some(r)) => format!("{r:.2}×"),
                (Ok(_), None) => "–".into(),
            });
        }
        println!("| {} |", cells.join(" | "));
    }
}

fn print_legend(ctx: &Ctx) {
    println!(
        "Workloads (tests/python/bench/): each times its own work with time.perf_counter after a\n\
         ready/go handshake, so attaching is not timed; {}.\n\
         trace: `leakscope trace --pid P` (its default mode, --overhead 10) on 6× the work, four times\n\
         a round, each run side by side with an untraced run of that size (both told to go at once, one on\n\
         each core; leakscope's own threads share the cores with them): the median of the pairs' ratios,\n\
         (lowest–highest) (a sampled trace pays its first window and each detach the same on a short run as\n\
         on a long one; side by side, both runs see the same machine, whose speed moves in steps).\n\
         trace --native: the same default mode with the C library's allocator probed too (every malloc\n\
         and free of the process traps), paired the same way once a round; --exact, --exact --no-stacks: with\n\
         those flags (every birth and death; without stacks: types only). census loop:\n\
         `leakscope census --pid P --interval {}` snapshots back to back on the other core.\n\
         memray: `memray attach -o FILE` (without -o, attach opens its live TUI): every malloc-level\n\
         allocation to a capture file, pymalloc's small objects only as the arenas they come from;\n\
         --aggregate: aggregated in memory, written at the end; --trace-python-allocators: every\n\
         pymalloc allocation too (the objects leakscope sees).\n\
         tracemalloc: `python -X tracemalloc=1` from the start (1 frame per allocation).\n\
         The peers (memray, tracemalloc) run side by side with an untraced run of their size too,\n\
         once a round: their cells are the median of those pairs' ratios, like the default mode's.\n\
         Time to name: each workload with `--paced-leak` (100 PacedLeak objects a second\n\
         appended to a list from one line), traced with\n\
         `leakscope trace --json --interval 1`: the report's elapsed_s when a growing site of\n\
         PacedLeak at that line first appears.",
        if ctx.opts.quick {
            "sizes are --quick's"
        } else {
            "sized for about 1–2 s untraced on pyenv 3.11.7"
        },
        ctx.leakscope.census_interval.get()
    );
}
