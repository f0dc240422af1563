//! The free signals a trace reads beside its probes, on their own thread: the GC lists and
//! pymalloc's pools. They count the builtins a partial build's probes cannot see (census
//! rows), every type's whole count (which vetoes sampled growth the counts call flat), and
//! pymalloc's size classes. Reading costs the target nothing between walks; under a budget
//! the walks are paced (`CENSUS_GAP_PER_WALK`).
use crate::census::{Allocator, Heap, Walker};
use crate::cpython;
use crate::model::aggregate;
use crate::resolve::types::Resolver;
use anyhow::{Context, Result};
use std::sync::mpsc;
use std::time::Instant;

/// One round of free signals as the trace uses it: counts of the types the probes cannot
/// see (GC lists for GC types, pymalloc's pools for the others), and pymalloc's size
/// classes.
pub struct CensusSample {
    /// Seconds since attach, at the middle of the walks.
    pub at_s: f64,
    pub walk_ms: f64,
    /// (type, name, objects, bytes).
    pub unseen: Vec<(u64, String, u64, u64)>,
    /// Live blocks and bytes per pymalloc size class (block size in bytes), if walked.
    pub classes: Option<Vec<(u64, u64, u64)>>,
    /// Why the allocator census is not there.
    pub allocator_error: Option<String>,
    /// Every type's live objects as the free signals count them: GC types from the GC
    /// lists, the others from pymalloc's pools (all objects, born before attach too).
    pub totals: Vec<(u64, u64)>,
}

/// The free signals on their own thread: a GC walk of 1M objects takes about 2 s, and the
/// loop must not wait for it. One round at a time; the report uses the newest finished one.
pub struct CensusWorker {
    requests: mpsc::Sender<()>,
    results: mpsc::Receiver<CensusSample>,
    in_flight: bool,
}

impl CensusWorker {
    /// `heap`: walk the GC lists (partial builds); `allocator`: walk pymalloc's pools
    /// (when found). Only types the resolver does not track are reported as `unseen`.
    pub fn start(
        heap: Option<Heap>,
        allocator: Result<Allocator, String>,
        mut resolver: Resolver,
        started: Instant,
    ) -> Result<CensusWorker> {
        let (requests, rx) = mpsc::channel::<()>();
        let (tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("census".into())
            .spawn(move || {
                for () in rx {
                    let t0 = started.elapsed().as_secs_f64();
                    let walk_started = Instant::now();
                    let mut counts = hashbrown::HashMap::new();
                    if let Some(heap) = &heap {
                        counts = Walker::new(heap, &mut resolver).run().types;
                    }
                    let alloc = allocator.as_ref().ok().map(|a| a.walk(&mut resolver));
                    let walk_s = walk_started.elapsed().as_secs_f64();
                    if let Some(a) = &alloc {
                        // GC types come from the GC lists (every size); the others from
                        // pymalloc's pools (objects up to 512 bytes).
                        for (&t, &c) in &a.types {
                            if resolver
                                .get(t)
                                .is_some_and(|i| i.flags & cpython::TPFLAGS_HAVE_GC == 0)
                            {
                                counts.insert(t, c);
                            }
                        }
                    }
                    // Dicts and tuples holding only atomic values are untracked by the
                    // collector (`_PyDict_MaybeUntrack`, `_PyTuple_MaybeUntrack`): the GC
                    // lists undercount them, and an undercount must not veto growth.
                    let totals = counts
                        .iter()
                        .filter(|&(&t, _)| {
                            resolver
                                .get(t)
                                .is_none_or(|i| !UNTRACKED_BY_GC.contains(&i.name.as_str()))
                        })
                        .map(|(&t, &(n, _))| (t, n))
                        .collect();
                    let unseen = counts
                        .into_iter()
                        .filter_map(|(t, (n, b))| {
                            let info = resolver.get(t)?;
                            (!info.tracked).then(|| (t, info.name.clone(), n, b))
                        })
                        .collect();
                    resolver.revalidate();
                    let sample = CensusSample {
                        at_s: t0 + walk_s / 2.0,
                        walk_ms: walk_s * 1e3,
                        unseen,
                        classes: alloc.map(|a| {
                            a.classes
                                .iter()
                                .map(|c| (c.size, c.blocks, c.bytes))
                                .collect()
                        }),
                        allocator_error: allocator.as_ref().err().cloned(),
                        totals,
                    };
                    if tx.send(sample).is_err() {
                        break;
                    }
                }
            })
            .context("starting the census thread")?;
        Ok(CensusWorker {
            requests,
            results,
            in_flight: false,
        })
    }

    /// Asks for a walk unless one is under way.
    pub fn request(&mut self) {
        if !self.in_flight && self.requests.send(()).is_ok() {
            self.in_flight = true;
        }
    }

    /// The newest finished walk, if one finished since the last call.
    pub fn take(&mut self) -> Option<CensusSample> {
        let mut newest = None;
        while let Ok(s) = self.results.try_recv() {
            self.in_flight = false;
            newest = Some(s);
        }
        newest
    }
}

/// What the free signals counted of each type, census after census.
#[derive(Default)]
pub struct FreeCounts {
    times: Vec<f64>,
    counts: hashbrown::HashMap<u64, Vec<(f64, u64)>>,
}

impl FreeCounts {
    pub fn add(&mut self, at_s: f64, totals: &[(u64, u64)]) {
        self.times.push(at_s);
        for &(t, n) in totals {
            self.counts.entry(t).or_default().push((at_s, n));
        }
    }

