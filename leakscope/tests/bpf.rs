//! The BPF programs tested without Python: this test binary's own functions, uprobed through
//! `/proc/self/exe` for this process only, play the interpreter's hooks. Each test probes
//! functions of its own, so tests running side by side never see each other's calls.
//!
//! Privileged (real BPF): `cargo xtask test` runs them; by hand, as root, after
//! `cargo xtask build-ebpf`: `cargo test --release --test bpf -- --include-ignored`.
use iced_x86::Register;
use leakscope::probes::disasm;
use leakscope::probes::kernel::{self, AttachOptions, Counters, LinkKind, Tracer};
use leakscope::probes::plan::{Coverage, Plan, ProbeSpec};
use leakscope::target::elf::Binary;
use leakscope_common::{
    EVENT_BIRTH, EVENT_FREE, EVENT_NATIVE_ALLOC, EVENT_NATIVE_FREE, Event, NATIVE_HEAP,
    NATIVE_MALLOC, NATIVE_REALLOC, StackConfig, names,
};
use std::hint::black_box;
use std::path::Path;

const PRIVILEGED: &str = "privileged: needs root; cargo xtask test runs it";

fn require_root() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("{PRIVILEGED}: run as root (this test loads BPF programs and attaches uprobes)");
    }
}

/// Laid out like a `PyVarObject`: `ob_type` at +8, `ob_size` at +16.
#[repr(C)]
pub struct FakeObject {
    ob_refcnt: u64,
    ob_type: u64,
    ob_size: i64,
}

/// Objects on the heap, written here, so their pages are resident: the BPF side reads them
/// without faulting pages in.
fn objects(n: usize) -> Box<[FakeObject]> {
    (0..n)
        .map(|i| FakeObject {
            ob_refcnt: 1,
            ob_type: 0x7000_0000 + 0x100 * i as u64,
            ob_size: i as i64 - 3,
        })
        .collect()
}

// The hooks. Each body differs (it touches its own name) so the linker cannot fold two into
// one address; calls go through `black_box`ed pointers so none is inlined away. (No atomics:
// the kernel refuses a uprobe on a `lock`-prefixed instruction, ENOTSUPP.)
macro_rules! hook {
    ($name:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            black_box(stringify!($name));
            $(black_box($arg);)*
            $body
        }
    };
}

hook!(leakscope_test_birth(obj: *const FakeObject) {});
hook!(leakscope_test_alloc(obj: *const FakeObject) -> *const FakeObject { obj });
hook!(leakscope_test_free(p: *const u8) {});
hook!(leakscope_test_free_arg1(ctx: *const u8, p: *const u8) {});
hook!(leakscope_test_unreadable_birth(obj: *const FakeObject) {});
hook!(leakscope_test_flood_birth(obj: *const FakeObject) {});
// A native allocator: (size) -> block, and its free.
hook!(leakscope_test_malloc(size: usize) -> *const u8 { (0x5000_0000 + size) as *const u8 });
hook!(leakscope_test_realloc(p: *const u8, size: usize) -> *const u8 {
    (0x6000_0000 + size + p as usize % 2) as *const u8
});
hook!(leakscope_test_native_free(p: *const u8) {});

// A function that starts with an instruction the kernel single-steps (a load) and then an
// emulated `push`: the entry-probe choice must move the probe to the push. Its argument
// stays in rdi throughout.
#[unsafe(no_mangle)]
static LEAKSCOPE_TEST_WORD: u64 = 1;
core::arch::global_asm!(
    ".globl leakscope_test_mov_then_push",
    ".type leakscope_test_mov_then_push, @function",
    "leakscope_test_mov_then_push:",
    "    mov rax, qword ptr [rip + {word}]",
    "    push rbx",
    "    mov rbx, rdi",
    "    add rax, rbx",
    "    pop rbx",
    "    ret",
    ".size leakscope_test_mov_then_push, . - leakscope_test_mov_then_push",
    word = sym LEAKSCOPE_TEST_WORD,
);
unsafe extern "C" {
    fn leakscope_test_mov_then_push(obj: *const FakeObject) -> u64;
}

