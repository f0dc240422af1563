//! BPF side of leakscope: uprobes on the target interpreter that turn object births and
//! memory frees into `Event`s in one ring buffer. No aggregation happens here: user space
//! owns the live set, so this side stays small and every loss is counted in `DROPS`.
//!
//! Map and program names here are literals (the macros take no constants); they must equal
//! `leakscope_common::names`, which user space checks against the built object.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use leakscope_common::{
    COOKIE_KIND_SHIFT, COOKIE_PROBE_MASK, DROP_FRAME_READ_FAILED, DROP_KINDS, DROP_NATIVE_STACK,
    DROP_NO_TSTATE, DROP_READ_FAILED, DROP_RINGBUF_FULL, DROP_STACK_MAP_FULL, EVENT_BIRTH,
    EVENT_FREE, EVENT_NATIVE_ALLOC, EVENT_NATIVE_FREE, Event, FRAME_WINDOW_WORDS, FREE_IN_GC,
    MAX_FRAMES, MAX_PROBES, MAX_WALK_TYPES, NATIVE_CALLOC, NATIVE_HEAP, NATIVE_KIND_MASK,
    NATIVE_MALLOC, NATIVE_MEMALIGN, NATIVE_MMAP, NATIVE_MMAP_CALL, NATIVE_POSIX_MEMALIGN,
    NATIVE_PYMEM, NATIVE_PYMEM_DOMAIN, NATIVE_REALLOC, NATIVE_SKIP_RANGES, NATIVE_STACK_BYTES,
    NATIVE_VALLOC, NATIVE_VIA_INTERPRETER, NO_OFFSET, NativeConfig, NativeEvent, RawFrame,
    RawStack, StackConfig, WALK_COUNT, WALK_FILTERED, WALK_FRAMES, WALK_NATIVE_SKIPPED,
    WALK_NATIVE_UNPAIRED, WALK_NS, WALK_SLOTS, WALK_TRUNCATED,
};

/// 32 MiB: about 800k events, drained every 10 ms by user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

#[map]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_KINDS, 0);

#[map]
static WALK: PerCpuArray<u64> = PerCpuArray::with_max_entries(WALK_SLOTS, 0);

/// How to find the allocating thread's frames (set by user space before attaching).
#[map]
static CONFIG: Array<StackConfig> = Array::with_max_entries(1, 0);

/// Interned stacks by hash. Allocated on demand: most never fill it.
#[map]
static STACKS: HashMap<u64, RawStack> = HashMap::with_max_entries(32768, BPF_F_NO_PREALLOC);

/// Types whose births are walked while `StackConfig::walk_filter` is on (written by user
/// space between windows).
#[map]
static WALK_TYPES: HashMap<u64, u8> = HashMap::with_max_entries(MAX_WALK_TYPES, 0);

/// Per-CPU scratch: a stack being built (too big for the 512-byte BPF stack) and one frame.
#[repr(C)]
struct Scratch {
    stack: RawStack,
    window: [u64; FRAME_WINDOW_WORDS],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Set to 1 by user space under `-v`. Read-only data: with it 0 the verifier sees every
/// logging branch as dead and removes it, so logging costs nothing when off.
#[unsafe(no_mangle)]
static LOG_ENABLED: Global<u8> = Global::new(0);

/// Per probe, one bit per drop kind that has already been logged: a failure is logged the
/// first time only (every one is counted in `DROPS`).
#[map]
static LOGGED: Array<u32> = Array::with_max_entries(MAX_PROBES, 0);

/// Counts a loss and says whether to log it: logging is on and this is the probe's first
/// loss of this kind. The bit is set without an atomic: two CPUs racing on the very first
/// failure may both log it, which is harmless.
#[inline(always)]
fn lost(probe: u32, kind: u32) -> bool {
    bump(&DROPS, kind);
    if LOG_ENABLED.load() == 0 {
        return false;
    }
    let Some(bits) = LOGGED.get_ptr_mut(probe) else {
        return false;
    };
    let bit = 1u32 << (kind & 31);
    unsafe {
        if *bits & bit != 0 {
            return false;
        }
        *bits |= bit;
    }
    true
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, a plain add is exact.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn probe_id<C: EbpfContext>(ctx: &C) -> u32 {
    probe_and_kind(ctx).0
}

/// The attach cookie: the probe's index in user space's probe plan (bits 0..16) and, for a
/// native entry probe, what its function takes (`NATIVE_*`, bits 16..24; `birth_reg`: the
/// register holding the object).
#[inline(always)]
fn probe_and_kind<C: EbpfContext>(ctx: &C) -> (u32, u32) {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr() as *mut _) };
    let probe = (cookie & COOKIE_PROBE_MASK) as u32;
    bump(&HITS, probe);
    (probe, ((cookie >> COOKIE_KIND_SHIFT) & 0xff) as u32)
}

