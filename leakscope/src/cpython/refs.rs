//! What an object holds: its referents, read from its layout in the target's memory, for
//! the retention chains (`census::graph`). Reads only. Layouts are those of 3.11 and 3.12
//! (DWARF of the pyenv builds, `ptype /o`; docs/cpython.md §12); other versions have no
//! `RefLayout` and get no chains.
//!
//! Types with a layout here: tuple, list, dict (combined and split), set and frozenset,
//! cell, bound method, function, module, type, and instances of Python classes (their
//! managed values or `__dict__`, and the words of their body: `__slots__`). Everything else
//! that can hold references (frames, generators, C-extension types, ...) is *scanned*: each
//! word of its body that points at an object the caller knows is taken as a reference. A
//! C-extension type's scanned references are what the collector may not see
//! (`Via::Scanned`, reported "C-level holder, not traversed").
use super::{MANAGED_DICT_AT, TPFLAGS_HAVE_GC, TPFLAGS_MANAGED_DICT, TPFLAGS_TYPE_SUBCLASS};
use super::{Version, dict, ht_cached_keys};
use crate::target::Memory;

/// `PyTupleObject.ob_item` (inline items; `ob_size` of them).
pub const TUPLE_ITEMS: u64 = 24;
/// `PyListObject.ob_item` (a pointer to `ob_size` items).
pub const LIST_ITEMS: u64 = super::LIST_ITEMS;
/// `PySetObject.mask` and `.table` (`mask + 1` `setentry {key, hash}` of 16 bytes).
pub const SET_MASK: u64 = 32;
pub const SET_TABLE: u64 = 40;
pub const SET_ENTRY: u64 = 16;
/// `PyCellObject.ob_ref`.
pub const CELL_REF: u64 = 16;
/// `PyMethodObject.im_func`, `.im_self`.
pub const METHOD_FUNC: u64 = 16;
pub const METHOD_SELF: u64 = 24;
/// `PyModuleObject.md_dict`, `.md_name` (a str).
pub const MODULE_DICT: u64 = 16;
pub const MODULE_NAME: u64 = 48;
/// `PyTypeObject.tp_dict`, `.tp_bases`, `.tp_mro` (3.11, 3.12; a 3.12 static builtin
/// type keeps its dict in the interpreter, `tp_dict` is NULL).
pub const TYPE_DICT: u64 = super::TP_DICT;
pub const TYPE_BASES: u64 = 336;
pub const TYPE_MRO: u64 = 344;
/// `PyFunctionObject` fields that hold objects (same offsets in 3.11 and 3.12; 3.12 adds
/// `func_typeparams` at 120).
pub const FUNCTION_FIELDS: &[(u64, &str)] = &[
    (16, "__globals__"),
    (48, "__code__"),
    (56, "__defaults__"),
    (64, "__kwdefaults__"),
    (72, "__closure__"),
    (88, "__dict__"),
    (104, "__module__"),
    (112, "__annotations__"),
];
/// `PyGenObject.gi_iframe` (the generator's own `_PyInterpreterFrame`, inline).
pub fn gen_iframe(v: Version) -> u64 {
    if v.minor == 11 { 80 } else { 72 }
}
/// `PyFrameObject.f_back`, `.f_frame` (its `_PyInterpreterFrame`, inline or on a thread's
/// stack while it runs).
pub const FRAME_BACK: u64 = 16;
pub const FRAME_IFRAME: u64 = 24;
/// `PyTracebackObject.tb_next`, `.tb_frame`.
pub const TB_NEXT: u64 = 16;
pub const TB_FRAME: u64 = 24;

/// The `_PyInterpreterFrame` whose locals an object holds (a generator's inline one, a
/// frame object's), if it is one of those.
pub fn iframe_of(v: Version, kind: Kind, mem: &dyn Memory, addr: u64) -> Option<u64> {
    match kind {
        Kind::Generator => Some(addr + gen_iframe(v)),
        Kind::Frame => mem.u64(addr + FRAME_IFRAME).ok().filter(|&f| f != 0),
        _ => None,
    }
}

