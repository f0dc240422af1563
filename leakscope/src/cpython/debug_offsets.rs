//! `_Py_DebugOffsets` (3.13+): the first member of `_PyRuntime`, statically initialized, so
//! readable from the file's `.PyRuntime` section without touching the process. After the
//! cookie every field is a `uint64_t`: `version` (`PY_VERSION_HEX`), `free_threaded`, then
//! groups, each starting with its struct's `size`. Which groups and fields, in order, is
//! per minor version (`FIELDS_313`, `FIELDS_314`, `FIELDS_315`; headers: 3.13.0
//! `Include/internal/pycore_runtime.h:62-195`, 3.14.10 `internal/pycore_debug_offsets.h:67-236`,
//! 3.15.2 `:67-260`). docs/cpython.md §9.
//!
//! 3.13: leakscope keeps its own table (`gc_layout`, `stack_layout`, the constants) and the
//! functions here refuse to go on when the interpreter's offsets disagree with it. 3.14+:
//! the offsets move between patch releases (3.14.5 inserted fields in `PyInterpreterState`
//! when its GC went back to generations), so the layouts are taken from the offsets, and
//! only what they lack comes from tables: the GC's list heads (`gc_lists`, chosen by the
//! size of the GC state, which tells the designs apart) and the stack-reference tag.

use super::Version;
use super::frames::{GIL_LAST_HOLDER, GIL_LOCKED, Instr, StackLayout, stack_layout};
use super::gc::{GC_COLLECTING, GcLayout, gc_layout};
use super::linetable::TableKind;

/// `_Py_DebugOffsets.cookie`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

type Fields = &'static [(&'static str, &'static [&'static str])];

const OBJECTS: Fields = &[
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
];

/// 3.13.0 `pycore_runtime.h:62-195`: 73 words with the cookie.
const FIELDS_313: &[Fields] = &[
    &[
        (
            "runtime_state",
            &["size", "finalizing", "interpreters_head"],
        ),
        (
            "interpreter_state",
            &[
                "size",
                "id",
                "next",
                "threads_head",
                "gc",
                "imports_modules",
                "sysdict",
                "builtins",
                "ceval_gil",
                "gil_runtime_state",
                "gil_runtime_state_enabled",
                "gil_runtime_state_locked",
                "gil_runtime_state_holder",
            ],
        ),
        (
            "thread_state",
            &[
                "size",
                "prev",
                "next",
                "interp",
                "current_frame",
                "thread_id",
                "native_thread_id",
                "datastack_chunk",
                "status",
            ],
        ),
        (
            "interpreter_frame",
            &[
                "size",
                "previous",
                "executable",
                "instr_ptr",
                "localsplus",
                "owner",
            ],
        ),
        (
            "code_object",
            &[
                "size",
                "filename",
                "name",
                "qualname",
                "linetable",
                "firstlineno",
                "argcount",
                "localsplusnames",
                "localspluskinds",
                "co_code_adaptive",
            ],
        ),
    ],
    OBJECTS,
    &[
        ("dict_object", &["size", "ma_keys", "ma_values"]),
        ("float_object", &["size", "ob_fval"]),
        ("long_object", &["size", "lv_tag", "ob_digit"]),
        ("bytes_object", &["size", "ob_size", "ob_sval"]),
        (
            "unicode_object",
            &["size", "state", "length", "asciiobject_size"],
        ),
        ("gc", &["size", "collecting"]),
    ],
];

const INTERPRETER_314: (&str, &[&str]) = (
    "interpreter_state",
    &[
        "size",
        "id",
        "next",
        "threads_head",
        "threads_main",
        "gc",
        "imports_modules",
        "sysdict",
        "builtins",
        "ceval_gil",
        "gil_runtime_state",
        "gil_runtime_state_enabled",
        "gil_runtime_state_locked",
        "gil_runtime_state_holder",
        "code_object_generation",
        "tlbc_generation",
    ],
);
const FRAME_CODE_314: Fields = &[
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
            "stackpointer",
            "tlbc_index",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
            "co_tlbc",
        ],
    ),
];
const TAIL_314: Fields = &[
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    (
        "debugger_support",
        &[
            "eval_breaker",
            "remote_debugger_support",
            "remote_debugging_enabled",
            "debugger_pending_call",
            "debugger_script_path",
            "debugger_script_path_size",
        ],
    ),
];
const SET_DICT_314: Fields = &[
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
];

