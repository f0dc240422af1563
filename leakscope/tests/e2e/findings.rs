//! Leak findings: growing sites grouped under the root that retains them, with the chain
//! that keeps the root alive, read from the target's heap without stopping it.
use crate::support::*;
use serde_json::Value;
use std::path::Path;

fn findings(report: &Value) -> Vec<Value> {
    report["findings"].as_array().cloned().unwrap_or_default()
}

fn retention_read_without_pausing(report: &Value) {
    let r = &report["retention"];
    assert_eq!(r["paused"], false, "{r}");
    assert!(r["objects"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["error"].is_null(), "{r}");
    eprintln!(
        "retention: {} objects, {} references, {:.0} ms",
        r["objects"],
        r["references"],
        r["ms"].as_f64().unwrap()
    );
}

/// A Record holding a dict, two strings and a float, leaked into the module-level dict
/// LEAKS beside churn of the same shapes: one finding, the Record first, its chain ending
/// at `LEAKS` of `__main__`. `sees_builtins`: the build's probes see dicts, strings and
/// floats, which must then be retained by the Record, not findings of their own.
fn a_leaked_record_is_one_finding_rooted_at_a_module_global(
    interpreter: &Path,
    sees_builtins: bool,
) {
    let target = python(interpreter, "retention.py", &["records", "100"]);
    let folded = tempdir("findings").join("leaks.folded");
    let run = trace(target.pid, 16, &["--folded", folded.to_str().unwrap()]);
    let last = run.last();
    retention_read_without_pausing(&last);
    let f = findings(&last);
    let roots: Vec<&Value> = f.iter().map(|x| &x["root"]["type"]).collect();
    assert_eq!(f.len(), 1, "one finding, got roots {roots:?}: {last}");
    let root = &f[0]["root"];
    assert_eq!(root["type"], "__main__.Record", "{}", f[0]);
    let line = marker_line("retention.py", "RECORD-SITE");
    assert_eq!(
        frame(root, 0),
        ("make_record".into(), "retention.py".into(), line)
    );
    let chain = &f[0]["chain"];
    assert_eq!(chain["end"], "module", "{chain}");
    assert_eq!(
        chain["kept_by"], "global LEAKS of module __main__",
        "{chain}"
    );
    assert_eq!(chain["confirmed"], true, "{chain}");
    let links = chain["links"].as_array().unwrap();
    assert_eq!(links[0]["type"], "__main__.Record");
    assert_eq!(links.last().unwrap()["type"], "module __main__");
    let retained: Vec<String> = f[0]["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "finding: {} retaining {retained:?}, kept alive by {}",
        root["type"], chain["kept_by"]
    );
    if sees_builtins {
        for t in ["dict", "str", "float"] {
            assert!(
                retained.iter().any(|r| r == t),
                "{t} not retained: {retained:?}"
            );
        }
        assert!(f[0]["objects"].as_u64().unwrap() >= 5 * root["live"].as_u64().unwrap());
    }
    // The flamegraph draws what the record retains under the record's own stack.
    let folded = std::fs::read_to_string(&folded).unwrap();
    let under_root = |t: &str| {
        folded.lines().any(|l| {
            l.contains(&format!("retention.py:{line});__main__.Record ("))
                && l.contains(&format!(" live);{t} ("))
        })
    };
    if sees_builtins {
        for t in ["dict", "str", "float"] {
            assert!(under_root(t), "{t} not under the root:\n{folded}");
        }
    }
    // The churn of the same shapes is no finding and no growing site.
    let churn = growing_sites(&last)
        .into_iter()
        .filter(|s| (0..4).any(|i| frame(s, i).0 == "churn"))
        .count();
    assert_eq!(churn, 0, "{last}");
}

/// A Downloader whose C-level Handle (no GC support) keeps its bound method: a cycle
/// through a holder the collector does not traverse, rooted at the Downloader.
fn a_cycle_through_a_c_holder_is_rooted_at_its_python_owner(interpreter: &Path) {
    let ext = build_leakext(interpreter);
    let target = python(
        interpreter,
        "retention.py",
        &["handle", "50", ext.to_str().unwrap()],
    );
    let run = trace(target.pid, 16, &[]);
    let last = run.last();
    retention_read_without_pausing(&last);
    let f = findings(&last);
    let roots: Vec<&Value> = f.iter().map(|x| &x["root"]["type"]).collect();
    assert_eq!(f.len(), 1, "one finding, got roots {roots:?}: {last}");
    let root = &f[0]["root"];
    assert_eq!(root["type"], "__main__.Downloader", "{}", f[0]);
    let line = marker_line("retention.py", "DOWNLOADER-SITE");
    assert_eq!(frame(root, 0), ("main".into(), "retention.py".into(), line));
    let chain = &f[0]["chain"];
    assert_eq!(chain["end"], "cycle", "{chain}");
    assert_eq!(chain["through_c_holder"], true, "{chain}");
    assert_eq!(chain["confirmed"], true, "{chain}");
    let links = chain["links"].as_array().unwrap();
    let kinds: Vec<&str> = links.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "__main__.Downloader",
            "method",
            "leakext.Handle",
            "__main__.Downloader"
        ],
        "{chain}"
    );
    assert_eq!(links[1]["holds"], ".__self__");
    assert_eq!(links[2]["c_holder"], true);
    assert_eq!(links[3]["holds"], ".handle");
    assert!(
        chain["kept_by"].as_str().unwrap().contains("cannot break"),
        "{chain}"
    );
    let retained: Vec<&str> = f[0]["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert!(retained.contains(&"leakext.Handle"), "{retained:?}");
    eprintln!(
        "finding: Downloader retaining {retained:?}, kept alive by {}",
        chain["kept_by"]
    );
}

