//! The census: live objects by type, read from the target's own GC lists with no probe at
//! all. Every interpreter's three generations and its permanent generation (`gc.freeze`) are
//! walked by reading the target's memory, and `gc.garbage` is read item by item.
//!
//! The heap keeps changing while it is read (unless `--pause`), so the walk trusts nothing:
//! it is bounded, checks every link against its back-link (a torn link resynchronizes or
//! restarts that list; see `walk_list`), detects loops, counts each object once, and
//! validates every object (its type pointer must lead to a type object, whose own type is
//! `type` or a metatype); objects that fail are counted as skipped and never reported.
use crate::cpython::{self, GcLayout};
use crate::resolve::types::Resolver;
use crate::target::Mem;
use hashbrown::{HashMap, HashSet};

/// Most objects one walk visits before it stops (and says so).
pub const MAX_OBJECTS: u64 = 50_000_000;
const MAX_INTERPRETERS: usize = 64;
const MAX_RESTARTS: usize = 100;
/// `PyDictObject` with its GC head (48 + 16); its key table and values are not included.
const DICT_OBJECT_BYTES: u64 = cpython::dict::OBJECT_SIZE + cpython::GC_HEAD_SIZE;

/// Counts a restart of a list walk; true when the list must be given up (cut) instead.
fn out_of_restarts(restarts: &mut usize, stats: &mut WalkStats) -> bool {
    *restarts += 1;
    stats.restarts += 1;
    if *restarts > MAX_RESTARTS {
        stats.lists_cut += 1;
        return true;
    }
    false
}

fn word(buf: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalkStats {
    pub interpreters: u64,
    pub lists: u64,
    /// Objects read and validated.
    pub objects: u64,
    /// Objects whose type did not validate: not reported.
    pub skipped_invalid: u64,
    /// List walks restarted from the head because a link and its back-link disagreed (the
    /// heap moved) and could not be resynchronized.
    pub restarts: u64,
    /// Lists given up after MAX_RESTARTS: objects past the cut are missing.
    pub lists_cut: u64,
    /// The walk reached MAX_OBJECTS.
    pub bounded: bool,
}

/// Count and bytes per type pointer.
pub type Counts = HashMap<u64, (u64, u64)>;

pub struct Census {
    pub types: Counts,
    pub garbage: Counts,
    pub stats: WalkStats,
}

/// What a census reads: the target's memory, where its GC lists are, and the two runtime
/// addresses the walk needs.
#[derive(Clone)]
pub struct Heap {
    mem: Mem,
    layout: GcLayout,
    version: cpython::Version,
    /// Runtime address of `_PyRuntime` and `PyType_Type`.
    runtime: u64,
    type_type: u64,
}

impl Heap {
    /// GC list offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets` (see
    /// `cpython::gc_layout_from`), earlier versions from the table.
    pub fn of(
        process: &crate::target::Process,
        interp: &crate::target::interpreter::Interpreter,
    ) -> anyhow::Result<Heap> {
        use anyhow::Context;
        let layout = cpython::gc_layout_from(interp.version, interp.binary.section(".PyRuntime"))
            .map_err(anyhow::Error::msg)?;
        Ok(Heap {
            mem: process.memory(),
            layout,
            version: interp.version,
            runtime: interp
                .runtime_addr("_PyRuntime")
                .context("_PyRuntime not found")?,
            type_type: interp
                .runtime_addr("PyType_Type")
                .context("PyType_Type not found")?,
        })
    }
}

impl Heap {
    pub fn version(&self) -> cpython::Version {
        self.version
    }

    /// The interpreters, in list order.
    pub fn interpreters(&self) -> Vec<u64> {
        let mut out = vec![];
        let mut interp = self
            .mem
            .u64(self.runtime + self.layout.interpreters_head)
            .unwrap_or(0);
        while interp != 0 && !out.contains(&interp) && out.len() < MAX_INTERPRETERS {
            out.push(interp);
            interp = self.mem.u64(interp + self.layout.interp_next).unwrap_or(0);
        }
        out
    }

    /// Where the main interpreter's `gc.collecting` flag is (the last interpreter of the
    /// list: new ones join at its head), for the free probes' `FREE_IN_GC`.
    pub fn gc_collecting_addr(&self) -> Option<u64> {
        let mut interp = self
            .mem
            .u64(self.runtime + self.layout.interpreters_head)
            .unwrap_or(0);
        let (mut main, mut n) = (0, 0);
        while interp != 0 && n < MAX_INTERPRETERS {
            main = interp;
            interp = self.mem.u64(interp + self.layout.interp_next).unwrap_or(0);
            n += 1;
        }
        (main != 0).then(|| main + self.layout.interp_gc + self.layout.collecting)
    }
}

#[cfg(test)]
impl Heap {
    /// A heap over memory a test built (`census::fake`), with the version's table layout.
    pub(crate) fn fake(mem: Mem, version: cpython::Version, runtime: u64, type_type: u64) -> Heap {
        Heap {
            mem,
            layout: cpython::gc_layout(version).unwrap(),
            version,
            runtime,
            type_type,
        }
    }
}

pub struct Walker<'a> {
    heap: Heap,
    mem: Mem,
    layout: GcLayout,
    type_type: u64,
    resolver: &'a mut Resolver,
    valid_types: HashMap<u64, bool>,
    version: cpython::Version,
    /// Values bytes per heap type (from its shared keys), read once per census.
    values: HashMap<u64, u64>,
    /// With `collecting`: every validated object met, and its type (for `census::graph`).
    objects: Option<Vec<(u64, u64)>>,
    /// The `gc.garbage` lists met.
    garbage_lists: Vec<u64>,
}

