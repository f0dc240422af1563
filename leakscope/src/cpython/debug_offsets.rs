//! 3.13's `_Py_DebugOffsets`: the first member of `_PyRuntime`, statically initialized, so
//! readable from the file's `.PyRuntime` section without touching the process. Layout:
//! 3.13.0 `Include/internal/pycore_runtime.h:62-195`, every field a `uint64_t`, groups in
//! this order, each starting with the struct's `size`. docs/cpython.md §9.
//!
//! leakscope keeps its own table for every version (`gc_layout`, `stack_layout`, the
//! constants); for 3.13 the functions here read the interpreter's own offsets and refuse to
//! go on when they disagree with the table.

use super::Version;
use super::frames::{GIL_LAST_HOLDER, GIL_LOCKED, Instr, StackLayout, stack_layout};
use super::gc::{GC_COLLECTING, GcLayout, gc_layout};

/// `_Py_DebugOffsets.cookie`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Declares one struct per `_Py_DebugOffsets` group with the C field names, `Raw` holding
/// them all, and the parser that reads the words in declaration (= C) order.
macro_rules! debug_offsets {
    ($($group:ident: $ty:ident { $($field:ident),* $(,)? })*) => {
        $(
            #[doc = concat!("`_Py_DebugOffsets.", stringify!($group), "`.")]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $ty {
                $(pub $field: u64,)*
            }
        )*
        /// All of `_Py_DebugOffsets` (3.13.0), fields named as in C. Fields leakscope does not
        /// use are kept so the order stays that of the header.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Raw {
            pub version: u64,
            pub free_threaded: u64,
            $(pub $group: $ty,)*
        }
        fn read_words(next: &mut impl FnMut() -> u64) -> Raw {
            // Struct expressions evaluate their fields in the order written.
            Raw {
                version: next(),
                free_threaded: next(),
                $($group: $ty { $($field: next(),)* },)*
            }
        }
    };
}

debug_offsets! {
    runtime_state: RuntimeState { size, finalizing, interpreters_head }
    interpreter_state: InterpreterState {
        size, id, next, threads_head, gc, imports_modules, sysdict, builtins, ceval_gil,
        gil_runtime_state, gil_runtime_state_enabled, gil_runtime_state_locked,
        gil_runtime_state_holder,
    }
    thread_state: ThreadState {
        size, prev, next, interp, current_frame, thread_id, native_thread_id,
        datastack_chunk, status,
    }
    interpreter_frame: InterpreterFrame { size, previous, executable, instr_ptr, localsplus, owner }
    code_object: CodeObject {
        size, filename, name, qualname, linetable, firstlineno, argcount, localsplusnames,
        localspluskinds, co_code_adaptive,
    }
    pyobject: PyObjectOffsets { size, ob_type }
    type_object: TypeObject { size, tp_name, tp_repr, tp_flags }
    tuple_object: TupleObject { size, ob_item, ob_size }
    list_object: ListObject { size, ob_item, ob_size }
    dict_object: DictObject { size, ma_keys, ma_values }
    float_object: FloatObject { size, ob_fval }
    long_object: LongObject { size, lv_tag, ob_digit }
    bytes_object: BytesObject { size, ob_size, ob_sval }
    unicode_object: UnicodeObject { size, state, length, asciiobject_size }
    gc: Gc { size, collecting }
}

/// Bytes of `_Py_DebugOffsets` in 3.13.0: the cookie and 72 words.
pub const SIZE_313: usize = 8 * 73;

/// Parses a `.PyRuntime` section prefix; `None` without the cookie or if too short.
pub fn parse_313(runtime_section: &[u8]) -> Option<Raw> {
    if runtime_section.get(..8)? != COOKIE {
        return None;
    }
    let mut words = runtime_section
        .get(8..SIZE_313)?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
    let raw = read_words(&mut || words.next().expect("SIZE_313 covers every field"));
    debug_assert!(words.next().is_none());
    Some(raw)
}

/// The parts of `_Py_DebugOffsets` leakscope uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version: u64,
    pub free_threaded: bool,
    /// `runtime_state.interpreters_head`, `interpreter_state.next`, `interpreter_state.gc`.
    pub gc: GcLayout,
    /// `gc.collecting`.
    pub gc_collecting: u64,
    pub raw: Raw,
}

