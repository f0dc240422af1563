//! Dict layout, just enough to find `__module__` in a heap type's `tp_dict` and to size the
//! values of instances. Values and sources: docs/cpython.md §7 (DWARF of the pyenv builds).

/// `PyDictObject.ma_keys` (3.9–3.13).
pub const MA_KEYS: u64 = 32;
/// `sizeof(PyDictObject)` (3.9–3.13; 3.13 `_Py_DebugOffsets.dict_object.size`); its key
/// table and values are separate blocks.
pub const OBJECT_SIZE: u64 = 48;

/// 3.11+: `PyDictKeysObject { dk_refcnt; u8 dk_log2_size; u8 dk_log2_index_bytes; u8 dk_kind;
/// …; dk_usable; dk_nentries; dk_indices[] }`, entries after the indices
/// (`1 << dk_log2_index_bytes` bytes of them; 3.11.7 `internal/pycore_dict.h:148`).
/// `dk_log2_size`, `dk_log2_index_bytes` and `dk_kind`: three bytes from here.
pub const DK_LOG2_SIZE: u64 = 8;
/// `PyDictKeysObject.dk_usable` (3.11+).
pub const DK_USABLE: u64 = 16;
/// `PyDictKeysObject.dk_nentries` (3.11+).
pub const DK_NENTRIES: u64 = 24;
pub const DK_NENTRIES_311: u64 = DK_NENTRIES;
/// `PyDictKeysObject.dk_indices` (3.11+).
pub const DK_INDICES_311: u64 = 32;
/// `DICT_KEYS_GENERAL`, the `dk_kind` of tables with `PyDictKeyEntry`s (3.11.7
/// `internal/pycore_dict.h:81`, 3.13.0 `:134`); other kinds hold `PyDictUnicodeEntry`s.
pub const DK_KIND_GENERAL: u8 = 0;

/// 3.9/3.10: `{dk_refcnt; dk_size; dk_lookup; dk_usable; dk_nentries; dk_indices[]}`,
/// entries `PyDictKeyEntry`, index width from the table size (`index_width_39`).
/// `PyDictKeysObject.dk_size`.
pub const DK_SIZE_39: u64 = 8;
/// `PyDictKeysObject.dk_nentries` (3.9/3.10).
pub const DK_NENTRIES_39: u64 = 32;
/// `PyDictKeysObject.dk_indices` (3.9/3.10).
pub const DK_INDICES_39: u64 = 40;

/// Bytes per index for a 3.9/3.10 table of `size` slots: CPython's `DK_IXSIZE` (in
/// `Objects/dictobject.c`, not an installed header; docs/cpython.md §7).
pub fn index_width_39(size: u64) -> u64 {
    match size {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// `sizeof(PyDictKeyEntry)` `{me_hash, me_key, me_value}` and where its key is.
pub const GENERAL_ENTRY: u64 = 24;
pub const GENERAL_ENTRY_KEY: u64 = 8;
/// `sizeof(PyDictUnicodeEntry)` `{me_key, me_value}` (3.11+) and where its key is.
pub const UNICODE_ENTRY: u64 = 16;
pub const UNICODE_ENTRY_KEY: u64 = 0;
