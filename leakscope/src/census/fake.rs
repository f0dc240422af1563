//! Test support: a CPython process laid out by hand in `FakeMemory`, with the real
//! per-version offsets from `cpython` (nothing here invents a layout): `_PyRuntime` and its
//! interpreters, each interpreter's GC generations and `gc.garbage`, type objects, GC-tracked
//! objects on circular `PyGC_Head` lists, `str`, `bytes` and code objects.
//!
//! Conventions: a tracked object is named by its `PyGC_Head` address (a *node*, what the GC
//! lists link and what the census walks); the `PyObject` is at node + 16. Every block is
//! zero-filled when allocated so that a read inside it succeeds; anything never allocated is
//! unreadable, like an unmapped page.
//!
//! The list operations (`append`, `untrack`, `merge`) do what CPython's `gc_list_append`,
//! `_PyObject_GC_UNTRACK` and `gc_list_merge` do (3.11 `Modules/gcmodule.c`,
//! `Include/internal/pycore_object.h`), on anything with [`Words`]: the builder before a walk,
//! or the `FakeHeap` an `on_read` hook gets during one (a target running under the walker).
use crate::cpython::{self, GcLayout, Version, dict};
use crate::target::memory::FakeHeap;
use crate::target::{FakeMemory, Mem};
use std::sync::Arc;

pub const V311: Version = Version {
    major: 3,
    minor: 11,
    patch: 7,
};
pub const V312: Version = Version {
    major: 3,
    minor: 12,
    patch: 1,
};

/// `PyGC_Head._gc_prev` low bits: `_PyGC_PREV_MASK_FINALIZED` (1) and `_COLLECTING` (2).
const PREV_FLAGS: u64 = 3;
const PREV_MASK_FINALIZED: u64 = 1;
/// `PyHeapTypeObject` is smaller than this in every supported version (3.11: 0x370 bytes
/// up to `ht_cached_keys` included); zero-filled, so any field the code reads is readable.
const TYPE_OBJECT_BYTES: u64 = 0x400;
/// `PyASCIIObject.state`: kind 1 (bits 2-4), compact (bit 5), ascii (bit 6), ready (bit 7).
const STATE_COMPACT_ASCII: u64 = 1 << 2 | 1 << 5 | 1 << 6 | 1 << 7;

/// Word access shared by the builder and `on_read` hooks.
pub trait Words {
    fn word(&self, addr: u64) -> u64;
    fn set(&self, addr: u64, value: u64);

    fn next(&self, node: u64) -> u64 {
        self.word(node) & !PREV_FLAGS
    }
    fn prev(&self, node: u64) -> u64 {
        self.word(node + 8) & !PREV_FLAGS
    }
    fn set_next(&self, node: u64, next: u64) {
        self.set(node, next);
    }
    /// `_PyGCHead_SET_PREV`: the flag bits stay.
    fn set_prev(&self, node: u64, prev: u64) {
        let flags = self.word(node + 8) & PREV_FLAGS;
        self.set(node + 8, prev | flags);
    }
}

impl Words for FakeMemory {
    fn word(&self, addr: u64) -> u64 {
        self.get(addr)
            .unwrap_or_else(|| panic!("test reads unmapped {addr:#x}"))
    }
    fn set(&self, addr: u64, value: u64) {
        self.put(addr, value)
    }
}

impl Words for FakeHeap<'_> {
    fn word(&self, addr: u64) -> u64 {
        self.get(addr)
            .unwrap_or_else(|| panic!("hook reads unmapped {addr:#x}"))
    }
    fn set(&self, addr: u64, value: u64) {
        self.put(addr, value)
    }
}

/// `gc_list_init`: an empty list is a head linked to itself.
pub fn init(w: &impl Words, head: u64) {
    w.set(head, head);
    w.set(head + 8, head);
}

/// `gc_list_append` (and `_PyObject_GC_TRACK`, which appends to generation 0).
pub fn append(w: &impl Words, node: u64, head: u64) {
    let last = w.prev(head);
    w.set_next(last, node);
    w.set_prev(node, last);
    w.set_next(node, head);
    w.set_prev(head, node);
}

/// `_PyObject_GC_UNTRACK`: unlinks the node and clears its links (the finalized bit stays),
/// as a dying object does before its block is freed.
pub fn untrack(w: &impl Words, node: u64) {
    let (prev, next) = (w.prev(node), w.next(node));
    w.set_next(prev, next);
    w.set_prev(next, prev);
    w.set(node, 0);
    let flags = w.word(node + 8) & PREV_MASK_FINALIZED;
    w.set(node + 8, flags);
}

