//! `--prometheus ADDR`: the latest report in Prometheus' text exposition format (version
//! 0.0.4), for a monitoring stack to scrape. Pure: a report in, text out; `session::metrics`
//! serves it.
//!
//! Per site of the report (`sites`: growing first, at most `--top`): live objects, live
//! bytes and growth (objects per second; in sampled mode the estimates scaled to the whole
//! trace), labelled with the type, the innermost frame (`site`, "function (file:line)"),
//! whether it is growing, and the target's pid. Per trace: the estimated overhead, the
//! traced fraction, elapsed seconds and the reports made.
use super::{Report, SiteReport};
use std::fmt::Write;

/// A label value escaped as the format requires (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn site_label(r: &SiteReport) -> String {
    match r.frames.first() {
        Some(f) => f.short_label(),
        None => "[no Python stack]".into(),
    }
}

/// A float as Prometheus reads it.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else if x.is_nan() {
        "NaN".into()
    } else if x > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

/// The exposition of `report`, the `reports`-th made.
pub fn render(report: &Report, reports: u64) -> String {
    let mut s = String::new();
    let pid = report.pid;
    type PerSite = (&'static str, &'static str, fn(&SiteReport) -> f64);
    let per_site: [PerSite; 3] = [
        (
            "leakscope_live_objects",
            "Live objects born since attach, per allocation site (sampled mode: estimated).",
            |r| r.estimate.map_or(r.live as f64, |e| e.live),
        ),
        (
            "leakscope_live_bytes",
            "Bytes of those objects (with what they own), per allocation site.",
            |r| match r.estimate {
                Some(e) if r.live > 0 => r.live_bytes as f64 * e.live / r.live as f64,
                _ => r.live_bytes as f64,
            },
        ),
        (
            "leakscope_growth_objects_per_second",
            "Growth of the live objects, per allocation site (objects per second).",
            |r| r.estimate.map_or(r.rate_per_s, |e| e.rate_per_s),
        ),
    ];
    for (name, help, value) in per_site {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for r in &report.sites {
            let _ = writeln!(
                s,
                "{name}{{pid=\"{pid}\",type=\"{}\",site=\"{}\",growing=\"{}\"}} {}",
                escape(&r.type_name),
                escape(&site_label(r)),
                r.growing,
                num(value(r))
            );
        }
    }
    let t = &report.tracing;
    let scalars: [(&str, &str, &str, f64); 4] = [
        (
            "leakscope_estimated_overhead_ratio",
            "gauge",
            "Extra CPU time the probes cost the target so far, as a fraction of its own.",
            t.estimated_overhead,
        ),
        (
            "leakscope_traced_ratio",
            "gauge",
            "Fraction of the time the probes were attached.",
            t.traced_fraction,
        ),
        (
            "leakscope_elapsed_seconds",
            "gauge",
            "Seconds since leakscope attached.",
            report.elapsed_s,
        ),
        (
            "leakscope_reports_total",
            "counter",
            "Reports made so far (the metrics are the last one's).",
            reports as f64,
        ),
    ];
    for (name, kind, help, v) in scalars {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        let _ = writeln!(s, "{name}{{pid=\"{pid}\"}} {}", num(v));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_readable() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(f64::NAN), "NaN");
    }

    #[test]
    fn each_site_is_a_series_and_the_overhead_one_more() {
        let text = render(&crate::report::tests::report(), 5);
        let labels = r#"{pid="42",type="__main__.Leak",site="level3 (app.py:7)",growing="true"}"#;
        for line in [
            format!("leakscope_live_objects{labels} 20000"),
            format!("leakscope_live_bytes{labels} 1280000"),
            format!("leakscope_growth_objects_per_second{labels} 2000"),
            r#"leakscope_estimated_overhead_ratio{pid="42"} 0.021"#.to_string(),
            r#"leakscope_traced_ratio{pid="42"} 1"#.to_string(),
            r#"leakscope_reports_total{pid="42"} 5"#.to_string(),
            "# TYPE leakscope_live_bytes gauge".to_string(),
            "# TYPE leakscope_reports_total counter".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // every sample line is `name{labels} value`
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(series.ends_with('}'), "{l}");
            value.parse::<f64>().unwrap();
        }
    }
}
