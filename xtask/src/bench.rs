//! `cargo xtask bench`: the tracer's cost on a fixed allocation-heavy workload
//! (`tests/python/bench_workload.py`), untraced and traced, interleaved in one run so the
//! ratios compare like with like on a noisy machine. Prints medians, the slowdown ratio,
//! the events the probes saw and what each cost the target. Needs root and a built CLI.
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Interp {
    label: &'static str,
    python: String,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let (iterations, rounds) = if quick { (50_000, 1) } else { (200_000, 3) };
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| format!("{home}/.pyenv"));
    let interps = [
        Interp {
            label: "pyenv 3.11.7 (shared, sees all objects)",
            python: format!("{pyenv}/versions/3.11.7/bin/python3.11"),
        },
        Interp {
            label: "Debian 3.11 (static LTO, classes+ext)",
            python: "/usr/bin/python3.11".into(),
        },
    ];
    let workload = root.join("tests/python/bench_workload.py");
    let leakscope = root.join("target/release/leakscope");
    println!(
        "workload: {iterations} iterations, each a dict, str, tuple, float and two class instances; \
         medians of {rounds} interleaved rounds"
    );
    println!(
        "{:<40} {:>9} | {:>15} | {:>15} | {:>15} | {:>10} {:>13}",
        "interpreter",
        "untraced",
        "types only",
        "types+stacks",
        "at entries",
        "probe hits",
        "stack walk"
    );
    for interp in &interps {
        if !Path::new(&interp.python).exists() {
            bail!("{} not found", interp.python);
        }
        let mut times: [Vec<f64>; 4] = Default::default();
        let mut last = Traced::default();
        for _ in 0..rounds {
            for (i, mode) in [
                None,
                Some(&["--no-stacks"][..]),
                Some(&[][..]),
                Some(&["--entry-probes"][..]),
            ]
            .into_iter()
            .enumerate()
            {
                let r = run_workload(
                    &interp.python,
                    &workload,
                    iterations,
                    mode.map(|m| (leakscope.as_path(), m)),
                )?;
                times[i].push(r.secs);
                if i == 2 {
                    last = r;
                }
            }
        }
        let [p, t, st, e] = times.map(|mut v| median(&mut v));
        let cell = |x: f64| format!("{x:>6.3}s {:>5.1}x", x / p);
        println!(
            "{:<40} {:>8.3}s | {} | {} | {} | {:>10} {:>6} ns/{:.1}f",
            interp.label,
            p,
            cell(t),
            cell(st),
            cell(e),
            last.hits,
            last.walk_ns,
            last.walk_frames
        );
        if last.hits > 0 {
            println!(
                "{:<40} µs per probe hit: {:.2} types only, {:.2} with stacks, {:.2} at entries; BPF {} ns/run",
                "",
                (t - p) * 1e6 / last.hits as f64,
                (st - p) * 1e6 / last.hits as f64,
                (e - p) * 1e6 / last.hits as f64,
                last.bpf_ns
            );
        }
    }
    census(root, &interps[0].python, quick)?;
    pipeline(root)?;
    println!(
        "types only: --no-stacks. types+stacks: the default. at entries: the default with every probe\n\
         moved back to its function's first instruction, which the kernel must single-step when it\n\
         is not a push/nop/relative branch. stack walk: BPF time per walk / frames per walk.\n\
         µs per probe hit: extra wall time of the traced run per hit (uprobe trap + BPF program)."
    );
    Ok(())
}