/// `gc_list_merge(from, to)`: `from`'s nodes go to the end of `to`; `from` is left empty.
pub fn merge(w: &impl Words, from: u64, to: u64) {
    if w.next(from) == from {
        return;
    }
    let tail = w.prev(to);
    let (first, last) = (w.next(from), w.prev(from));
    w.set_next(tail, first);
    w.set_prev(first, tail);
    w.set_next(last, to);
    w.set_prev(to, last);
    init(w, from);
}

/// The nodes of a list, head excluded, following `_gc_next` (for assertions).
pub fn nodes(w: &impl Words, head: u64) -> Vec<u64> {
    let mut out = vec![];
    let mut g = w.next(head);
    while g != head {
        out.push(g);
        g = w.next(g);
        assert!(out.len() < 1 << 20, "test list does not close");
    }
    out
}

/// A block freed and immediately reused for a new object of type `ty` (pymalloc hands out
/// the last freed block of a size class first): untracked from wherever it was, then tracked
/// at the end of generation 0 like every new GC object.
pub fn free_and_reuse(w: &impl Words, node: u64, ty: u64, gen0: u64) {
    untrack(w, node);
    w.set(node + 16, 1); // ob_refcnt
    w.set(node + 24, ty); // ob_type
    append(w, node, gen0);
}

/// A tiny deterministic generator (SplitMix64) for churn tests: no dependency, same
/// sequence on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where an interpreter keeps its GC state.
#[derive(Clone, Copy, Debug)]
pub struct Interp {
    pub addr: u64,
    /// `interp->gc` (`struct _gc_runtime_state`).
    pub gc: u64,
}

impl Interp {
    /// Head of generation `i` (0, 1, 2).
    pub fn generation(&self, i: u64) -> u64 {
        self.gc + cpython::GC_GENERATIONS + i * cpython::GC_GENERATION_SIZE
    }
    pub fn permanent(&self) -> u64 {
        self.gc + cpython::GC_PERMANENT
    }
    pub fn garbage_slot(&self) -> u64 {
        self.gc + cpython::GC_GARBAGE
    }
}

/// The fake process: memory, a bump allocator, and the runtime objects every test needs.
pub struct Target {
    pub mem: Arc<FakeMemory>,
    pub version: Version,
    pub layout: GcLayout,
    pub runtime: u64,
    pub type_type: u64,
    pub str_type: u64,
    pub bytes_type: u64,
    pub code_type: u64,
    pub list_type: u64,
    pub interps: Vec<Interp>,
    /// The ends of what is allocated in the interpreter image (`_PyRuntime`, static
    /// types) and in the heap.
    image_brk: u64,
    brk: u64,
}

/// Static objects (types, `_PyRuntime`) are laid out from here, the heap from `HEAP`.
const IMAGE: u64 = 0x55_0000_0000;
const HEAP: u64 = 0x7f00_0000_0000;

impl Target {
    /// `_PyRuntime` with one interpreter, empty GC lists and an empty `gc.garbage` slot; the
    /// static types `type`, `str`, `bytes`, `code` and `list`.
    pub fn new(version: Version) -> Target {
        let layout = cpython::gc_layout(version).expect("a supported version");
        let mut t = Target {
            mem: FakeMemory::new(),
            version,
            layout,
            runtime: 0,
            type_type: 0,
            str_type: 0,
            bytes_type: 0,
            code_type: 0,
            list_type: 0,
            interps: vec![],
            image_brk: IMAGE,
            brk: HEAP,
        };
        t.runtime = t.alloc_static(layout.interpreters_head + 8);
        t.type_type = t.alloc_static(TYPE_OBJECT_BYTES);
        let flags = cpython::TPFLAGS_TYPE_SUBCLASS | cpython::TPFLAGS_HAVE_GC;
        t.fill_type(t.type_type, t.type_type, "type", 0x370, 40, flags);
        t.str_type = t.static_type("str", 40, 1, 0);
        t.bytes_type = t.static_type("bytes", 33, 1, 0);
        t.code_type = t.static_type("code", 200, 2, cpython::TPFLAGS_HAVE_GC);
        t.list_type = t.static_type("list", 40, 0, cpython::TPFLAGS_HAVE_GC);
        t.interpreter();
        t
    }

