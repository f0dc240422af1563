//! `PyObject`, `PyVarObject`, `PyTypeObject` and the memory in front of an object (its
//! pre-header). x86_64, GIL builds; values and sources: docs/cpython.md §2–§4.

use super::Version;

/// `PyObject.ob_type` (3.9–3.13; DWARF). `leakscope-ebpf` reads `ob_type` and `ob_size`
/// together at this offset (`TypeAndSize`, its own literal: docs/cpython.md §10).
pub const OB_TYPE: u64 = 8;
/// `PyVarObject.ob_size` (3.9–3.13; DWARF).
pub const OB_SIZE: u64 = 16;

/// `PyTypeObject.tp_name` (3.9–3.13; DWARF). `tp_basicsize` (+32) and `tp_itemsize` (+40)
/// follow it, so the three are read as one 24-byte block in `resolve/types.rs`.
pub const TP_NAME: u64 = 24;
/// `PyTypeObject.tp_dealloc`, the word after `tp_itemsize` (3.9–3.15: `Include/cpython/object.h`
/// `struct _typeobject`; DWARF on 3.11.7).
pub const TP_DEALLOC: u64 = 48;
/// `PyTypeObject.tp_flags` (3.9–3.13; DWARF; also `_Py_DebugOffsets.type_object.tp_flags`).
pub const TP_FLAGS: u64 = 168;
/// `PyTypeObject.tp_dict` (3.9–3.13; DWARF).
pub const TP_DICT: u64 = 264;

/// `Py_TPFLAGS_INLINE_VALUES` (3.13+; 3.13.0 `Include/object.h:639`).
pub const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
/// `Py_TPFLAGS_MANAGED_WEAKREF` (3.12+; 3.12.1 `object.h:475`, 3.13.0 `:644`).
pub const TPFLAGS_MANAGED_WEAKREF: u64 = 1 << 3;
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+; 3.11.7 `object.h:354`, 3.12.1 `:480`, 3.13.0 `:649`).
pub const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// `Py_TPFLAGS_HEAPTYPE` (all; 3.9.18 `object.h:302` … 3.13.0 `:667`).
pub const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
/// `Py_TPFLAGS_HAVE_GC` (all; 3.9.18 `object.h:321` … 3.13.0 `:688`).
pub const TPFLAGS_HAVE_GC: u64 = 1 << 14;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: set on `type` and every metatype (all; 3.9.18 `object.h:348`
/// … 3.13.0 `:722`).
pub const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// `PyListObject`'s `ob_size` (`PyVarObject.ob_size`; 3.13 `_Py_DebugOffsets.list_object`).
pub const LIST_SIZE: u64 = 16;
/// `PyListObject.ob_item` (3.9–3.13; DWARF; 3.13 `_Py_DebugOffsets.list_object.ob_item`).
pub const LIST_ITEMS: u64 = 24;

/// `PyListObject.allocated`: item slots of the list's own buffer (3.9.18, 3.11.7, 3.13.0;
/// DWARF, `gdb -batch -ex 'ptype /o PyListObject' libpython3.X.so`).
pub const LIST_ALLOCATED: u64 = 32;
/// `PyByteArrayObject.ob_alloc`: bytes of the bytearray's own buffer (same versions, same
/// command with `PyByteArrayObject`).
pub const BYTEARRAY_ALLOC: u64 = 24;

/// Builtin types whose objects own memory beside them, allocated by the interpreter (and
/// so not native blocks): a bytearray's buffer, a list's item array, a dict's key table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    ByteArray,
    List,
    Dict,
}

