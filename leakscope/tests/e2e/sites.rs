//! Allocation sites: the growing site's frames are the real ones, to the line, from the main
//! thread, a worker thread and an asyncio task, on both 3.11 builds; SVG and folded output.
use crate::support::*;
use std::path::Path;

const RATE: f64 = 1000.0;

fn s(f: &str) -> String {
    f.to_string()
}

/// nested.py: the single growing site is level3's LEAK-SITE line, called from level2,
/// level1, main and <module> at their marked lines; the churning list comprehension (same
/// type, other site) does not grow. The SVG parses as XML and names the leaking function;
/// the folded output is that one stack.
fn nested_call_chain(python: &Path) {
    let dir = tempdir("graphs");
    let (svg, folded) = (dir.join("leak.svg"), dir.join("leak.folded"));
    let target = crate::support::python(python, "nested.py", &[&RATE.to_string()]);
    let run = trace(
        target.pid,
        10,
        &[
            "--flamegraph",
            svg.to_str().unwrap(),
            "--folded",
            folded.to_str().unwrap(),
        ],
    );
    let last = run.last();
    let growing = growing_sites(&last);
    assert_eq!(growing.len(), 1, "one growing site: {growing:#?}");
    let site = &growing[0];
    assert_eq!(site["type"], "__main__.Leak");
    assert_rate(site["rate_per_s"].as_f64().unwrap(), RATE, 10.0, "site");
    let m = |k| marker_line("nested.py", k);
    let want = [
        (s("level3"), s("nested.py"), m("LEAK-SITE")),
        (s("level2"), s("nested.py"), m("CALLS-LEVEL3")),
        (s("level1"), s("nested.py"), m("CALLS-LEVEL2")),
        (s("main"), s("nested.py"), m("CALLS-LEVEL1")),
        (s("<module>"), s("nested.py"), m("CALLS-MAIN")),
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&frame(site, i), w, "frame {i} of {site:#}");
    }
    assert_eq!(site["frames"].as_array().unwrap().len(), 5, "{site:#}");
    assert_eq!(site["truncated"], false);
    // the churning site of the same type is seen (tens of thousands of births, called from
    // churn) and is not growing
    let churn = last["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "__main__.Leak" && frame(x, 0).0.contains("churn"))
        .unwrap_or_else(|| panic!("no churn site in {:#}", last["sites"]));
    assert_eq!(churn["growing"], false, "{churn:#}");
    assert!(churn["births"].as_u64().unwrap() > 10_000, "{churn:#}");
    // SVG: well-formed XML naming the leaking function and the type
    let text = std::fs::read_to_string(&svg).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("the SVG is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(text.contains("level3 ("), "SVG names level3");
    assert!(
        text.contains("__main__.Leak ("),
        "SVG has the type as the leaf"
    );
    let folded = std::fs::read_to_string(&folded).unwrap();
    assert_eq!(folded.lines().count(), 1, "{folded}");
    assert!(folded.starts_with("<module> ("), "{folded}");
    assert!(
        folded.contains(&format!(
            "level3 ({}:{});__main__.Leak (",
            crate::support::script("nested.py").display(),
            m("LEAK-SITE")
        )),
        "{folded}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_nested_call_chain_to_the_line() {
    require_root();
    nested_call_chain(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_nested_call_chain_to_the_line() {
    require_root();
    nested_call_chain(&debian_python());
}

/// Traces `script` (leaking RATE objects a second) for 10 s; there must be exactly one
/// growing site, which is returned.
fn the_growing_site(python: &Path, script: &str) -> serde_json::Value {
    let target = crate::support::python(python, script, &[&RATE.to_string()]);
    let last = trace(target.pid, 10, &[]).last();
    let mut growing = growing_sites(&last);
    assert_eq!(growing.len(), 1, "{script}: {growing:#?}");
    growing.remove(0)
}

/// thread_leak.py: the leak comes from a worker thread while the main thread churns the same
/// type: the site is the worker's function, inside threading's Thread.run.
fn worker_thread(python: &Path) {
    let site = &the_growing_site(python, "thread_leak.py");
    assert_eq!(
        frame(site, 0),
        (
            s("worker"),
            s("thread_leak.py"),
            marker_line("thread_leak.py", "LEAK-SITE")
        )
    );
    assert_eq!(
        (frame(site, 1).0, frame(site, 1).1),
        (s("Thread.run"), s("threading.py"))
    );
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        RATE,
        10.0,
        "worker site",
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_worker_thread_leak() {
    require_root();
    worker_thread(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_worker_thread_leak() {
    require_root();
    worker_thread(&debian_python());
}

/// async_leak.py: a coroutine chain on the event loop: handle at its line, awaited by serve.
fn asyncio_task(python: &Path) {
    let site = &the_growing_site(python, "async_leak.py");
    assert_eq!(
        frame(site, 0),
        (
            s("handle"),
            s("async_leak.py"),
            marker_line("async_leak.py", "LEAK-SITE")
        )
    );
    assert_eq!(
        frame(site, 1),
        (
            s("serve"),
            s("async_leak.py"),
            marker_line("async_leak.py", "AWAITS-HANDLE")
        )
    );
    let functions: Vec<String> = (0..site["frames"].as_array().unwrap().len())
        .map(|i| frame(site, i).0)
        .collect();
    assert!(
        functions.iter().any(|f| f.ends_with("run_forever")),
        "the event loop is below: {functions:?}"
    );
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_asyncio_task_leak() {
    require_root();
    asyncio_task(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn debian_311_asyncio_task_leak() {
    require_root();
    asyncio_task(&debian_python());
}

/// code_reuse.py: a new function per phase, each code object freed after its phase, so
/// addresses get reused with the same instruction offsets. Every site must name the
/// function of its own phase (`Leak7` from `make7`), never a predecessor's.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_reused_code_object_addresses_keep_sites_right() {
    require_root();
    let target = crate::support::python(&pyenv("3.11.7"), "code_reuse.py", &["1000"]);
    let last = trace(target.pid, 8, &["--top", "1000"]).last();
    let mut checked = 0;
    for site in last["sites"].as_array().unwrap() {
        let ty = site["type"].as_str().unwrap();
        let Some(k) = ty.rsplit(".").next().unwrap().strip_prefix("Leak") else {
            continue;
        };
        assert_eq!(frame(site, 0).0, format!("make{k}"), "{site:#}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} phases seen");
}

/// deep.py leaks from 100+ frames down: the site keeps the innermost 64 frames, is marked
/// truncated, and `--stats` counts the truncated walks.
#[test]
#[ignore = "privileged: needs root; `cargo xtask test` runs it"]
fn pyenv_311_deep_stacks_are_truncated_marked_and_counted() {
    require_root();
    let target = crate::support::python(&pyenv("3.11.7"), "deep.py", &["500"]);
    let last = trace(target.pid, 8, &["--stats"]).last();
    let site = growing_sites(&last)
        .into_iter()
        .next()
        .expect("a growing site");
    assert_eq!(site["truncated"], true);
    let frames = site["frames"].as_array().unwrap();
    assert_eq!(frames.len(), leakscope_common_max_frames());
    assert_eq!(
        frame(&site, 0),
        (
            "down".to_string(),
            "deep.py".to_string(),
            marker_line("deep.py", "LEAK-SITE")
        )
    );
    assert_eq!(
        frame(&site, 1),
        (
            "down".to_string(),
            "deep.py".to_string(),
            marker_line("deep.py", "RECURSES")
        )
    );
    assert!(
        last["walk"]["truncated"].as_u64().unwrap() > 0,
        "{}",
        last["walk"]
    );
}

fn leakscope_common_max_frames() -> usize {
    leakscope_common::MAX_FRAMES
}