impl Raw {
    /// The stack walk's offsets, as a `StackLayout` (the line table kind is not in the
    /// offsets: 3.13 uses the 3.11 location table).
    pub fn stack_layout(&self) -> StackLayout {
        let (t, f, c) = (
            &self.thread_state,
            &self.interpreter_frame,
            &self.code_object,
        );
        StackLayout {
            runtime_off: self.runtime_state.interpreters_head,
            gil_ptr_off: Some(self.interpreter_state.ceval_gil),
            native_tid_off: Some(t.native_thread_id),
            frame_path: (t.current_frame, None),
            frame_code: f.executable,
            frame_prev: f.previous,
            frame_instr: f.instr_ptr,
            instr: Instr::Pointer {
                code_adaptive: c.co_code_adaptive,
            },
            co_firstlineno: c.firstlineno,
            co_filename: c.filename,
            co_name: c.name,
            co_qualname: Some(c.qualname),
            co_linetable: c.linetable,
            table: super::linetable::TableKind::Locations311,
        }
    }
    /// `gil_runtime_state_holder` and `_locked`, relative to `gil_runtime_state`: the
    /// offsets of `last_holder` and `locked` in `struct _gil_runtime_state`.
    pub fn gil_fields(&self) -> (u64, u64) {
        let i = &self.interpreter_state;
        (
            i.gil_runtime_state_holder.wrapping_sub(i.gil_runtime_state),
            i.gil_runtime_state_locked.wrapping_sub(i.gil_runtime_state),
        )
    }
}

pub fn debug_offsets_313(runtime_section: &[u8]) -> Option<DebugOffsets> {
    let raw = parse_313(runtime_section)?;
    Some(DebugOffsets {
        version: raw.version,
        free_threaded: raw.free_threaded != 0,
        gc: GcLayout {
            interpreters_head: raw.runtime_state.interpreters_head,
            interp_next: raw.interpreter_state.next,
            interp_gc: raw.interpreter_state.gc,
        },
        gc_collecting: raw.gc.collecting,
        raw,
    })
}

fn read_313(v: Version, runtime_section: Option<&[u8]>) -> Result<DebugOffsets, String> {
    runtime_section
        .and_then(debug_offsets_313)
        .ok_or_else(|| format!("Python {v}: no _Py_DebugOffsets in .PyRuntime"))
}

/// GC list offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets` (read from its
/// `.PyRuntime` section and cross-checked with the table), earlier versions from the table.
pub fn gc_layout_from(v: Version, runtime_section: Option<&[u8]>) -> Result<GcLayout, String> {
    let table = gc_layout(v);
    if v.minor < 13 {
        return table.ok_or_else(|| format!("no GC layout for Python {v}"));
    }
    let debug = read_313(v, runtime_section)?;
    if debug.free_threaded {
        return Err(format!(
            "Python {v} is a free-threaded build: it keeps no GC generation lists, so a census is \
             not possible (leakscope does not walk its mimalloc heaps)"
        ));
    }
    if debug.gc_collecting != GC_COLLECTING || table != Some(debug.gc) {
        return Err(format!(
            "Python {v}: _Py_DebugOffsets (GC {:?}, collecting {}) disagree with leakscope's \
             layout; not reading",
            debug.gc, debug.gc_collecting
        ));
    }
    Ok(debug.gc)
}