const SELF: &str = "/proc/self/exe";

/// A probe on one of this binary's functions, placed as `plan` places entry probes.
fn probe(bin: &Binary, function: &str, program: &'static str, arg: Register) -> ProbeSpec {
    let (vaddr, size) = bin
        .symbol(function)
        .unwrap_or_else(|| panic!("{function} is not in the test binary's symbols"));
    let code = bin.bytes_at(vaddr, size.max(1)).expect("function code");
    let point = if program == names::BIRTH_RET {
        disasm::first_instruction(code, vaddr)
    } else {
        disasm::entry_probe(code, vaddr, arg)
    };
    ProbeSpec {
        label: format!("{function}+{}", point.offset),
        program,
        path: SELF.into(),
        file_offset: bin.vaddr_to_offset(vaddr).expect("file offset") + point.offset,
        point,
        entry: disasm::first_instruction(code, vaddr),
        kind: 0,
    }
}

fn attach(probes: Vec<ProbeSpec>, verbose: bool) -> Tracer {
    attach_with(probes, verbose, false)
}

/// `perf_links`: aya's perf-event links instead of uprobe_multi ones.
fn attach_with(probes: Vec<ProbeSpec>, verbose: bool, perf_links: bool) -> Tracer {
    let plan = Plan {
        coverage: Coverage::Complete,
        probes,
    };
    let opts = AttachOptions {
        stats: false,
        stack_config: StackConfig::default(),
        verbose,
        perf_links,
        native: Default::default(),
    };
    match Tracer::attach(&plan, std::process::id(), &opts) {
        Ok(t) => t,
        Err(e) => panic!("attach: {e:#}"),
    }
}

fn drain_all(tracer: &mut Tracer) -> Vec<Event> {
    let mut out = vec![];
    let mut natives = vec![];
    while tracer.drain(&mut out, &mut natives, 100_000) {}
    out
}

fn binary() -> Binary {
    match Binary::open(Path::new(SELF)) {
        Ok(b) => b,
        Err(e) => panic!("{e:#}"),
    }
}

#[test]
#[ignore = "needs the BPF object: cargo xtask test builds it"]
fn the_built_object_has_everything_user_space_expects() {
    assert!(
        !kernel::embedded_object().is_empty(),
        "no BPF object embedded: run `cargo xtask build-ebpf`, then rebuild"
    );
    if let Err(e) = kernel::check_object(kernel::embedded_object()) {
        panic!("{e:#}");
    }
}