/// User space alone (`leakscope/examples/pipeline.rs`): events per second that the trace
/// pipeline sustains on one core, and leakscope's peak RSS with 1M live tracked objects.
fn pipeline(root: &Path) -> Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "leakscope",
            "--example",
            "pipeline",
        ])
        .args(["--", "10000000", "1000000"])
        .output()
        .context("running the pipeline example")?;
    if !out.status.success() {
        bail!(
            "pipeline example failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "pipeline: synthetic events (3.11 layouts in fake memory) through type lookup, stack → site\n\
         and the live set; goals: ≥ 1M events/s, ≤ 200 MB with 1M live objects."
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Traced {
    secs: f64,
    hits: u64,
    bpf_ns: u64,
    walk_ns: u64,
    walk_frames: f64,
}

/// Runs the workload once; with a tracer (and these extra flags) attached first when
/// `leakscope` is given.
fn run_workload(
    python: &str,
    workload: &Path,
    n: u32,
    leakscope: Option<(&Path, &[&str])>,
) -> Result<Traced> {
    let mut child = Command::new(python)
        .arg(workload)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload")?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    let mut tracer = None;
    if let Some((bin, flags)) = leakscope {
        let mut t = Command::new(bin)
            .args([
                "trace",
                "--pid",
                &child.id().to_string(),
                "--json",
                "--stats",
                "--interval",
                "3600",
            ])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leakscope")?;
        let mut err = BufReader::new(t.stderr.take().unwrap());
        let mut l = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !l.contains("attached") {
            l.clear();
            if err.read_line(&mut l)? == 0 || Instant::now() > deadline {
                let _ = child.kill();
                bail!("leakscope did not attach: {l}");
            }
        }
        tracer = Some(t);
    }
    child.stdin.take().unwrap().write_all(b"go\n")?;
    line.clear();
    out.read_line(&mut line)?;
    let secs: f64 = line
        .trim()
        .parse()
        .with_context(|| format!("workload printed {line:?}"))?;
    child.wait()?;
    let mut r = Traced {
        secs,
        ..Default::default()
    };
    if let Some(t) = tracer {
        let output = t.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().context("no final report")?)?;
        r.hits = last["probes"]
            .as_array()
            .map(|a| a.iter().map(|p| p["hits"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        let (runs, ns) = last["programs"]
            .as_array()
            .map(|a| {
                a.iter().fold((0u64, 0u64), |(r, n), p| {
                    (
                        r + p["runs"].as_u64().unwrap_or(0),
                        n + p["run_time_ns"].as_u64().unwrap_or(0),
                    )
                })
            })
            .unwrap_or((0, 0));
        r.bpf_ns = ns.checked_div(runs).unwrap_or(0);
        let w = &last["walk"];
        let walks = w["walks"].as_u64().unwrap_or(0);
        r.walk_ns = w["ns"]
            .as_u64()
            .unwrap_or(0)
            .checked_div(walks)
            .unwrap_or(0);
        r.walk_frames = if walks > 0 {
            w["frames"].as_u64().unwrap_or(0) as f64 / walks as f64
        } else {
            0.0
        };
    }
    Ok(r)
}

/// The census: how long a walk of 100k and 1M tracked objects takes (running, and with
/// --pause: how long the target is stopped), and how much a census running back to back
/// slows the target, beside an untouched run of the same loop.
fn census(root: &Path, python: &str, quick: bool) -> Result<()> {
    let script = root.join("tests/python/census_bench.py");
    let leakscope = root.join("target/release/leakscope");
    let sizes: &[u32] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    println!();
    println!(
        "census ({python}): a target holding N tracked objects runs a fixed loop; medians of 3"
    );
    println!(
        "{:>10} | {:>12} {:>14} | {:>10} {:>16} {:>9}",
        "objects", "census", "paused census", "untouched", "during censuses", "slowdown"
    );
    for &n in sizes {
        let (mut walk, mut paused, mut plain, mut busy) = (vec![], vec![], vec![], vec![]);
        for _ in 0..3 {
            // untouched
            let (mut child, mut out) = start(python, &script, n)?;
            child.stdin.take().unwrap().write_all(b"go\n")?;
            plain.push(read_secs(&mut out)?);
            child.wait()?;
            // one running and one paused census of the idle target, then censuses back to
            // back while the loop runs
            let (mut child, mut out) = start(python, &script, n)?;
            let pid = child.id().to_string();
            walk.push(census_ms(&leakscope, &pid, false)?.0);
            paused.push(census_ms(&leakscope, &pid, true)?.1);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let looper = {
                let (stop, leakscope, pid) = (stop.clone(), leakscope.clone(), pid.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = census_ms(&leakscope, &pid, false);
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(200));
            child.stdin.take().unwrap().write_all(b"go\n")?;
            busy.push(read_secs(&mut out)?);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = looper.join();
            child.wait()?;
        }
        let (w, pz, p, b) = (
            median(&mut walk),
            median(&mut paused),
            median(&mut plain),
            median(&mut busy),
        );
        println!(
            "{:>10} | {:>9.0} ms {:>11.0} ms | {:>9.3}s {:>15.3}s {:>8.2}x",
            n,
            w,
            pz,
            p,
            b,
            b / p
        );
    }
    println!("census: one walk of the running target; paused census: how long --pause stopped it;");
    println!("during censuses: the loop's time while censuses ran back to back on the other core.");
    Ok(())
}

fn start(
    python: &str,
    script: &Path,
    n: u32,
) -> Result<(std::process::Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(python)
        .arg(script)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    Ok((child, out))
}

fn read_secs(out: &mut BufReader<std::process::ChildStdout>) -> Result<f64> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("workload printed {line:?}"))
}

/// (walk ms, paused ms) of one census.
fn census_ms(leakscope: &Path, pid: &str, pause: bool) -> Result<(f64, f64)> {
    let out = Command::new(leakscope)
        .args(["census", "--pid", pid, "--json"])
        .args(pause.then_some("--pause"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().next().context("no census")?)?;
    Ok((
        v["walk_ms"].as_f64().unwrap_or(0.0),
        v["paused_ms"].as_f64().unwrap_or(0.0),
    ))
}