    /// Types whose whole count grows over the recent half of the censuses.
    pub fn growing(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts
            .keys()
            .copied()
            .filter(|&t| self.flat(t) == Some(false))
    }

    /// Whether the type's whole count has stayed flat over the recent half of the
    /// censuses (at least 3 of them): `None` when the free signals cannot tell.
    pub fn flat(&self, type_ptr: u64) -> Option<bool> {
        let h = self.counts.get(&type_ptr)?;
        let first = self
            .times
            .len()
            .saturating_sub(self.times.len().div_ceil(2).max(3));
        let recent: Vec<&(f64, u64)> = h.iter().filter(|(t, _)| *t >= self.times[first]).collect();
        if self.times.len() < 4 || recent.len() < 3 {
            return None;
        }
        let xs: Vec<f64> = recent.iter().map(|(t, _)| *t).collect();
        let ys: Vec<u64> = recent.iter().map(|(_, n)| *n).collect();
        let (lo, hi) = (ys[0], *ys.last().unwrap());
        let gained = hi.saturating_sub(lo);
        let grows =
            aggregate::slope(&xs, &ys) > 0.0 && gained >= aggregate::MIN_NET_GROWTH.max(lo / 100);
        Some(!grows)
    }
}

/// Under a budget, a census walk is followed by a pause this many times its length (it
/// reads the heap while the target runs: see README's bench for what that costs).
pub const CENSUS_GAP_PER_WALK: f64 = 19.0;

/// Builtin types whose instances the collector may untrack while they live (so the GC lists
/// do not hold them all): their whole count from the GC lists is no check on growth.
pub const UNTRACKED_BY_GC: &[&str] = &["dict", "tuple"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_counts_call_a_plateau_flat_and_a_leak_not() {
        const CACHE: u64 = 1;
        const LEAK: u64 = 2;
        let mut f = FreeCounts::default();
        assert_eq!(f.flat(CACHE), None);
        // A cache filled in the first seconds, then flat; a leak at 100/s.
        for i in 0..10u64 {
            let t = i as f64 * 5.0;
            f.add(
                t,
                &[
                    (CACHE, if i == 0 { 0 } else { 5000 + i % 2 }),
                    (LEAK, 500 * i),
                ],
            );
        }
        assert_eq!(f.flat(CACHE), Some(true));
        assert_eq!(f.flat(LEAK), Some(false));
        assert_eq!(f.growing().collect::<Vec<_>>(), [LEAK]);
        // A type the free signals never counted: they cannot tell.
        assert_eq!(f.flat(3), None);
    }
}