/// 3.14 (the same list in 3.14.0 and 3.14.10) `pycore_debug_offsets.h:67-236`: 95 words.
const FIELDS_314: &[Fields] = &[
    &[
        (
            "runtime_state",
            &["size", "finalizing", "interpreters_head"],
        ),
        INTERPRETER_314,
        (
            "thread_state",
            &[
                "size",
                "prev",
                "next",
                "interp",
                "current_frame",
                "thread_id",
                "native_thread_id",
                "datastack_chunk",
                "status",
            ],
        ),
    ],
    FRAME_CODE_314,
    OBJECTS,
    SET_DICT_314,
    &[
        (
            "unicode_object",
            &["size", "state", "length", "asciiobject_size"],
        ),
        ("gc", &["size", "collecting"]),
    ],
    TAIL_314,
];

/// 3.15 (3.15.0 and 3.15.2) `pycore_debug_offsets.h:67-260`: 111 words.
const FIELDS_315: &[Fields] = &[
    &[
        (
            "runtime_state",
            &["size", "finalizing", "interpreters_head"],
        ),
        INTERPRETER_314,
        (
            "thread_state",
            &[
                "size",
                "prev",
                "next",
                "interp",
                "current_frame",
                "base_frame",
                "last_profiled_frame",
                "last_profiled_frame_seq",
                "thread_id",
                "native_thread_id",
                "datastack_chunk",
                "status",
                "holds_gil",
                "gil_requested",
                "current_exception",
                "exc_state",
            ],
        ),
        ("err_stackitem", &["exc_value"]),
    ],
    FRAME_CODE_314,
    &[
        ("pyobject", &["size", "ob_type"]),
        (
            "type_object",
            &[
                "size",
                "tp_name",
                "tp_repr",
                "tp_flags",
                "tp_basicsize",
                "tp_dictoffset",
            ],
        ),
        ("heap_type_object", &["size", "ht_cached_keys"]),
        ("tuple_object", &["size", "ob_item", "ob_size"]),
        ("list_object", &["size", "ob_item", "ob_size"]),
    ],
    SET_DICT_314,
    &[
        (
            "unicode_object",
            &[
                "size",
                "state",
                "length",
                "asciiobject_size",
                "compactunicodeobject_size",
            ],
        ),
        (
            "gc",
            &[
                "size",
                "collecting",
                "frame",
                "generation_stats_size",
                "generation_stats",
            ],
        ),
    ],
    TAIL_314,
];

fn fields(minor: u32) -> Option<&'static [Fields]> {
    Some(match minor {
        13 => FIELDS_313,
        14 => FIELDS_314,
        15 => FIELDS_315,
        _ => return None,
    })
}

/// Words of `_Py_DebugOffsets` (the cookie counted as one) for a minor version.
pub fn words(minor: u32) -> Option<usize> {
    Some(
        3 + fields(minor)?
            .iter()
            .flat_map(|f| f.iter())
            .map(|(_, g)| g.len())
            .sum::<usize>(),
    )
}

/// One interpreter's `_Py_DebugOffsets`, by C name (`"thread_state.current_frame"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub version: u64,
    pub free_threaded: bool,
    values: Vec<(&'static str, &'static str, u64)>,
}

impl Raw {
    /// The value of `group.field`; 0 for a name this version does not have.
    pub fn get(&self, name: &str) -> u64 {
        let (group, field) = name.split_once('.').unwrap_or((name, ""));
        self.values
            .iter()
            .find(|(g, f, _)| *g == group && *f == field)
            .map_or(0, |v| v.2)
    }

