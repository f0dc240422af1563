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
        Interp { label: "pyenv 3.11.7 (shared, sees all objects)", python: format!("{pyenv}/versions/3.11.7/bin/python3.11") },
        Interp { label: "Debian 3.11 (static LTO, classes+ext)", python: "/usr/bin/python3.11".into() },
    ];
    let workload = root.join("tests/python/bench_workload.py");
    let leakscope = root.join("target/release/leakscope");
    println!(
        "workload: {iterations} iterations, each a dict, str, tuple, float and two class instances; \
         medians of {rounds} interleaved rounds"
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>11} {:>8} {:>10} | {:>12} {:>8}",
        "interpreter", "untraced", "traced", "slowdown", "probe hits", "µs/hit", "bpf ns/run",
        "at entries", "µs/hit"
    );
    for interp in &interps {
        if !Path::new(&interp.python).exists() {
            bail!("{} not found", interp.python);
        }
        let (mut plain, mut traced, mut entries, mut hits, mut bpf) = (vec![], vec![], vec![], 0u64, 0u64);
        for _ in 0..rounds {
            plain.push(run_workload(&interp.python, &workload, iterations, None)?.0);
            let (t, h, b) = run_workload(&interp.python, &workload, iterations, Some((&leakscope, false)))?;
            traced.push(t);
            (hits, bpf) = (h, b);
            entries.push(run_workload(&interp.python, &workload, iterations, Some((&leakscope, true)))?.0);
        }
        let (p, t, e) = (median(&mut plain), median(&mut traced), median(&mut entries));
        let per_hit = |x: f64| if hits > 0 { (x - p) * 1e6 / hits as f64 } else { 0.0 };
        println!(
            "{:<40} {:>8.3}s {:>8.3}s {:>8.1}x {:>11} {:>8.2} {:>10} | {:>7.3}s {:>3.0}x {:>8.2}",
            interp.label,
            p,
            t,
            t / p,
            hits,
            per_hit(t),
            bpf,
            e,
            e / p,
            per_hit(e)
        );
    }
    println!(
        "µs/hit: extra wall time of the traced run per probe hit (uprobe trap + BPF program).\n\
         at entries: the same probes moved back to each function's first instruction, which the\n\
         kernel must single-step when it is not a push/nop/relative branch."
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the workload once; with a tracer attached first when `leakscope` is given.
/// Returns (loop seconds, probe hits, BPF ns per program run).
fn run_workload(python: &str, workload: &Path, n: u32, leakscope: Option<(&Path, bool)>) -> Result<(f64, u64, u64)> {
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
    if let Some((bin, at_entries)) = leakscope {
        let mut t = Command::new(bin)
            .args(["trace", "--pid", &child.id().to_string(), "--json", "--stats", "--interval", "3600"])
            .args(at_entries.then_some("--entry-probes"))
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
    let secs: f64 = line.trim().parse().with_context(|| format!("workload printed {line:?}"))?;
    child.wait()?;
    let (mut hits, mut bpf) = (0, 0);
    if let Some(t) = tracer {
        let output = t.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let last: serde_json::Value = serde_json::from_str(text.lines().last().context("no final report")?)?;
        hits = last["probes"].as_array().map(|a| a.iter().map(|p| p["hits"].as_u64().unwrap_or(0)).sum()).unwrap_or(0);
        let (runs, ns) = last["programs"].as_array().map(|a| {
            a.iter().fold((0u64, 0u64), |(r, n), p| (r + p["runs"].as_u64().unwrap_or(0), n + p["run_time_ns"].as_u64().unwrap_or(0)))
        }).unwrap_or((0, 0));
        bpf = if runs > 0 { ns / runs } else { 0 };
    }
    Ok((secs, hits, bpf))
}
