//! The heap as a graph of references, read from outside, for retention chains: every object
//! the GC lists hold (containers) and every object in pymalloc's pools (what the GC lists
//! miss: C-extension objects without GC support, strings, floats...), and for each, what it
//! refers to (`cpython::refs`). Kept as a reverse index: who refers to an object.
//!
//! The target runs while this is read (nothing is paused): an edge read here may be gone a
//! moment later. `model::chains` confirms each chain it reports by reading its links again
//! (`Graph::holds`).
use super::{Allocator, Heap, Walker};
use crate::cpython::refs::{self, Kind, RefLayout, TypeFacts, Via};
use crate::model::chains::Node;
use crate::resolve::types::Resolver;
use crate::target::Memory;
use hashbrown::{HashMap, HashSet};
use std::time::Instant;

/// Most references kept (about 40 bytes each with the index: ~400 MB at the bound); past it
/// the graph says it is bounded and chains may miss a holder.
pub const MAX_EDGES: u64 = 10_000_000;

/// A type as the graph sees it.
#[derive(Clone, Debug)]
pub struct TypeNode {
    pub name: String,
    pub kind: Kind,
    pub facts: TypeFacts,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GraphStats {
    /// Objects met in the GC lists and pymalloc's pools.
    pub objects: u64,
    /// References kept.
    pub edges: u64,
    /// Objects whose references came from a scan (no layout: C types, frames...).
    pub scanned: u64,
    /// Running frames read (their locals are roots).
    pub frames: u64,
    /// Hit `MAX_EDGES` or a walk's own bound: chains may miss a referrer.
    pub bounded: bool,
    /// Wall time of the whole read, milliseconds.
    pub ms: f64,
}

pub struct Graph {
    layout: RefLayout,
    objects: HashMap<u64, u64>,
    /// The reverse index, flat (a map of vectors took ~250 bytes a reference): `keys[i]` is
    /// the referent of `edges[i]` (referrer, how), sorted by referent.
    keys: Vec<u64>,
    edges: Vec<(u64, Via)>,
    /// References while reading: (referent, referrer, how).
    pending: Vec<(u64, u64, Via)>,
    types: HashMap<u64, TypeNode>,
    garbage: HashSet<u64>,
    /// Running frames (roots): frame address → (code object, thread's place in its list).
    frames: HashMap<u64, (u64, usize)>,
    pub stats: GraphStats,
}

impl Graph {
    /// Reads the heap once: the GC lists (`heap`), pymalloc's pools (`allocator`, when
    /// found), and `tracked` (objects the probes saw born and are still alive: on a build
    /// without the allocator census, the only way to meet a C type's object without GC
    /// support), then every container's references.
    pub fn read(
        layout: RefLayout,
        heap: &Heap,
        allocator: Option<&Allocator>,
        tracked: &[(u64, u64)],
        resolver: &mut Resolver,
        mem: &dyn Memory,
    ) -> Graph {
        let started = Instant::now();
        let mut walker = Walker::new(heap, resolver).collecting();
        let census = walker.run();
        let (gc_objects, garbage) = walker.take_objects();
        let mut bounded = census.stats.bounded;
        let mut objects: HashMap<u64, u64> = gc_objects.into_iter().collect();
        if let Some(a) = allocator {
            let (c, blocks) = a.walk_objects(resolver);
            bounded |= c.stats.bounded;
            for (o, t) in blocks {
                objects.entry(o).or_insert(t);
            }
        }
        for &(o, t) in tracked {
            // Still that object: its type pointer unchanged.
            if mem.u64(o + crate::cpython::OB_TYPE).ok() == Some(t) {
                objects.entry(o).or_insert(t);
            }
        }
        let mut g = Graph {
            layout,
            objects,
            keys: vec![],
            edges: vec![],
            pending: vec![],
            types: HashMap::new(),
            garbage: garbage.into_iter().collect(),
            frames: HashMap::new(),
            stats: GraphStats::default(),
        };
        g.read_threads(heap, mem);
        let all: Vec<(u64, u64)> = g.objects.iter().map(|(&o, &t)| (o, t)).collect();
        g.stats.objects = all.len() as u64;
        for (o, t) in all {
            if g.stats.edges >= MAX_EDGES {
                bounded = true;
                break;
            }
            let Some(facts) = g.type_node(t, resolver).map(|n| n.facts) else {
                continue;
            };
            if facts.kind == Kind::Leaf {
                continue;
            }
            if matches!(facts.kind, Kind::Scan { .. }) {
                g.stats.scanned += 1;
            }
            let refs = {
                let objects = &g.objects;
                refs::referents(&g.layout, mem, o, t, facts, &|a| objects.contains_key(&a))
            };
            for (to, via) in refs {
                g.pending.push((to, o, via));
                g.stats.edges += 1;
            }
        }
        let mut pending = std::mem::take(&mut g.pending);
        pending.sort_unstable_by_key(|&(to, from, _)| (to, from));
        g.keys = pending.iter().map(|e| e.0).collect();
        g.edges = pending
            .into_iter()
            .map(|(_, from, via)| (from, via))
            .collect();
        g.stats.bounded = bounded;
        g.stats.ms = started.elapsed().as_secs_f64() * 1e3;
        g
    }

