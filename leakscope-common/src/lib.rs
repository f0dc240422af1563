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
/// `type_ptr` carries flags (`FREE_IN_GC`).
pub const EVENT_FREE: u32 = 2;
/// The free came while the cyclic collector was collecting (`gc.collecting` set): the
/// object was garbage only the collector could reclaim (a cycle, or held by one).
pub const FREE_IN_GC: u64 = 1;

/// A native block was allocated (malloc and its family, or an anonymous mmap) by code
/// outside the interpreter and the C library: the record is a `NativeEvent`. `addr` is the
/// block, `ob_size` its requested size, `type_ptr` its `NATIVE_*` kind, `stack_id` the
/// calling thread's Python stack (0 = none: no thread state, e.g. a thread without the GIL).
pub const EVENT_NATIVE_ALLOC: u32 = 3;
/// A native block was released (`free`, `munmap`, or the old block of a `realloc`).
pub const EVENT_NATIVE_FREE: u32 = 4;

/// `type_ptr` of native allocations: the C library's heap (malloc, calloc, realloc, the
/// aligned allocators) and anonymous mappings. Real type pointers are never this small.
pub const NATIVE_HEAP: u64 = 1;
pub const NATIVE_MMAP: u64 = 2;
/// Blocks an extension took from the interpreter's `PyMem_Malloc` family (pymalloc's pools
/// for small sizes: no C library chunk header in front of them).
pub const NATIVE_PYMEM: u64 = 3;

/// Whether a `type_ptr` is one of the native pseudo-types above.
pub const fn is_native(type_ptr: u64) -> bool {
    matches!(type_ptr, NATIVE_HEAP | NATIVE_MMAP | NATIVE_PYMEM)
}

/// What a native entry probe's function takes (the attach cookie's bits 16..24; bits 0..16
/// are the probe's index). For `birth_reg` those bits are the register that holds the new
/// object, as its word index in the kernel's `struct pt_regs` (`REG_*`).
pub const NATIVE_MALLOC: u32 = 1; // (size)
pub const NATIVE_CALLOC: u32 = 2; // (n, size)
pub const NATIVE_REALLOC: u32 = 3; // (ptr, size)
pub const NATIVE_MEMALIGN: u32 = 4; // (align, size): memalign, aligned_alloc
pub const NATIVE_POSIX_MEMALIGN: u32 = 5; // (&ptr, align, size) -> 0
pub const NATIVE_MMAP_CALL: u32 = 6; // (addr, len, prot, flags, fd, off): anonymous only
pub const NATIVE_VALLOC: u32 = 7; // (size): valloc, pvalloc
/// Or'ed into a kind: the function is the interpreter's `PyMem_Malloc`/`Calloc`/`Realloc`
/// (its block is a `NATIVE_PYMEM`).
pub const NATIVE_PYMEM_DOMAIN: u32 = 0x80;
/// Or'ed into a kind: one of the interpreter's `PyMem_*` allocators, which may tail-call
/// into the C library's on the same stack pointer; the inner entry then shares the outer
/// one's record.
pub const NATIVE_VIA_INTERPRETER: u32 = 0x40;
/// The argument layout part of a kind.
pub const NATIVE_KIND_MASK: u32 = 0x3f;
pub const COOKIE_KIND_SHIFT: u32 = 16;
/// `struct pt_regs` word indices (arch/x86/include/asm/ptrace.h, x86_64).
pub const REG_R15: u32 = 0;
pub const REG_R14: u32 = 1;
pub const REG_R13: u32 = 2;
pub const REG_R12: u32 = 3;
pub const REG_RBP: u32 = 4;
pub const REG_RBX: u32 = 5;
pub const REG_R11: u32 = 6;
pub const REG_R10: u32 = 7;
pub const REG_R9: u32 = 8;
pub const REG_R8: u32 = 9;
pub const REG_RAX: u32 = 10;
pub const REG_RCX: u32 = 11;
pub const REG_RDX: u32 = 12;
pub const REG_RSI: u32 = 13;
pub const REG_RDI: u32 = 14;
pub const COOKIE_PROBE_MASK: u64 = 0xffff;

/// Bytes of the user stack a native allocation copies from its caller's stack pointer, for
/// user space to unwind (its callers' frames, to where the interpreter called in).
pub const NATIVE_STACK_BYTES: usize = 4096;

/// A native allocation's record: an `Event` header, the caller's registers at the return
/// (`ip` is the return address into the allocating function), and `stack_len` bytes of its
/// stack from `sp`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NativeEvent {
    pub head: Event,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack_len: u64,
    pub stack: [u8; NATIVE_STACK_BYTES],
}

