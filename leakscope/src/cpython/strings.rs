//! `str` (`PyASCIIObject`, `PyCompactUnicodeObject`) and `bytes` layouts.
//! Values and sources: docs/cpython.md §6.

use super::Version;

/// `PyASCIIObject.length` (3.9–3.13; DWARF; 3.13 `_Py_DebugOffsets.unicode_object.length`).
pub const STR_LENGTH: u64 = 16;
/// `PyASCIIObject.state`, a bitfield word (3.9–3.13; DWARF; 3.13
/// `_Py_DebugOffsets.unicode_object.state`).
pub const STR_STATE: u64 = 32;

/// The bits of `PyASCIIObject.state` leakscope reads. Same positions in 3.9–3.13 (DWARF,
/// `ptype/o PyASCIIObject`): `interned:2` (bits 0–1), `kind:3` (2–4), `compact:1` (5),
/// `ascii:1` (6), then `ready` (≤3.11) or `statically_allocated` (3.12+) at bit 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrState {
    /// `PyUnicode_1BYTE_KIND` 1, `2BYTE` 2, `4BYTE` 4 (0: a legacy, not-ready string).
    pub kind: u32,
    pub compact: bool,
    pub ascii: bool,
}

pub const STR_KIND_SHIFT: u32 = 2;
pub const STR_KIND_MASK: u32 = 7;
pub const STR_COMPACT_BIT: u32 = 5;
pub const STR_ASCII_BIT: u32 = 6;

/// Decodes a `state` word (only its low bits count; the rest may be padding).
pub fn str_state(state: u32) -> StrState {
    StrState {
        kind: (state >> STR_KIND_SHIFT) & STR_KIND_MASK,
        compact: (state >> STR_COMPACT_BIT) & 1 == 1,
        ascii: (state >> STR_ASCII_BIT) & 1 == 1,
    }
}

/// `str` data of a compact ASCII string starts right after `PyASCIIObject`:
/// `sizeof(PyASCIIObject)` 48 (3.9–3.11, with `wstr`), 40 (3.12+; DWARF; 3.13
/// `_Py_DebugOffsets.unicode_object.asciiobject_size`).
pub fn ascii_data_offset(v: Version) -> u64 {
    if v.minor >= 12 { 40 } else { 48 }
}
/// Data of a compact non-ASCII `str` starts after `PyCompactUnicodeObject`:
/// `sizeof(PyCompactUnicodeObject)` 72 (3.9–3.11), 56 (3.12+; DWARF).
pub fn compact_data_offset(v: Version) -> u64 {
    if v.minor >= 12 { 56 } else { 72 }
}

/// `PyBytesObject`'s `ob_size` (`PyVarObject.ob_size`; 3.13 `_Py_DebugOffsets.bytes_object`).
pub const BYTES_SIZE: u64 = 16;
/// `PyBytesObject.ob_sval` (3.9–3.13; DWARF).
pub const BYTES_DATA: u64 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bits_of_real_strings() {
        // `state` read as a u32 from live strings (docs/cpython.md §6 has the command); the
        // upper bytes are padding and vary.
        // (version, text, state, kind, compact, ascii)
        let rows = [
            ("3.9", "abc", 0xef89_32e4, 1, true, true),
            ("3.9", "ét", 0xef8a_d9a4, 1, true, false),
            ("3.9", "€x", 0xeff6_b4a8, 2, true, false),
            ("3.9", "😀x", 0xb0, 4, true, false),
            ("3.9", "__module__", 0xe5, 1, true, true),
            ("3.11", "€x", 0x79a5_bba8, 2, true, false),
            ("3.12", "abc", 0x64, 1, true, true),
            ("3.12", "__module__", 0xe7, 1, true, true),
            ("3.13", "ét", 0x5458_2324, 1, true, false),
            ("3.13", "😀x", 0x54d0_4730, 4, true, false),
        ];
        for (v, text, state, kind, compact, ascii) in rows {
            assert_eq!(
                str_state(state),
                StrState {
                    kind,
                    compact,
                    ascii
                },
                "{v} {text:?}"
            );
        }
    }
}
