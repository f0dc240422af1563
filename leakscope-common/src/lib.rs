//! The contract between the BPF programs (`leakscope-ebpf`) and user space (`leakscope`).
//!
//! Everything here is `#[repr(C)]` and shared byte-for-byte through BPF maps. Change a layout
//! and both sides change with it; nothing else crosses the boundary.
#![no_std]

/// An object was born: `addr` is the `PyObject*`, `type_ptr` its `ob_type`, `ob_size` the
/// `PyVarObject.ob_size` word (meaningless for fixed-size types; user space decides).
pub const EVENT_BIRTH: u32 = 1;
/// A block of memory at `addr` was handed back (`tp_free`, the allocator's free or realloc).
/// Whatever object lived at `addr` (or whose pre-header starts at `addr`) is dead.
pub const EVENT_FREE: u32 = 2;

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    /// Index of the probe that produced it (its attach cookie).
    pub probe: u32,
    pub addr: u64,
    pub type_ptr: u64,
    pub ob_size: i64,
}

/// Most probes one trace attaches; `HITS` has one slot per probe.
pub const MAX_PROBES: u32 = 32;

/// Slots of the per-CPU `DROPS` array: what the kernel side lost, never silently.
pub const DROP_RINGBUF_FULL: u32 = 0;
pub const DROP_READ_FAILED: u32 = 1;
pub const DROP_KINDS: u32 = 2;

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
