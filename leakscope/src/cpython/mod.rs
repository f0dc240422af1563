//! CPython knowledge, in one place: supported versions, object and type layouts, the
//! functions the probes hook. Per-version differences are rows in the tables below; sources
//! are CPython's headers for each version (x86_64, GIL builds) and
//! `shared/notes/cpython-internals.md`, where each number was checked on this machine.

pub mod linetable;

/// Versions `trace` supports; anything else is refused with this list in the message.
pub const SUPPORTED: &str = "3.9, 3.10, 3.11, 3.12 and 3.13";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    pub fn is_supported(&self) -> bool {
        self.major == 3 && (9..=13).contains(&self.minor)
    }
}

// PyObject / PyVarObject (all versions, GIL builds): `ob_type` at +8 and `ob_size` at +16;
// the BPF birth programs read both in one go (leakscope-ebpf, `TypeAndSize`).
// PyTypeObject fields (identical 3.9–3.14): `tp_name`, then `tp_basicsize` and `tp_itemsize`
// in the next two words (read together in `types.rs`).
pub const TP_NAME: u64 = 24;
pub const TP_FLAGS: u64 = 168;
pub const TP_DICT: u64 = 264;

// tp_flags bits (Include/object.h).
pub const TPFLAGS_INLINE_VALUES: u64 = 1 << 2; // 3.13+
pub const TPFLAGS_MANAGED_WEAKREF: u64 = 1 << 3; // 3.12+
pub const TPFLAGS_MANAGED_DICT: u64 = 1 << 4; // 3.11+
pub const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
pub const TPFLAGS_HAVE_GC: u64 = 1 << 14;

/// Bytes in front of the `PyObject*` that belong to its allocation: `PyGC_Head` (16) for GC
/// types, and from 3.11 two words for the managed dict (3.11) / dict + weakref (3.12+).
/// This is `_PyType_PreHeaderSize` (3.11 `pycore_object.h:222`, 3.12 `:339`, 3.13 `:672`).
pub fn preheader_size(v: Version, flags: u64) -> u64 {
    let gc = if flags & TPFLAGS_HAVE_GC != 0 { 16 } else { 0 };
    let managed = match v.minor {
        11 => flags & TPFLAGS_MANAGED_DICT != 0,
        12.. => flags & (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF) != 0,
        _ => false,
    };
    gc + if managed { 16 } else { 0 }
}

/// Size of one object: `tp_basicsize + |ob_size| * tp_itemsize`, rounded to 8 like
/// `_PyObject_VAR_SIZE`, plus the pre-header. Shallow: buffers an object owns (a list's
/// item array, a dict's table, a str's characters) are not included.
/// A word that is not a plausible item count (3.11+ generators keep `gi_code` where
/// `ob_size` would be, though their type has an item size) counts as no items.
pub fn object_bytes(basicsize: u64, itemsize: u64, ob_size: i64, preheader: u64) -> u64 {
    let n = ob_size.unsigned_abs();
    let items = if itemsize == 0 || n > 1 << 31 {
        0
    } else {
        n * itemsize
    };
    ((basicsize + items + 7) & !7) + preheader
}

#[cfg(test)]
mod tests {
    use super::*;
    const V: fn(u32) -> Version = |minor| Version {
        major: 3,
        minor,
        patch: 0,
    };

    #[test]
    fn values_beside_objects() {
        // 3.11: 30 slots → prefix round8(32) + 240; 3.13 inline: round8(30) + 31*8
        assert_eq!(values_bytes(V(11), 30), 32 + 240);
        assert_eq!(values_bytes(V(13), 30), 32 + 248);
        assert_eq!(values_bytes(V(10), 30), 0);
        let md = TPFLAGS_MANAGED_DICT;
        assert_eq!(beside(V(11), md, 0x1000, 0), Beside::Values);
        assert_eq!(beside(V(11), md, 0, 0x2000), Beside::Dict(0x2000));
        assert_eq!(beside(V(12), md, 0, 0x1001), Beside::Values);
        assert_eq!(beside(V(12), md, 0, 0x2000), Beside::Dict(0x2000));
        assert_eq!(beside(V(13), md, 0, 0), Beside::Nothing);
        assert_eq!(beside(V(11), 0, 0x1000, 0x2000), Beside::Nothing);
    }

