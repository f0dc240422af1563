//! Retention chains: from a leaked object outward, through who refers to it, to what keeps
//! it alive. Pure: a breadth-first search over any `HeapView` (the real one is
//! `census::Graph`), so the shortest chain to the nearest root is found:
//!
//! - a module (its global: the key of the module dict's entry on the chain),
//! - a class (an attribute in its `__dict__`),
//! - a `gc.garbage` list,
//! - a thread's running frame (a local variable),
//! - the leaked object itself: a cycle (one the collector cannot break when a C-level holder,
//!   whose references it does not see, is on it),
//!
//! or, when none is reached, the farthest holder found ("unrooted": held from memory the
//! graph does not read, such as a thread's running frames or a C library's own structures).
use crate::cpython::refs::Via;
use hashbrown::HashMap;
use std::collections::VecDeque;

/// Most objects one search visits.
pub const MAX_VISITED: usize = 200_000;
/// Longest chain searched.
pub const MAX_DEPTH: usize = 24;

/// What an object is, for the ends of chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Module,
    Type,
    /// A `gc.garbage` list.
    Garbage,
    /// A C extension's object: what it holds was found by a scan.
    Native,
    /// A thread's running frame (not an object: its locals are roots).
    Frame,
    Other,
}

pub trait HeapView {
    fn referrers(&self, addr: u64) -> &[(u64, Via)];
    fn node(&self, addr: u64) -> Node;
}

/// One step outward: `holder` refers to the previous link `via`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub holder: u64,
    pub via: Via,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The last holder is a module.
    Module,
    /// The last holder is a class.
    Class,
    /// The last holder is `gc.garbage`.
    Garbage,
    /// The last holder is a thread's running frame (a local variable).
    Frame,
    /// The last step leads back to the leaked object.
    Cycle,
    /// No root was reached: the last holder is the farthest one found.
    Unrooted,
    /// Nothing refers to the object among what was read.
    NoReferrer,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub start: u64,
    /// From the object outward; a `Cycle`'s last step's holder is `start`.
    pub steps: Vec<Step>,
    pub end: End,
    /// A C-level holder (a scan found the reference) is on the chain.
    pub through_native: bool,
    /// Objects the search visited.
    pub visited: usize,
}

