//! The overhead budget: how long the probes may stay attached. Pure: it is told what each
//! attached span cost the target (hits × calibrated trap cost + the programs' run time,
//! measured by `session::trace`) and answers with the mode and the next gap.
//!
//! Cost is counted the way a CPU-bound target feels it: `extra` seconds of traps and BPF
//! programs spread over `wall − extra` seconds of the target's own work, so a span's
//! *cost ratio* `ρ = extra / (wall − extra)` is the slowdown it caused (ρ = 0.25: 1.25×
//! slower while attached). The overhead of the whole trace is the same ratio over the whole
//! trace. For a target that is idle part of the time the real slowdown is smaller: the
//! estimate errs on the safe side.
//!
//! Idle time earns no credit: what a span costs beyond the aimed share of the work done in
//! it is a *debt*, paid by the gap before the next window, and a cheap span only pays debt
//! down to zero. So every window with its gap fits the budget on its own, and a service
//! that was quiet for an hour is not traced at full cost when its load comes back.

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// `--exact`: attached all the time, whatever it costs (the cost is still reported).
    Exact,
    /// `--overhead PCT`: keep the estimated overhead at or under this fraction.
    Overhead(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Probes attached all the time: every birth and death seen.
    Exact,
    /// Probes attached during windows; objects born in them followed afterwards.
    Sampled,
}

/// The budget is aimed at this share of itself: what a window will cost is known only
/// after it, the target's load changes, and the estimate misses what the traps cost the
/// target's caches beyond `USER_SIDE_SHARE` (docs/overhead.md): at 0.4, a 10% budget
/// aims at 4% estimated (0.6 until uprobe_multi links made windows cheaper, then 0.45; 0.4
/// since the 2026-12-04 bench read 1.15× on Debian's micro loop, docs/overhead.md).
pub const AIM: f64 = 0.4;
/// A sampled trace goes back to exact when the full cost would be at most this share of
/// the budget (hysteresis: it does not flip on every change of load).
pub const BACK_TO_EXACT: f64 = 0.5;
/// Shortest sampling window, seconds (from the last probe attached to the first
/// detached). Long against the ~10 ms a probe takes to attach; `window_s` makes windows
/// longer when detaching is dear.
pub const WINDOW_S: f64 = 0.2;
/// The first window measures what being attached costs (and exact mode re-checks it this
/// often): at a cost ratio of 30 (an allocation-heavy loop), 50 ms attached cost the target
/// 48 ms of its time.
pub const MEASURE_S: f64 = 0.05;
/// An attached span shorter than this says too little about the cost to steer by.
pub const MIN_MEASURE_S: f64 = 0.02;
/// Exact mode ends only when a span costs more than the aim *and* this much work is owed
/// (seconds; a debt of 0.25 s is 11 ms of extra time at a 10% budget). One dear span of a
/// quiet target is not its cost: seen here, the programs' run time of a quiet service jumped
/// to 2–4 ms in one 50 ms check (35 hits, one of them interrupted or its vCPU preempted),
/// a "13%" that ended exact mode in 1 of 2 runs of 30 s. A busy target owes more than this
/// after its first span (ρ = 0.2 within 100 ms, ρ ≥ 1 at once).
pub const EXACT_SLACK_S: f64 = 0.25;
/// Longest window, seconds.
pub const MAX_WINDOW_S: f64 = 2.0;
/// Longest gap between windows, seconds, so growth is still seen every so often.
pub const MAX_GAP_S: f64 = 30.0;
/// Shortest gap: detaching takes the kernel ~100 ms per probe, and a window that would
/// reopen at once is better left open (the controller then goes back to exact).
pub const MIN_GAP_S: f64 = WINDOW_S;

#[derive(Clone, Debug)]
pub struct Controller {
    budget: Budget,
    mode: Mode,
    /// Latest cost ratio of an attached span (ρ), if one was measured.
    rho: Option<f64>,
    /// Totals over the trace: wall time, time attached, extra CPU time.
    elapsed_s: f64,
    traced_s: f64,
    extra_s: f64,
    /// Seconds of the target's work still owed to the budget (see the module's comment).
    debt_s: f64,
    windows: u64,
    switches: u64,
}