impl<'a> Walker<'a> {
    pub fn new(heap: &Heap, resolver: &'a mut Resolver) -> Self {
        let whole = heap.clone();
        let Heap {
            mem,
            layout,
            version,
            type_type,
            ..
        } = heap.clone();
        Walker {
            heap: whole,
            mem,
            layout,
            type_type,
            resolver,
            valid_types: HashMap::new(),
            version,
            values: HashMap::new(),
            objects: None,
            garbage_lists: vec![],
        }
    }

    /// Also keep every validated object and its type (`objects`).
    pub fn collecting(mut self) -> Self {
        self.objects = Some(vec![]);
        self
    }

    /// After `run` with `collecting`: (object, type) of every validated object, and the
    /// `gc.garbage` lists.
    pub fn take_objects(&mut self) -> (Vec<(u64, u64)>, Vec<u64>) {
        (
            self.objects.take().unwrap_or_default(),
            std::mem::take(&mut self.garbage_lists),
        )
    }

    /// Bytes of an instance's values array (3.11/3.12) or inline values (3.13) for type `t`.
    fn values_bytes(&mut self, t: u64) -> u64 {
        if let Some(&b) = self.values.get(&t) {
            return b;
        }
        let b = cpython::ht_cached_keys(self.version)
            .and_then(|off| {
                let keys = self.mem.u64(t + off).ok().filter(|&k| k != 0)?;
                let usable = self.mem.u64(keys + cpython::DK_USABLE).ok()?;
                let nentries = self.mem.u64(keys + cpython::DK_NENTRIES).ok()?;
                let size = usable.checked_add(nentries).filter(|&n| n < 1 << 16)?;
                Some(cpython::values_bytes(self.version, size))
            })
            .unwrap_or(0);
        self.values.insert(t, b);
        b
    }

    /// The object's size, plus what the version keeps beside it: values not yet turned into
    /// a dict (3.11/3.12: their own block; 3.13: inline after the object), and a materialized
    /// instance dict the collector does not track (a tracked one is counted as a `dict`).
    fn bytes(&mut self, ob_type: u64, ob_size: i64, m32: u64, m24: u64) -> u64 {
        let t = self.resolver.get(ob_type).expect("validated").clone();
        let mut bytes = cpython::object_bytes(t.basicsize, t.itemsize, ob_size, t.preheader);
        if t.flags & cpython::TPFLAGS_INLINE_VALUES != 0 {
            bytes += self.values_bytes(ob_type);
        }
        match cpython::beside(self.version, t.flags, m32, m24) {
            cpython::Beside::Values => bytes += self.values_bytes(ob_type),
            cpython::Beside::Dict(d) => {
                // _gc_next == 0: not tracked, so not on any list: count it with its owner.
                if self
                    .mem
                    .u64(d - cpython::GC_HEAD_SIZE)
                    .is_ok_and(|next| next == 0)
                {
                    bytes += DICT_OBJECT_BYTES;
                }
            }
            cpython::Beside::Nothing => {}
        }
        bytes
    }

    /// Is `t` a type object? Its own type must be `type` or a metatype (a type whose flags
    /// say it subclasses `type`), and the resolver must be able to read it.
    fn valid_type(&mut self, t: u64) -> bool {
        if let Some(&v) = self.valid_types.get(&t) {
            return v;
        }
        let ok = (|| {
            if t == 0 || !t.is_multiple_of(8) {
                return Some(false);
            }
            let meta = self.mem.u64(t + cpython::OB_TYPE).ok()?;
            let meta_ok = meta == self.type_type
                || (self.mem.u64(meta + cpython::OB_TYPE).ok()? == self.type_type
                    && self.mem.u64(meta + cpython::TP_FLAGS).ok()?
                        & cpython::TPFLAGS_TYPE_SUBCLASS
                        != 0);
            Some(meta_ok && self.resolver.get(t).is_some())
        })()
        .unwrap_or(false);
        self.valid_types.insert(t, ok);
        ok
    }

