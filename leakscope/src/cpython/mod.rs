//! CPython knowledge, in one place: supported versions, object and type layouts, GC lists,
//! strings and dicts, frames and code objects, 3.13's `_Py_DebugOffsets`, and the functions
//! the probes hook. Per-version differences are rows in the tables of the submodules; every
//! value names the C field it stands for. Where each number comes from (headers of the
//! pyenv builds on this machine, their DWARF, `_Py_DebugOffsets`) and how to re-check it:
//! `docs/cpython.md`. x86_64, GIL builds.
//!
//! - `object`: `PyObject`, `PyTypeObject`, `tp_flags`, pre-headers, object sizes (§2–§4)
//! - `gc`: the GC's lists and `PyGC_Head` links (§5)
//! - `strings`: `str` state bits and data offsets, `bytes` (§6)
//! - `dict`: dict and keys objects (§7)
//! - `frames`: the stack walk: thread state, frames, code objects, GIL (§8)
//! - `obmalloc`: pymalloc's arena table, arenas, pools, size classes (§11)
//! - `debug_offsets`: 3.13 `_Py_DebugOffsets`, cross-checked with the tables (§9)

pub mod debug_offsets;
pub mod dict;
pub mod frames;
pub mod gc;
pub mod linetable;
pub mod object;
pub mod obmalloc;
pub mod refs;
pub mod strings;

pub use debug_offsets::{gc_layout_from, stack_layout_from};
pub use dict::{DK_NENTRIES, DK_USABLE};
pub use frames::{GIL_LAST_HOLDER, GIL_LOCKED, Instr, StackLayout, stack_layout};
pub use gc::{
    GC_GARBAGE, GC_GENERATION_SIZE, GC_GENERATIONS, GC_PERMANENT, GcLayout, gc_layout, gc_next_ptr,
    gc_prev_ptr, window,
};
pub use object::*;
pub use strings::*;

/// Versions `trace` supports; anything else is refused with this list in the message.
pub const SUPPORTED: &str = "3.9, 3.10, 3.11, 3.12, 3.13, 3.14 and 3.15, default (GIL) builds";

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
        self.major == 3 && (9..=15).contains(&self.minor)
    }
}

/// Hooks, by build. See README "What each build lets leakscope see".
pub mod hooks {
    /// Every object birth, freelist reuse included (`_PyObject_Init` → here). 3.12+ also
    /// re-registers resized tuples/str/bytes through the `NoTotal` variant.
    pub const NEW_REFERENCE: &[&str] = &["_Py_NewReference", "_Py_NewReferenceNoTotal"];
    /// Thin wrappers that jump through the object allocator table (`_PyObject` ≤3.11,
    /// `_PyRuntime.allocators.standard.obj` 3.12+): decoding them finds the table slot.
    pub const FREE_WRAPPER: &str = "PyObject_Free";
    /// Every inlined `_Py_NewReference` tests `_Py_tracemalloc_config.tracing` (an `int`
    /// at +4; 3.9–3.11) before it registers the object: where optimized builds' births are
    /// probed (`probes::newref`).
    pub const TRACEMALLOC_CONFIG: &str = "_Py_tracemalloc_config";
    pub const TRACEMALLOC_TRACING: u64 = 4;
    /// 3.13+ test `_PyRuntime.ref_tracer.tracer_func` instead, which has no symbol: found
    /// in `_Py_NewReference`'s code and confirmed in the setter's (`newref::tracer_flag`).
    pub const SET_REF_TRACER: &str = "PyRefTracer_SetTracer";
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

#[cfg(test)]
pub(crate) mod tests {
    use super::Version;

    pub fn v(minor: u32) -> Version {
        Version {
            major: 3,
            minor,
            patch: 0,
        }
    }
}