#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn births_and_frees_arrive_exactly_once_per_call() {
    require_root();
    let bin = binary();
    let mut tracer = attach(
        vec![
            probe(
                &bin,
                "leakscope_test_birth",
                names::BIRTH_ARG0,
                Register::RDI,
            ),
            probe(
                &bin,
                "leakscope_test_alloc",
                names::BIRTH_RET,
                Register::RAX,
            ),
            probe(&bin, "leakscope_test_free", names::FREE_ARG0, Register::RDI),
            probe(
                &bin,
                "leakscope_test_free_arg1",
                names::FREE_ARG1,
                Register::RSI,
            ),
        ],
        false,
    );
    let objs = objects(16);
    let birth = black_box(leakscope_test_birth as extern "C" fn(*const FakeObject));
    let alloc =
        black_box(leakscope_test_alloc as extern "C" fn(*const FakeObject) -> *const FakeObject);
    let free = black_box(leakscope_test_free as extern "C" fn(*const u8));
    let free1 = black_box(leakscope_test_free_arg1 as extern "C" fn(*const u8, *const u8));
    let (births, allocs, frees, frees1) = (100usize, 30usize, 37usize, 13usize);
    for i in 0..births {
        birth(&objs[i % objs.len()]);
    }
    for i in 0..allocs {
        alloc(&objs[i % objs.len()]);
    }
    // A null object (a failed allocation) and a null free: a hit each, no event, no loss.
    birth(std::ptr::null());
    alloc(std::ptr::null());
    free(std::ptr::null());
    free1(0x1234 as *const u8, std::ptr::null());
    for i in 0..frees {
        free((0x10_0000 + 16 * i) as *const u8);
    }
    for i in 0..frees1 {
        // The first argument is the allocator's context: never the freed pointer.
        free1(0xdead as *const u8, (0x20_0000 + 16 * i) as *const u8);
    }

    let events = drain_all(&mut tracer);
    let of = |probe: u32, kind: u32| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.probe == probe && e.kind == kind)
            .collect()
    };
    assert_eq!(events.len(), births + allocs + frees + frees1, "{events:?}");
    for (probe, calls) in [(0u32, births), (1, allocs)] {
        let got = of(probe, EVENT_BIRTH);
        assert_eq!(got.len(), calls, "births from probe {probe}");
        for (i, e) in got.iter().enumerate() {
            let o = &objs[i % objs.len()];
            assert_eq!(
                e.addr, o as *const FakeObject as u64,
                "probe {probe} event {i}"
            );
            assert_eq!(e.type_ptr, o.ob_type, "probe {probe} event {i}");
            assert_eq!(e.ob_size, o.ob_size, "probe {probe} event {i}");
            assert_eq!(e.stack_id, 0, "stacks are off");
        }
    }
    let freed = |probe, base: usize| -> Vec<u64> {
        of(probe, EVENT_FREE)
            .iter()
            .map(|e| e.addr - base as u64)
            .collect()
    };
    let step = |n: usize| (0..n as u64).map(|i| 16 * i).collect::<Vec<_>>();
    assert_eq!(freed(2, 0x10_0000), step(frees));
    assert_eq!(freed(3, 0x20_0000), step(frees1));
    assert_eq!(
        tracer.hits(4),
        [births + 1, allocs + 1, frees + 1, frees1 + 1].map(|n| n as u64)
    );
    assert_eq!(tracer.counters(), Counters::default(), "nothing lost");
    assert_eq!(tracer.short_records(), 0);
}

#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn an_unreadable_object_is_counted_never_sent() {
    require_root();
    let bin = binary();
    // Verbose: the logging paths must pass the verifier too, and print without failing.
    let mut tracer = attach(
        vec![probe(
            &bin,
            "leakscope_test_unreadable_birth",
            names::BIRTH_ARG0,
            Register::RDI,
        )],
        true,
    );
    // A page that was mapped and is no more: nothing is there to read.
    let unmapped = unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        assert_eq!(libc::munmap(page, 4096), 0);
        page as *const FakeObject
    };
    let birth = black_box(leakscope_test_unreadable_birth as extern "C" fn(*const FakeObject));
    let objs = objects(1);
    let bad = [std::ptr::without_provenance::<FakeObject>(8), unmapped];
    for i in 0..20 {
        birth(bad[i % 2]);
    }
    birth(&objs[0]);
    let events = drain_all(&mut tracer);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].addr, &objs[0] as *const FakeObject as u64);
    assert_eq!(
        tracer.counters(),
        Counters {
            read_failed: 20,
            ..Counters::default()
        }
    );
    assert_eq!(tracer.hits(1), [21]);
}

/// The ring buffer holds 32 MiB; an event takes 48 bytes in it (8 of header), so exactly
/// 699,050 fit. Nothing drains meanwhile, so every call past that is counted as lost.
#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn a_full_ring_buffer_counts_each_event_it_loses() {
    require_root();
    const FIT: usize = (32 << 20) / (size_of::<Event>() + 8);
    const EXTRA: usize = 1_000;
    let bin = binary();
    let mut tracer = attach(
        vec![probe(
            &bin,
            "leakscope_test_flood_birth",
            names::BIRTH_ARG0,
            Register::RDI,
        )],
        false,
    );
    let objs = objects(4);
    let birth = black_box(leakscope_test_flood_birth as extern "C" fn(*const FakeObject));
    for i in 0..FIT + EXTRA {
        birth(&objs[i % objs.len()]);
    }
    let events = drain_all(&mut tracer);
    assert_eq!(events.len(), FIT);
    assert_eq!(
        tracer.counters(),
        Counters {
            ringbuf_full: EXTRA as u64,
            ..Counters::default()
        }
    );
    assert_eq!(tracer.hits(1), [(FIT + EXTRA) as u64]);
    // Drained, it has room again.
    birth(&objs[0]);
    assert_eq!(drain_all(&mut tracer).len(), 1);
}

