//! `--native`: a C extension built with -O2 (-O3 for Debian's build) and no frame pointers
//! (tests/ext/nativeleak.c)
//! mallocs 4 KiB per call from a known Python line and never frees it, churns as many, and
//! its State objects leak 256 calloc'd bytes each. Reported: the C function that allocated,
//! its library, file and line (debug info), then the Python line that called in; bytes
//! exact; the churn not growing. On both 3.11 builds.
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const RATE: f64 = 200.0;
const SIZE: u64 = 4096;

fn native_sites(report: &Value) -> Vec<Value> {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"].as_str().is_some_and(|t| t.starts_with("native ")))
        .cloned()
        .collect()
}

fn has_function(site: &Value, f: &str) -> bool {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["function"] == f)
}

/// The first Python frame of a mixed site (the line that called into the extension).
fn python_caller(site: &Value) -> (String, String, i64) {
    let frames = site["frames"].as_array().unwrap();
    let i = frames
        .iter()
        .position(|f| f.get("library").is_none())
        .unwrap_or_else(|| panic!("no Python frame in {site:#}"));
    frame(site, i)
}

fn native_leak(python: &Path, opt: &str) {
    let ext = build_ext(python, "nativeleak", &[opt, "-fomit-frame-pointer", "-g"]);
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(script("native_leak.py"))
        .args([RATE.to_string(), SIZE.to_string()])
        .env("PYTHONPATH", &ext);
    let target = start(cmd);
    let folded = tempdir("native").join("native.folded");
    let run = trace(
        target.pid,
        16,
        &[
            "--native",
            "--top",
            "50",
            "--folded",
            folded.to_str().unwrap(),
        ],
    );
    let last = run.last();
    assert_no_losses(&last);
    let c_file = repo().join("tests/ext/nativeleak.c");
    let sites = native_sites(&last);

    // The leak: leak_buffer's malloc, called from nativeleak_leak, from NATIVE_LEAK.
    let leak = sites
        .iter()
        .find(|s| frame(s, 0).0 == "leak_buffer")
        .unwrap_or_else(|| panic!("no leak_buffer site in {sites:#?}\nstderr: {}", run.stderr));
    assert_eq!(leak["growing"], true, "{leak:#}");
    let (_, file, line) = frame(leak, 0);
    assert_eq!(file, "nativeleak.c", "{leak:#}");
    assert_eq!(line, marker_in(&c_file, "/* NATIVE_MALLOC */"), "{leak:#}");
    let lib = leak["frames"][0]["library"].as_str().unwrap_or("");
    assert!(lib.contains("nativeleak"), "library of {leak:#}");
    assert!(has_function(leak, "nativeleak_leak"), "{leak:#}");
    assert_eq!(
        python_caller(leak),
        (
            "serve".to_string(),
            "native_leak.py".to_string(),
            marker_line("native_leak.py", "NATIVE_LEAK")
        ),
        "{leak:#}"
    );
    let (live, bytes) = (
        leak["live"].as_u64().unwrap(),
        leak["live_bytes"].as_u64().unwrap(),
    );
    assert!(live > 1000, "{leak:#}");
    // Bytes within 10% of the truth (they are the requested sizes: exact).
    let truth = live * SIZE;
    assert!(
        bytes.abs_diff(truth) <= truth / 10,
        "{bytes} bytes for {live} blocks"
    );
    assert_rate(
        leak["rate_per_s"].as_f64().unwrap(),
        RATE,
        15.0,
        "leak site",
    );

    // The churn: seen, and not growing.
    let churn = sites
        .iter()
        .find(|s| frame(s, 0).0 == "churn_buffer")
        .unwrap_or_else(|| panic!("no churn_buffer site in {sites:#?}"));
    assert_eq!(churn["growing"], false, "{churn:#}");
    assert!(churn["births"].as_u64().unwrap() > 1000, "{churn:#}");

    // The State's calloc'd state, never freed by its dealloc.
    let state = sites
        .iter()
        .find(|s| frame(s, 0).0 == "state_alloc")
        .unwrap_or_else(|| panic!("no state_alloc site in {sites:#?}"));
    assert_eq!(state["growing"], true, "{state:#}");
    assert_eq!(
        frame(state, 0).2,
        marker_in(&c_file, "/* STATE_CALLOC */"),
        "{state:#}"
    );
    assert_eq!(
        python_caller(state).2,
        marker_line("native_leak.py", "STATE_LEAK"),
        "{state:#}"
    );
    assert_eq!(
        state["live_bytes"].as_u64().unwrap(),
        256 * state["live"].as_u64().unwrap(),
        "{state:#}"
    );
    // posix_memalign's blocks and the anonymous mappings, each at its C line.
    for (function, kind, marker, line, size) in [
        (
            "aligned_buffer",
            "native heap",
            "/* ALIGNED_ALLOC */",
            "ALIGNED_LEAK",
            SIZE,
        ),
        (
            "map_region",
            "native mmap",
            "/* MMAP_ALLOC */",
            "MAPPING_LEAK",
            16384,
        ),
    ] {
        let site = sites
            .iter()
            .find(|s| frame(s, 0).0 == function && s["growing"] == true)
            .unwrap_or_else(|| panic!("no growing {function} site in {sites:#?}"));
        assert_eq!(site["type"], kind, "{site:#}");
        assert_eq!(frame(site, 0).2, marker_in(&c_file, marker), "{site:#}");
        assert_eq!(
            python_caller(site).2,
            marker_line("native_leak.py", line),
            "{site:#}"
        );
        assert_eq!(
            site["live_bytes"].as_u64().unwrap(),
            size * site["live"].as_u64().unwrap(),
            "{site:#}"
        );
    }
    // The interpreter's allocators called by the extension: PyMem_Malloc's small blocks
    // come from pymalloc's pools, PyMem_RawMalloc's from malloc.
    for (function, kind, marker, line, size) in [
        (
            "pymem_buffer",
            "native PyMem",
            "/* PYMEM_MALLOC */",
            "PYMEM_LEAK",
            200,
        ),
        (
            "raw_buffer",
            "native heap",
            "/* RAW_MALLOC */",
            "RAW_LEAK",
            SIZE,
        ),
    ] {
        let site = sites
            .iter()
            .find(|s| frame(s, 0).0 == function)
            .unwrap_or_else(|| panic!("no {function} site in {sites:#?}"));
        assert_eq!(site["growing"], true, "{site:#}");
        assert_eq!(site["type"], kind, "{site:#}");
        assert_eq!(frame(site, 0).2, marker_in(&c_file, marker), "{site:#}");
        assert_eq!(
            python_caller(site).2,
            marker_line("native_leak.py", line),
            "{site:#}"
        );
        let live = site["live"].as_u64().unwrap();
        assert!(live > 100, "{site:#}");
        assert_eq!(
            site["live_bytes"].as_u64().unwrap(),
            size * live,
            "{site:#}"
        );
    }
    // A malloc in a function the compiler inlined: that function at its line, then the
    // one it was inlined into at the call's line, in the same library.
    let inlined = sites
        .iter()
        .find(|s| frame(s, 0).0 == "inlined_alloc")
        .unwrap_or_else(|| panic!("no inlined_alloc site in {sites:#?}"));
    assert_eq!(inlined["growing"], true, "{inlined:#}");
    assert_eq!(
        (frame(inlined, 0).2, frame(inlined, 1)),
        (
            marker_in(&c_file, "/* INLINED_MALLOC */"),
            (
                "leak_inlined".to_string(),
                "nativeleak.c".to_string(),
                marker_in(&c_file, "/* INLINED_CALL */")
            )
        ),
        "{inlined:#}"
    );
    assert_eq!(
        inlined["frames"][0]["library"], inlined["frames"][1]["library"],
        "{inlined:#}"
    );
    assert_eq!(
        python_caller(inlined).2,
        marker_line("native_leak.py", "INLINED_LEAK"),
        "{inlined:#}"
    );
    // ...and PyMem_Free'd blocks are seen dying (pymalloc's free).
    let churn = sites
        .iter()
        .find(|s| frame(s, 0).0 == "pymem_churn")
        .unwrap_or_else(|| panic!("no pymem_churn site in {sites:#?}"));
    assert_eq!(churn["growing"], false, "{churn:#}");
    assert!(churn["deaths"].as_u64().unwrap() > 100, "{churn:#}");
    // A Buffer's malloc'd data is the Buffer's: the kept Buffers grow at their line with
    // their data's bytes, and no native site grows for them.
    let buffers = last["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "nativeleak.Buffer" && s["growing"] == true)
        .unwrap_or_else(|| panic!("no growing Buffer site in {:#}", last["sites"]));
    assert_eq!(
        frame(buffers, 0).2,
        marker_line("native_leak.py", "BUFFER_LEAK"),
        "{buffers:#}"
    );
    let live = buffers["live"].as_u64().unwrap();
    let truth = live * (SIZE + 32);
    let bytes = buffers["live_bytes"].as_u64().unwrap();
    assert!(
        live > 100 && bytes.abs_diff(truth) <= truth / 10,
        "{buffers:#}"
    );
    assert!(
        last["native"]["held_blocks"].as_u64().unwrap() >= live - 2,
        "{:#}",
        last["native"]
    );
    // The unmapped mappings are seen dying (same C line, another Python line).
    let unmapped = sites
        .iter()
        .find(|s| {
            frame(s, 0).0 == "map_region"
                && python_caller(s).2 == marker_line("native_leak.py", "MAPPING_CHURN")
        })
        .unwrap_or_else(|| panic!("no churned mapping site in {sites:#?}"));
    assert_eq!(unmapped["growing"], false, "{unmapped:#}");
    assert!(unmapped["deaths"].as_u64().unwrap() > 100, "{unmapped:#}");
    // Nothing else native grows: the interpreter's own allocations are not native leaks.
    for s in sites.iter().filter(|s| s["growing"] == true) {
        let f = frame(s, 0).0;
        assert!(
            [
                "leak_buffer",
                "state_alloc",
                "aligned_buffer",
                "map_region",
                "pymem_buffer",
                "raw_buffer",
                "inlined_alloc"
            ]
            .contains(&f.as_str()),
            "growing: {s:#}"
        );
    }
    // The folded output carries the mixed stack: Python outermost, the C frames, the type.
    let text = std::fs::read_to_string(&folded).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("leak_buffer"))
        .unwrap_or_else(|| panic!("no leak_buffer stack in {text}"));
    let order: Vec<usize> = [
        "serve (",
        "nativeleak_leak (",
        "leak_buffer (",
        "native heap (",
    ]
    .iter()
    .map(|f| line.find(f).unwrap_or_else(|| panic!("{f} not in {line}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert!(line.contains("nativeleak.c:"), "{line}");
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_native_leak_has_its_c_function_and_python_line() {
    require_root();
    native_leak(&pyenv("3.11.7"), "-O2");
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn debian_311_native_leak_has_its_c_function_and_python_line() {
    require_root();
    native_leak(&debian_python(), "-O3");
}

/// refcount_leak.py: bytes objects whose reference an extension took and never released
/// are a Python-level leak of `bytes` at the line that made them, and the finding says
/// that nothing refers to them although their count is not zero.
fn refcount_leak(python: &Path, opt: &str) {
    let ext = build_ext(python, "nativeleak", &[opt, "-fomit-frame-pointer"]);
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(script("refcount_leak.py"))
        .arg(RATE.to_string())
        .env("PYTHONPATH", &ext);
    let target = start(cmd);
    let run = trace(target.pid, 12, &[]);
    let last = run.last();
    let growing = growing_sites(&last);
    assert_eq!(growing.len(), 1, "one growing site: {growing:#?}");
    let site = &growing[0];
    assert_eq!(site["type"], "bytes", "{site:#}");
    assert_eq!(
        frame(site, 0),
        (
            "serve".to_string(),
            "refcount_leak.py".to_string(),
            marker_line("refcount_leak.py", "REFLEAK_BYTES")
        ),
        "{site:#}"
    );
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        RATE,
        15.0,
        "leak site",
    );
    let findings = last["findings"].as_array().cloned().unwrap_or_default();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let kept = findings[0]["chain"]["kept_by"].as_str().unwrap_or("");
    assert!(kept.contains("reference-count leak"), "{:#}", findings[0]);
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_refcount_leak_is_bytes_at_the_line_that_made_them() {
    require_root();
    refcount_leak(&pyenv("3.11.7"), "-O2");
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn debian_311_refcount_leak_is_bytes_at_the_line_that_made_them() {
    require_root();
    refcount_leak(&debian_python(), "-O3");
}

/// bytearray_leak.py: 64 KiB bytearrays leaked at a known line are `bytearray` at that
/// line with their real size (the buffer the interpreter mallocs for them counts in the
/// owner's bytes, not as native memory), with `--native` on; leaked dicts and lists count
/// their key tables and item arrays, byte for byte as `sys.getsizeof` does.
fn bytearray_buffer(python: &Path) {
    let rate = 50.0;
    let target = crate::support::python(python, "bytearray_leak.py", &[&rate.to_string()]);
    let run = trace(target.pid, 12, &["--native"]);
    let last = run.last();
    let growing = growing_sites(&last);
    let site = growing
        .iter()
        .find(|s| s["type"] == "bytearray")
        .unwrap_or_else(|| panic!("no growing bytearray site: {growing:#?}"));
    assert_eq!(
        frame(site, 0),
        (
            "serve".to_string(),
            "bytearray_leak.py".to_string(),
            marker_line("bytearray_leak.py", "BYTEARRAY_LEAK")
        ),
        "{site:#}"
    );
    let (live, bytes) = (
        site["live"].as_u64().unwrap(),
        site["live_bytes"].as_u64().unwrap(),
    );
    let truth = live * 64 * 1024;
    assert!(
        bytes.abs_diff(truth) <= truth / 10,
        "{bytes} bytes for {live} bytearrays of 64 KiB: {site:#}"
    );
    // Dicts and lists: as sys.getsizeof counts them (it adds the GC header, as we do).
    for (ty, marker, expr) in [
        ("dict", "DICT_LEAK", "{i: i for i in range(100)}"),
        ("list", "LIST_LEAK", "[None] * 1000"),
    ] {
        let out = Command::new(python)
            .args(["-c", &format!("import sys; print(sys.getsizeof({expr}))")])
            .output()
            .unwrap();
        let each: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let line = marker_line("bytearray_leak.py", marker);
        let s = growing
            .iter()
            .find(|s| s["type"] == ty && frame(s, 0).2 == line)
            .unwrap_or_else(|| panic!("no growing {ty} site at line {line}: {growing:#?}"));
        // The target runs on while its objects are read: the newest may not be filled in
        // yet (born, its table not yet allocated). All but two are exact.
        let (bytes, live) = (
            s["live_bytes"].as_u64().unwrap(),
            s["live"].as_u64().unwrap(),
        );
        assert!(
            bytes <= each * live && bytes + 2 * each >= each * live,
            "{ty}: {each} bytes each: {s:#}"
        );
    }
    // Their buffers are the interpreter's allocations: not native sites.
    assert!(
        growing.iter().all(|s| s["type"] != "native heap"),
        "{growing:#?}"
    );
    let churn = last["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["type"] == "bytearray"
                && frame(s, 0).2 == marker_line("bytearray_leak.py", "BYTEARRAY_CHURN")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no churn site"));
    assert_eq!(churn["growing"], false, "{churn:#}");
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_bytearray_reports_its_buffer() {
    require_root();
    bytearray_buffer(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn debian_311_bytearray_reports_its_buffer() {
    require_root();
    bytearray_buffer(&debian_python());
}

/// ndarray_leak.py: 1 MiB numpy arrays kept at a known line are `numpy.ndarray` at that
/// line with their data's bytes: numpy mallocs the data (a native block, from its C code),
/// and the array that holds its address counts it. No native site grows.
fn ndarray_data(python: &Path) {
    let rate = 20.0;
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(script("ndarray_leak.py"))
        .arg(rate.to_string());
    if let Some(path) = numpy_path(python) {
        cmd.env("PYTHONPATH", path);
    }
    let target = start(cmd);
    let run = trace(target.pid, 12, &["--native"]);
    let last = run.last();
    assert_no_losses(&last);
    let growing = growing_sites(&last);
    let site = growing
        .iter()
        .find(|s| s["type"] == "numpy.ndarray")
        .unwrap_or_else(|| panic!("no growing ndarray site: {growing:#?}\n{}", run.stderr));
    // numpy.ones (Python code in numpy), called from the leaking line
    assert_eq!(frame(site, 0).0, "ones", "{site:#}");
    assert_eq!(
        frame(site, 1),
        (
            "serve".to_string(),
            "ndarray_leak.py".to_string(),
            marker_line("ndarray_leak.py", "NDARRAY_LEAK")
        ),
        "{site:#}"
    );
    let live = site["live"].as_u64().unwrap();
    let truth = live << 20;
    let bytes = site["live_bytes"].as_u64().unwrap();
    assert!(
        live > 100 && bytes.abs_diff(truth) <= truth / 10,
        "{bytes} bytes for {live} arrays: {site:#}"
    );
    for s in native_sites(&last) {
        assert_eq!(s["growing"], false, "{s:#}");
    }
    assert!(
        last["native"]["held_blocks"].as_u64().unwrap() >= live,
        "{:#}",
        last["native"]
    );
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_ndarray_reports_its_data() {
    require_root();
    ndarray_data(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn debian_311_ndarray_reports_its_data() {
    require_root();
    ndarray_data(&debian_python());
}

/// native_leak.py --busy: hundreds of thousands of Python objects a second besides the
/// native leak, so the default budget samples. The native probes' cost is in the budget
/// (the estimate stays under it), and the native leak is still named at its C function and
/// Python line from the followed blocks, the churned blocks not growing.
fn native_leak_sampled(python: &Path) {
    let ext = build_ext(python, "nativeleak", &["-fomit-frame-pointer", "-g"]);
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(script("native_leak.py"))
        .args(["100", &SIZE.to_string(), "--busy"])
        .env("PYTHONPATH", &ext);
    let target = start(cmd);
    let (p, d) = (target.pid.to_string(), "40");
    let run = leakscope(
        &[
            "trace",
            "--pid",
            &p,
            "--json",
            "--interval",
            "5",
            "--duration",
            d,
            "--native",
            "--top",
            "100",
        ],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(0), "leakscope failed: {}", run.stderr);
    let last = run.last();
    assert_eq!(last["mode"], "sampled", "{last:#}");
    let (budget, overhead) = (
        last["overhead_budget"].as_f64().unwrap(),
        last["estimated_overhead"].as_f64().unwrap(),
    );
    assert!(
        overhead <= budget + 1e-9,
        "overhead {overhead} over {budget}"
    );
    let sites = native_sites(&last);
    let leak = sites
        .iter()
        .find(|s| frame(s, 0).0 == "leak_buffer")
        .unwrap_or_else(|| panic!("no leak_buffer site in {sites:#?}"));
    assert_eq!(leak["growing"], true, "{leak:#}");
    assert_eq!(
        python_caller(leak).2,
        marker_line("native_leak.py", "NATIVE_LEAK"),
        "{leak:#}"
    );
    for s in sites.iter().filter(|s| frame(s, 0).0 == "churn_buffer") {
        assert_eq!(s["growing"], false, "{s:#}");
    }
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_native_leak_is_found_when_sampled() {
    require_root();
    native_leak_sampled(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn debian_311_native_leak_is_found_when_sampled() {
    require_root();
    native_leak_sampled(&debian_python());
}

/// native_leak.py --thread: a C thread with no Python thread state leaks 1 KiB every 10 ms.
/// Its site is native frames only (the thread's own C functions), it is growing, and a
/// native allocation without a thread state is not counted as a lost stack.
#[test]
#[ignore = "privileged: real BPF against a real interpreter (cargo xtask test)"]
fn pyenv_311_a_c_thread_s_leak_has_native_frames_only() {
    require_root();
    let python = pyenv("3.11.7");
    let ext = build_ext(&python, "nativeleak", &["-fomit-frame-pointer", "-g"]);
    let mut cmd = Command::new(&python);
    cmd.arg("-u")
        .arg(script("native_leak.py"))
        .args(["50", &SIZE.to_string(), "--thread"])
        .env("PYTHONPATH", &ext);
    let target = start(cmd);
    let run = trace(target.pid, 12, &["--native"]);
    let last = run.last();
    let sites = native_sites(&last);
    let site = sites
        .iter()
        .find(|s| frame(s, 0).0 == "leak_in_thread")
        .unwrap_or_else(|| panic!("no leak_in_thread site in {sites:#?}"));
    assert_eq!(site["growing"], true, "{site:#}");
    let frames = site["frames"].as_array().unwrap();
    assert!(has_function(site, "thread_main"), "{site:#}");
    assert!(
        frames.iter().all(|f| f.get("library").is_some()),
        "a thread without the GIL has no Python frames: {site:#}"
    );
    assert_eq!(
        frame(site, 0).2,
        marker_in(
            &repo().join("tests/ext/nativeleak.c"),
            "/* THREAD_MALLOC */"
        ),
        "{site:#}"
    );
    assert_rate(
        site["rate_per_s"].as_f64().unwrap(),
        100.0,
        20.0,
        "thread leak",
    );
    assert_eq!(last["lost"]["no_thread_state"], 0, "{}", last["lost"]);
}