/// Ranges of code whose allocations are not native leaks of their own (the interpreter:
/// pymalloc's arenas, objects too large for pymalloc; the C library's internal calls): an
/// allocation whose return address falls inside one is not recorded.
pub const NATIVE_SKIP_RANGES: usize = 4;
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeConfig {
    pub skip_lo: [u64; NATIVE_SKIP_RANGES],
    pub skip_hi: [u64; NATIVE_SKIP_RANGES],
}

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
    /// Key of the allocating Python stack in `STACKS` (births only; 0 = none captured).
    pub stack_id: u64,
}

/// Most probes one trace attaches; `HITS` has one slot per probe.
pub const MAX_PROBES: u32 = 1024;

/// Slots of the per-CPU `DROPS` array: what the kernel side lost, never silently.
pub const DROP_RINGBUF_FULL: u32 = 0;
pub const DROP_READ_FAILED: u32 = 1;
/// A birth's stack could not be stored: `STACKS` is full.
pub const DROP_STACK_MAP_FULL: u32 = 2;
/// No Python thread state for the allocating thread (a birth without the GIL, or the
/// GIL-holder check failed): the birth is kept, without a stack.
pub const DROP_NO_TSTATE: u32 = 3;
/// A frame could not be read mid-walk: the stack is kept up to there, marked truncated.
pub const DROP_FRAME_READ_FAILED: u32 = 4;
/// A native allocation's stack could not be copied (unreadable stack): kept without it.
pub const DROP_NATIVE_STACK: u32 = 5;
pub const DROP_KINDS: u32 = 6;

/// Slots of the per-CPU `WALK` array: what stack walks cost (sum over walks).
pub const WALK_COUNT: u32 = 0;
pub const WALK_FRAMES: u32 = 1;
pub const WALK_NS: u32 = 2;
/// Stacks deeper than `MAX_FRAMES`, cut there (counted, and marked in the stack).
pub const WALK_TRUNCATED: u32 = 3;
/// Births not walked because their type is not in `WALK_TYPES` (the filter is on).
pub const WALK_FILTERED: u32 = 4;
/// Native allocations made by the interpreter or the C library itself (not recorded).
pub const WALK_NATIVE_SKIPPED: u32 = 5;
/// Native allocations whose return probe found no entry (an entry missed: attached
/// mid-call).
pub const WALK_NATIVE_UNPAIRED: u32 = 6;
pub const WALK_SLOTS: u32 = 7;

/// Deepest stack kept; deeper ones are truncated and marked.
pub const MAX_FRAMES: usize = 64;
/// Bytes of a frame read in one go (covers every field the walk needs in 3.9–3.13).
pub const FRAME_WINDOW_WORDS: usize = 16;

/// One Python frame as captured: the code object and the raw instruction position (an
/// instruction pointer for 3.11+, `f_lasti` for 3.9/3.10); user space turns it into a line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawFrame {
    pub code: u64,
    pub instr: u64,
}

/// An interned stack, innermost frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawStack {
    pub depth: u32,
    /// Non-zero when the walk stopped at `MAX_FRAMES` or at an unreadable frame.
    pub truncated: u32,
    pub frames: [RawFrame; MAX_FRAMES],
}

/// How the birth programs find the allocating thread's frames, set by user space per
/// interpreter (`CONFIG[0]`); `python.rs` holds the per-version values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackConfig {
    /// 0: no stacks. 1: `tstate = *tstate_addr` (`_PyRuntime.gilstate.tstate_current`,
    /// ≤3.11). 2: `tstate = gil->last_holder` where `gil = *(*tstate_addr + gil_ptr_off)`
    /// (`_PyRuntime.interpreters.head`, 3.12+), valid while `gil->locked`.
    pub mode: u32,
    /// Word indices into the frame window of the code object, the previous frame and the
    /// instruction position.
    pub code_word: u32,
    pub prev_word: u32,
    pub instr_word: u32,
    pub tstate_addr: u64,
    pub gil_ptr_off: u64,
    pub gil_holder_off: u64,
    pub gil_locked_off: u64,
    /// Offset of `native_thread_id` in the thread state (compared with the current tid);
    /// 0 = no check (3.9/3.10 have none).
    pub native_tid_off: u64,
    /// `frame = *(tstate + frame_off1)`, then, unless `frame_off2 == NO_OFFSET`,
    /// `frame = *(frame + frame_off2)` (3.11/3.12 go through `cframe`).
    pub frame_off1: u64,
    pub frame_off2: u64,
    /// Bytes to read per frame (≤ 8 * FRAME_WINDOW_WORDS).
    pub frame_read: u64,
    /// Time each walk (for `--stats`).
    pub timing: u64,
    /// 0: walk the stack at every birth. 1: only at births of a type in `WALK_TYPES` (the
    /// sampled mode spends its walks on the types whose objects survive).
    pub walk_filter: u64,
    /// Address of the main interpreter's `gc.collecting` (an `int`), read at every free to
    /// set `FREE_IN_GC`; 0 = unknown (no flag). Used with and without stacks.
    pub gc_collecting: u64,
    /// The target's pid namespace (`st_dev`, `st_ino` of `/proc/<pid>/ns/pid`) when it is
    /// not the host's: the thread id `native_tid_off` is compared with is then the one in
    /// that namespace (`bpf_get_ns_current_pid_tgid`). 0, 0: the host's.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}