#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn a_probe_moved_past_a_load_to_a_push_sees_every_call() {
    require_root();
    let bin = binary();
    let spec = probe(
        &bin,
        "leakscope_test_mov_then_push",
        names::BIRTH_ARG0,
        Register::RDI,
    );
    // `mov rax, [rip+x]` is 7 bytes; the push after it is what the kernel emulates.
    assert!(!spec.entry.emulated, "{:?}", spec.entry);
    assert_eq!(spec.point.offset, 7, "{:?}", spec.point);
    assert!(spec.point.emulated, "{:?}", spec.point);
    assert_eq!(spec.point.instruction, "push rbx");
    let mut tracer = attach(vec![spec], false);
    let objs = objects(8);
    let calls = 50;
    for i in 0..calls {
        let o = &objs[i % objs.len()];
        let sum = unsafe { leakscope_test_mov_then_push(black_box(o)) };
        assert_eq!(
            sum,
            o as *const FakeObject as u64 + 1,
            "the function still works"
        );
    }
    let events = drain_all(&mut tracer);
    assert_eq!(events.len(), calls);
    for (i, e) in events.iter().enumerate() {
        let o = &objs[i % objs.len()];
        assert_eq!(
            (e.kind, e.addr, e.type_ptr, e.ob_size),
            (
                EVENT_BIRTH,
                o as *const FakeObject as u64,
                o.ob_type,
                o.ob_size
            )
        );
    }
    assert_eq!(tracer.hits(1), [calls as u64]);
    assert_eq!(tracer.counters(), Counters::default());
}

hook!(leakscope_test_window_birth(obj: *const FakeObject) {});

#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn probes_detach_and_reattach_between_windows_and_calibration_leaves_nothing_behind() {
    require_root();
    // Both kinds of link: uprobe_multi (the default where the kernel has it, as here) and
    // aya's perf-event links (the fallback).
    for perf_links in [false, true] {
        windows_leave_nothing_behind(perf_links);
    }
}

fn windows_leave_nothing_behind(perf_links: bool) {
    let bin = binary();
    let mut tracer = attach_with(
        vec![probe(
            &bin,
            "leakscope_test_window_birth",
            names::BIRTH_ARG0,
            Register::RDI,
        )],
        false,
        perf_links,
    );
    let expected = if perf_links {
        LinkKind::PerfEvent
    } else {
        LinkKind::UprobeMulti
    };
    assert_eq!(
        tracer.link_kind(),
        expected,
        "Linux 6.18 has uprobe_multi links"
    );
    let birth = black_box(leakscope_test_window_birth as extern "C" fn(*const FakeObject));
    let objs = objects(4);
    // Calibration probes this process's own calibration functions: a cost comes back, and
    // neither an event nor a hit on the plan's probe.
    let cost = match tracer.calibrate(2_000) {
        Ok(c) => c,
        Err(e) => panic!("calibrate: {e:#}"),
    };
    eprintln!("trap cost on this machine ({expected:?} links): {cost:?}");
    assert!(
        cost.emulated_ns.is_finite() && cost.stepped_ns.is_finite(),
        "{cost:?}"
    );
    assert!(drain_all(&mut tracer).is_empty());
    assert_eq!(tracer.hits(1), [0]);
    // Attached: every call is seen. Detached: none is. Attached again: seen again.
    for window in 0..3 {
        assert!(tracer.attached());
        for o in objs.iter() {
            birth(o);
        }
        // Detached and settled (the kernel is done): no call is seen.
        tracer.detach_probes();
        assert!(!tracer.attached());
        tracer.settle();
        for o in objs.iter() {
            birth(o);
        }
        let events = drain_all(&mut tracer);
        assert_eq!(events.len(), objs.len(), "window {window}: {events:?}");
        assert_eq!(tracer.hits(1), [4 * (window + 1)]);
        if let Err(e) = tracer.attach_probes() {
            panic!("reattach: {e:#}");
        }
    }
    assert_eq!(tracer.counters(), Counters::default());
}