    /// One census: every interpreter's lists, then its gc.garbage.
    pub fn run(&mut self) -> Census {
        let mut census = Census {
            types: HashMap::new(),
            garbage: HashMap::new(),
            stats: WalkStats::default(),
        };
        let mut seen = HashSet::new();
        for interp in self.interpreters() {
            census.stats.interpreters += 1;
            let gc = interp + self.layout.interp_gc;
            let generation0 = self
                .layout
                .generation0
                .and_then(|f| self.heap.mem.u64(gc + f).ok());
            let first = self.layout.generations_at(gc, generation0);
            let heads: Vec<u64> = (0..3)
                .map(|g| gc + first + g * cpython::GC_GENERATION_SIZE)
                .chain([gc + self.layout.permanent])
                .collect();
            for &head in &heads {
                self.walk_list(head, &heads, &mut census, &mut seen);
            }
            self.read_garbage(gc + self.layout.garbage, &mut census);
        }
        census
    }

    /// The interpreters, in list order.
    fn interpreters(&self) -> Vec<u64> {
        self.heap.interpreters()
    }

    /// Walks one circular list of `PyGC_Head`s anchored at `head`.
    ///
    /// A node whose back-link does not point at the node we came from means the list moved
    /// under us: we resynchronize from the previous node's current successor when that one is
    /// consistent and the previous node itself has not moved (see `resync`), else restart
    /// from the head (at most MAX_RESTARTS times). Objects are counted
    /// once per census however often they are passed (`seen`), and only when reached through
    /// a consistent link and validated.
    /// Reaching another list's head means our list was merged into it while we walked (a
    /// collection promoting a generation; our head is then empty) or that we were led off it
    /// through a freed and reused node (our head is not empty: restart).
    fn walk_list(
        &mut self,
        head: u64,
        heads: &[u64],
        census: &mut Census,
        seen: &mut HashSet<u64>,
    ) {
        census.stats.lists += 1;
        // From op-32 (the managed-dict pre-header, 3.11+): [op-32, op-24, _gc_next, _gc_prev,
        // ob_refcnt, ob_type, ob_size]; the 16 bytes before the GC head are always mapped
        // (pool header or the previous block), but if not, the head alone is read.
        let mut buf = [0u8; cpython::window::BYTES];
        let mut restarts = 0;
        'restart: loop {
            let mut pass = HashSet::new();
            let mut since_new = 0;
            let mut prev = head;
            // The node before `prev` when `prev` was validated (none for the head).
            let mut before_prev = None;
            let Ok(first) = self.mem.u64(head) else {
                census.stats.lists_cut += 1;
                return;
            };
            let mut g = cpython::gc_next_ptr(first);
            while g != head {
                if heads.contains(&g) {
                    // A collection merged our list into an older one (which leaves our
                    // head empty): the rest is counted with that list. Otherwise a node we
                    // came through was freed and reused in another list: start over.
                    if self
                        .mem
                        .u64(head)
                        .is_ok_and(|n| cpython::gc_next_ptr(n) == head)
                    {
                        return;
                    }
                    if out_of_restarts(&mut restarts, &mut census.stats) {
                        return;
                    }
                    continue 'restart;
                }
                if census.stats.objects >= MAX_OBJECTS {
                    census.stats.bounded = true;
                    return;
                }
                if g == 0 {
                    if out_of_restarts(&mut restarts, &mut census.stats) {
                        return;
                    }
                    continue 'restart;
                }
                if pass.insert(g) {
                    since_new = 0;
                } else {
                    // Seen in this pass already: lists are relinked under us (blocks reused
                    // at the tail, a collection moving nodes through its own temporary
                    // lists). Keep going, nothing is counted twice; but going round for
                    // longer than the pass has run means we are circling a list that is not
                    // ours: start over.
                    since_new += 1;
                    if since_new > pass.len().max(1000) {
                        if out_of_restarts(&mut restarts, &mut census.stats) {
                            return;
                        }
                        continue 'restart;
                    }
                }
                let read = self
                    .mem
                    .read(g - cpython::window::HEAD_AT as u64, &mut buf)
                    .is_ok()
                    || {
                        buf[..cpython::window::HEAD_AT].fill(0);
                        self.mem
                            .read(g, &mut buf[cpython::window::HEAD_AT..])
                            .is_ok()
                    };
                let consistent =
                    read && cpython::gc_prev_ptr(word(&buf, cpython::window::GC_PREV)) == prev;
                if !consistent {
                    if let Some(next) = self.resync(before_prev, prev, g) {
                        g = next;
                        continue;
                    }
                    if out_of_restarts(&mut restarts, &mut census.stats) {
                        return;
                    }
                    continue 'restart;
                }
                if seen.insert(g) {
                    census.stats.objects += 1;
                    let (ob_type, ob_size) = (
                        word(&buf, cpython::window::OB_TYPE),
                        word(&buf, cpython::window::OB_SIZE) as i64,
                    );
                    if self.valid_type(ob_type) {
                        let bytes = self.bytes(
                            ob_type,
                            ob_size,
                            word(&buf, cpython::window::M32),
                            word(&buf, cpython::window::M24),
                        );
                        let e = census.types.entry(ob_type).or_default();
                        e.0 += 1;
                        e.1 += bytes;
                        if let Some(objects) = &mut self.objects {
                            objects.push((g + cpython::GC_HEAD_SIZE, ob_type));
                        }
                    } else {
                        census.stats.skipped_invalid += 1;
                    }
                }
                before_prev = Some(prev);
                prev = g;
                g = cpython::gc_next_ptr(word(&buf, cpython::window::GC_NEXT));
            }
            return;
        }
    }

    /// After a torn link at `bad`: `prev`'s successor now, if it links back to `prev` and
    /// `prev` is still where we validated it, after `before_prev`.
    ///
    /// That last check fixes the census's short walks (about one running census in 50–150
    /// under extreme churn came out far short, with no restart and no cut reported). `prev`
    /// can die after we read it and its block be reused at once for a new object, tracked at
    /// the end of generation 0 (pymalloc hands out the last freed block first). Its new
    /// links agree with each other, so without the check the resync "succeeded" and the walk
    /// went on from `prev`'s new place; when that is the tail of the list being walked
    /// (generation 0 itself, or an older generation after a collection merged the young
    /// ones into it), the walk met its own head and ended as if complete, missing every node
    /// that was after `prev`. A moved `prev` has a new back-link (the old tail it was
    /// appended after; zero if it is only untracked), so it is caught here and the list
    /// restarts, counted. Not caught: `prev` and then its old successor both moved, in that
    /// order, to the same tail between two of our reads (the successor's back-link then
    /// agrees with `prev`): two specific deaths and reuses inside one read, in list order.
    fn resync(&self, before_prev: Option<u64>, prev: u64, bad: u64) -> Option<u64> {
        let mut links = [0u8; 16];
        self.mem.read(prev, &mut links).ok()?;
        let (next, back) = (
            cpython::gc_next_ptr(word(&links, 0)),
            cpython::gc_prev_ptr(word(&links, 1)),
        );
        if before_prev.is_some_and(|b| b != back) || next == bad || next == 0 {
            return None;
        }
        (cpython::gc_prev_ptr(self.mem.u64(next + cpython::GC_PREV).ok()?) == prev).then_some(next)
    }

    /// `gc.garbage`: a list object; each item validated like a list entry.
    fn read_garbage(&mut self, slot: u64, census: &mut Census) {
        let Ok(list) = self.mem.u64(slot) else { return };
        if list == 0 {
            return;
        }
        self.garbage_lists.push(list);
        let (Ok(n), Ok(items)) = (
            self.mem.u64(list + cpython::LIST_SIZE),
            self.mem.u64(list + cpython::LIST_ITEMS),
        ) else {
            return;
        };
        for i in 0..n.min(1 << 24) {
            let Ok(obj) = self.mem.u64(items + 8 * i) else {
                break;
            };
            let mut buf = [0u8; 16];
            if self.mem.read(obj + cpython::OB_TYPE, &mut buf).is_err() {
                census.stats.skipped_invalid += 1;
                continue;
            }
            let ob_type = u64::from_le_bytes(buf[..8].try_into().unwrap());
            let ob_size = i64::from_le_bytes(buf[8..].try_into().unwrap());
            if !self.valid_type(ob_type) {
                census.stats.skipped_invalid += 1;
                continue;
            }
            let mut pre = [0u8; 16];
            let _ = self.mem.read(obj - cpython::MANAGED_PREHEADER_AT, &mut pre);
            let bytes = self.bytes(
                ob_type,
                ob_size,
                word(&pre, cpython::window::M32),
                word(&pre, cpython::window::M24),
            );
            let e = census.garbage.entry(ob_type).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
    }
}

#[cfg(test)]
#[path = "walker_tests.rs"]
mod tests;