#[inline(always)]
fn emit<C: EbpfContext>(
    ctx: &C,
    kind: u32,
    probe: u32,
    addr: u64,
    type_ptr: u64,
    ob_size: i64,
    stack_id: u64,
) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind,
                probe,
                addr,
                type_ptr,
                ob_size,
                stack_id,
            });
            // User space polls; waking it per event would cost more than the event.
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => {
            if lost(probe, DROP_RINGBUF_FULL) {
                warn!(
                    ctx,
                    "probe {}: ring buffer full, events are being lost", probe
                );
            }
        }
    }
}

/// `ob_type` and `ob_size` sit side by side at +8 and +16 of every object on GIL builds.
#[repr(C)]
struct TypeAndSize {
    ob_type: u64,
    ob_size: i64,
}

#[inline(always)]
fn birth<C: EbpfContext>(ctx: &C, probe: u32, obj: u64) {
    if obj == 0 {
        return; // a failed allocation
    }
    match unsafe { bpf_probe_read_user((obj + 8) as *const TypeAndSize) } {
        Ok(ts) => {
            let stack_id = if walks(ts.ob_type) {
                capture_stack(ctx, probe)
            } else {
                bump(&WALK, WALK_FILTERED);
                0
            };
            emit(
                ctx,
                EVENT_BIRTH,
                probe,
                obj,
                ts.ob_type,
                ts.ob_size,
                stack_id,
            )
        }
        Err(_) => {
            if lost(probe, DROP_READ_FAILED) {
                warn!(
                    ctx,
                    "probe {}: cannot read the object at 0x{:x} (later failures are only counted)",
                    probe,
                    obj
                );
            }
        }
    }
}

/// Whether a birth of this type gets a stack: always, unless the filter is on and the type
/// is not in `WALK_TYPES`.
#[inline(always)]
fn walks(type_ptr: u64) -> bool {
    match CONFIG.get(0) {
        Some(cfg) if cfg.walk_filter != 0 => unsafe { WALK_TYPES.get(&type_ptr) }.is_some(),
        _ => true,
    }
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The current thread's id as the target knows it: in its own pid namespace when that is
/// not the host's (a container), where `native_thread_id` was taken.
#[inline(always)]
fn current_tid(cfg: &StackConfig) -> Option<u32> {
    if cfg.pidns_ino == 0 {
        return Some(bpf_get_current_pid_tgid() as u32);
    }
    let mut info = aya_ebpf::bindings::bpf_pidns_info { pid: 0, tgid: 0 };
    let size = core::mem::size_of::<aya_ebpf::bindings::bpf_pidns_info>() as u32;
    let r = unsafe {
        generated::bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino, &mut info, size)
    };
    (r == 0).then_some(info.pid)
}

/// The thread state of the thread that is allocating (it holds the GIL), validated against
/// the current thread id where the version records one.
#[inline(always)]
fn current_tstate(cfg: &StackConfig) -> Option<u64> {
    let tstate = match cfg.mode {
        1 => read_u64(cfg.tstate_addr)?,
        2 => {
            let interp = read_u64(cfg.tstate_addr)?;
            let gil = read_u64(interp + cfg.gil_ptr_off)?;
            if read_u64(gil + cfg.gil_locked_off)? as u32 == 0 {
                return None;
            }
            read_u64(gil + cfg.gil_holder_off)?
        }
        _ => return None,
    };
    if tstate == 0 {
        return None;
    }
    if cfg.native_tid_off != 0 {
        let tid = current_tid(cfg)?;
        if read_u64(tstate + cfg.native_tid_off)? as u32 != tid {
            return None;
        }
    }
    Some(tstate)
}

/// Walks the Python frame chain (one read per frame), interns the stack and returns its id
/// (a 64-bit FNV-1a hash of the frames; 0 = no stack).
#[inline(always)]
fn capture_stack<C: EbpfContext>(ctx: &C, probe: u32) -> u64 {
    capture_stack_as(ctx, probe, true)
}