    /// `(major, minor, micro)` of `version` (`PY_VERSION_HEX`).
    pub fn release(&self) -> (u32, u32, u32) {
        let v = self.version as u32;
        (v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff)
    }
}

/// Parses a `.PyRuntime` section prefix as version `minor`'s `_Py_DebugOffsets`; `None`
/// without the cookie, if too short, or if its `version` is another minor version.
pub fn parse(runtime_section: &[u8], minor: u32) -> Option<Raw> {
    if runtime_section.get(..8)? != COOKIE {
        return None;
    }
    let n = words(minor)?;
    let mut words = runtime_section
        .get(8..8 * n)?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
    let version = words.next()?;
    let free_threaded = words.next()? != 0;
    let mut values = vec![];
    for &(group, names) in fields(minor)?.iter().flat_map(|f| f.iter()) {
        for &name in names {
            values.push((group, name, words.next()?));
        }
    }
    let raw = Raw {
        version,
        free_threaded,
        values,
    };
    (raw.release().0 == 3 && raw.release().1 == minor).then_some(raw)
}

impl Raw {
    /// The stack walk's offsets, as a `StackLayout` (the line table kind is not in the
    /// offsets: 3.13–3.15 use the 3.11 location table, whose kinds enum is the same in
    /// their `cpython/code.h`). 3.14+ frames hold a `_PyStackRef`: `Py_TAG_BITS` (3) off.
    pub fn stack_layout(&self) -> StackLayout {
        let g = |n: &str| self.get(n);
        let minor = self.release().1;
        StackLayout {
            runtime_off: g("runtime_state.interpreters_head"),
            gil_ptr_off: Some(g("interpreter_state.ceval_gil")),
            native_tid_off: Some(g("thread_state.native_thread_id")),
            frame_path: (g("thread_state.current_frame"), None),
            frame_code: g("interpreter_frame.executable"),
            code_tag: if minor >= 14 { STACKREF_TAG_BITS } else { 0 },
            frame_prev: g("interpreter_frame.previous"),
            frame_instr: g("interpreter_frame.instr_ptr"),
            instr: Instr::Pointer {
                code_adaptive: g("code_object.co_code_adaptive"),
            },
            co_firstlineno: g("code_object.firstlineno"),
            co_filename: g("code_object.filename"),
            co_name: g("code_object.name"),
            co_qualname: Some(g("code_object.qualname")),
            co_linetable: g("code_object.linetable"),
            table: TableKind::Locations311,
        }
    }

    /// `gil_runtime_state_holder` and `_locked`, relative to `gil_runtime_state`: the
    /// offsets of `last_holder` and `locked` in `struct _gil_runtime_state`.
    pub fn gil_fields(&self) -> (u64, u64) {
        let s = self.get("interpreter_state.gil_runtime_state");
        (
            self.get("interpreter_state.gil_runtime_state_holder")
                .wrapping_sub(s),
            self.get("interpreter_state.gil_runtime_state_locked")
                .wrapping_sub(s),
        )
    }

    /// The GC lists' offsets: from the offsets, with the list heads `gc_lists` knows for
    /// this size of the GC state.
    pub fn gc_layout(&self) -> Result<GcLayout, String> {
        let size = self.get("gc.size");
        let minor = self.release().1;
        let (generations, generation0, permanent, garbage) =
            gc_lists(minor, size).ok_or_else(|| {
                format!(
                    "Python 3.{minor}: a GC state of {size} bytes is not one leakscope knows \
                 (its generation lists are not in _Py_DebugOffsets); not reading"
                )
            })?;
        Ok(GcLayout {
            interpreters_head: self.get("runtime_state.interpreters_head"),
            interp_next: self.get("interpreter_state.next"),
            interp_gc: self.get("interpreter_state.gc"),
            generations,
            generation0,
            permanent,
            collecting: self.get("gc.collecting"),
            garbage,
        })
    }
}