/// Records kept in a local list of a function that never returns: the chain ends at that
/// thread's running frame, naming the function and the local.
fn a_leak_in_a_running_function_s_local_is_rooted_at_its_frame(interpreter: &Path) {
    let target = python(interpreter, "retention.py", &["local", "100"]);
    let run = trace(target.pid, 14, &[]);
    let last = run.last();
    retention_read_without_pausing(&last);
    assert!(
        last["retention"]["frames"].as_u64().unwrap() >= 3,
        "{}",
        last["retention"]
    );
    let f = findings(&last);
    assert_eq!(f.len(), 1, "{last}");
    let chain = &f[0]["chain"];
    assert_eq!(f[0]["root"]["type"], "__main__.Record");
    assert_eq!(chain["end"], "frame", "{chain}");
    assert_eq!(
        chain["kept_by"], "local history of serve (thread 1), running",
        "{chain}"
    );
    assert_eq!(chain["confirmed"], true, "{chain}");
    let links = chain["links"].as_array().unwrap();
    assert_eq!(links[1]["type"], "list", "{chain}");
    assert_eq!(links.last().unwrap()["holds"], "local history", "{chain}");
}

/// Records kept in a coroutine's local, the coroutine run by an asyncio task: the chain
/// passes through the suspended coroutine (its local named) and the task.
#[test]
#[ignore = "privileged: needs root and pyenv 3.11.7"]
fn pyenv_311_a_leak_in_a_suspended_coroutine_is_traced_through_its_task() {
    require_root();
    let target = python(&pyenv("3.11.7"), "retention.py", &["task", "100"]);
    let last = trace(target.pid, 14, &[]).last();
    let f = findings(&last);
    assert_eq!(f.len(), 1, "{last}");
    let chain = &f[0]["chain"];
    assert_eq!(chain["confirmed"], true, "{chain}");
    let links = chain["links"].as_array().unwrap();
    let steps: Vec<(&str, &str)> = links
        .iter()
        .map(|l| (l["type"].as_str().unwrap(), l["holds"].as_str().unwrap()))
        .collect();
    assert_eq!(steps[1].0, "list", "{chain}");
    assert_eq!(steps[2], ("coroutine", "local backlog"), "{chain}");
    assert!(steps.iter().any(|s| s.0 == "_asyncio.Task"), "{chain}");
}