    /// Every thread's running frames: their `localsplus` slots are references from roots.
    fn read_threads(&mut self, heap: &Heap, mem: &dyn Memory) {
        let Some(l) = refs::thread_layout(heap.version()) else {
            return;
        };
        for interp in heap.interpreters() {
            let mut tstate = mem.u64(interp + l.threads_head).unwrap_or(0);
            let mut thread = 0;
            while tstate != 0 && thread < refs::MAX_THREADS {
                let (a, b) = l.stack.frame_path;
                let mut frame = mem.u64(tstate + a).unwrap_or(0);
                if let Some(b) = b
                    && frame != 0
                {
                    frame = mem.u64(frame + b).unwrap_or(0);
                }
                let mut n = 0;
                while frame != 0 && n < refs::MAX_FRAMES && !self.frames.contains_key(&frame) {
                    let code = mem.u64(frame + l.stack.frame_code).unwrap_or(0);
                    // `stacktop` is -1 while the frame runs (the stack pointer is in a
                    // register): then only its locals, cells and free variables are read.
                    let top = mem.u64(frame + l.frame_stacktop).unwrap_or(0) as u32 as i32;
                    let locals = mem.u64(code + l.co_nlocalsplus).unwrap_or(0) as u32 as i32;
                    let top = if top >= 0 { top.max(locals) } else { locals }.max(0) as u64;
                    self.frames.insert(frame, (code, thread));
                    self.stats.frames += 1;
                    if top <= 4096 {
                        let mut buf = vec![0u8; 8 * top as usize];
                        if mem.read(frame + l.frame_localsplus, &mut buf).is_ok() {
                            for (i, w) in buf.chunks(8).enumerate() {
                                let w = u64::from_le_bytes(w.try_into().unwrap());
                                if w != 0 && self.objects.contains_key(&w) {
                                    self.pending.push((w, frame, Via::Local(i as u32)));
                                    self.stats.edges += 1;
                                }
                            }
                        }
                    }
                    frame = mem.u64(frame + l.stack.frame_prev).unwrap_or(0);
                    n += 1;
                }
                tstate = mem.u64(tstate + l.tstate_next).unwrap_or(0);
                thread += 1;
            }
        }
    }

    /// The code object whose locals `holder` holds: a running frame's, or a generator's or
    /// frame object's own frame's.
    pub fn code_of(&self, mem: &dyn Memory, holder: u64) -> Option<u64> {
        if let Some(&(code, _)) = self.frames.get(&holder) {
            return Some(code);
        }
        let kind = self.types.get(&self.type_of(holder)?)?.kind;
        let f = refs::iframe_of(self.layout.version(), kind, mem, holder)?;
        let l = refs::thread_layout(self.layout.version())?;
        mem.u64(f + l.stack.frame_code).ok()
    }

    /// A running frame's code object and its thread's place in the interpreter's list.
    pub fn frame(&self, addr: u64) -> Option<(u64, usize)> {
        self.frames.get(&addr).copied()
    }

    fn type_node(&mut self, t: u64, resolver: &mut Resolver) -> Option<&TypeNode> {
        if !self.types.contains_key(&t) {
            let info = resolver.get(t)?;
            let kind = refs::kind_of(&info.name, info.flags, info.heap, info.interpreter);
            let node = TypeNode {
                name: info.name.clone(),
                kind,
                facts: TypeFacts {
                    kind,
                    basicsize: info.basicsize,
                    itemsize: info.itemsize,
                    flags: info.flags,
                },
            };
            self.types.insert(t, node);
        }
        self.types.get(&t)
    }

    /// Who refers to `addr`, and how.
    pub fn referrers(&self, addr: u64) -> &[(u64, Via)] {
        let lo = self.keys.partition_point(|&k| k < addr);
        let hi = self.keys.partition_point(|&k| k <= addr);
        &self.edges[lo..hi]
    }

    /// The type of an object the walks met.
    pub fn type_of(&self, addr: u64) -> Option<u64> {
        self.objects.get(&addr).copied()
    }

    /// `t` is a Python class (its instances have the `Instance` layout).
    pub fn is_instance_type(&self, t: u64) -> bool {
        self.types.get(&t).is_some_and(|n| n.kind == Kind::Instance)
    }

    pub fn type_name(&self, t: u64) -> Option<&str> {
        self.types.get(&t).map(|n| n.name.as_str())
    }

    pub fn node(&self, addr: u64) -> Node {
        if self.garbage.contains(&addr) {
            return Node::Garbage;
        }
        if self.frames.contains_key(&addr) {
            return Node::Frame;
        }
        match self
            .type_of(addr)
            .and_then(|t| self.types.get(&t))
            .map(|n| n.kind)
        {
            Some(Kind::Module) => Node::Module,
            Some(Kind::Type) => Node::Type,
            Some(Kind::Scan {
                native: true,
                gc: false,
            }) => Node::Native,
            _ => Node::Other,
        }
    }

    /// Does `holder` still refer to `held` the same way? Read again, now.
    pub fn holds(&self, mem: &dyn Memory, holder: u64, held: u64, via: Via) -> bool {
        if let (Via::Local(i), Some(l)) = (via, refs::thread_layout(self.layout.version()))
            && self.frames.contains_key(&holder)
        {
            return mem.u64(holder + l.frame_localsplus + 8 * i as u64).ok() == Some(held);
        }
        let Some(t) = self.type_of(holder) else {
            return false;
        };
        let Some(node) = self.types.get(&t) else {
            return false;
        };
        // Still the same object: its type pointer unchanged.
        if mem.u64(holder + crate::cpython::OB_TYPE).ok() != Some(t) {
            return false;
        }
        let objects = &self.objects;
        refs::referents(&self.layout, mem, holder, t, node.facts, &|a| {
            a == held || objects.contains_key(&a)
        })
        .into_iter()
        .any(|(to, v)| to == held && v == via)
    }
}

impl crate::model::chains::HeapView for Graph {
    fn referrers(&self, addr: u64) -> &[(u64, Via)] {
        Graph::referrers(self, addr)
    }

    fn node(&self, addr: u64) -> Node {
        Graph::node(self, addr)
    }
}