/// `Py_TAG_BITS` of the GIL build's `_PyStackRef` (3.14.10 `internal/pycore_stackref.h:249`,
/// 3.15.2 `:53-56`): a frame's `f_executable` is the code object with these bits off.
pub const STACKREF_TAG_BITS: u64 = 3;

/// `struct _gc_runtime_state` list heads by `(minor, sizeof)`: (first of the three
/// generations, each `GC_GENERATION_SIZE` on, the `generation0` pointer that places them
/// in the target, `permanent_generation`, `garbage`).
/// 3.13.0: 240 bytes (`pycore_gc.h:282-310`). 3.14.0–3.14.4 (incremental: `young`,
/// `old[2]`, 240 bytes) and 3.14.5+ (generations again, gh-142516, 264 bytes:
/// 3.14.10 `internal/pycore_interp_structs.h:203-266`) keep the heads at the same offsets.
/// 3.15.0b1+ (176 bytes, `:225-269`) dropped the trash fields in front.
pub fn gc_lists(minor: u32, size: u64) -> Option<(u64, Option<u64>, u64, u64)> {
    Some(match (minor, size) {
        (13, 240) => (24, Some(96), 104, 208),
        (14, 240) => (24, None, 96, 200),
        (14, 264) => (24, Some(256), 96, 200),
        (15, 176) => (8, Some(168), 80, 128),
        _ => return None,
    })
}

fn read(v: Version, runtime_section: Option<&[u8]>) -> Result<Raw, String> {
    let raw = runtime_section
        .and_then(|s| parse(s, v.minor))
        .ok_or_else(|| {
            format!(
                "Python {v}: no _Py_DebugOffsets of 3.{} in .PyRuntime",
                v.minor
            )
        })?;
    if raw.free_threaded {
        return Err(free_threaded(v));
    }
    Ok(raw)
}

/// The refusal for a free-threaded build (`_Py_DebugOffsets.free_threaded`).
pub fn free_threaded(v: Version) -> String {
    format!(
        "Python {v} is a free-threaded build (3.13t/3.14t: no GIL, objects in mimalloc heaps, \
         a different object header); leakscope supports the default (GIL) builds only"
    )
}

/// Whether the interpreter file is a free-threaded build: its `_Py_DebugOffsets` says so
/// (3.13+; earlier versions have no such build).
pub fn is_free_threaded(v: Version, runtime_section: Option<&[u8]>) -> bool {
    v.minor >= 13
        && runtime_section
            .and_then(|s| parse(s, v.minor))
            .is_some_and(|r| r.free_threaded)
}

/// GC list offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets` (read from its
/// `.PyRuntime` section; 3.13 cross-checked with the table), earlier versions from the
/// table.
pub fn gc_layout_from(v: Version, runtime_section: Option<&[u8]>) -> Result<GcLayout, String> {
    let table = gc_layout(v);
    if v.minor < 13 {
        return table.ok_or_else(|| format!("no GC layout for Python {v}"));
    }
    let debug = read(v, runtime_section)?;
    let layout = debug.gc_layout()?;
    if v.minor == 13 && (layout.collecting != GC_COLLECTING || table != Some(layout)) {
        return Err(format!(
            "Python {v}: _Py_DebugOffsets (GC {layout:?}) disagree with leakscope's layout; \
             not reading"
        ));
    }
    Ok(layout)
}