/// Slots of an interpreter frame's `localsplus` that hold objects: its locals, cells and
/// free variables (`co_nlocalsplus` of its code), and its value stack up to `stacktop`
/// when that is known (-1 while the frame runs).
pub fn frame_locals(v: Version, mem: &dyn Memory, iframe: u64) -> Vec<(u64, Via)> {
    let Some(l) = thread_layout(v) else {
        return vec![];
    };
    let Ok(code) = mem.u64(iframe + l.stack.frame_code) else {
        return vec![];
    };
    let top = mem.u64(iframe + l.frame_stacktop).unwrap_or(0) as u32 as i32;
    let locals = mem.u64(code + l.co_nlocalsplus).unwrap_or(0) as u32 as i32;
    let n = if top >= 0 { top.max(locals) } else { locals }.clamp(0, 4096) as u64;
    words(mem, iframe + l.frame_localsplus, n)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter(|&(_, w)| w != 0)
        .map(|(i, w)| (w, Via::Local(i as u32)))
        .collect()
}

/// Thread frames, the roots that hold running code's locals (3.11, 3.12; DWARF
/// `ptype /o`): `PyInterpreterState.threads.head`, `PyThreadState.next`, and of
/// `_PyInterpreterFrame`: `stacktop` (an int: locals, cells and the value stack in use)
/// and `localsplus[]`; `PyCodeObject.co_nlocalsplus` (an int) and `co_localsplusnames` (a
/// tuple of str). The frame chain itself (`tstate → cframe → current_frame`, `f_code`,
/// `previous`) is `frames::stack_layout`'s.
#[derive(Clone, Copy, Debug)]
pub struct ThreadLayout {
    pub threads_head: u64,
    pub tstate_next: u64,
    pub frame_stacktop: u64,
    pub frame_localsplus: u64,
    pub co_nlocalsplus: u64,
    pub co_localsplusnames: u64,
    pub stack: super::StackLayout,
}

pub fn thread_layout(v: Version) -> Option<ThreadLayout> {
    let stack = super::stack_layout(v)?;
    let (threads_head, co_nlocalsplus) = match v.minor {
        11 => (0x10, 76),
        12 => (0x48, 72),
        _ => return None,
    };
    Some(ThreadLayout {
        threads_head,
        tstate_next: 8,
        frame_stacktop: 64,
        frame_localsplus: 72,
        co_nlocalsplus,
        co_localsplusnames: 96,
        stack,
    })
}

/// Most threads, and frames per thread, read.
pub const MAX_THREADS: usize = 1024;
pub const MAX_FRAMES: usize = 1024;

/// Words of a scanned body at most (a C type's struct; a frame's locals).
pub const MAX_SCAN_BYTES: u64 = 4096;
/// Items of one container read at most.
pub const MAX_ITEMS: u64 = 1 << 20;

/// How a referrer holds its referent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// Item `i` of a tuple or list.
    Item(u32),
    /// A set's member.
    Member,
    /// A dict's key.
    Key,
    /// A dict's value, under the key object `key`.
    Value { key: u64 },
    /// An instance attribute (managed values), named by the key object `key`.
    Attr { key: u64 },
    /// A named field of a type with a layout (`im_self`, `__closure__`, ...).
    Field(&'static str),
    /// A word of a Python class instance's body (`__slots__`), at this offset.
    Slot(u32),
    /// A word of a body with no layout here, at this offset, that points at an object.
    Scanned(u32),
    /// Slot `i` of a running frame's `localsplus` (a local, cell or value-stack entry).
    Local(u32),
}

/// What leakscope knows of a type's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Holds no references (str, int, float, bytes, ...: the interpreter's own types
    /// without GC support).
    Leaf,
    Tuple,
    List,
    Dict,
    Set,
    Cell,
    Method,
    Function,
    Module,
    Type,
    /// An instance of a Python class (a heap type).
    Instance,
    /// A generator, coroutine or async generator: its frame is inside it.
    Generator,
    /// A frame object (`sys._getframe()`, a traceback's frame).
    Frame,
    Traceback,
    /// No layout: scanned. `native`: a C extension's type; `gc`: the collector traverses it
    /// (a native type without GC support is a holder the collector does not see through).
    Scan {
        native: bool,
        gc: bool,
    },
}

