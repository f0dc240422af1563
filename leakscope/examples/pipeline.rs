//! What user space sustains, without the kernel: synthetic events through the trace
//! pipeline (`session::trace::Pipeline`: type lookup, stack → site, live set), over fake
//! target memory laid out like CPython 3.11, on one core. `cargo xtask bench` runs it:
//!
//!     cargo run --release --example pipeline -- [EVENTS] [LIVE]
//!
//! Prints events per second and the peak RSS with LIVE objects alive at the end.
use leakscope::cpython::{self, Version};
use leakscope::resolve::{symbols::Symbolizer, types::Resolver};
use leakscope::session::trace::Pipeline;
use leakscope::target::FakeMemory;
use leakscope_common::{EVENT_BIRTH, EVENT_FREE, Event, RawFrame, RawStack};
use std::time::Instant;

const V311: Version = Version {
    major: 3,
    minor: 11,
    patch: 7,
};
const CODE_TYPE: u64 = 0x10_0000;
const TYPES: u64 = 8;
const STACKS: u64 = 64;

/// A compact ASCII `str` at `at` (3.11 layout: length +16, state +32, data +48).
fn put_str(m: &FakeMemory, at: u64, s: &str) {
    m.put(at + cpython::STR_LENGTH, s.len() as u64);
    m.put(at + cpython::STR_STATE, (1 << 2) | (1 << 5) | (1 << 6)); // kind 1, compact, ascii
    m.put_bytes(
        at + cpython::ascii_data_offset(V311),
        &[s.as_bytes(), &[0]].concat(),
    );
}

fn fake_target() -> std::sync::Arc<FakeMemory> {
    let m = FakeMemory::new();
    // Static types: tp_name, tp_basicsize, tp_itemsize, tp_flags (GC).
    for i in 0..TYPES {
        let t = 0x20_0000 + i * 0x1000;
        let name = t + 0x800;
        m.put_words(t + cpython::TP_NAME, &[name, 48, 0]);
        m.put(t + cpython::TP_FLAGS, cpython::TPFLAGS_HAVE_GC);
        put_str(&m, name - 48, ""); // keep the words around the name mapped
        m.put_bytes(name, format!("type{i}\0").as_bytes());
    }
    // One code object per stack: filename, name, qualname, firstlineno, an empty line table.
    let l = cpython::stack_layout(V311).unwrap();
    for i in 0..STACKS {
        let code = 0x40_0000 + i * 0x1000;
        m.put(code + 8, CODE_TYPE);
        let (file, name, table) = (code + 0x400, code + 0x600, code + 0x800);
        put_str(&m, file, "/srv/app/handlers.py");
        put_str(&m, name, &format!("handler_{i}"));
        m.put(code + l.co_filename, file);
        m.put(code + l.co_name, name);
        m.put(code + l.co_qualname.unwrap(), name);
        m.put(code + l.co_firstlineno, 10 + i);
        m.put(code + l.co_linetable, table);
        m.put_words(table + cpython::BYTES_SIZE, &[0, 0, 0]);
    }
    m
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let events = args.next().unwrap_or(10_000_000);
    let live = args.next().unwrap_or(1_000_000);
    let mem = fake_target();
    let layout = cpython::stack_layout(V311).unwrap();
    let resolver = Resolver::new(mem.clone(), V311, vec![], true);
    let symbolizer = Symbolizer::new(mem.clone(), V311, layout, CODE_TYPE);
    let mut pipeline = Pipeline::new(resolver, Some(symbolizer));
    let mut stack = |id: u64| {
        let mut s = RawStack {
            depth: 1,
            truncated: 0,
            frames: [RawFrame::default(); leakscope_common::MAX_FRAMES],
        };
        s.frames[0].code = 0x40_0000 + (id >> 1) % STACKS * 0x1000;
        Some(s)
    };
    // Births at fresh addresses; every birth past the first `live` frees one of the
    // objects born before, so `live` objects survive to the end.
    let births = events.div_ceil(2) + live / 2;
    let mut batch = Vec::with_capacity(16_384);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut born = 0u64;
    let mut freed = 0u64;
    let addr = |n: u64| 0x7f00_0000_0000 + n * 64;
    while sent < events {
        batch.clear();
        while batch.len() < 16_384 && sent < events {
            if born < births && (born - freed < live || born.is_multiple_of(2)) {
                batch.push(Event {
                    kind: EVENT_BIRTH,
                    probe: 0,
                    addr: addr(born),
                    type_ptr: 0x20_0000 + born % TYPES * 0x1000,
                    ob_size: 0,
                    stack_id: ((born % STACKS) << 1) | 1,
                });
                born += 1;
            } else {
                batch.push(Event {
                    kind: EVENT_FREE,
                    addr: addr(freed) - 16, // the allocator frees the block: GC head first
                    ..Default::default()
                });
                freed += 1;
            }
            sent += 1;
        }
        pipeline.feed(&batch, &[], &mut stack);
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        pipeline.resolver.failed_reads, 0,
        "every fake type resolves"
    );
    let sym = pipeline.symbolizer.as_ref().unwrap();
    assert_eq!(sym.unreadable_stacks, 0, "every fake stack symbolizes");
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!(
        "pipeline: {sent} events in {secs:.2}s = {:.2}M events/s on one core; {} objects live at the end; peak RSS {rss}",
        sent as f64 / secs / 1e6,
        pipeline.agg.live_objects()
    );
}