/// `capture_stack`; `no_tstate_is_loss` false for native allocations, which threads without
/// the GIL make all the time (their stack is then native frames only, not a loss).
#[inline(always)]
fn capture_stack_as<C: EbpfContext>(ctx: &C, probe: u32, no_tstate_is_loss: bool) -> u64 {
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    if cfg.mode == 0 {
        return 0;
    }
    let started = if cfg.timing != 0 {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let Some(tstate) = current_tstate(cfg) else {
        if no_tstate_is_loss && lost(probe, DROP_NO_TSTATE) {
            warn!(
                ctx,
                "probe {}: no Python thread state for thread {} (stack mode {}); births \
                 without one are kept, without a stack",
                probe,
                bpf_get_current_pid_tgid() as u32,
                cfg.mode
            );
        }
        return 0;
    };
    let Some(mut frame) = read_u64(tstate + cfg.frame_off1) else {
        return 0;
    };
    if cfg.frame_off2 != NO_OFFSET && frame != 0 {
        match read_u64(frame + cfg.frame_off2) {
            Some(f) => frame = f,
            None => return 0,
        }
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let scratch = unsafe { &mut *scratch };
    let read = cfg.frame_read;
    if read == 0 || read > (8 * FRAME_WINDOW_WORDS) as u64 {
        return 0;
    }
    // Masked, not checked: the verifier must see the bound on every path (user space only
    // ever sets indices below FRAME_WINDOW_WORDS).
    const MASK: usize = FRAME_WINDOW_WORDS - 1;
    let (code_w, prev_w, instr_w) = (
        cfg.code_word as usize & MASK,
        cfg.prev_word as usize & MASK,
        cfg.instr_word as usize & MASK,
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut depth = 0usize;
    let mut truncated = 0u32;
    for i in 0..MAX_FRAMES {
        if frame == 0 {
            break;
        }
        let ok = unsafe {
            generated::bpf_probe_read_user(
                scratch.window.as_mut_ptr().cast(),
                read as u32,
                frame as *const _,
            )
        } == 0;
        if !ok {
            if lost(probe, DROP_FRAME_READ_FAILED) {
                warn!(
                    ctx,
                    "probe {}: cannot read the frame at 0x{:x}", probe, frame
                );
            }
            truncated = 1;
            frame = 0;
            break;
        }
        let w = &scratch.window;
        let (code, instr, prev) = (w[code_w], w[instr_w], w[prev_w]);
        if let Some(slot) = scratch.stack.frames.get_mut(i) {
            *slot = RawFrame { code, instr };
        }
        hash = (hash ^ code).wrapping_mul(0x0000_0100_0000_01b3);
        hash = (hash ^ instr).wrapping_mul(0x0000_0100_0000_01b3);
        depth = i + 1;
        frame = prev;
    }
    if frame != 0 {
        truncated = 1;
        bump(&WALK, WALK_TRUNCATED);
    }
    scratch.stack.depth = depth as u32;
    scratch.stack.truncated = truncated;
    // Frames past `depth` keep stale data from an earlier walk: user space reads `depth`.
    hash = (hash ^ (depth as u64) ^ ((truncated as u64) << 32)).wrapping_mul(0x0000_0100_0000_01b3);
    let id = hash | 1;
    if unsafe { STACKS.get(&id) }.is_none() && STACKS.insert(&id, &scratch.stack, 0).is_err() {
        if lost(probe, DROP_STACK_MAP_FULL) {
            warn!(ctx, "probe {}: the stack map is full", probe);
        }
        return 0;
    }
    add(&WALK, WALK_COUNT, 1);
    add(&WALK, WALK_FRAMES, depth as u64);
    if cfg.timing != 0 {
        add(&WALK, WALK_NS, unsafe { bpf_ktime_get_ns() } - started);
    }
    id
}

#[inline(always)]
fn add(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        unsafe { *slot += n };
    }
}

/// Birth at a function entry whose first argument is the new object (`_Py_NewReference`).
#[uprobe]
pub fn birth_arg0(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    birth(&ctx, probe, ctx.arg::<u64>(0).unwrap_or(0));
    0
}

/// A register of the probed thread by its word index in `struct pt_regs` (`REG_*`). The
/// context is read at constant offsets only (the verifier refuses a computed one), so the
/// registers are copied to the stack first and indexed there.
#[inline(always)]
fn reg(r: &aya_ebpf::bindings::pt_regs, index: u32) -> u64 {
    let words: [u64; 16] = [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, 0,
    ];
    words[(index & 15) as usize]
}

/// Birth at a conditional jump inside an inlined `_Py_NewReference` (optimized builds,
/// `probes::newref`): the new object is in the register the attach cookie names.
#[uprobe]
pub fn birth_reg(ctx: ProbeContext) -> u32 {
    let (probe, index) = probe_and_kind(&ctx);
    let regs = unsafe { &*(ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs) };
    birth(&ctx, probe, reg(regs, index));
    0
}

/// Birth at the return of an allocator that returns the new object (`PyType_GenericAlloc`).
#[uretprobe]
pub fn birth_ret(ctx: RetProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    birth(&ctx, probe, ctx.ret::<u64>());
    0
}

/// `FREE_IN_GC` while the cyclic collector collects (`CONFIG.gc_collecting` says where
/// its flag is), else 0. An unreadable flag is no flag.
#[inline(always)]
fn free_flags() -> u64 {
    match CONFIG.get(0) {
        Some(cfg) if cfg.gc_collecting != 0 => {
            match unsafe { bpf_probe_read_user(cfg.gc_collecting as *const i32) } {
                Ok(c) if c != 0 => FREE_IN_GC,
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// Free at a function whose first argument is the block or object (`PyObject_Free(p)`).
#[uprobe]
pub fn free_arg0(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr != 0 {
        emit(&ctx, EVENT_FREE, probe, addr, free_flags(), 0, 0);
    }
    0
}

/// Free at an allocator-table function `free(ctx, p)` / `realloc(ctx, p, n)`: `p` is arg 1.
#[uprobe]
pub fn free_arg1(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let addr = ctx.arg::<u64>(1).unwrap_or(0);
    if addr != 0 {
        emit(&ctx, EVENT_FREE, probe, addr, free_flags(), 0, 0);
    }
    0
}

/// A native allocation's arguments, kept from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy)]
struct NativeArgs {
    kind: u32,
    probe: u32,
    size: u64,
    /// `realloc`'s old block; `posix_memalign`'s result pointer.
    ptr: u64,
    /// When the entry ran, and how many more allocators were entered on the same stack
    /// pointer since (`PyMem_Malloc` tail-calling to `malloc`): their returns are one.
    at_ns: u64,
    nested: u64,
}

/// An entry at the same (thread, stack pointer) this soon after a `PyMem_*` one is its tail
/// call; an older record is a leftover whose return was never seen (detached mid-call).
const NESTED_NS: u64 = 1_000_000;

/// By thread and the stack pointer at entry (the return sees it 8 higher): a nested call on
/// the same thread (glibc's `realloc(NULL, n)` calls `malloc`) has its own key. LRU, so an
/// entry whose return never came (a `longjmp`) ages out instead of filling the map.
#[repr(C)]
#[derive(Clone, Copy)]
struct NativeKey {
    pid_tgid: u64,
    sp: u64,
}

#[map]
static NATIVE_ARGS: LruHashMap<NativeKey, NativeArgs> = LruHashMap::with_max_entries(16384, 0);

#[map]
static NATIVE_CONFIG: Array<NativeConfig> = Array::with_max_entries(1, 0);

#[inline(always)]
fn user_sp<C: EbpfContext>(ctx: &C) -> u64 {
    unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs)).rsp }
}

/// Entry of a native allocator (at its first instruction, beside its return probe): keep
/// the arguments for the return.
#[uprobe]
pub fn native_enter(ctx: ProbeContext) -> u32 {
    let (probe, mut kind) = probe_and_kind(&ctx);
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    let (size, ptr) = match kind & NATIVE_KIND_MASK {
        NATIVE_MALLOC | NATIVE_VALLOC => (arg(0), 0),
        NATIVE_CALLOC => (arg(0).wrapping_mul(arg(1)), 0),
        NATIVE_REALLOC => (arg(1), arg(0)),
        NATIVE_MEMALIGN => (arg(1), 0),
        NATIVE_POSIX_MEMALIGN => (arg(2), arg(0)),
        NATIVE_MMAP_CALL => {
            // Anonymous, not backed by a file: MAP_ANONYMOUS, fd -1.
            // A file mapping is kept as kind 0, so its return is paired and ignored.
            if arg(3) & 0x20 == 0 || arg(4) as i32 != -1 {
                kind = 0;
            }
            (arg(1), 0)
        }
        _ => return 0,
    };
    let key = NativeKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        sp: user_sp(&ctx),
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(outer) = NATIVE_ARGS.get_ptr_mut(&key) {
        // A tail call from one of the interpreter's allocators keeps its caller's stack
        // pointer: the outer entry's record stands for both, and the first of the two
        // returns is skipped. (An older record is a leftover: replaced.)
        unsafe {
            if (*outer).kind & NATIVE_VIA_INTERPRETER != 0
                && now.wrapping_sub((*outer).at_ns) < NESTED_NS
            {
                (*outer).nested += 1;
                return 0;
            }
        }
    }
    let args = NativeArgs {
        kind,
        probe,
        size,
        ptr,
        at_ns: now,
        nested: 0,
    };
    let _ = NATIVE_ARGS.insert(&key, &args, 0);
    0
}

/// Return of a native allocator: the block, then (unless the interpreter or the C library
/// itself called it) its Python stack, the caller's registers and a copy of its stack.
#[uretprobe]
pub fn native_ret(ctx: RetProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let regs = unsafe { &*(ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs) };
    let key = NativeKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        sp: regs.rsp.wrapping_sub(8),
    };
    let Some(stored) = NATIVE_ARGS.get_ptr_mut(&key) else {
        add(&WALK, WALK_NATIVE_UNPAIRED, 1);
        return 0;
    };
    let args = unsafe {
        if (*stored).nested > 0 {
            (*stored).nested -= 1;
            return 0;
        }
        *stored
    };
    let _ = NATIVE_ARGS.remove(&key);
    if args.kind == 0 {
        return 0;
    }
    let ret = regs.rax;
    let mut addr = ret;
    let mut type_ptr = if args.kind & NATIVE_PYMEM_DOMAIN != 0 {
        NATIVE_PYMEM
    } else {
        NATIVE_HEAP
    };
    match args.kind & NATIVE_KIND_MASK {
        NATIVE_REALLOC => {
            // The old block is gone when a new one came back, or when the size was 0.
            if args.ptr != 0 && (ret != 0 || args.size == 0) {
                emit(&ctx, EVENT_NATIVE_FREE, probe, args.ptr, 0, 0, 0);
            }
        }
        NATIVE_POSIX_MEMALIGN => {
            if ret != 0 {
                return 0;
            }
            addr = read_u64(args.ptr).unwrap_or(0);
        }
        NATIVE_MMAP_CALL => {
            if ret == u64::MAX {
                return 0; // MAP_FAILED
            }
            type_ptr = NATIVE_MMAP;
        }
        _ => {}
    }
    if addr == 0 {
        return 0;
    }
    let ip = regs.rip;
    if skipped(ip) {
        add(&WALK, WALK_NATIVE_SKIPPED, 1);
        return 0;
    }
    let stack_id = capture_stack_as(&ctx, probe, false);
    let Some(mut entry) = EVENTS.reserve::<NativeEvent>(0) else {
        if lost(probe, DROP_RINGBUF_FULL) {
            warn!(
                &ctx,
                "probe {}: ring buffer full, events are being lost", probe
            );
        }
        return 0;
    };
    let e = entry.as_mut_ptr();
    let sp = regs.rsp;
    unsafe {
        (*e).head = Event {
            kind: EVENT_NATIVE_ALLOC,
            probe,
            addr,
            type_ptr,
            ob_size: args.size as i64,
            stack_id,
        };
        (*e).ip = ip;
        (*e).sp = sp;
        (*e).bp = regs.rbp;
        // The whole window, or less where the stack ends sooner (a thread's stack top).
        let buf = (*e).stack.as_mut_ptr();
        let mut len = 0u64;
        for n in [NATIVE_STACK_BYTES, 2048, 1024, 512] {
            if generated::bpf_probe_read_user(buf.cast(), n as u32, sp as *const _) == 0 {
                len = n as u64;
                break;
            }
        }
        if len == 0 {
            bump(&DROPS, DROP_NATIVE_STACK);
        }
        (*e).stack_len = len;
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    0
}

/// Whether a return address is in code whose allocations are not recorded
/// (`NATIVE_CONFIG`).
#[inline(always)]
fn skipped(ip: u64) -> bool {
    let Some(cfg) = NATIVE_CONFIG.get(0) else {
        return false;
    };
    for i in 0..NATIVE_SKIP_RANGES {
        if ip >= cfg.skip_lo[i] && ip < cfg.skip_hi[i] {
            return true;
        }
    }
    false
}

/// `trace -- PROGRAM` (spawn mode): at the program's entry point, after the loader mapped its
/// libraries and before any of its code ran, stop it (SIGSTOP) for user space to attach its
/// probes; user space takes this probe out at once and lets the program go on.
#[uprobe]
pub fn spawn_stop(_ctx: ProbeContext) -> u32 {
    const SIGSTOP: u32 = 19;
    unsafe { generated::bpf_send_signal(SIGSTOP) };
    0
}

/// `free(p)` or `munmap(p, n)`: the native block at `p` is released.
#[uprobe]
pub fn native_free(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr != 0 {
        emit(&ctx, EVENT_NATIVE_FREE, probe, addr, 0, 0, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
