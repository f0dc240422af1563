//! How to find the current thread's Python frames and read code objects, per version.
//! Values and sources: docs/cpython.md §8 (DWARF of the pyenv builds; 3.13 also its
//! `_Py_DebugOffsets`, see `debug_offsets.rs`). Checked live by the e2e tests.

use super::Version;
use super::linetable::TableKind;

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

/// `struct _gil_runtime_state.last_holder` and `.locked` (3.9–3.13; DWARF; 3.13 also
/// `_Py_DebugOffsets.interpreter_state.gil_runtime_state_{holder,locked}` minus
/// `gil_runtime_state`). The BPF stack walker reads them through `interp->ceval.gil`.
pub const GIL_LAST_HOLDER: u64 = 8;
pub const GIL_LOCKED: u64 = 16;

/// One row per version; the C field of each value is named in the comment of each field
/// and, per version, in docs/cpython.md §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackLayout {
    /// Offset in `_PyRuntime` of `gilstate.tstate_current` (≤3.11) or of
    /// `interpreters.head` (3.12+, then the GIL holder is used).
    pub runtime_off: u64,
    /// 3.12+: `PyInterpreterState.ceval.gil` (a pointer to the GIL in use); its
    /// `last_holder` is at `GIL_LAST_HOLDER` and `locked` at `GIL_LOCKED`.
    pub gil_ptr_off: Option<u64>,
    /// `PyThreadState.native_thread_id` (3.11+), checked against the allocating thread.
    pub native_tid_off: Option<u64>,
    /// `tstate → frame`: one or two loads. 3.9/3.10 `PyThreadState.frame`; 3.11/3.12
    /// `PyThreadState.cframe` then `_PyCFrame.current_frame`; 3.13
    /// `PyThreadState.current_frame`.
    pub frame_path: (u64, Option<u64>),
    /// The code object in the frame: `PyFrameObject.f_code` (3.9/3.10),
    /// `_PyInterpreterFrame.f_code` (3.11/3.12), `.f_executable` (3.13+).
    pub frame_code: u64,
    /// Low bits of the `frame_code` word that are a tag, not address: 3.14+ keep a
    /// `_PyStackRef` there (`debug_offsets::STACKREF_TAG_BITS`); 0 before.
    pub code_tag: u64,
    /// The previous frame: `PyFrameObject.f_back` (3.9/3.10), `_PyInterpreterFrame.previous`.
    pub frame_prev: u64,
    /// The position: `PyFrameObject.f_lasti` (3.9/3.10), `_PyInterpreterFrame.prev_instr`
    /// (3.11/3.12), `.instr_ptr` (3.13).
    pub frame_instr: u64,
    pub instr: Instr,
    /// `PyCodeObject.co_firstlineno`.
    pub co_firstlineno: u64,
    /// `PyCodeObject.co_filename`.
    pub co_filename: u64,
    /// `PyCodeObject.co_name`.
    pub co_name: u64,
    /// `PyCodeObject.co_qualname` (3.11+); `co_name` before.
    pub co_qualname: Option<u64>,
    /// `PyCodeObject.co_lnotab` (3.9), `.co_linetable` (3.10+).
    pub co_linetable: u64,
    pub table: TableKind,
}

/// 3.9–3.13; 3.14+ have no row (`debug_offsets::stack_layout_from` reads theirs).
pub fn stack_layout(v: Version) -> Option<StackLayout> {
    use TableKind::*;
    Some(match v.minor {
        // PyFrameObject: f_back 24, f_code 32, f_lasti 104 (3.9) / 96 (3.10).
        9 | 10 => StackLayout {
            runtime_off: 568,
            gil_ptr_off: None,
            native_tid_off: None,
            frame_path: (24, None),
            frame_code: 32,
            code_tag: 0,
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
            code_tag: 0,
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
            code_tag: 0,
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
        // f_executable 0, previous 8, instr_ptr 56; tstate->current_frame 72. Equal to
        // 3.13.0's own _Py_DebugOffsets (`stack_layout_from` checks, tests prove).
        13 => StackLayout {
            runtime_off: 632,
            gil_ptr_off: Some(16),
            native_tid_off: Some(160),
            frame_path: (72, None),
            frame_code: 0,
            code_tag: 0,
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