    pub fn mem(&self) -> Mem {
        self.mem.clone()
    }

    pub fn interp(&self) -> Interp {
        self.interps[0]
    }

    /// `(start, end)` of the interpreter image, as the resolver wants it.
    pub fn image(&self) -> Vec<(u64, u64)> {
        vec![(IMAGE, self.image_brk)]
    }

    /// A zero-filled heap block of `len` bytes (rounded up to 16).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.brk;
        self.brk = self.zeroed(at, len);
        at
    }

    /// A zero-filled block in the interpreter image (static objects).
    fn alloc_static(&mut self, len: u64) -> u64 {
        let at = self.image_brk;
        self.image_brk = self.zeroed(at, len);
        at
    }

    /// Zeroes `len` bytes (rounded up to 16) at `at`; returns where the next block goes:
    /// after a gap, so that reading past a block's end fails, as it may in a real heap.
    fn zeroed(&self, at: u64, len: u64) -> u64 {
        let len = (len + 15) & !15;
        for a in (at..at + len).step_by(8) {
            self.mem.put(a, 0);
        }
        at + len + 16
    }

    /// One more interpreter, appended to `_PyRuntime.interpreters` (empty GC lists).
    pub fn interpreter(&mut self) -> Interp {
        let addr = self.alloc(self.layout.interp_gc + cpython::GC_GARBAGE + 8);
        let interp = Interp {
            addr,
            gc: addr + self.layout.interp_gc,
        };
        for i in 0..3 {
            init(&*self.mem, interp.generation(i));
        }
        init(&*self.mem, interp.permanent());
        let link = match self.interps.last() {
            Some(last) => last.addr + self.layout.interp_next,
            None => self.runtime + self.layout.interpreters_head,
        };
        self.mem.put(link, addr);
        self.interps.push(interp);
        interp
    }

    fn fill_type(&self, t: u64, meta: u64, name: &str, basic: u64, item: u64, flags: u64) {
        let m = &self.mem;
        let tp_name = t + TYPE_OBJECT_BYTES - 64; // the name inside the type's own block
        m.put_bytes(tp_name, format!("{name}\0").as_bytes());
        m.put_words(t, &[1, meta]);
        m.put_words(t + cpython::TP_NAME, &[tp_name, basic, item]);
        m.put(t + cpython::TP_FLAGS, flags);
    }

    /// A static (non-heap) type in the interpreter image, like `dict` or `list`.
    pub fn static_type(&mut self, name: &str, basic: u64, item: u64, flags: u64) -> u64 {
        let t = self.alloc_static(TYPE_OBJECT_BYTES);
        self.fill_type(t, self.type_type, name, basic, item, flags);
        t
    }

    /// A class: a heap type named `name` whose `__module__` is `module`, its metatype `type`.
    pub fn heap_type(&mut self, module: &str, name: &str, basic: u64, flags: u64) -> u64 {
        let meta = self.type_type;
        self.heap_type_of(meta, module, name, basic, flags)
    }

    /// A heap type whose own type is `meta` (a metaclass instance).
    pub fn heap_type_of(
        &mut self,
        meta: u64,
        module: &str,
        name: &str,
        basic: u64,
        flags: u64,
    ) -> u64 {
        let t = self.alloc(TYPE_OBJECT_BYTES);
        self.fill_type(t, meta, name, basic, 0, flags | cpython::TPFLAGS_HEAPTYPE);
        let key_doc = self.str("__doc__");
        let key = self.str("__module__");
        let value = self.str(module);
        let d = self.dict(&[(key_doc, 0), (key, value)]);
        self.mem.put(t + cpython::TP_DICT, d);
        t
    }

    /// A plain 3.11+ class instance's type: GC, managed dict (`class Leak: ...`).
    pub fn class(&mut self, module: &str, name: &str) -> u64 {
        let flags = cpython::TPFLAGS_HAVE_GC | cpython::TPFLAGS_MANAGED_DICT;
        self.heap_type(module, name, 16, flags)
    }

    /// A dict holding `items` (str keys), in this version's layout (`cpython::dict`): just
    /// enough for the resolver's `__module__` lookup.
    pub fn dict(&mut self, items: &[(u64, u64)]) -> u64 {
        let d = self.alloc(48);
        let n = items.len() as u64;
        let keys = self.alloc(64 + 24 * n);
        if self.version.minor >= 11 {
            // log2_size 3, log2_index_bytes 3 (8 one-byte indices), kind 1 (unicode keys:
            // entries are {key, value})
            self.mem
                .put(keys + dict::DK_LOG2_SIZE, 3 | 3 << 8 | 1 << 16);
            self.mem.put(keys + dict::DK_NENTRIES_311, n);
            let entries = keys + dict::DK_INDICES_311 + 8;
            for (i, &(k, v)) in items.iter().enumerate() {
                self.mem.put_words(entries + 16 * i as u64, &[k, v]);
            }
        } else {
            // dk_size 8 (one-byte indices); entries {hash, key, value}
            self.mem.put(keys + dict::DK_SIZE_39, 8);
            self.mem.put(keys + dict::DK_NENTRIES_39, n);
            let entries = keys + dict::DK_INDICES_39 + 8;
            for (i, &(k, v)) in items.iter().enumerate() {
                self.mem.put_words(entries + 24 * i as u64, &[0, k, v]);
            }
        }
        self.mem.put(d + dict::MA_KEYS, keys);
        d
    }

    /// A compact ASCII `str`.
    pub fn str(&mut self, s: &str) -> u64 {
        let data = cpython::ascii_data_offset(self.version);
        let o = self.alloc(data + s.len() as u64 + 1);
        self.mem.put_words(o, &[1, self.str_type, s.len() as u64]);
        self.mem.put(o + cpython::STR_STATE, STATE_COMPACT_ASCII);
        self.mem.put_bytes(o + data, s.as_bytes());
        o
    }

    /// A `bytes` object holding `b`.
    pub fn bytes(&mut self, b: &[u8]) -> u64 {
        let o = self.alloc(cpython::BYTES_DATA + b.len() as u64 + 1);
        self.mem.put_words(o, &[1, self.bytes_type, b.len() as u64]);
        self.mem.put_bytes(o + cpython::BYTES_DATA, b);
        o
    }

    /// A GC object of type `ty` (its `ob_size` 0), not on any list yet. The block starts two
    /// words before the `PyGC_Head` (the managed-dict pre-header, 3.11+; zero: no values,
    /// no dict). Returns the node (`PyGC_Head` address).
    pub fn object(&mut self, ty: u64) -> u64 {
        let block = self.alloc(16 + 16 + 64);
        let node = block + 16;
        self.mem.put_words(node + 16, &[1, ty]);
        node
    }

    /// `n` objects of type `ty`, appended in order to the list at `head`.
    pub fn objects(&mut self, ty: u64, n: usize, head: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let node = self.object(ty);
                append(&*self.mem, node, head);
                node
            })
            .collect()
    }

    /// `gc.garbage` of interpreter `interp` as a list of these objects (`PyObject*`s).
    pub fn set_garbage(&mut self, interp: Interp, items: &[u64]) {
        let arr = self.alloc(8 * items.len() as u64 + 8);
        self.mem.put_words(arr, items);
        let list = self.object(self.list_type) + 16;
        self.mem.put(list + cpython::LIST_SIZE, items.len() as u64);
        self.mem.put(list + cpython::LIST_ITEMS, arr);
        self.mem.put(interp.garbage_slot(), list);
    }

    /// A code object (per `cpython::stack_layout`): `qualname` in `file`, starting at
    /// `firstlineno`, with `table` as its line table (`co_linetable` / `co_lnotab`).
    pub fn code(&mut self, qualname: &str, file: &str, firstlineno: u64, table: &[u8]) -> u64 {
        let l = cpython::stack_layout(self.version).expect("a supported version");
        let (file, name, table) = (self.str(file), self.str(qualname), self.bytes(table));
        let c = self.alloc(256);
        self.mem.put_words(c, &[1, self.code_type]);
        // `co_firstlineno` is an int, 4-aligned only (3.12: +68): set it inside its word
        let at = c + l.co_firstlineno;
        let shift = 8 * (at % 8);
        let w = self.mem.get(at & !7).unwrap() & !(0xffff_ffff << shift);
        self.mem
            .put(at & !7, w | (firstlineno & 0xffff_ffff) << shift);
        self.mem.put(c + l.co_filename, file);
        self.mem.put(c + l.co_name, name);
        if let Some(q) = l.co_qualname {
            self.mem.put(c + q, name);
        }
        self.mem.put(c + l.co_linetable, table);
        c
    }
}