/// The stack walk's offsets: 3.13+ from the interpreter's own `_Py_DebugOffsets`,
/// cross-checked with the table (and the GIL fields with `GIL_LAST_HOLDER`/`GIL_LOCKED`),
/// earlier versions from the table.
pub fn stack_layout_from(
    v: Version,
    runtime_section: Option<&[u8]>,
) -> Result<StackLayout, String> {
    let table = stack_layout(v);
    if v.minor < 13 {
        return table.ok_or_else(|| format!("no stack layout for Python {v}"));
    }
    let debug = read_313(v, runtime_section)?;
    if debug.free_threaded {
        return Err(format!(
            "Python {v} is a free-threaded build: there is no GIL holder to find the current \
             thread by, so stacks are not read"
        ));
    }
    let layout = debug.raw.stack_layout();
    if table != Some(layout) || debug.raw.gil_fields() != (GIL_LAST_HOLDER, GIL_LOCKED) {
        return Err(format!(
            "Python {v}: _Py_DebugOffsets ({layout:?}, GIL holder/locked {:?}) disagree with \
             leakscope's stack layout; not reading stacks",
            debug.raw.gil_fields()
        ));
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::tests::v;
    use crate::cpython::{self, dict};

    /// `.PyRuntime` of pyenv's 3.13.0 `libpython3.13.so.1.0`, first 640 bytes; how it was
    /// made: docs/cpython.md §9.
    fn fixture() -> Vec<u8> {
        let hex: String = include_str!("../../../tests/fixtures/pyruntime-3.13.0.hex")
            .split_whitespace()
            .collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_313_offsets_equal_the_table() {
        let bytes = fixture();
        let d = debug_offsets_313(&bytes).expect("cookie");
        assert_eq!(d.version, 0x030d_00f0); // 3.13.0 final
        assert!(!d.free_threaded);
        assert_eq!(Some(d.gc), gc_layout(v(13)));
        assert_eq!(d.gc_collecting, GC_COLLECTING);
        assert_eq!(Some(d.raw.stack_layout()), stack_layout(v(13)));
        assert_eq!(d.raw.gil_fields(), (GIL_LAST_HOLDER, GIL_LOCKED));
        let r = &d.raw;
        // Object layouts the rest of leakscope uses as constants.
        assert_eq!(r.pyobject.ob_type, cpython::OB_TYPE);
        assert_eq!(r.type_object.tp_name, cpython::TP_NAME);
        assert_eq!(r.type_object.tp_flags, cpython::TP_FLAGS);
        assert_eq!(
            (r.list_object.ob_item, r.list_object.ob_size),
            (cpython::LIST_ITEMS, cpython::LIST_SIZE)
        );
        assert_eq!(
            (r.dict_object.size, r.dict_object.ma_keys),
            (dict::OBJECT_SIZE, dict::MA_KEYS)
        );
        assert_eq!(
            (r.bytes_object.ob_size, r.bytes_object.ob_sval),
            (cpython::BYTES_SIZE, cpython::BYTES_DATA)
        );
        assert_eq!(
            (
                r.unicode_object.state,
                r.unicode_object.length,
                r.unicode_object.asciiobject_size
            ),
            (
                cpython::STR_STATE,
                cpython::STR_LENGTH,
                cpython::ascii_data_offset(v(13))
            )
        );
        assert_eq!(
            stack_layout_from(v(13), Some(&bytes)),
            Ok(stack_layout(v(13)).unwrap())
        );
        assert_eq!(
            gc_layout_from(v(13), Some(&bytes)),
            Ok(gc_layout(v(13)).unwrap())
        );
    }

    /// The fixture is what the project's own ELF reader finds in pyenv's 3.13.0 library.
    /// Needs that interpreter (the test machine has it), so it is run by `cargo xtask test`
    /// (`--include-ignored`) and fails when the library is missing: never a silent pass.
    #[test]
    #[ignore = "needs pyenv's 3.13.0; `cargo xtask test` runs it"]
    fn fixture_matches_installed_library() {
        let root = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(&std::env::var_os("HOME").expect("HOME")).join(".pyenv")
            });
        let lib = root.join("versions/3.13.0/lib/libpython3.13.so.1.0");
        let bin = crate::target::elf::Binary::open(&lib)
            .unwrap_or_else(|e| panic!("{}: {e:#}", lib.display()));
        let section = bin.section(".PyRuntime").expect(".PyRuntime");
        let bytes = fixture();
        assert_eq!(&section[..bytes.len()], &bytes[..]);
    }

    #[test]
    fn stack_layout_refuses_disagreement() {
        let mut bytes = fixture();
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
        let mut ft = fixture();
        ft[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert!(
            stack_layout_from(v(13), Some(&ft))
                .unwrap_err()
                .contains("free-threaded")
        );
    }

    /// A `_Py_DebugOffsets` prefix with 3.13.0's GC values only.
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
            gc_layout_from(v(13), Some(&debug_offsets(0))),
            Ok(gc_layout(v(13)).unwrap())
        );
        assert_eq!(gc_layout_from(v(11), None), Ok(gc_layout(v(11)).unwrap()));
        let err = gc_layout_from(v(13), Some(&debug_offsets(1))).unwrap_err();
        assert!(
            err.contains("free-threaded build: it keeps no GC generation lists"),
            "{err}"
        );
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