/// `kind` of a type from what the resolver read of it. `interpreter`: a static type of the
/// interpreter image itself (not a C extension's).
pub fn kind_of(name: &str, flags: u64, heap: bool, interpreter: bool) -> Kind {
    if flags & TPFLAGS_TYPE_SUBCLASS != 0 {
        return Kind::Type;
    }
    if heap {
        return Kind::Instance;
    }
    let gc = flags & TPFLAGS_HAVE_GC != 0;
    if !interpreter {
        return Kind::Scan { native: true, gc };
    }
    match name {
        "tuple" => Kind::Tuple,
        "list" => Kind::List,
        "dict" => Kind::Dict,
        "set" | "frozenset" => Kind::Set,
        "cell" => Kind::Cell,
        "method" => Kind::Method,
        "function" => Kind::Function,
        "module" => Kind::Module,
        "generator" | "coroutine" | "async_generator" => Kind::Generator,
        "frame" => Kind::Frame,
        "traceback" => Kind::Traceback,
        _ if gc => Kind::Scan { native: false, gc },
        _ => Kind::Leaf,
    }
}

/// The versions whose layouts are here.
#[derive(Clone, Copy, Debug)]
pub struct RefLayout {
    version: Version,
}

impl RefLayout {
    pub fn of(version: Version) -> Option<RefLayout> {
        matches!((version.major, version.minor), (3, 11) | (3, 12)).then_some(RefLayout { version })
    }

    pub fn version(&self) -> Version {
        self.version
    }
}

/// The type facts `referents` needs.
#[derive(Clone, Copy, Debug)]
pub struct TypeFacts {
    pub kind: Kind,
    pub basicsize: u64,
    pub itemsize: u64,
    pub flags: u64,
}

fn word(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

fn words(mem: &dyn Memory, addr: u64, n: u64) -> Option<Vec<u64>> {
    let n = n.min(MAX_ITEMS);
    let mut buf = vec![0u8; (n * 8) as usize];
    mem.read(addr, &mut buf).ok()?;
    Some((0..n as usize).map(|i| word(&buf, i * 8)).collect())
}

/// The object at `addr`'s references, as far as its layout (or a scan against `known`)
/// tells. Null slots are left out; an unreadable part gives what was read before it.
pub fn referents(
    layout: &RefLayout,
    mem: &dyn Memory,
    addr: u64,
    ob_type: u64,
    t: TypeFacts,
    known: &dyn Fn(u64) -> bool,
) -> Vec<(u64, Via)> {
    let mut out = vec![];
    let mut push = |to: u64, via: Via| {
        if to != 0 && to.is_multiple_of(8) {
            out.push((to, via));
        }
    };
    let field = |off: u64| mem.u64(addr + off).ok();
    match t.kind {
        Kind::Leaf => {}
        Kind::Tuple => {
            let n = field(super::OB_SIZE).unwrap_or(0);
            if n <= MAX_ITEMS {
                for (i, w) in words(mem, addr + TUPLE_ITEMS, n)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    push(w, Via::Item(i as u32));
                }
            }
        }
        Kind::List => {
            let (n, items) = (
                field(super::OB_SIZE).unwrap_or(0),
                field(LIST_ITEMS).unwrap_or(0),
            );
            if n <= MAX_ITEMS && items != 0 {
                for (i, w) in words(mem, items, n)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    push(w, Via::Item(i as u32));
                }
            }
        }
        Kind::Dict => {
            for (k, v) in dict::items(mem, layout.version, addr).unwrap_or_default() {
                push(k, Via::Key);
                push(v, Via::Value { key: k });
            }
        }
        Kind::Set => {
            let (mask, table) = (field(SET_MASK).unwrap_or(0), field(SET_TABLE).unwrap_or(0));
            if mask < MAX_ITEMS && table != 0 {
                let all = words(mem, table, 2 * (mask + 1)).unwrap_or_default();
                for pair in all.chunks(2) {
                    // An empty slot is NULL, a deleted one `dummy` (a static object: never
                    // an object the graph knows of, so `known` drops it).
                    if known(pair[0]) {
                        push(pair[0], Via::Member);
                    }
                }
            }
        }
        Kind::Cell => push(field(CELL_REF).unwrap_or(0), Via::Field("cell_contents")),
        Kind::Method => {
            push(field(METHOD_FUNC).unwrap_or(0), Via::Field("__func__"));
            push(field(METHOD_SELF).unwrap_or(0), Via::Field("__self__"));
        }
        Kind::Function => {
            for &(off, name) in FUNCTION_FIELDS {
                push(field(off).unwrap_or(0), Via::Field(name));
            }
        }
        Kind::Module => push(field(MODULE_DICT).unwrap_or(0), Via::Field("__dict__")),
        Kind::Type => {
            push(field(TYPE_DICT).unwrap_or(0), Via::Field("__dict__"));
            push(field(TYPE_BASES).unwrap_or(0), Via::Field("__bases__"));
            push(field(TYPE_MRO).unwrap_or(0), Via::Field("__mro__"));
        }
        Kind::Instance => {
            if t.flags & TPFLAGS_MANAGED_DICT != 0 {
                let (values, dict) = managed(layout.version, mem, addr);
                if let Some(d) = dict {
                    push(d, Via::Field("__dict__"));
                }
                if let Some(values) = values {
                    for (key, v) in instance_values(layout.version, mem, ob_type, values) {
                        push(v, Via::Attr { key });
                    }
                }
            }
            // `__slots__` and a base's fields: the body's words that are objects.
            for (off, w) in scan(mem, addr, t.basicsize, 0, 0, known) {
                push(w, Via::Slot(off));
            }
        }
        Kind::Generator | Kind::Frame => {
            if t.kind == Kind::Frame {
                push(field(FRAME_BACK).unwrap_or(0), Via::Field("f_back"));
            }
            if let Some(f) = iframe_of(layout.version, t.kind, mem, addr) {
                for (w, via) in frame_locals(layout.version, mem, f) {
                    push(w, via);
                }
            }
        }
        Kind::Traceback => {
            push(field(TB_NEXT).unwrap_or(0), Via::Field("tb_next"));
            push(field(TB_FRAME).unwrap_or(0), Via::Field("tb_frame"));
        }
        Kind::Scan { .. } => {
            let n = if t.itemsize > 0 {
                field(super::OB_SIZE).unwrap_or(0)
            } else {
                0
            };
            for (off, w) in scan(mem, addr, t.basicsize, t.itemsize, n, known) {
                push(w, Via::Scanned(off));
            }
        }
    }
    out
}