/// A native allocator's entry and return probes share its first instruction; the return
/// gives the block with its requested size, the caller's registers and a copy of its
/// stack; a realloc also releases its old block; a free is one event.
#[test]
#[ignore = "privileged: needs root; cargo xtask test runs it"]
fn native_allocations_carry_size_registers_and_stack() {
    require_root();
    let bin = binary();
    let at_entry = |function: &str, program: &'static str, kind: u32| {
        let (vaddr, size) = bin.symbol(function).expect("symbol");
        let code = bin.bytes_at(vaddr, size.max(1)).expect("code");
        let point = disasm::first_instruction(code, vaddr);
        ProbeSpec {
            label: function.to_string(),
            program,
            path: SELF.into(),
            file_offset: bin.vaddr_to_offset(vaddr).expect("offset"),
            point: point.clone(),
            entry: point,
            kind,
        }
    };
    let mut tracer = attach(
        vec![
            at_entry("leakscope_test_malloc", names::NATIVE_ENTER, NATIVE_MALLOC),
            at_entry("leakscope_test_malloc", names::NATIVE_RET, NATIVE_MALLOC),
            at_entry(
                "leakscope_test_realloc",
                names::NATIVE_ENTER,
                NATIVE_REALLOC,
            ),
            at_entry("leakscope_test_realloc", names::NATIVE_RET, NATIVE_REALLOC),
            probe(
                &bin,
                "leakscope_test_native_free",
                names::NATIVE_FREE,
                Register::RDI,
            ),
        ],
        false,
    );
    let malloc = black_box(leakscope_test_malloc as extern "C" fn(usize) -> *const u8);
    let realloc = black_box(leakscope_test_realloc as extern "C" fn(*const u8, usize) -> *const u8);
    let free = black_box(leakscope_test_native_free as extern "C" fn(*const u8));
    for n in 1..=20usize {
        black_box(malloc(n * 16));
    }
    black_box(realloc(0x7000 as *const u8, 100));
    for _ in 0..5 {
        free(0x4242 as *const u8);
    }
    let mut out = vec![];
    let mut natives = vec![];
    while tracer.drain(&mut out, &mut natives, 100_000) {}
    let allocs: Vec<&Event> = out
        .iter()
        .filter(|e| e.kind == EVENT_NATIVE_ALLOC)
        .collect();
    assert_eq!(allocs.len(), 21, "{out:?}");
    assert_eq!(natives.len(), 21, "one record per native allocation");
    for (i, e) in allocs.iter().take(20).enumerate() {
        let size = (i as u64 + 1) * 16;
        assert_eq!(
            (e.addr, e.ob_size, e.type_ptr),
            (0x5000_0000 + size, size as i64, NATIVE_HEAP)
        );
    }
    assert_eq!(allocs[20].addr, 0x6000_0000 + 100);
    let frees: Vec<u64> = out
        .iter()
        .filter(|e| e.kind == EVENT_NATIVE_FREE)
        .map(|e| e.addr)
        .collect();
    assert_eq!(frees, [0x7000, 0x4242, 0x4242, 0x4242, 0x4242, 0x4242]);
    // The return address is in this test function's code, the stack copy starts at the
    // caller's stack pointer and holds as much as was asked (this thread's stack is deep).
    let me = native_allocations_carry_size_registers_and_stack as *const () as usize as u64;
    for r in &natives {
        assert!(
            r.ip > me && r.ip < me + 0x10_000,
            "ip {:#x} vs {me:#x}",
            r.ip
        );
        assert_eq!(r.stack.len(), leakscope_common::NATIVE_STACK_BYTES);
        assert!(r.sp != 0);
    }
    let c = tracer.counters();
    assert_eq!(
        (c.native_unpaired, c.native_skipped, c.native_stack_failed),
        (0, 0, 0)
    );
}