impl Controller {
    pub fn new(budget: Budget) -> Self {
        Controller {
            budget,
            mode: Mode::Exact,
            rho: None,
            elapsed_s: 0.0,
            traced_s: 0.0,
            extra_s: 0.0,
            debt_s: 0.0,
            windows: 0,
            switches: 0,
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The budget as a fraction (`None` with `--exact`).
    pub fn fraction(&self) -> Option<f64> {
        match self.budget {
            Budget::Exact => None,
            Budget::Overhead(f) => Some(f),
        }
    }

    /// Cost ratio of a span: `extra / (wall − extra)` (the work is at least 1% of it).
    pub fn ratio(wall_s: f64, extra_s: f64) -> f64 {
        let work = (wall_s - extra_s).max(wall_s * 0.01);
        if work <= 0.0 { 0.0 } else { extra_s / work }
    }

    /// Books a span of `wall_s` seconds, `attached_s` of them with probes attached, which
    /// cost the target `extra_s` seconds; returns the mode from now on. Exact switches to
    /// sampled when the span cost more than the aim and more than `EXACT_SLACK_S` of work
    /// is owed (a lone spike is not a cost); sampled goes back to exact when
    /// a window shows the full cost would fit well inside it.
    pub fn book(&mut self, wall_s: f64, attached_s: f64, extra_s: f64) -> Mode {
        self.elapsed_s += wall_s.max(0.0);
        self.traced_s += attached_s.max(0.0);
        self.extra_s += extra_s.max(0.0);
        if let Budget::Overhead(b) = self.budget {
            let work = (wall_s - extra_s).max(0.0);
            self.debt_s = (self.debt_s + extra_s.max(0.0) / (b * AIM) - work).max(0.0);
        }
        if attached_s >= MIN_MEASURE_S {
            self.rho = Some(Self::ratio(attached_s, extra_s));
        }
        let (Budget::Overhead(b), Some(rho)) = (self.budget, self.rho) else {
            return self.mode;
        };
        let next = match self.mode {
            Mode::Exact if rho > b * AIM && self.debt_s > EXACT_SLACK_S => Mode::Sampled,
            Mode::Sampled if rho <= b * AIM * BACK_TO_EXACT => Mode::Exact,
            m => m,
        };
        if next != self.mode {
            self.switches += 1;
            self.mode = next;
        }
        self.mode
    }

    /// Extra cost that takes no wall time of its own (a detach's stall, paid in the gap
    /// that follows): added to the totals and to the debt.
    pub fn charge(&mut self, extra_s: f64) {
        let extra_s = extra_s.max(0.0);
        self.extra_s += extra_s;
        if let Budget::Overhead(b) = self.budget {
            self.debt_s += extra_s / (b * AIM);
        }
    }

    /// A window closed (counted in `windows`).
    pub fn window_closed(&mut self) {
        self.windows += 1;
    }

    /// Seconds to wait before the next window: until the debt is paid.
    pub fn gap_s(&self) -> f64 {
        self.debt_s.clamp(MIN_GAP_S, MAX_GAP_S)
    }

    /// Seconds the next window must still wait so that the whole trace stays within the
    /// aim even if it ended right after that window (`window_s` at the last cost ratio,
    /// and its detach, `detach_s` of the target's time). The debt keeps each window and its
    /// gap within the aim; this keeps every prefix of the trace within it, so a report
    /// taken just after a window (the final one of `--duration`, a Ctrl-C) never says
    /// the budget was overrun. A trace's quiet start counts as work here.
    pub fn wait_to_fit_s(&self, window_s: f64, detach_s: f64) -> f64 {
        let Budget::Overhead(b) = self.budget else {
            return 0.0;
        };
        let rho = self.rho.unwrap_or(0.0).max(0.0);
        let cost = window_s * rho / (1.0 + rho) + detach_s.max(0.0);
        let work = (self.elapsed_s - self.extra_s).max(0.0);
        ((self.extra_s + cost) / (b * AIM) - (work + window_s - cost)).max(0.0)
    }

    /// Seconds of work still owed (0 when the next window may open).
    pub fn debt_s(&self) -> f64 {
        self.debt_s
    }

    /// The last attached span's cost ratio, if one was measured.
    pub fn rho(&self) -> Option<f64> {
        self.rho
    }

    /// How long the next window should be: long enough that the detach that ends it
    /// (`detach_s` of the target's time) costs no more than the window itself at cost
    /// ratio ρ (`window × ρ/(1+ρ) ≥ detach`), within `WINDOW_S..=MAX_WINDOW_S`. Short,
    /// frequent windows name a leak sooner (growth takes `aggregate::MIN_INTERVALS` windows) than
    /// long, rare ones of the same cost.
    pub fn window_s(&self, detach_s: f64) -> f64 {
        let rho = self.rho.unwrap_or(1.0).max(1e-3);
        (detach_s * (1.0 + rho) / rho).clamp(WINDOW_S, MAX_WINDOW_S)
    }

    /// Totals for reports.
    pub fn state(&self, elapsed_s: f64) -> State {
        State {
            mode: self.mode,
            traced_s: self.traced_s,
            traced_fraction: if elapsed_s > 0.0 {
                (self.traced_s / elapsed_s).min(1.0)
            } else {
                1.0
            },
            estimated_overhead: Self::ratio(elapsed_s.max(self.elapsed_s), self.extra_s),
            overhead_budget: self.fraction(),
            windows: self.windows,
            cost_ratio_attached: self.rho,
            mode_switches: self.switches,
        }
    }
}

/// What a report says about how it was traced.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct State {
    pub mode: Mode,
    /// Seconds the probes were attached.
    pub traced_s: f64,
    pub traced_fraction: f64,
    /// Extra CPU the probes cost the target, as a fraction of its own work time.
    pub estimated_overhead: f64,
    /// `None` with `--exact`.
    pub overhead_budget: Option<f64>,
    /// Sampling windows closed so far.
    pub windows: u64,
    /// What being attached costs (ρ of the last attached span): the slowdown exact
    /// tracing would cause.
    pub cost_ratio_attached: Option<f64>,
    pub mode_switches: u64,
}

/// A sampled count scaled to the whole trace, with one standard error.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub live: f64,
    pub live_err: f64,
    pub rate_per_s: f64,
    pub rate_err: f64,
}