/// The words of a body past its `PyObject` header (type pointer and refcount) that point
/// at objects `known`.
fn scan(
    mem: &dyn Memory,
    addr: u64,
    basicsize: u64,
    itemsize: u64,
    ob_size: u64,
    known: &dyn Fn(u64) -> bool,
) -> Vec<(u32, u64)> {
    let items = if ob_size <= MAX_ITEMS {
        itemsize * ob_size
    } else {
        0
    };
    let size = ((basicsize + items) & !7).min(MAX_SCAN_BYTES);
    let start = super::OB_TYPE + 8;
    if size <= start {
        return vec![];
    }
    let mut buf = vec![0u8; (size - start) as usize];
    if mem.read(addr + start, &mut buf).is_err() {
        return vec![];
    }
    (0..buf.len() / 8)
        .map(|i| ((start + 8 * i as u64) as u32, word(&buf, 8 * i)))
        .filter(|&(_, w)| w != addr && w != 0 && w.is_multiple_of(8) && known(w))
        .collect()
}

/// A managed-dict instance's values array and materialized `__dict__` (docs/cpython.md §4):
/// 3.11 values at −32, dict at −24; 3.12 one word at −24: `values − 1` (odd: the values
/// are 8-aligned; 3.12.1 `pycore_object.h:389,402`) or the dict.
fn managed(v: Version, mem: &dyn Memory, addr: u64) -> (Option<u64>, Option<u64>) {
    let m24 = mem.u64(addr - MANAGED_DICT_AT).unwrap_or(0);
    match v.minor {
        11 => {
            let m32 = mem.u64(addr - MANAGED_DICT_AT - 8).unwrap_or(0);
            ((m32 != 0).then_some(m32), (m24 != 0).then_some(m24))
        }
        _ if m24 & 1 == 1 => (Some(m24 + 1), None),
        _ => (None, (m24 != 0).then_some(m24)),
    }
}