    /// A `_Py_DebugOffsets` prefix with 3.13.0's values (read from pyenv's libpython3.13).
    fn debug_offsets(free_threaded: u64) -> Vec<u8> {
        let mut words = vec![0u64; 80];
        words[1] = 0x030d00f0;
        words[2] = free_threaded;
        words[5] = 632;
        words[8] = 7264;
        words[10] = 7400;
        words[72] = 200;
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b[..8].copy_from_slice(b"xdebugpy");
        b
    }

    #[test]
    fn gc_layout_313_comes_from_debug_offsets() {
        assert_eq!(
            gc_layout_from(V(13), Some(&debug_offsets(0))),
            Ok(gc_layout(V(13)).unwrap())
        );
        assert_eq!(gc_layout_from(V(11), None), Ok(gc_layout(V(11)).unwrap()));
        let err = gc_layout_from(V(13), Some(&debug_offsets(1))).unwrap_err();
        assert!(
            err.contains("free-threaded build: it keeps no GC generation lists"),
            "{err}"
        );
        let mut wrong = debug_offsets(0);
        wrong[80..88].copy_from_slice(&7500u64.to_le_bytes());
        assert!(
            gc_layout_from(V(13), Some(&wrong))
                .unwrap_err()
                .contains("disagree")
        );
        assert!(
            gc_layout_from(V(13), Some(b"not the cookie"))
                .unwrap_err()
                .contains("no _Py_DebugOffsets")
        );
    }

    #[test]
    fn object_sizes() {
        assert_eq!(super::object_bytes(16, 0, 0, 0), 16); // object()
        assert_eq!(super::object_bytes(24, 8, 3, 16), 24 + 24 + 16); // a 3-tuple, GC header
        assert_eq!(super::object_bytes(24, 4, -2, 0), 32); // negative int, rounded to 8
        assert_eq!(super::object_bytes(80, 8, 0x7f00_dead_beef, 16), 96); // a pointer, not a size
    }
}

/// Dict layout, just enough to find `__module__` in a heap type's `tp_dict`.
pub mod dict {
    /// `PyDictObject.ma_keys`.
    pub const MA_KEYS: u64 = 32;
    /// 3.11+: `PyDictKeysObject { refcnt; u8 log2_size; u8 log2_index_bytes; u8 kind; …;
    /// usable; nentries; indices[] }`, entries after the indices; unicode-keyed entries are
    /// `{key, value}`, general ones `{hash, key, value}`.
    /// `dk_log2_size`, `dk_log2_index_bytes` and `dk_kind`: three bytes from here.
    pub const DK_LOG2_SIZE: u64 = 8;
    pub const DK_NENTRIES_311: u64 = 24;
    pub const DK_INDICES_311: u64 = 32;
    /// 3.9/3.10: `{refcnt; size; lookup; usable; nentries; indices[]}`, entries `{hash, key,
    /// value}`, index width from the table size.
    pub const DK_SIZE_39: u64 = 8;
    pub const DK_NENTRIES_39: u64 = 32;
    pub const DK_INDICES_39: u64 = 40;
}

/// `str` data of a compact ASCII string starts right after `PyASCIIObject`.
pub fn ascii_data_offset(v: Version) -> u64 {
    if v.minor >= 12 { 40 } else { 48 }
}
/// Data of a compact non-ASCII `str` starts after `PyCompactUnicodeObject`.
pub fn compact_data_offset(v: Version) -> u64 {
    if v.minor >= 12 { 56 } else { 72 }
}
/// `PyASCIIObject.state` and `.length`.
pub const STR_LENGTH: u64 = 16;
pub const STR_STATE: u64 = 32;