/// Records appended to a class attribute: the chain ends at the class, naming the attribute.
#[test]
#[ignore = "privileged: needs root and pyenv 3.11.7"]
fn pyenv_311_a_leak_in_a_class_attribute_is_rooted_at_the_class() {
    require_root();
    let target = python(&pyenv("3.11.7"), "retention.py", &["class", "100"]);
    let last = trace(target.pid, 14, &[]).last();
    let f = findings(&last);
    assert_eq!(f.len(), 1, "{last}");
    let chain = &f[0]["chain"];
    assert_eq!(chain["end"], "class", "{chain}");
    assert_eq!(
        chain["kept_by"], "attribute items of class __main__.Registry",
        "{chain}"
    );
    assert_eq!(chain["confirmed"], true, "{chain}");
}

#[test]
#[ignore = "privileged: needs root and pyenv 3.11.7"]
fn pyenv_311_a_leak_in_a_running_function_s_local_is_rooted_at_its_frame() {
    require_root();
    a_leak_in_a_running_function_s_local_is_rooted_at_its_frame(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root and Debian's python3.11"]
fn debian_311_a_leak_in_a_running_function_s_local_is_rooted_at_its_frame() {
    require_root();
    a_leak_in_a_running_function_s_local_is_rooted_at_its_frame(&debian_python());
}

#[test]
#[ignore = "privileged: needs root and pyenv 3.11.7"]
fn pyenv_311_a_leaked_record_is_one_finding_rooted_at_a_module_global() {
    require_root();
    a_leaked_record_is_one_finding_rooted_at_a_module_global(&pyenv("3.11.7"), true);
}

#[test]
#[ignore = "privileged: needs root and pyenv 3.12.1"]
fn pyenv_312_a_leaked_record_is_one_finding_rooted_at_a_module_global() {
    require_root();
    a_leaked_record_is_one_finding_rooted_at_a_module_global(&pyenv("3.12.1"), true);
}

#[test]
#[ignore = "privileged: needs root and pyenv 3.12.1"]
fn pyenv_312_a_leak_in_a_running_function_s_local_is_rooted_at_its_frame() {
    require_root();
    a_leak_in_a_running_function_s_local_is_rooted_at_its_frame(&pyenv("3.12.1"));
}

/// Versions without reference layouts say so instead of inventing chains.
#[test]
#[ignore = "privileged: needs root and pyenv 3.10.13"]
fn pyenv_310_findings_say_why_there_are_no_chains() {
    require_root();
    let target = python(&pyenv("3.10.13"), "retention.py", &["records", "100"]);
    let last = trace(target.pid, 12, &[]).last();
    let err = last["retention"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("3.11 and 3.12"), "{}", last["retention"]);
    assert!(findings(&last).is_empty());
    assert!(
        !growing_sites(&last).is_empty(),
        "the leak still grows: {last}"
    );
}

#[test]
#[ignore = "privileged: needs root and Debian's python3.11"]
fn debian_311_a_leaked_record_is_one_finding_rooted_at_a_module_global() {
    require_root();
    a_leaked_record_is_one_finding_rooted_at_a_module_global(&debian_python(), false);
}

#[test]
#[ignore = "privileged: needs root and pyenv 3.11.7"]
fn pyenv_311_a_cycle_through_a_c_holder_is_rooted_at_its_python_owner() {
    require_root();
    a_cycle_through_a_c_holder_is_rooted_at_its_python_owner(&pyenv("3.11.7"));
}

#[test]
#[ignore = "privileged: needs root and Debian's python3.11"]
fn debian_311_a_cycle_through_a_c_holder_is_rooted_at_its_python_owner() {
    require_root();
    a_cycle_through_a_c_holder_is_rooted_at_its_python_owner(&debian_python());
}
