//! Where the cyclic GC keeps its lists, and how a list node (`PyGC_Head`) reads.
//! Values and sources: docs/cpython.md §5.

use super::Version;
use super::object::{GC_HEAD_SIZE, MANAGED_PREHEADER_SIZE};

/// Offsets of the interpreter list and of each interpreter's GC state, per version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcLayout {
    /// `_PyRuntimeState.interpreters.head`.
    pub interpreters_head: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u64,
    /// `PyInterpreterState.gc` (a `struct _gc_runtime_state`).
    pub interp_gc: u64,
    /// In `_gc_runtime_state`: the first of the three generation list heads (each
    /// `GC_GENERATION_SIZE` on; 3.14.0–3.14.4's incremental `young`, `old[2]`), the
    /// `permanent_generation` head (`gc.freeze`), `collecting` and `garbage`.
    pub generations: u64,
    /// `_gc_runtime_state.generation0` (a pointer to the first generation's head), read
    /// in the target to place the generations: 3.13.x moved them from +24 to +20 when
    /// `PyGC_Head` became `Py_ALIGNED(4)` (sid's 3.13.18 `internal/pycore_gc.h:22`; the size
    /// of the state did not change). `None`: the build has none (3.14.0–3.14.4).
    pub generation0: Option<u64>,
    pub permanent: u64,
    pub collecting: u64,
    pub garbage: u64,
}

/// One row per version (DWARF of the pyenv builds; 3.13 also `_Py_DebugOffsets`
/// `runtime_state.interpreters_head`, `interpreter_state.next`, `interpreter_state.gc`).
/// 3.14+ have no row: their offsets move between patch releases and come from the
/// interpreter's `_Py_DebugOffsets` (`debug_offsets::gc_layout_from`).
pub fn gc_layout(v: Version) -> Option<GcLayout> {
    let (interpreters_head, interp_next, interp_gc) = match v.minor {
        9 | 10 => (32, 0, 616),
        11 => (40, 0, 648),
        12 => (40, 0, 112),
        13 => (632, 7264, 7400),
        _ => return None,
    };
    Some(GcLayout {
        interpreters_head,
        interp_next,
        interp_gc,
        generations: GC_GENERATIONS,
        generation0: Some(GC_GENERATION0),
        permanent: GC_PERMANENT,
        collecting: GC_COLLECTING,
        garbage: GC_GARBAGE,
    })
}

// `struct _gc_runtime_state`: the same in 3.9–3.13 (DWARF); 3.14+: `debug_offsets::gc_lists`.
/// `_gc_runtime_state.generations[3]`.
pub const GC_GENERATIONS: u64 = 24;
/// `_gc_runtime_state.generation0` (3.9–3.13, DWARF: after the three generations).
pub const GC_GENERATION0: u64 = 96;
/// `sizeof(struct gc_generation)`: list head (a `PyGC_Head`, 16), threshold, count.
pub const GC_GENERATION_SIZE: u64 = 24;
/// `_gc_runtime_state.permanent_generation` (`gc.freeze`).
pub const GC_PERMANENT: u64 = 104;
/// `_gc_runtime_state.collecting` (3.13 also `_Py_DebugOffsets.gc.collecting`).
pub const GC_COLLECTING: u64 = 200;
/// `_gc_runtime_state.garbage` (the `gc.garbage` list).
pub const GC_GARBAGE: u64 = 208;

/// Low bits of the `PyGC_Head` links that are flags, not address: `_gc_prev` keeps
/// `_PyGC_PREV_MASK_FINALIZED` (1) and `_PyGC_PREV_MASK_COLLECTING` (2) below
/// `_PyGC_PREV_SHIFT` (2); `_gc_next`'s lowest bit is the collector's
/// `NEXT_MASK_UNREACHABLE` (3.13.0 `internal/pycore_gc.h:145-150, 172`; 3.9.18 `:36-43`).
pub const GC_LINK_FLAGS: u64 = 3;

impl GcLayout {
    /// Where the three generation heads start in a GC state at `gc`, given the value of its
    /// `generation0` pointer (`None`: unread): that pointer when it points inside the state
    /// with room for the three before the field, else the layout's `generations`.
    pub fn generations_at(&self, gc: u64, generation0: Option<u64>) -> u64 {
        match (self.generation0, generation0) {
            (Some(field), Some(p)) if p > gc && p - gc + 3 * GC_GENERATION_SIZE <= field => p - gc,
            _ => self.generations,
        }
    }
}

/// The `PyGC_Head*` a `_gc_next` word points at, flag bits cleared.
pub fn gc_next_ptr(word: u64) -> u64 {
    word & !GC_LINK_FLAGS
}
/// The `PyGC_Head*` a `_gc_prev` word points at, flag bits cleared.
pub fn gc_prev_ptr(word: u64) -> u64 {
    word & !GC_LINK_FLAGS
}

/// One read per GC list node in the census: from `op-32` (the managed pre-header, 3.11+)
/// to the end of `ob_size`, as word indices: `[op-32, op-24, _gc_next, _gc_prev,
/// ob_refcnt, ob_type, ob_size]`. On types without a managed pre-header the first two
/// words belong to someone else and are not used.
pub mod window {
    use super::{GC_HEAD_SIZE, MANAGED_PREHEADER_SIZE};
    /// Bytes read, starting `HEAD_AT` bytes before the `PyGC_Head`.
    pub const BYTES: usize = 56;
    /// Offset of the `PyGC_Head` inside the window (the managed words before it).
    pub const HEAD_AT: usize = MANAGED_PREHEADER_SIZE as usize;
    /// Word at `op-32` (3.11 values pointer, 3.12+ weakref list).
    pub const M32: usize = 0;
    /// Word at `op-24` (`MANAGED_DICT_OFFSET`).
    pub const M24: usize = 1;
    pub const GC_NEXT: usize = 2;
    pub const GC_PREV: usize = 3;
    pub const OB_REFCNT: usize = 4;
    pub const OB_TYPE: usize = 5;
    pub const OB_SIZE: usize = 6;
    const _: () = assert!(BYTES == (OB_SIZE + 1) * 8);
    const _: () =
        assert!(GC_NEXT * 8 == HEAD_AT && OB_REFCNT * 8 == HEAD_AT + GC_HEAD_SIZE as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_placed_by_the_targets_own_pointer() {
        let l = gc_layout(crate::cpython::tests::v(13)).unwrap();
        let gc = 0xb2ecf0;
        // sid's 3.13.18: generation0 = gc + 20 (PyGC_Head aligned to 4)
        assert_eq!(l.generations_at(gc, Some(gc + 20)), 20);
        assert_eq!(l.generations_at(gc, Some(gc + 24)), 24);
        // unread, null, or pointing anywhere else: the table's
        for p in [None, Some(0), Some(gc + 90), Some(gc - 8)] {
            assert_eq!(l.generations_at(gc, p), 24, "{p:?}");
        }
    }

    #[test]
    fn link_flag_bits() {
        // (word as stored, address): collecting/finalized bits in _gc_prev, unreachable in
        // _gc_next; a clean pointer passes through.
        for (word, ptr) in [
            (0x7f00_1000, 0x7f00_1000),
            (0x7f00_1001, 0x7f00_1000),
            (0x7f00_1002, 0x7f00_1000),
            (0x7f00_1003, 0x7f00_1000),
            (0, 0),
        ] {
            assert_eq!(gc_next_ptr(word), ptr);
            assert_eq!(gc_prev_ptr(word), ptr);
        }
    }
}