/// Hooks, by build. See README "What each build lets leakscope see".
pub mod hooks {
    /// Every object birth, freelist reuse included (`_PyObject_Init` → here). 3.12+ also
    /// re-registers resized tuples/str/bytes through the `NoTotal` variant.
    pub const NEW_REFERENCE: &[&str] = &["_Py_NewReference", "_Py_NewReferenceNoTotal"];
    /// Thin wrappers that jump through the object allocator table (`_PyObject` ≤3.11,
    /// `_PyRuntime.allocators.standard.obj` 3.12+): decoding them finds the table slot.
    pub const FREE_WRAPPER: &str = "PyObject_Free";
    pub const REALLOC_WRAPPER: &str = "PyObject_Realloc";
    /// Allocators that return a new object: `tp_alloc` and the `PyObject_New` family that
    /// C extensions call through their PLT.
    pub const ALLOCATORS: &[&str] = &[
        "PyType_GenericAlloc",
        "_PyObject_New",
        "_PyObject_NewVar",
        "_PyObject_GC_New",
        "_PyObject_GC_NewVar",
    ];
    /// `tp_free` of GC and non-GC objects, and realloc (a resize may move the object).
    pub const FREES: &[&str] = &["PyObject_GC_Del", "PyObject_Free", "PyObject_Realloc"];
}

/// Where an instruction position in a captured frame points (see `stacks.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instr {
    /// `f_lasti`, a byte offset (3.9).
    LastiBytes,
    /// `f_lasti`, in code units (3.10).
    LastiUnits,
    /// A pointer into the code object's `co_code_adaptive`, which starts at this offset
    /// (3.11/3.12 `prev_instr`: the last started instruction; 3.13 `instr_ptr`: the current).
    Pointer { code_adaptive: u64 },
}

/// How to find the current thread's Python frames and read code objects, per version.
/// Offsets: CPython headers and DWARF of the builds on this machine
/// (shared/notes/cpython-internals.md §2.2–§2.7, §9.2), checked live by the e2e tests.
#[derive(Clone, Copy, Debug)]
pub struct StackLayout {
    /// Offset in `_PyRuntime` of `gilstate.tstate_current` (≤3.11) or of
    /// `interpreters.head` (3.12+, then the GIL holder is used).
    pub runtime_off: u64,
    /// 3.12+: `interp->ceval.gil` (a pointer to the GIL in use); its `last_holder` is at +8
    /// and `locked` at +16.
    pub gil_ptr_off: Option<u64>,
    /// `PyThreadState.native_thread_id` (3.11+), checked against the allocating thread.
    pub native_tid_off: Option<u64>,
    /// `tstate → frame`: one or two loads (3.11/3.12 go through `cframe`).
    pub frame_path: (u64, Option<u64>),
    /// Offsets in the frame struct of the code object, the previous frame and the position.
    pub frame_code: u64,
    pub frame_prev: u64,
    pub frame_instr: u64,
    pub instr: Instr,
    // PyCodeObject
    pub co_firstlineno: u64,
    pub co_filename: u64,
    pub co_name: u64,
    /// `co_qualname` (3.11+); `co_name` before.
    pub co_qualname: Option<u64>,
    pub co_linetable: u64,
    pub table: crate::cpython::linetable::TableKind,
}