/// The shortest chain from `start` to a root.
pub fn find(view: &dyn HeapView, start: u64) -> Chain {
    // parent[x] = (the object x holds on the way back to start, how)
    let mut parent: HashMap<u64, (u64, Via)> = HashMap::new();
    let mut depth: HashMap<u64, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    depth.insert(start, 0);
    let mut farthest = start;
    let mut found: Option<(u64, End)> = None;
    'search: while let Some(x) = queue.pop_front() {
        let d = depth[&x];
        if d >= MAX_DEPTH {
            continue;
        }
        for &(holder, via) in view.referrers(x) {
            if holder == start {
                found = Some((x, End::Cycle));
                parent.insert(u64::MAX, (x, via)); // the closing step, kept apart
                break 'search;
            }
            if depth.contains_key(&holder) {
                continue;
            }
            depth.insert(holder, d + 1);
            parent.insert(holder, (x, via));
            let end = match view.node(holder) {
                Node::Module => Some(End::Module),
                Node::Type => Some(End::Class),
                Node::Garbage => Some(End::Garbage),
                Node::Frame => Some(End::Frame),
                Node::Native | Node::Other => None,
            };
            if let Some(end) = end {
                found = Some((holder, end));
                break 'search;
            }
            if d + 1 > depth[&farthest] {
                farthest = holder;
            }
            if depth.len() >= MAX_VISITED {
                break 'search;
            }
            queue.push_back(holder);
        }
    }
    let visited = depth.len();
    let (last, end) = match found {
        Some(f) => f,
        None if farthest == start => (start, End::NoReferrer),
        None => (farthest, End::Unrooted),
    };
    // Walk back from the last holder to start, then reverse: steps outward.
    let mut steps = vec![];
    if end == End::Cycle {
        let (_, via) = parent[&u64::MAX];
        steps.push(Step { holder: start, via });
    }
    let mut at = last;
    while at != start {
        let (held, via) = parent[&at];
        steps.push(Step { holder: at, via });
        at = held;
    }
    // (The closing step of a cycle, pushed first, ends up last.)
    steps.reverse();
    let through_native = steps.iter().any(|s| view.node(s.holder) == Node::Native);
    Chain {
        start,
        steps,
        end,
        through_native,
        visited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        refs: HashMap<u64, Vec<(u64, Via)>>,
        nodes: HashMap<u64, Node>,
    }

    impl Fake {
        fn edge(&mut self, holder: u64, held: u64, via: Via) {
            self.refs.entry(held).or_default().push((holder, via));
        }
    }

    impl HeapView for Fake {
        fn referrers(&self, addr: u64) -> &[(u64, Via)] {
            self.refs.get(&addr).map_or(&[], Vec::as_slice)
        }
        fn node(&self, addr: u64) -> Node {
            self.nodes.get(&addr).copied().unwrap_or(Node::Other)
        }
    }

    #[test]
    fn a_module_global_is_the_nearest_root() {
        // leak 1 ← dict 2 ['k'] ← module dict 3 ['CACHE'] ← module 4; also 1 ← list 5 ← 6 ← 7 (longer)
        let mut f = Fake::default();
        f.edge(2, 1, Via::Value { key: 0x10 });
        f.edge(3, 2, Via::Value { key: 0x20 });
        f.edge(4, 3, Via::Field("__dict__"));
        f.nodes.insert(4, Node::Module);
        f.edge(5, 1, Via::Item(0));
        f.edge(6, 5, Via::Item(0));
        f.edge(7, 6, Via::Item(0));
        f.edge(8, 7, Via::Item(0));
        f.nodes.insert(8, Node::Module);
        let c = find(&f, 1);
        assert_eq!(c.end, End::Module);
        let holders: Vec<u64> = c.steps.iter().map(|s| s.holder).collect();
        assert_eq!(holders, vec![2, 3, 4]);
        assert_eq!(c.steps[1].via, Via::Value { key: 0x20 });
        assert!(!c.through_native);
    }

    #[test]
    fn a_cycle_through_a_c_holder() {
        // owner 1 ← method 2 (__self__) ← handle 3 (scanned, C) ← owner 1 (attr 'handle')
        let mut f = Fake::default();
        f.edge(2, 1, Via::Field("__self__"));
        f.edge(3, 2, Via::Scanned(16));
        f.nodes.insert(3, Node::Native);
        f.edge(1, 3, Via::Attr { key: 0x30 });
        let c = find(&f, 1);
        assert_eq!(c.end, End::Cycle);
        let holders: Vec<u64> = c.steps.iter().map(|s| s.holder).collect();
        assert_eq!(holders, vec![2, 3, 1]);
        assert_eq!(c.steps[2].via, Via::Attr { key: 0x30 });
        assert!(c.through_native);
    }

    #[test]
    fn no_root_gives_the_farthest_holder_or_nothing() {
        let mut f = Fake::default();
        f.edge(2, 1, Via::Item(0));
        f.edge(3, 2, Via::Item(1));
        let c = find(&f, 1);
        assert_eq!(c.end, End::Unrooted);
        assert_eq!(c.steps.last().unwrap().holder, 3);
        let c = find(&f, 99);
        assert_eq!((c.end, c.steps.len()), (End::NoReferrer, 0));
    }

    #[test]
    fn garbage_and_classes_are_roots() {
        let mut f = Fake::default();
        f.edge(2, 1, Via::Item(3));
        f.nodes.insert(2, Node::Garbage);
        assert_eq!(find(&f, 1).end, End::Garbage);
        let mut f = Fake::default();
        f.edge(2, 1, Via::Value { key: 5 });
        f.edge(3, 2, Via::Field("__dict__"));
        f.nodes.insert(3, Node::Type);
        assert_eq!(find(&f, 1).end, End::Class);
    }
}