/// (key, value) of an instance's values array: keys from its type's shared keys
/// (`ht_cached_keys`, a table of `PyDictUnicodeEntry`), `dk_nentries` values.
fn instance_values(v: Version, mem: &dyn Memory, ob_type: u64, values: u64) -> Vec<(u64, u64)> {
    let Some(keys) = ht_cached_keys(v)
        .and_then(|off| mem.u64(ob_type + off).ok())
        .filter(|&k| k != 0)
    else {
        return vec![];
    };
    let Some((entries, n, stride, key_at)) = dict::entries_311(mem, keys) else {
        return vec![];
    };
    let keys = words(mem, entries, n * stride / 8).unwrap_or_default();
    let vals = words(mem, values, n).unwrap_or_default();
    vals.into_iter()
        .enumerate()
        .filter(|&(_, val)| val != 0)
        .map(|(i, val)| {
            let k = keys
                .get(i * (stride / 8) as usize + (key_at / 8) as usize)
                .copied();
            (k.unwrap_or(0), val)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FakeMemory;

    const V: Version = Version {
        major: 3,
        minor: 11,
        patch: 7,
    };

    fn facts(kind: Kind, basicsize: u64) -> TypeFacts {
        TypeFacts {
            kind,
            basicsize,
            itemsize: 0,
            flags: 0,
        }
    }

    #[test]
    fn kinds_from_type_facts() {
        let gc = TPFLAGS_HAVE_GC;
        assert_eq!(kind_of("tuple", gc, false, true), Kind::Tuple);
        assert_eq!(kind_of("str", 0, false, true), Kind::Leaf);
        assert_eq!(kind_of("frame", gc, false, true), Kind::Frame);
        assert_eq!(
            kind_of("cell_iterator", gc, false, true),
            Kind::Scan {
                native: false,
                gc: true
            }
        );
        assert_eq!(
            kind_of("list", 0, false, false),
            Kind::Scan {
                native: true,
                gc: false
            },
            "a C type named list"
        );
        assert_eq!(
            kind_of("_asyncio.Task", gc, false, false),
            Kind::Scan {
                native: true,
                gc: true
            }
        );
        assert_eq!(kind_of("Leak", gc, true, false), Kind::Instance);
        assert_eq!(
            kind_of("Meta", TPFLAGS_TYPE_SUBCLASS, true, false),
            Kind::Type
        );
        assert!(
            RefLayout::of(Version {
                major: 3,
                minor: 10,
                patch: 0
            })
            .is_none()
        );
    }

    #[test]
    fn tuple_list_method_cell_referents() {
        let m = FakeMemory::new();
        let l = RefLayout::of(V).unwrap();
        let none = |_| false;
        // tuple (a, 0, b)
        m.put_words(0x1000 + 16, &[3, 0xa0, 0, 0xb0]);
        let r = referents(&l, &*m, 0x1000, 0, facts(Kind::Tuple, 24), &none);
        assert_eq!(r, vec![(0xa0, Via::Item(0)), (0xb0, Via::Item(2))]);
        // list of 2 at 0x3000
        m.put_words(0x2000 + 16, &[2, 0x3000, 4]);
        m.put_words(0x3000, &[0xc0, 0xd0]);
        let r = referents(&l, &*m, 0x2000, 0, facts(Kind::List, 40), &none);
        assert_eq!(r, vec![(0xc0, Via::Item(0)), (0xd0, Via::Item(1))]);
        m.put_words(0x4000 + 16, &[0xe0, 0xf0]);
        let r = referents(&l, &*m, 0x4000, 0, facts(Kind::Method, 48), &none);
        assert_eq!(
            r,
            vec![
                (0xe0, Via::Field("__func__")),
                (0xf0, Via::Field("__self__"))
            ]
        );
        m.put_words(0x5000 + 16, &[0x1a8]);
        let r = referents(&l, &*m, 0x5000, 0, facts(Kind::Cell, 24), &none);
        assert_eq!(r, vec![(0x1a8, Via::Field("cell_contents"))]);
    }

    /// A combined table of general entries `{hash, key, value}` and a split dict (keys
    /// from a shared unicode table, values in `ma_values`).
    #[test]
    fn dict_items_combined_and_split() {
        let m = FakeMemory::new();
        let l = RefLayout::of(V).unwrap();
        let (d, keys) = (0x1_0000u64, 0x2_0000u64);
        m.put_words(d + dict::MA_KEYS, &[keys, 0]);
        m.put_bytes(keys + dict::DK_LOG2_SIZE, &[3, 3, dict::DK_KIND_GENERAL, 0]);
        m.put_words(keys + dict::DK_USABLE, &[2, 3]);
        let e = keys + dict::DK_INDICES_311 + 8;
        // entry 1 deleted (key NULL)
        m.put_words(e, &[11, 0xa0, 0xa8, 0, 0, 0, 13, 0xc0, 0xc8]);
        let r = referents(&l, &*m, d, 0, facts(Kind::Dict, 48), &|_| false);
        assert_eq!(
            r,
            vec![
                (0xa0, Via::Key),
                (0xa8, Via::Value { key: 0xa0 }),
                (0xc0, Via::Key),
                (0xc8, Via::Value { key: 0xc0 })
            ]
        );
        let (d2, shared, values) = (0x3_0000u64, 0x4_0000u64, 0x5_0000u64);
        m.put_words(d2 + dict::MA_KEYS, &[shared, values]);
        m.put_bytes(shared + dict::DK_LOG2_SIZE, &[3, 3, 1, 0]);
        m.put_words(shared + dict::DK_USABLE, &[3, 2]);
        m.put_words(shared + dict::DK_INDICES_311 + 8, &[0xd0, 0, 0xe0, 0]);
        m.put_words(values, &[0, 0xe8]);
        let r = referents(&l, &*m, d2, 0, facts(Kind::Dict, 48), &|_| false);
        assert_eq!(r, vec![(0xe0, Via::Key), (0xe8, Via::Value { key: 0xe0 })]);
    }

    /// 3.12 keeps `values − 1` (odd) at `op − 24` (3.12.1 `pycore_object.h:402`).
    #[test]
    fn managed_values_312_are_stored_minus_one() {
        let v = Version {
            major: 3,
            minor: 12,
            patch: 1,
        };
        let m = FakeMemory::new();
        let l = RefLayout::of(v).unwrap();
        let (obj, ty, keys, values) = (0x10_020u64, 0x20_000u64, 0x30_000u64, 0x40_000u64);
        m.put_words(ty + ht_cached_keys(v).unwrap(), &[keys]);
        m.put_words(keys, &[1]);
        m.put_bytes(keys + dict::DK_LOG2_SIZE, &[3, 3, 1, 0]);
        m.put_words(keys + dict::DK_USABLE, &[4, 1]);
        m.put_words(keys + dict::DK_INDICES_311 + 8, &[0xaa0, 0]);
        m.put_words(values, &[0x1110]);
        m.put_words(obj - 24, &[values - 1, 0, 0, 1, ty]);
        let t = TypeFacts {
            kind: Kind::Instance,
            basicsize: 16,
            itemsize: 0,
            flags: TPFLAGS_MANAGED_DICT | TPFLAGS_HAVE_GC,
        };
        let r = referents(&l, &*m, obj, ty, t, &|_| false);
        assert_eq!(r, vec![(0x1110, Via::Attr { key: 0xaa0 })]);
    }

    #[test]
    fn a_scan_keeps_only_words_that_are_known_objects() {
        let m = FakeMemory::new();
        let l = RefLayout::of(V).unwrap();
        // A C struct {HEAD; PyObject *ref; long n; void *buf}: only `ref` is an object.
        m.put_words(0x6000, &[1, 0x7777_0000, 0x8000, 12345, 0x9000]);
        let known = |a: u64| a == 0x8000;
        let r = referents(
            &l,
            &*m,
            0x6000,
            0x7777_0000,
            facts(
                Kind::Scan {
                    native: true,
                    gc: false,
                },
                40,
            ),
            &known,
        );
        assert_eq!(r, vec![(0x8000, Via::Scanned(16))]);
    }

    #[test]
    fn managed_values_of_an_instance_are_named_by_the_shared_keys() {
        let m = FakeMemory::new();
        let l = RefLayout::of(V).unwrap();
        let (obj, ty, keys, values) = (0x10_020u64, 0x20_000u64, 0x30_000u64, 0x40_000u64);
        m.put_words(ty + ht_cached_keys(V).unwrap(), &[keys]);
        // shared keys: log2 size 3, index bytes 2^3, unicode kind, 2 entries
        m.put_words(keys, &[1]);
        m.put_bytes(keys + dict::DK_LOG2_SIZE, &[3, 3, 1, 0]);
        m.put_words(keys + dict::DK_USABLE, &[3, 2]);
        let entries = keys + dict::DK_INDICES_311 + 8;
        m.put_words(entries, &[0xaa0, 0, 0xbb0, 0]);
        m.put_words(values, &[0x1110, 0x2220]);
        // pre-header: values at -32, no dict at -24; header: refcnt, type
        m.put_words(obj - 32, &[values, 0, 0, 0, 1, ty]);
        let t = TypeFacts {
            kind: Kind::Instance,
            basicsize: 16,
            itemsize: 0,
            flags: TPFLAGS_MANAGED_DICT | TPFLAGS_HAVE_GC,
        };
        let r = referents(&l, &*m, obj, ty, t, &|_| false);
        assert_eq!(
            r,
            vec![
                (0x1110, Via::Attr { key: 0xaa0 }),
                (0x2220, Via::Attr { key: 0xbb0 })
            ]
        );
    }
}