pub fn stack_layout(v: Version) -> Option<StackLayout> {
    use crate::cpython::linetable::TableKind::*;
    Some(match v.minor {
        // PyFrameObject: f_back 24, f_code 32, f_lasti 104 (3.9) / 96 (3.10).
        9 | 10 => StackLayout {
            runtime_off: 568,
            gil_ptr_off: None,
            native_tid_off: None,
            frame_path: (24, None),
            frame_code: 32,
            frame_prev: 24,
            frame_instr: if v.minor == 9 { 104 } else { 96 },
            instr: if v.minor == 9 {
                Instr::LastiBytes
            } else {
                Instr::LastiUnits
            },
            co_firstlineno: 40,
            co_filename: 104,
            co_name: 112,
            co_qualname: None,
            co_linetable: 120,
            table: if v.minor == 9 { Lnotab39 } else { Linetable310 },
        },
        // _PyInterpreterFrame: f_code 32, previous 48, prev_instr 56; tstate->cframe 56,
        // cframe->current_frame 8.
        11 => StackLayout {
            runtime_off: 576,
            gil_ptr_off: None,
            native_tid_off: Some(160),
            frame_path: (56, Some(8)),
            frame_code: 32,
            frame_prev: 48,
            frame_instr: 56,
            instr: Instr::Pointer { code_adaptive: 184 },
            co_firstlineno: 72,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            table: Locations311,
        },
        // f_code 0, previous 8, prev_instr 56; tstate->cframe 56, cframe->current_frame 0.
        12 => StackLayout {
            runtime_off: 40,
            gil_ptr_off: Some(384),
            native_tid_off: Some(144),
            frame_path: (56, Some(0)),
            frame_code: 0,
            frame_prev: 8,
            frame_instr: 56,
            instr: Instr::Pointer { code_adaptive: 192 },
            co_firstlineno: 68,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            table: Locations311,
        },
        // f_executable 0, previous 8, instr_ptr 56; tstate->current_frame 72. These equal
        // the values of 3.13's own _Py_DebugOffsets.
        13 => StackLayout {
            runtime_off: 632,
            gil_ptr_off: Some(16),
            native_tid_off: Some(160),
            frame_path: (72, None),
            frame_code: 0,
            frame_prev: 8,
            frame_instr: 56,
            instr: Instr::Pointer { code_adaptive: 200 },
            co_firstlineno: 68,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            table: Locations311,
        },
        _ => return None,
    })
}

/// `PyBytesObject`: `ob_size` at +16, data at +32.
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;

/// Where the GC keeps its lists, per version. Inside `struct _gc_runtime_state` the layout is
/// the same in 3.9–3.13 (DWARF of the pyenv builds): `generations[3]` (24 bytes each: list
/// head 16, threshold, count) at +24, `permanent_generation` at +104, `garbage` at +208.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcLayout {
    /// `_PyRuntime.interpreters.head`.
    pub interpreters_head: u64,
    /// `PyInterpreterState.next` and `.gc`.
    pub interp_next: u64,
    pub interp_gc: u64,
}

pub const GC_GENERATIONS: u64 = 24;
pub const GC_GENERATION_SIZE: u64 = 24;
pub const GC_PERMANENT: u64 = 104;
pub const GC_GARBAGE: u64 = 208;
/// `PyListObject`: `ob_size` +16, `ob_item` +24.
pub const LIST_SIZE: u64 = 16;
pub const LIST_ITEMS: u64 = 24;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: set on `type` and every metatype.
pub const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

pub fn gc_layout(v: Version) -> Option<GcLayout> {
    Some(match v.minor {
        9 | 10 => GcLayout {
            interpreters_head: 32,
            interp_next: 0,
            interp_gc: 616,
        },
        11 => GcLayout {
            interpreters_head: 40,
            interp_next: 0,
            interp_gc: 648,
        },
        12 => GcLayout {
            interpreters_head: 40,
            interp_next: 0,
            interp_gc: 112,
        },
        13 => GcLayout {
            interpreters_head: 632,
            interp_next: 7264,
            interp_gc: 7400,
        },
        _ => return None,
    })
}

