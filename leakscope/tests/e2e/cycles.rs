//! Garbage that only the cyclic collector frees is reported under "cycles", at its birth
//! site, and is not a leak.
use crate::support::*;
use std::path::Path;

fn cycles_are_reported_at_their_site_and_not_growing(interpreter: &Path) {
    let target = python(interpreter, "cycles.py", &[]);
    let run = trace(target.pid, 12, &[]);
    let last = run.last();
    let cycles = last["cycles"].as_array().expect("a cycles section");
    let line = marker_line("cycles.py", "CYCLE-SITE");
    let site = cycles
        .iter()
        .find(|c| {
            c["type"] == "__main__.Node"
                && frame(c, 0) == ("make_pair".into(), "cycles.py".into(), line)
        })
        .unwrap_or_else(|| panic!("no cycle site for Node at line {line}: {last}"));
    let (births, collected) = (
        site["births"].as_u64().unwrap(),
        site["collected"].as_u64().unwrap(),
    );
    eprintln!("cycles: Node at cycles.py:{line}: {collected} collected of {births} born");
    assert!(births > 5_000, "{site}");
    // All but those born since the last collection.
    assert!(collected * 10 >= births * 8, "{site}");
    // Objects that die by reference count are not there, and nothing grows.
    assert!(
        !cycles.iter().any(|c| c["type"] == "__main__.Plain"),
        "Plain died by refcount: {last}"
    );
    assert!(
        growing_sites(&last).is_empty(),
        "{:?}",
        growing_sites(&last)
    );
    assert_no_losses(&last);
}

#[test]
#[ignore = "needs root and pyenv 3.11.7"]
fn pyenv_311_garbage_cycles_are_reported_not_leaking() {
    require_root();
    cycles_are_reported_at_their_site_and_not_growing(&pyenv("3.11.7"));
}

#[test]
#[ignore = "needs root and Debian's python3.11"]
fn debian_311_garbage_cycles_are_reported_not_leaking() {
    require_root();
    cycles_are_reported_at_their_site_and_not_growing(&debian_python());
}
