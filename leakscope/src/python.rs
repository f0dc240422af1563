//! CPython knowledge, in one place: supported versions, object and type layouts, the
//! functions the probes hook. Per-version differences are rows in the tables below; sources
//! are CPython's headers for each version (x86_64, GIL builds) and
//! `shared/notes/cpython-internals.md`, where each number was checked on this machine.

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
pub fn object_bytes(basicsize: u64, itemsize: u64, ob_size: i64, preheader: u64) -> u64 {
    let items = if itemsize == 0 { 0 } else { ob_size.unsigned_abs().min(1 << 40) * itemsize };
    ((basicsize + items + 7) & !7) + preheader
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