/// The stack walk's offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets` (3.13
/// cross-checked with the table), the GIL fields checked against `GIL_LAST_HOLDER` and
/// `GIL_LOCKED`; earlier versions from the table.
pub fn stack_layout_from(
    v: Version,
    runtime_section: Option<&[u8]>,
) -> Result<StackLayout, String> {
    let table = stack_layout(v);
    if v.minor < 13 {
        return table.ok_or_else(|| format!("no stack layout for Python {v}"));
    }
    let debug = read(v, runtime_section)?;
    let layout = debug.stack_layout();
    if (v.minor == 13 && table != Some(layout))
        || debug.gil_fields() != (GIL_LAST_HOLDER, GIL_LOCKED)
    {
        return Err(format!(
            "Python {v}: _Py_DebugOffsets ({layout:?}, GIL holder/locked {:?}) disagree with \
             leakscope's stack layout; not reading stacks",
            debug.gil_fields()
        ));
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::tests::v;
    use crate::cpython::{self, dict};

    /// A `.PyRuntime` prefix recorded from a real file (how: docs/cpython.md §9).
    fn fixture(text: &str) -> Vec<u8> {
        let hex: String = text.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// pyenv's 3.13.0 `libpython3.13.so.1.0`, first 640 bytes.
    fn fixture_313() -> Vec<u8> {
        fixture(include_str!("../../../tests/fixtures/pyruntime-3.13.0.hex"))
    }
    /// Debian sid's static `python3.14` (3.14.10) and `python3.15` (3.15.2).
    fn fixture_314() -> Vec<u8> {
        fixture(include_str!(
            "../../../tests/fixtures/pyruntime-3.14.10-sid.hex"
        ))
    }
    fn fixture_315() -> Vec<u8> {
        fixture(include_str!(
            "../../../tests/fixtures/pyruntime-3.15.2-sid.hex"
        ))
    }

    #[test]
    fn the_field_lists_have_the_headers_sizes() {
        assert_eq!(words(13), Some(73));
        assert_eq!(words(14), Some(95));
        assert_eq!(words(15), Some(111));
        assert_eq!(words(12), None);
    }

    #[test]
    fn real_313_offsets_equal_the_table() {
        let bytes = fixture_313();
        let d = parse(&bytes, 13).expect("cookie");
        assert_eq!(d.version, 0x030d_00f0); // 3.13.0 final
        assert!(!d.free_threaded);
        assert_eq!(d.gc_layout().ok(), gc_layout(v(13)));
        assert_eq!(d.get("gc.collecting"), GC_COLLECTING);
        assert_eq!(Some(d.stack_layout()), stack_layout(v(13)));
        assert_eq!(d.gil_fields(), (GIL_LAST_HOLDER, GIL_LOCKED));
        object_constants(&d);
        assert_eq!(
            stack_layout_from(v(13), Some(&bytes)),
            Ok(stack_layout(v(13)).unwrap())
        );
        assert_eq!(
            gc_layout_from(v(13), Some(&bytes)),
            Ok(gc_layout(v(13)).unwrap())
        );
        // Read as another version's, the words are refused (its version field says 3.13).
        assert_eq!(parse(&bytes, 14), None);
    }

    /// The object layouts the rest of leakscope uses as constants, in every 3.13+ build.
    fn object_constants(r: &Raw) {
        assert_eq!(r.get("pyobject.ob_type"), cpython::OB_TYPE);
        assert_eq!(r.get("type_object.tp_name"), cpython::TP_NAME);
        assert_eq!(r.get("type_object.tp_flags"), cpython::TP_FLAGS);
        assert_eq!(
            (r.get("list_object.ob_item"), r.get("list_object.ob_size")),
            (cpython::LIST_ITEMS, cpython::LIST_SIZE)
        );
        assert_eq!(
            (r.get("dict_object.size"), r.get("dict_object.ma_keys")),
            (dict::OBJECT_SIZE, dict::MA_KEYS)
        );
        assert_eq!(r.get("dict_object.ma_values"), dict::MA_VALUES);
        assert_eq!(
            (r.get("bytes_object.ob_size"), r.get("bytes_object.ob_sval")),
            (cpython::BYTES_SIZE, cpython::BYTES_DATA)
        );
        let minor = r.release().1;
        assert_eq!(
            (
                r.get("unicode_object.state"),
                r.get("unicode_object.length"),
                r.get("unicode_object.asciiobject_size")
            ),
            (
                cpython::STR_STATE,
                cpython::STR_LENGTH,
                cpython::ascii_data_offset(v(minor))
            )
        );
    }

    #[test]
    fn real_314_and_315_offsets_give_the_layouts() {
        for (bytes, minor, version) in [
            (fixture_314(), 14, 0x030e_0af0u64),
            (fixture_315(), 15, 0x030f_02f0),
        ] {
            let d = parse(&bytes, minor).expect("cookie");
            assert_eq!(d.version, version);
            assert!(!d.free_threaded);
            object_constants(&d);
            assert_eq!(d.gil_fields(), (GIL_LAST_HOLDER, GIL_LOCKED));
            let s = stack_layout_from(v(minor), Some(&bytes)).unwrap();
            // objdump/`.PyRuntime` words: interpreters_head, ceval_gil, current_frame,
            // native_thread_id; f_executable 0, previous 8, instr_ptr 56; co_code_adaptive.
            assert_eq!(
                (
                    s.runtime_off,
                    s.gil_ptr_off,
                    s.frame_path,
                    s.native_tid_off,
                    s.code_tag
                ),
                (
                    if minor == 14 { 808 } else { 936 },
                    Some(16),
                    (72, None),
                    Some(if minor == 14 { 160 } else { 184 }),
                    3
                )
            );
            assert_eq!((s.frame_code, s.frame_prev, s.frame_instr), (0, 8, 56));
            assert_eq!(s.instr, Instr::Pointer { code_adaptive: 208 });
            let g = gc_layout_from(v(minor), Some(&bytes)).unwrap();
            let expect = if minor == 14 {
                // 3.14.10: generational again, 264 bytes, heads where 3.14.0's were.
                GcLayout {
                    interpreters_head: 808,
                    interp_next: 7272,
                    interp_gc: 7408,
                    generations: 24,
                    generation0: Some(256),
                    permanent: 96,
                    collecting: 192,
                    garbage: 200,
                }
            } else {
                GcLayout {
                    interpreters_head: 936,
                    interp_next: 7264,
                    interp_gc: 7400,
                    generations: 8,
                    generation0: Some(168),
                    permanent: 80,
                    collecting: 112,
                    garbage: 128,
                }
            };
            assert_eq!(g, expect);
        }
    }

    /// The fixtures are what the project's own ELF reader finds in the files they were
    /// recorded from. Needs those interpreters (this machine has pyenv's 3.13.0, and
    /// `scripts/setup` builds the sid root), so `cargo xtask test` (`--include-ignored`)
    /// runs it and it fails when a file is missing: never a silent pass.
    #[test]
    #[ignore = "needs pyenv's 3.13.0 and the sid root; `cargo xtask test` runs it"]
    fn fixtures_match_installed_files() {
        let root = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(&std::env::var_os("HOME").expect("HOME")).join(".pyenv")
            });
        let sid = std::env::var("LEAKSCOPE_SID_ROOT")
            .unwrap_or_else(|_| "/var/cache/leakscope/sid".into());
        for (file, bytes) in [
            (
                root.join("versions/3.13.0/lib/libpython3.13.so.1.0"),
                fixture_313(),
            ),
            (
                std::path::Path::new(&sid).join("usr/bin/python3.14"),
                fixture_314(),
            ),
            (
                std::path::Path::new(&sid).join("usr/bin/python3.15"),
                fixture_315(),
            ),
        ] {
            let bin = crate::target::elf::Binary::open(&file)
                .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
            let section = bin.section(".PyRuntime").expect(".PyRuntime");
            assert_eq!(&section[..bytes.len()], &bytes[..], "{}", file.display());
        }
    }

    /// Detection from the binary: every sid file's version, read from its `.rodata` (how
    /// `Interpreter::find` reads it) and from its `_Py_DebugOffsets`, agree.
    #[test]
    #[ignore = "needs the sid root scripts/setup builds; `cargo xtask test` runs it"]
    fn sid_files_versions_from_rodata_and_offsets_agree() {
        let sid = std::env::var("LEAKSCOPE_SID_ROOT")
            .unwrap_or_else(|_| "/var/cache/leakscope/sid".into());
        for minor in [13, 14, 15] {
            for file in [
                format!("usr/bin/python3.{minor}"),
                format!("usr/lib/x86_64-linux-gnu/libpython3.{minor}.so.1.0"),
            ] {
                let path = std::path::Path::new(&sid).join(&file);
                let bin = crate::target::elf::Binary::open(&path)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                let (major, m, patch) = bin.python_version(Some(minor)).expect(&file);
                let raw = parse(bin.section(".PyRuntime").unwrap(), minor).expect(&file);
                assert_eq!(raw.release(), (major, m, patch), "{file}");
                assert!(!raw.free_threaded, "{file}");
            }
        }
    }

    #[test]
    fn stack_layout_refuses_disagreement() {
        let mut bytes = fixture_313();
        assert_eq!(
            stack_layout_from(v(12), None),
            Ok(stack_layout(v(12)).unwrap())
        );
        assert!(stack_layout_from(v(14), None).is_err());
        assert!(
            stack_layout_from(v(13), None)
                .unwrap_err()
                .contains("no _Py_DebugOffsets")
        );
        // thread_state.current_frame is word 23 (cookie = word 0).
        bytes[23 * 8..24 * 8].copy_from_slice(&80u64.to_le_bytes());
        assert!(
            stack_layout_from(v(13), Some(&bytes))
                .unwrap_err()
                .contains("disagree")
        );
        let mut ft = fixture_313();
        ft[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert!(
            stack_layout_from(v(13), Some(&ft))
                .unwrap_err()
                .contains("free-threaded")
        );
        assert!(is_free_threaded(v(13), Some(&ft)));
        assert!(!is_free_threaded(v(13), Some(&fixture_313())));
    }

    #[test]
    fn an_unknown_gc_state_is_refused_not_guessed() {
        // 3.14's gc.size is word 81.
        let mut bytes = fixture_314();
        bytes[81 * 8..82 * 8].copy_from_slice(&248u64.to_le_bytes());
        let err = gc_layout_from(v(14), Some(&bytes)).unwrap_err();
        assert!(err.contains("GC state of 248 bytes"), "{err}");
        // The 3.14.0–3.14.4 incremental collector's 240 bytes: the same heads.
        bytes[81 * 8..82 * 8].copy_from_slice(&240u64.to_le_bytes());
        assert_eq!(gc_layout_from(v(14), Some(&bytes)).unwrap().generations, 24);
    }

    /// A `_Py_DebugOffsets` prefix with 3.13.0's GC values only.
    fn debug_offsets(free_threaded: u64) -> Vec<u8> {
        let mut words = vec![0u64; 80];
        words[1] = 0x030d00f0;
        words[2] = free_threaded;
        words[5] = 632;
        words[8] = 7264;
        words[10] = 7400;
        words[71] = 240;
        words[72] = 200;
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b[..8].copy_from_slice(b"xdebugpy");
        b
    }

    #[test]
    fn gc_layout_313_comes_from_debug_offsets() {
        assert_eq!(
            gc_layout_from(v(13), Some(&debug_offsets(0))),
            Ok(gc_layout(v(13)).unwrap())
        );
        assert_eq!(gc_layout_from(v(11), None), Ok(gc_layout(v(11)).unwrap()));
        let err = gc_layout_from(v(13), Some(&debug_offsets(1))).unwrap_err();
        assert!(err.contains("free-threaded build"), "{err}");
        let mut wrong = debug_offsets(0);
        wrong[80..88].copy_from_slice(&7500u64.to_le_bytes());
        assert!(
            gc_layout_from(v(13), Some(&wrong))
                .unwrap_err()
                .contains("disagree")
        );
        assert!(
            gc_layout_from(v(13), Some(b"not the cookie"))
                .unwrap_err()
                .contains("no _Py_DebugOffsets")
        );
    }
}