impl Owner {
    /// Each kind and the interpreter's type object of it.
    pub const ALL: [(Owner, &'static str); 3] = [
        (Owner::ByteArray, "PyByteArray_Type"),
        (Owner::List, "PyList_Type"),
        (Owner::Dict, "PyDict_Type"),
    ];

    /// Bytes the object at `addr` owns beside itself now, as CPython's own `__sizeof__`
    /// counts them: `ob_alloc` bytes; `allocated` item pointers; a combined dict's key
    /// table (a split dict's table belongs to its class: 0). `None` when what was read
    /// cannot be a size (a torn or reused object).
    pub fn owned_bytes(
        self,
        mem: &dyn crate::target::Memory,
        addr: u64,
        minor: u32,
    ) -> Option<u64> {
        const MAX: u64 = 1 << 40;
        let size = |w: u64| (w < MAX).then_some(w);
        match self {
            Owner::ByteArray => size(mem.u64(addr + BYTEARRAY_ALLOC).ok()?),
            Owner::List => Some(size(mem.u64(addr + LIST_ALLOCATED).ok()?)? * 8),
            Owner::Dict => {
                use super::dict;
                if mem.u64(addr + dict::MA_VALUES).ok()? != 0 {
                    return Some(0);
                }
                let keys = mem.u64(addr + dict::MA_KEYS).ok()?;
                dict::keys_bytes(mem, keys, minor)
            }
        }
    }
}

/// `sizeof(PyGC_Head)`: `{_gc_next, _gc_prev}` in front of every GC object (3.9–3.13; DWARF).
pub const GC_HEAD_SIZE: u64 = 16;
/// `PyGC_Head._gc_prev`, from the head (`_gc_next` is at +0).
pub const GC_PREV: u64 = 8;
/// The two words in front of the `PyGC_Head` of a managed-dict/weakref object (3.11+):
/// `MANAGED_DICT_OFFSET` = −3 words (−24) and the word at −4 words (−32): 3.11 values
/// pointer, 3.12+ `MANAGED_WEAKREF_OFFSET` (3.11.7 `pycore_object.h:265`, 3.12.1 `:405`,
/// 3.13.0 `:713-714`).
pub const MANAGED_PREHEADER_SIZE: u64 = 16;
/// Where the managed pre-header starts, counted back from the `PyObject*` (`op-32`).
pub const MANAGED_PREHEADER_AT: u64 = GC_HEAD_SIZE + MANAGED_PREHEADER_SIZE;
/// Pre-headers grow in steps of this many bytes (the GC head, then the managed words).
pub const PREHEADER_STEP: u64 = 16;
/// Every non-zero pre-header size `preheader_size` can return: a block that starts this far
/// before an object is that object's allocation.
pub const PREHEADER_SIZES: [u64; 2] = [GC_HEAD_SIZE, MANAGED_PREHEADER_AT];

/// Bytes in front of the `PyObject*` that belong to its allocation: `PyGC_Head` (16) for GC
/// types, and from 3.11 two words for the managed dict (3.11) / dict + weakref (3.12+).
/// This is `_PyType_PreHeaderSize` (3.11.7 `pycore_object.h:222`, 3.12.1 `:339`,
/// 3.13.0 `:672`); docs/cpython.md §4.
pub fn preheader_size(v: Version, flags: u64) -> u64 {
    let gc = if flags & TPFLAGS_HAVE_GC != 0 {
        GC_HEAD_SIZE
    } else {
        0
    };
    let managed = match v.minor {
        11 => flags & TPFLAGS_MANAGED_DICT != 0,
        12.. => flags & (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF) != 0,
        _ => false,
    };
    gc + if managed { MANAGED_PREHEADER_SIZE } else { 0 }
}

/// Where a `PyObject` can start in a pymalloc block: no pre-header, a `PyGC_Head`, or the
/// managed pre-header and a `PyGC_Head` (3.11+).
pub const OBJECT_STARTS: [u64; 3] = [0, PREHEADER_SIZES[0], PREHEADER_SIZES[1]];

/// The object a block's first bytes hold: at one of `OBJECT_STARTS`, a reference count
/// (1 to 2³²−1: 3.12+ immortals keep `UINT_MAX`; a free-list link or 0 is not one) and a
/// type pointer that `type_flags` accepts as a type object, whose flags give exactly that
/// pre-header. Returns (start, type pointer). Used by the allocator census and by the
/// allocator plan's blocks (`resolve::blocks`).
pub fn object_in_block(
    block: &[u8],
    v: Version,
    type_flags: &mut dyn FnMut(u64) -> Option<u64>,
) -> Option<(u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
    for start in OBJECT_STARTS {
        let s = start as usize;
        if s + 16 > block.len() {
            break;
        }
        let refcnt = word(s);
        if !(1..=u32::MAX as u64).contains(&refcnt) {
            continue;
        }
        let t = word(s + OB_TYPE as usize);
        if let Some(flags) = type_flags(t)
            && preheader_size(v, flags) == start
        {
            return Some((start, t));
        }
    }
    None
}

/// Size of one object: `tp_basicsize + |ob_size| * tp_itemsize`, rounded to 8 like
/// `_PyObject_VAR_SIZE` (3.13.0 `cpython/objimpl.h:23`), plus the pre-header. Shallow:
/// buffers an object owns (a list's item array, a dict's table, a str's characters) are not
/// included. A word that is not a plausible item count (3.11+ generators keep `gi_code`
/// where `ob_size` would be, though their type has an item size) counts as no items.
pub fn object_bytes(basicsize: u64, itemsize: u64, ob_size: i64, preheader: u64) -> u64 {
    let n = ob_size.unsigned_abs();
    let items = if itemsize == 0 || n > 1 << 31 {
        0
    } else {
        n * itemsize
    };
    ((basicsize + items + 7) & !7) + preheader
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

/// Bytes of an instance's attribute values kept beside it, for `size` shared-key slots:
/// 3.11/3.12 `new_values` (a separate block: an order prefix rounded up, then the values);
/// 3.13 `_PyInlineValuesSize` (inside the object's own block, after `tp_basicsize`).
/// docs/cpython.md §4.
pub fn values_bytes(v: Version, size: u64) -> u64 {
    let round8 = |n: u64| (n + 7) & !7;
    match v.minor {
        11 | 12 => round8(size + 2) + 8 * size,
        13 => round8(size) + 8 * (size + 1),
        _ => 0,
    }
}

/// Where a managed-dict instance keeps its `__dict__` (3.11) or its tagged dict-or-values
/// word (3.12): `op - 24`; 3.11 keeps its values pointer at `op - 32`.
pub const MANAGED_DICT_AT: u64 = 24;

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

/// Reads the managed pre-header words (docs/cpython.md §4): 3.11 values pointer at −32 and
/// dict at −24; 3.12 one tagged word at −24 (`values − 1`, odd, or the dict); 3.13 the dict at
/// −24 (values are inline).
pub fn beside(v: Version, flags: u64, word_m32: u64, word_m24: u64) -> Beside {
    if flags & TPFLAGS_MANAGED_DICT == 0 {
        return Beside::Nothing;
    }
    match v.minor {
        11 if word_m32 != 0 => Beside::Values,
        12 if word_m24 & 1 == 1 => Beside::Values,
        11..=13 if word_m24 != 0 => Beside::Dict(word_m24),
        _ => Beside::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::tests::v;

    #[test]
    fn object_sizes() {
        assert_eq!(object_bytes(16, 0, 0, 0), 16); // object()
        assert_eq!(object_bytes(24, 8, 3, 16), 24 + 24 + 16); // a 3-tuple, GC header
        assert_eq!(object_bytes(24, 4, -2, 0), 32); // negative int, rounded to 8
        assert_eq!(object_bytes(80, 8, 0x7f00_dead_beef, 16), 96); // a pointer, not a size
    }

    #[test]
    fn preheader_per_version_and_flags() {
        let (gc, md, mw) = (
            TPFLAGS_HAVE_GC,
            TPFLAGS_MANAGED_DICT,
            TPFLAGS_MANAGED_WEAKREF,
        );
        // (minor, flags, bytes)
        let rows = [
            (9, 0, 0),
            (9, gc, 16),
            (10, gc | md, 16), // the bit means nothing before 3.11
            (11, gc, 16),
            (11, gc | md, 32),
            (11, gc | mw, 16), // no managed weakref in 3.11
            (12, gc | mw, 32),
            (12, gc | md | mw, 32),
            (13, gc | md, 32),
            (13, md, 16),
            (13, TPFLAGS_HEAPTYPE, 0),
        ];
        for (minor, flags, bytes) in rows {
            assert_eq!(
                preheader_size(v(minor), flags),
                bytes,
                "3.{minor} {flags:#x}"
            );
            assert!(bytes == 0 || PREHEADER_SIZES.contains(&bytes));
            assert_eq!(bytes % PREHEADER_STEP, 0);
        }
    }

    #[test]
    fn values_beside_objects() {
        // 3.11: 30 slots → prefix round8(32) + 240; 3.13 inline: round8(30) + 31*8
        assert_eq!(values_bytes(v(11), 30), 32 + 240);
        assert_eq!(values_bytes(v(13), 30), 32 + 248);
        assert_eq!(values_bytes(v(10), 30), 0);
        let md = TPFLAGS_MANAGED_DICT;
        assert_eq!(beside(v(11), md, 0x1000, 0), Beside::Values);
        assert_eq!(beside(v(11), md, 0, 0x2000), Beside::Dict(0x2000));
        assert_eq!(beside(v(12), md, 0, 0x1001), Beside::Values);
        assert_eq!(beside(v(12), md, 0, 0x2000), Beside::Dict(0x2000));
        assert_eq!(beside(v(13), md, 0, 0), Beside::Nothing);
        assert_eq!(beside(v(11), 0, 0x1000, 0x2000), Beside::Nothing);
    }
}