/// Scales a site's (or type's) followed counts to the whole trace. `young` of its `live`
/// followed objects were born in the latest window (all the births of that window are
/// seen, so they count once); the older ones stand for births over the whole trace, of
/// which the windows saw `traced_fraction` (a Horvitz–Thompson weight). `rate_per_s` is the
/// slope of the followed count. Errors are those of a Poisson count of the older ones.
/// The weights are time shares: exact for births that come at a steady pace in time (a
/// service's requests), an underestimate for births paced by the target's own work while
/// it runs slower in a window.
pub fn estimate(
    live: u64,
    young: u64,
    rate_per_s: f64,
    traced_fraction: f64,
    elapsed_s: f64,
) -> Estimate {
    let d = traced_fraction.clamp(1e-6, 1.0);
    let old = live.saturating_sub(young) as f64;
    let t = elapsed_s.max(1e-3);
    Estimate {
        live: young.min(live) as f64 + old / d,
        live_err: old.sqrt() / d,
        rate_per_s: rate_per_s / d,
        rate_err: old.max(1.0).sqrt() / (d * t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a controller the way the trace loop does, against a target whose attached
    /// cost ratio is `rho`, for `secs` seconds; returns it.
    fn simulate(budget: Budget, rho: f64, secs: f64) -> Controller {
        let mut c = Controller::new(budget);
        // The measuring window.
        let extra = MEASURE_S * rho / (1.0 + rho);
        c.book(MEASURE_S, MEASURE_S, extra);
        let mut t = MEASURE_S;
        while t < secs {
            match c.mode() {
                Mode::Exact => {
                    c.book(1.0, 1.0, rho / (1.0 + rho));
                    t += 1.0;
                }
                Mode::Sampled => {
                    let gap = c.gap_s();
                    c.book(gap, 0.0, 0.0);
                    c.book(WINDOW_S, WINDOW_S, WINDOW_S * rho / (1.0 + rho));
                    c.window_closed();
                    t += gap + WINDOW_S;
                }
            }
        }
        c
    }

    #[test]
    fn a_quiet_target_is_traced_exactly_and_says_what_it_costs() {
        let c = simulate(Budget::Overhead(0.10), 0.02, 60.0);
        let s = c.state(60.2);
        assert_eq!(s.mode, Mode::Exact);
        assert!(s.traced_fraction > 0.99, "{s:?}");
        assert!((s.estimated_overhead - 0.02).abs() < 0.005, "{s:?}");
        assert_eq!(s.windows, 0);
    }

    #[test]
    fn a_busy_target_is_sampled_within_the_budget_whatever_its_cost() {
        for rho in [0.2, 1.0, 5.0, 30.0] {
            let c = simulate(Budget::Overhead(0.10), rho, 120.0);
            let s = c.state(c.elapsed_s);
            assert_eq!(s.mode, Mode::Sampled, "rho {rho}");
            assert!(
                s.estimated_overhead <= 0.10 && s.estimated_overhead > 0.8 * 0.10 * AIM,
                "rho {rho}: {s:?}"
            );
            assert!(s.windows > 10, "rho {rho}: {s:?}");
            assert!(s.traced_fraction < 1.0);
        }
    }

    #[test]
    fn exact_keeps_tracing_whatever_it_costs() {
        let c = simulate(Budget::Exact, 30.0, 10.0);
        let s = c.state(c.elapsed_s);
        assert_eq!(
            (s.mode, s.overhead_budget, s.windows),
            (Mode::Exact, None, 0)
        );
        assert!(s.estimated_overhead > 20.0, "{s:?}");
    }

    #[test]
    fn a_lone_dear_span_does_not_end_exact_mode_but_a_lasting_cost_does() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        // A quiet target checked every 50 ms: one check whose programs took 3.7 ms (7.8%).
        for i in 0..100 {
            let extra = if i == 40 { 0.0037 } else { 0.0001 };
            assert_eq!(
                c.book(MEASURE_S, MEASURE_S, extra),
                Mode::Exact,
                "check {i}"
            );
        }
        assert_eq!(c.state(5.0).mode_switches, 0);
        // Load that lasts at ρ = 0.1 (over the 4% aim): sampled within half a second.
        let mut n = 0;
        while c.book(MEASURE_S, MEASURE_S, MEASURE_S * 0.1 / 1.1) == Mode::Exact {
            n += 1;
            assert!(n < 10, "still exact after {n} checks");
        }
    }

    #[test]
    fn load_that_falls_brings_back_exact_and_load_that_rises_ends_it() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        assert_eq!(c.book(0.2, 0.2, 0.1), Mode::Sampled);
        // A window that would cost 3% attached: still over half the aim, stays sampled.
        assert_eq!(c.book(0.2, 0.2, 0.2 * 0.05 / 1.05), Mode::Sampled);
        assert_eq!(c.book(0.2, 0.2, 0.2 * 0.02 / 1.02), Mode::Exact);
        assert_eq!(c.book(1.0, 1.0, 0.5), Mode::Sampled);
        assert_eq!(c.state(2.0).mode_switches, 3);
    }

    #[test]
    fn an_expensive_span_is_paid_back_by_the_gap_and_idle_time_earns_no_credit() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        c.book(0.2, 0.2, 0.19); // ρ = 19: 0.19 s owed at 6% = 3.167 s of work, 0.01 done
        let gap = 0.19 / (0.10 * AIM) - 0.01;
        assert!((c.gap_s() - gap).abs() < 1e-9, "{}", c.gap_s());
        c.book(c.gap_s(), 0.0, 0.0);
        assert_eq!(c.gap_s(), MIN_GAP_S);
        // An hour of quiet, then the same window: the same gap, no credit.
        c.book(3600.0, 0.0, 0.0);
        c.book(0.2, 0.2, 0.19);
        assert!((c.gap_s() - gap).abs() < 1e-9, "{}", c.gap_s());
        c.book(1000.0, 1000.0, 999.0);
        assert_eq!(c.gap_s(), MAX_GAP_S);
    }

    #[test]
    fn estimates_scale_old_survivors_by_the_traced_share_and_count_young_ones_once() {
        // 5% traced: 50 followed survivors stand for 1000; 10 born in the latest window
        // count as themselves.
        let e = estimate(60, 10, 5.0, 0.05, 100.0);
        assert_eq!(e.live, 10.0 + 1000.0);
        assert!((e.live_err - 50f64.sqrt() / 0.05).abs() < 1e-9);
        assert_eq!(e.rate_per_s, 100.0);
        assert!((e.rate_err - 50f64.sqrt() / 5.0).abs() < 1e-9);
        // Exact: nothing is scaled.
        let e = estimate(60, 10, 5.0, 1.0, 100.0);
        assert_eq!((e.live, e.rate_per_s), (60.0, 5.0));
    }

    #[test]
    fn a_charge_adds_to_the_cost_and_lengthens_the_next_gap() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        c.book(0.2, 0.2, 0.0);
        c.book(10.0, 0.0, 0.0);
        c.charge(0.06); // a detach stalled the target 60 ms: 1 s of work at 6%
        assert!(
            (c.gap_s() - 0.06 / (0.10 * AIM)).abs() < 1e-9,
            "{}",
            c.gap_s()
        );
        assert!((c.state(10.2).estimated_overhead - 0.06 / (10.2 - 0.06)).abs() < 1e-9);
    }

    #[test]
    fn windows_grow_when_a_detach_costs_much_against_them() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        c.book(0.2, 0.2, 0.2 * 30.0 / 31.0); // ρ = 30
        // A 450 ms detach: 0.45 × 31/30 = 0.465 s.
        assert!(
            (c.window_s(0.45) - 0.465).abs() < 1e-9,
            "{}",
            c.window_s(0.45)
        );
        assert_eq!(c.window_s(0.15), WINDOW_S);
        assert_eq!(c.window_s(0.0), WINDOW_S);
        assert_eq!(c.window_s(10.0), MAX_WINDOW_S);
    }

    #[test]
    fn no_window_opens_that_would_leave_the_trace_over_the_aim_if_it_ended_there() {
        let mut c = Controller::new(Budget::Overhead(0.10));
        // 50 ms measured at ρ = 19 (47.5 ms extra), then the debt is paid.
        c.book(0.05, 0.05, 0.0475);
        c.book(c.gap_s(), 0.0, 0.0);
        assert_eq!(c.debt_s(), 0.0);
        // A 0.2 s window (0.19 s extra) and a 0.1 s detach would not fit yet.
        let wait = c.wait_to_fit_s(0.2, 0.1);
        assert!(wait > 1.0, "{wait}");
        c.book(wait, 0.0, 0.0);
        assert!(c.wait_to_fit_s(0.2, 0.1) < 1e-9);
        c.book(0.2, 0.2, 0.19);
        c.charge(0.1);
        let s = c.state(c.elapsed_s);
        assert!((s.estimated_overhead - 0.10 * AIM).abs() < 1e-9, "{s:?}");
        // Exact mode never waits.
        assert_eq!(Controller::new(Budget::Exact).wait_to_fit_s(1.0, 1.0), 0.0);
    }

    #[test]
    fn ratio_is_the_slowdown_of_a_busy_target() {
        assert_eq!(Controller::ratio(1.0, 0.5), 1.0);
        assert_eq!(Controller::ratio(1.0, 0.0), 0.0);
        assert!(Controller::ratio(1.0, 1.0).is_finite());
    }
}