/// Most types `WALK_TYPES` holds.
pub const MAX_WALK_TYPES: u32 = 1024;

pub const NO_OFFSET: u64 = u64::MAX;

/// Names of what the object holds and user space opens. The BPF side's `#[map]` and
/// program macros take only literals, so these are not used there: `check_object` (user
/// space) and its test hold the two sides together.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const HITS: &str = "HITS";
    pub const DROPS: &str = "DROPS";
    pub const WALK: &str = "WALK";
    pub const CONFIG: &str = "CONFIG";
    pub const STACKS: &str = "STACKS";
    /// Which (probe, drop kind) pairs already logged their first failure.
    pub const LOGGED: &str = "LOGGED";
    /// Type pointers whose births get a stack walk while `StackConfig::walk_filter` is on.
    pub const WALK_TYPES: &str = "WALK_TYPES";
    /// An allocation's arguments from its entry to its return, by (thread, stack pointer).
    pub const NATIVE_ARGS: &str = "NATIVE_ARGS";
    pub const NATIVE_CONFIG: &str = "NATIVE_CONFIG";
    /// aya-log's ring buffer (the name `aya_log_ebpf` gives it).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// Maps user space expects, in the order it opens them.
    pub const MAPS: [&str; 11] = [
        EVENTS,
        HITS,
        DROPS,
        WALK,
        CONFIG,
        STACKS,
        LOGGED,
        WALK_TYPES,
        NATIVE_ARGS,
        NATIVE_CONFIG,
        AYA_LOGS,
    ];

    pub const BIRTH_ARG0: &str = "birth_arg0";
    pub const BIRTH_RET: &str = "birth_ret";
    pub const FREE_ARG0: &str = "free_arg0";
    pub const FREE_ARG1: &str = "free_arg1";
    /// Native allocator: entry (arguments), return (the block, its stack), free.
    pub const NATIVE_ENTER: &str = "native_enter";
    pub const NATIVE_RET: &str = "native_ret";
    pub const NATIVE_FREE: &str = "native_free";
    /// Birth at a jump inside an inlined `_Py_NewReference`: the object is in a register.
    pub const BIRTH_REG: &str = "birth_reg";
    /// Spawn mode: stops the started program at its entry point (not a tracing program).
    pub const SPAWN_STOP: &str = "spawn_stop";
    pub const PROGRAMS: [&str; 8] = [
        BIRTH_ARG0,
        BIRTH_RET,
        FREE_ARG0,
        FREE_ARG1,
        NATIVE_ENTER,
        NATIVE_RET,
        NATIVE_FREE,
        BIRTH_REG,
    ];

    /// `u8` global: non-zero makes the programs log their first failures (`-v`). Read-only
    /// data, so with it 0 the verifier drops the logging code altogether.
    pub const LOG_ENABLED: &str = "LOG_ENABLED";
    pub const GLOBALS: [&str; 1] = [LOG_ENABLED];
}

// The layouts both sides compile against; a field added or reordered fails here, on both
// sides, before it can be misread through a map.
const _: () = assert!(size_of::<Event>() == 40 && align_of::<Event>() == 8);
const _: () = assert!(size_of::<RawFrame>() == 16 && align_of::<RawFrame>() == 8);
const _: () = assert!(size_of::<RawStack>() == 8 + 16 * MAX_FRAMES && align_of::<RawStack>() == 8);
const _: () = assert!(size_of::<StackConfig>() == 16 + 13 * 8 && align_of::<StackConfig>() == 8);
const _: () = assert!(size_of::<NativeEvent>() == 40 + 32 + NATIVE_STACK_BYTES);
const _: () = assert!(size_of::<NativeConfig>() == 16 * NATIVE_SKIP_RANGES);
// The attach cookie keeps a probe's index in its low 16 bits.
const _: () = assert!(MAX_PROBES as u64 <= COOKIE_PROBE_MASK + 1);
// Drop kinds index a per-probe bit mask in `LOGGED`.
const _: () = assert!(DROP_KINDS <= 32);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RawStack {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for StackConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NativeConfig {}
