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

/// `sizeof(PyDictKeysObject)` without its indices: 40 in 3.9/3.10, 32 in 3.11–3.13.
pub const KEYS_HEADER_39: u64 = DK_INDICES_39;
pub const KEYS_HEADER_311: u64 = DK_INDICES_311;
/// `PyDict_MINSIZE`: the smallest real table (the shared empty table is smaller).
pub const MIN_SIZE: u64 = 8;

/// Bytes of a key table as CPython allocates it and `dict.__sizeof__` counts it
/// (`_PyDict_KeysSize`, 3.11.7 `Objects/dictobject.c`; `new_keys_object` 3.9.18): header,
/// indices, and `USABLE_FRACTION(size) = 2 * size / 3` entries. The shared empty table
/// (smaller than `PyDict_MINSIZE`) is static: 0.
pub fn keys_bytes(mem: &dyn crate::target::Memory, keys: u64, minor: u32) -> Option<u64> {
    if minor >= 11 {
        let mut h = [0u8; 3];
        mem.read(keys + DK_LOG2_SIZE, &mut h).ok()?;
        let (log2_size, log2_index_bytes, kind) = (h[0] as u64, h[1] as u64, h[2]);
        if log2_size > 40 || log2_index_bytes > 43 {
            return None;
        }
        if 1u64 << log2_size < MIN_SIZE {
            return Some(0);
        }
        let entry = if kind == DK_KIND_GENERAL {
            GENERAL_ENTRY
        } else {
            UNICODE_ENTRY
        };
        Some(KEYS_HEADER_311 + (1 << log2_index_bytes) + entry * ((2 << log2_size) / 3))
    } else {
        let size = mem.u64(keys + DK_SIZE_39).ok()?;
        if size > 1 << 40 || !size.is_power_of_two() {
            return None;
        }
        if size < MIN_SIZE {
            return Some(0);
        }
        Some(KEYS_HEADER_39 + size * index_width_39(size) + GENERAL_ENTRY * (2 * size / 3))
    }
}

/// `sizeof(PyDictKeyEntry)` `{me_hash, me_key, me_value}` and where its key is.
pub const GENERAL_ENTRY: u64 = 24;
pub const GENERAL_ENTRY_KEY: u64 = 8;
/// `sizeof(PyDictUnicodeEntry)` `{me_key, me_value}` (3.11+) and where its key is.
pub const UNICODE_ENTRY: u64 = 16;
pub const UNICODE_ENTRY_KEY: u64 = 0;

/// `PyDictObject.ma_values`: a split dict's values (NULL for a combined one).
pub const MA_VALUES: u64 = 40;

/// A 3.11+ key table's entries: (first entry, `dk_nentries`, entry size, key offset).
pub fn entries_311(mem: &dyn crate::target::Memory, keys: u64) -> Option<(u64, u64, u64, u64)> {
    let mut h = [0u8; 3];
    mem.read(keys + DK_LOG2_SIZE, &mut h).ok()?;
    let (log2_index_bytes, kind) = (h[1], h[2]);
    if log2_index_bytes > 40 {
        return None;
    }
    let n = mem.u64(keys + DK_NENTRIES_311).ok()?;
    if n > 1 << 24 {
        return None;
    }
    let entries = keys + DK_INDICES_311 + (1u64 << log2_index_bytes);
    Some(if kind == DK_KIND_GENERAL {
        (entries, n, GENERAL_ENTRY, GENERAL_ENTRY_KEY)
    } else {
        (entries, n, UNICODE_ENTRY, UNICODE_ENTRY_KEY)
    })
}

/// A 3.11/3.12 dict's (key, value) pairs, deleted entries left out: a combined table's
/// entries hold both (the value 8 bytes after the key); a split dict (`ma_values` set)
/// takes its keys from the shared table and its values from `ma_values`, in entry order.
pub fn items(
    mem: &dyn crate::target::Memory,
    v: super::Version,
    d: u64,
) -> Option<Vec<(u64, u64)>> {
    if v.minor < 11 {
        return None;
    }
    let keys = mem.u64(d + MA_KEYS).ok()?;
    let values = mem.u64(d + MA_VALUES).ok()?;
    let (entries, n, stride, key_at) = entries_311(mem, keys)?;
    let mut buf = vec![0u8; (n * stride) as usize];
    mem.read(entries, &mut buf).ok()?;
    let w = |at: u64| u64::from_le_bytes(buf[at as usize..at as usize + 8].try_into().unwrap());
    let mut split = vec![];
    if values != 0 {
        let mut vb = vec![0u8; (n * 8) as usize];
        mem.read(values, &mut vb).ok()?;
        split = vb
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
    }
    Some(
        (0..n)
            .filter_map(|i| {
                let key = w(i * stride + key_at);
                let value = if values != 0 {
                    split[i as usize]
                } else {
                    w(i * stride + key_at + 8)
                };
                (key != 0 && value != 0).then_some((key, value))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tables_are_sized_as_dict_sizeof_counts_them() {
        let m = crate::target::FakeMemory::new();
        // 3.11: 128 slots, 1-byte indices, general entries: 32 + 128 + 24 * 85.
        m.put_words(0x1000, &[1, 0x00_07_07, 0, 0]);
        assert_eq!(keys_bytes(&*m, 0x1000, 11), Some(32 + 128 + 24 * 85));
        // unicode keys: 16-byte entries.
        m.put_words(0x2000, &[1, 0x01_03_03, 0, 0]);
        assert_eq!(keys_bytes(&*m, 0x2000, 12), Some(32 + 8 + 16 * 5));
        // the shared empty table: 0.
        m.put_words(0x3000, &[1, 0x01_00_00, 0, 0]);
        assert_eq!(keys_bytes(&*m, 0x3000, 11), Some(0));
        // 3.9: 256 slots need 2-byte indices: 40 + 512 + 24 * 170.
        m.put_words(0x4000, &[1, 256, 0, 0, 0]);
        assert_eq!(keys_bytes(&*m, 0x4000, 9), Some(40 + 512 + 24 * 170));
        // not a size
        m.put_words(0x5000, &[1, 300, 0, 0, 0]);
        assert_eq!(keys_bytes(&*m, 0x5000, 10), None);
    }
}
