//! Outputs read by other tools, with those tools: `--pprof` opened by `go tool pprof`
//! (`-top`, `-traces`), `--prometheus` scraped by a real Prometheus server and queried, the
//! differential `--flamegraph --diff`, and output files written safely (a symlink at the
//! name is replaced, not followed; an unwritable path is refused before tracing). On both
//! 3.11 builds.
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RATE: f64 = 500.0;

fn go_pprof(args: &[&str]) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go tool pprof (Debian's golang-go, installed by scripts/setup)");
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of `pprof -top`: (flat, name), in order.
fn top_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| (f[0].to_string(), f[5..].join(" ")))
        })
        .collect()
}

/// The growing `__main__.Leak` site of nested.py's report.
fn leak_site(report: &Value) -> Value {
    let growing = growing_sites(report);
    assert_eq!(growing.len(), 1, "{growing:#?}");
    assert_eq!(growing[0]["type"], "__main__.Leak");
    growing[0].clone()
}

/// nested.py's leak, traced with `--pprof`: `go tool pprof -top` lists the leaking type
/// first with the report's live objects and bytes, `-traces` its whole stack with its
/// labels.
fn pprof_opens_in_go_tool_pprof(python: &Path) {
    let dir = tempdir("pprof");
    let file = dir.join("leak.pb.gz");
    let f = file.to_str().unwrap();
    let target = crate::support::python(python, "nested.py", &[&RATE.to_string()]);
    let run = trace(target.pid, 8, &["--pprof", f]);
    let site = leak_site(&run.last());
    let (live, bytes) = (
        site["live"].as_u64().unwrap(),
        site["live_bytes"].as_u64().unwrap(),
    );
    let top = go_pprof(&["-top", "-sample_index=inuse_objects", f]);
    let rows = top_rows(&top);
    assert_eq!(
        rows[0],
        (live.to_string(), "__main__.Leak".to_string()),
        "{top}"
    );
    let top = go_pprof(&["-top", "-sample_index=inuse_space", "-unit=B", f]);
    assert_eq!(
        top_rows(&top)[0],
        (format!("{bytes}B"), "__main__.Leak".to_string()),
        "{top}"
    );
    assert!(top.contains("Type: inuse_space"), "{top}");
    let traces = go_pprof(&["-traces", "-sample_index=inuse_objects", f]);
    let leak = traces
        .split("-----------+")
        .find(|t| t.contains("__main__.Leak") && t.contains("level3"))
        .unwrap_or_else(|| panic!("no trace of the leak in {traces}"));
    for frame in ["level3", "level2", "level1", "main", "<module>"] {
        assert!(leak.contains(frame), "{frame} not in {leak}");
    }
    let label = |key: &str| {
        leak.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no {key} label in {leak}"))
            .to_string()
    };
    assert_eq!(label("growing:"), "yes", "{leak}");
    assert_eq!(label("type:"), "__main__.Leak", "{leak}");
    assert!(
        label("finding:").starts_with("__main__.Leak at level3"),
        "{leak}"
    );
    assert!(leak.contains(&live.to_string()), "{leak}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_pprof_opens_in_go_tool_pprof() {
    require_root();
    pprof_opens_in_go_tool_pprof(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_pprof_opens_in_go_tool_pprof() {
    require_root();
    pprof_opens_in_go_tool_pprof(&debian_python());
}

/// `--flamegraph --diff`: the leak's frames are drawn as grown (a positive delta in their
/// titles, red), the churning site is not.
fn differential_flamegraph(python: &Path) {
    let dir = tempdir("diff");
    let svg = dir.join("growth.svg");
    let target = crate::support::python(python, "nested.py", &[&RATE.to_string()]);
    let run = trace(
        target.pid,
        8,
        &["--flamegraph", svg.to_str().unwrap(), "--diff"],
    );
    leak_site(&run.last());
    let text = std::fs::read_to_string(&svg).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("the SVG is XML");
    let titles: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(str::to_string))
        .collect();
    // A frame's delta is its own bytes' (inferno): the type, the leaf, carries the growth.
    assert!(
        titles.iter().any(|t| t.starts_with("level3 (")),
        "{titles:#?}"
    );
    let leak = titles
        .iter()
        .find(|t| t.starts_with("__main__.Leak (") && t.contains("; +"))
        .unwrap_or_else(|| panic!("no grown __main__.Leak frame in {titles:#?}"));
    assert!(!leak.contains("; +0.00%"), "{leak}");
    assert!(text.contains("growth of live bytes"), "title");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_differential_flamegraph_shows_what_grew() {
    require_root();
    differential_flamegraph(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_differential_flamegraph_shows_what_grew() {
    require_root();
    differential_flamegraph(&debian_python());
}

/// A Prometheus server (Debian's package), started here on 127.0.0.1 with a 1 s scrape of
/// `--prometheus`, answers a query for the leaking site with the report's rate.
fn prometheus_scrapes_the_findings(python: &Path) {
    let dir = tempdir("prometheus");
    let port = free_port();
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: leakscope\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let server = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's package, installed by scripts/setup)");
    let _server = Killed(server);
    let target = crate::support::python(python, "nested.py", &[&RATE.to_string()]);
    let addr = format!("127.0.0.1:{port}");
    let run = trace(target.pid, 12, &["--prometheus", &addr]);
    assert!(
        run.stderr.contains(&format!("http://{addr}/metrics")),
        "{}",
        run.stderr
    );
    let site = leak_site(&run.last());
    // What Prometheus scraped while the trace ran: the last sample within 5 minutes (the
    // series went stale when the trace ended and its endpoint with it).
    let query = r#"last_over_time(leakscope_growth_objects_per_second{type="__main__.Leak",growing="true"}[5m])"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = Command::new("curl")
            .args(["-sG", &format!("http://127.0.0.1:{prom_port}/api/v1/query")])
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no {query}: {v}\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let result = &answer["data"]["result"][0];
    assert_eq!(
        result["metric"]["site"],
        format!(
            "level3 (nested.py:{})",
            marker_line("nested.py", "LEAK-SITE")
        )
    );
    assert_eq!(result["metric"]["pid"], target.pid.to_string());
    let scraped: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert_rate(scraped, RATE, 15.0, "scraped growth");
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        RATE,
        15.0,
        "reported growth",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_prometheus_scrapes_the_findings() {
    require_root();
    prometheus_scrapes_the_findings(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_prometheus_scrapes_the_findings() {
    require_root();
    prometheus_scrapes_the_findings(&debian_python());
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Output files: an unwritable path is refused before anything is attached (fast, exit 2,
/// the flag named); a symlink planted at the name is replaced by the file, its target left
/// alone.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn output_files_are_checked_first_and_never_written_through_a_symlink() {
    require_root();
    let target = crate::support::python(&pyenv("3.11.7"), "nested.py", &[&RATE.to_string()]);
    let p = target.pid.to_string();
    let started = Instant::now();
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &p,
            "--duration",
            "30",
            "--folded",
            "/proc/leak.folded",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("--folded /proc/leak.folded"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("attached"),
        "refused before attaching: {}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let dir = tempdir("symlink");
    let victim: PathBuf = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let out = dir.join("leak.folded");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    trace(target.pid, 4, &["--folded", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let folded = std::fs::read_to_string(&out).unwrap();
    assert!(folded.contains("level3 ("), "{folded}");
    assert!(
        !std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let _ = std::fs::remove_dir_all(dir);
}