/// GC list offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets` (read from its
/// `.PyRuntime` section and cross-checked with the table), earlier versions from the table.
pub fn gc_layout_from(v: Version, runtime_section: Option<&[u8]>) -> Result<GcLayout, String> {
    let table = gc_layout(v);
    if v.minor < 13 {
        return table.ok_or_else(|| format!("no GC layout for Python {v}"));
    }
    let debug = runtime_section
        .and_then(debug_offsets_313)
        .ok_or_else(|| format!("Python {v}: no _Py_DebugOffsets in .PyRuntime"))?;
    if debug.free_threaded {
        return Err(format!(
            "Python {v} is a free-threaded build: it keeps no GC generation lists, so a census is \
             not possible (leakscope does not walk its mimalloc heaps)"
        ));
    }
    if debug.gc_collecting != 200 || table != Some(debug.gc) {
        return Err(format!(
            "Python {v}: _Py_DebugOffsets {debug:?} disagree with leakscope's layout; not reading"
        ));
    }
    Ok(debug.gc)
}

/// The parts of 3.13's `_Py_DebugOffsets` (the first member of `_PyRuntime`, statically
/// initialized, so readable from the file's `.PyRuntime` section) that leakscope uses.
/// Layout: 3.13.0 `Include/internal/pycore_runtime.h`; every field is a u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version: u64,
    pub free_threaded: bool,
    pub gc: GcLayout,
    pub gc_collecting: u64,
}

pub fn debug_offsets_313(runtime_section: &[u8]) -> Option<DebugOffsets> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            runtime_section.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    if runtime_section.get(..8)? != b"xdebugpy" {
        return None;
    }
    // cookie 0, version 1, free_threaded 2; runtime_state 3..=5; interpreter_state 6..=18
    // (size, id, next 8, threads_head, gc 10, …); … ; gc group 71 (size), 72 (collecting).
    Some(DebugOffsets {
        version: word(1)?,
        free_threaded: word(2)? != 0,
        gc: GcLayout {
            interpreters_head: word(5)?,
            interp_next: word(8)?,
            interp_gc: word(10)?,
        },
        gc_collecting: word(72)?,
    })
}

/// `PyHeapTypeObject.ht_cached_keys` (DWARF: 3.11 0x368, 3.12/3.13 0x370): the shared keys
/// instances of a class use, whose `dk_usable + dk_nentries` is the size of their values.
pub fn ht_cached_keys(v: Version) -> Option<u64> {
    match v.minor {
        11 => Some(0x368),
        12 | 13 => Some(0x370),
        _ => None,
    }
}
pub const DK_USABLE: u64 = 16;
pub const DK_NENTRIES: u64 = 24;

/// Bytes of an instance's attribute values kept beside it, for `size` shared-key slots:
/// 3.11/3.12 `new_values` (a separate block: an order prefix rounded up, then the values);
/// 3.13 `_PyInlineValuesSize` (inside the object's own block, after `tp_basicsize`).
pub fn values_bytes(v: Version, size: u64) -> u64 {
    let round8 = |n: u64| (n + 7) & !7;
    match v.minor {
        11 | 12 => round8(size + 2) + 8 * size,
        13 => round8(size) + 8 * (size + 1),
        _ => 0,
    }
}

/// What sits in the two pre-header words in front of a managed-dict object's `PyGC_Head`
/// (`op-32`, `op-24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beside {
    Nothing,
    /// A values array, not yet turned into a dict (3.11, 3.12).
    Values,
    /// A materialized `__dict__`.
    Dict(u64),
}

pub fn beside(v: Version, flags: u64, word_m32: u64, word_m24: u64) -> Beside {
    if flags & TPFLAGS_MANAGED_DICT == 0 {
        return Beside::Nothing;
    }
    match v.minor {
        // 3.11: values pointer at -32, dict at -24.
        11 if word_m32 != 0 => Beside::Values,
        // 3.12: one tagged word at -24: values | 1, or the dict.
        12 if word_m24 & 1 == 1 => Beside::Values,
        11..=13 if word_m24 != 0 => Beside::Dict(word_m24),
        _ => Beside::Nothing,
    }
}
