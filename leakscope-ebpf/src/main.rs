//! BPF side of leakscope: uprobes on the target interpreter that turn object births and
//! memory frees into `Event`s in one ring buffer. No aggregation happens here: user space
//! owns the live set, so this side stays small and every loss is counted in `DROPS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use leakscope_common::{
    DROP_KINDS, DROP_READ_FAILED, DROP_RINGBUF_FULL, EVENT_BIRTH, EVENT_FREE, Event, MAX_PROBES,
};

/// 32 MiB: about 800k events, drained every 10 ms by user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

#[map]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_KINDS, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, a plain add is exact.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn probe_id<C: EbpfContext>(ctx: &C) -> u32 {
    // The attach cookie is the probe's index in user space's probe plan.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr() as *mut _) } as u32;
    bump(&HITS, cookie);
    cookie
}

#[inline(always)]
fn emit(kind: u32, probe: u32, addr: u64, type_ptr: u64, ob_size: i64) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event { kind, probe, addr, type_ptr, ob_size });
            // User space polls; waking it per event would cost more than the event.
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(&DROPS, DROP_RINGBUF_FULL),
    }
}

/// `ob_type` and `ob_size` sit side by side at +8 and +16 of every object on GIL builds.
#[repr(C)]
struct TypeAndSize {
    ob_type: u64,
    ob_size: i64,
}

#[inline(always)]
fn birth(probe: u32, obj: u64) {
    if obj == 0 {
        return; // a failed allocation
    }
    match unsafe { bpf_probe_read_user((obj + 8) as *const TypeAndSize) } {
        Ok(ts) => emit(EVENT_BIRTH, probe, obj, ts.ob_type, ts.ob_size),
        Err(_) => bump(&DROPS, DROP_READ_FAILED),
    }
}

/// Birth at a function entry whose first argument is the new object (`_Py_NewReference`).
#[uprobe]
pub fn birth_arg0(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    birth(probe, ctx.arg::<u64>(0).unwrap_or(0));
    0
}

/// Birth at the return of an allocator that returns the new object (`PyType_GenericAlloc`).
#[uretprobe]
pub fn birth_ret(ctx: RetProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    birth(probe, ctx.ret::<u64>());
    0
}

/// Free at a function whose first argument is the block or object (`PyObject_Free(p)`).
#[uprobe]
pub fn free_arg0(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr != 0 {
        emit(EVENT_FREE, probe, addr, 0, 0);
    }
    0
}

/// Free at an allocator-table function `free(ctx, p)` / `realloc(ctx, p, n)`: `p` is arg 1.
#[uprobe]
pub fn free_arg1(ctx: ProbeContext) -> u32 {
    let probe = probe_id(&ctx);
    let addr = ctx.arg::<u64>(1).unwrap_or(0);
    if addr != 0 {
        emit(EVENT_FREE, probe, addr, 0, 0);
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
