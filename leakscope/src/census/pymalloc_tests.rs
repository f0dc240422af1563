//! The allocator census over arenas and pools laid out in `FakeMemory` with the real
//! `cpython::obmalloc` layout: live and free blocks, objects of several types, buffers, torn
//! and unreadable pools. Each test name is the rule it checks.
use super::*;
use crate::census::fake::{Target, V311, V312};
use crate::cpython::obmalloc::{Layout, pool as ph};
use crate::target::FakeMemory;
use std::sync::{Arc, Mutex};

/// Arenas are mapped here: away from the fake's image (0x55…) and heap (0x7f00…).
const ARENA_AT: u64 = 0x7e00_0000_0000;

/// What a block of a fake pool holds.
#[derive(Clone)]
enum Block {
    /// On the pool's free list.
    Free,
    /// Allocated, starting with these words (the rest zero).
    Live(Vec<u64>),
}
use Block::{Free, Live};

struct Arenas {
    t: Target,
    l: Layout,
    /// The `arena_object` array and its length.
    table: u64,
    max: u64,
    /// 3.9–3.11: the `arenas` / `maxarenas` statics.
    statics: (u64, u64),
    int_type: u64,
}

impl Arenas {
    fn new(t: Target, max: u64) -> Arenas {
        let mut t = t;
        let l = obmalloc::layout(t.version).unwrap();
        let table = t.alloc(max * obmalloc::arena::SIZE as u64);
        let statics = (t.alloc(8), t.alloc(8));
        t.mem.put(statics.0, table);
        t.mem.put(statics.1, max);
        let int_type = t.static_type("int", 24, 4, 0);
        Arenas {
            t,
            l,
            table,
            max,
            statics,
            int_type,
        }
    }

    fn mem(&self) -> &FakeMemory {
        &self.t.mem
    }

    /// Arena `i` of the table: mapped at its own place, `carved` pools handed out.
    fn arena(&self, i: u64, carved: u64) -> u64 {
        let address = ARENA_AT + i * 2 * self.l.arena_size;
        let e = self.table + i * obmalloc::arena::SIZE as u64;
        let total = self.l.pools_per_arena();
        self.mem().put_words(
            e,
            &[
                address,
                address + carved * self.l.pool_size,
                (total - carved) | total << 32,
            ],
        );
        address
    }

    /// Pool `n` of the arena at `arena` (index `ai`): class `szidx`, these blocks handed out
    /// in order (the free ones linked in order), the rest never used.
    fn pool(&self, arena: u64, ai: u64, n: u64, szidx: u32, blocks: &[Block]) -> u64 {
        let p = arena + n * self.l.pool_size;
        let size = obmalloc::block_size(szidx);
        for a in (p..p + self.l.pool_size).step_by(8) {
            self.mem().put(a, 0);
        }
        let at = |i: usize| p + ph::OVERHEAD + i as u64 * size;
        let free: Vec<usize> = (0..blocks.len())
            .filter(|&i| matches!(blocks[i], Free))
            .collect();
        for (i, b) in blocks.iter().enumerate() {
            if let Live(words) = b {
                self.mem().put_words(at(i), words);
            }
        }
        for w in free.windows(2) {
            self.mem().put(at(w[0]), at(w[1]));
        }
        let count = (blocks.len() - free.len()) as u64;
        let next = ph::OVERHEAD + blocks.len() as u64 * size;
        self.mem().put_words(
            p,
            &[
                count,
                free.first().map_or(0, |&i| at(i)),
                0,
                0,
                ai | (szidx as u64) << 32,
                next | (self.l.pool_size - size) << 32,
            ],
        );
        p
    }

    /// An empty pool (on its arena's free-pool list): count 0.
    fn empty_pool(&self, arena: u64, n: u64) {
        let p = arena + n * self.l.pool_size;
        for a in (p..p + self.l.pool_size).step_by(8) {
            self.mem().put(a, 0);
        }
    }

    fn allocator(&self) -> Allocator {
        Allocator::fake(
            self.t.mem(),
            self.t.version,
            Some(self.statics),
            self.t.runtime,
            self.t.type_type,
        )
    }

    fn walk(&self, a: &Allocator) -> AllocatorCensus {
        let mut r = Resolver::new(self.t.mem(), self.t.version, self.t.image(), true);
        a.walk(&mut r)
    }

    // Block contents, as CPython lays them out.
    fn str_block(&self) -> Block {
        Live(vec![1, self.t.str_type, 3])
    }
    fn int_block(&self) -> Block {
        Live(vec![7, self.int_type, 1, 42])
    }
    /// A GC object: `PyGC_Head`, then the object.
    fn gc_block(&self, ty: u64) -> Block {
        Live(vec![0x7f00_dead_0010, 0x7f00_dead_0020, 1, ty])
    }
    /// A 3.11+ managed-dict instance: values and dict words, `PyGC_Head`, the object.
    fn managed_block(&self, ty: u64) -> Block {
        Live(vec![0, 0, 0x7f00_dead_0010, 0x7f00_dead_0020, 2, ty])
    }
}

fn count(c: &AllocatorCensus, t: u64) -> u64 {
    c.types.get(&t).map_or(0, |e| e.0)
}

/// Index of the size class of `size`-byte blocks.
fn class(size: u64) -> u32 {
    (size / 16 - 1) as u32
}

#[test]
fn live_blocks_below_nextoffset_and_off_the_free_list_are_counted_per_class_and_type() {
    let mut a = Arenas::new(Target::new(V311), 4);
    let leak = a.t.class("__main__", "Leak");
    let arena = a.arena(1, 3);
    let (s, i) = (a.str_block(), a.int_block());
    // 64-byte class: 3 str, 2 free, 1 int; 32-byte class: 2 int, 1 free
    a.pool(
        arena,
        1,
        0,
        class(64),
        &[s.clone(), Free, s.clone(), i.clone(), Free, s],
    );
    a.pool(arena, 1, 1, class(32), &[i.clone(), Free, i]);
    let gc = a.gc_block(a.t.list_type);
    let m = a.managed_block(leak);
    a.pool(arena, 1, 2, class(64), &[m.clone(), gc, m]);
    let c = a.walk(&a.allocator());
    assert_eq!(count(&c, a.t.str_type), 3);
    assert_eq!(count(&c, a.int_type), 3);
    assert_eq!(
        count(&c, leak),
        2,
        "after the managed pre-header and the GC head"
    );
    assert_eq!(count(&c, a.t.list_type), 1, "after the GC head");
    assert_eq!(c.types[&a.t.str_type].1, 3 * 64, "bytes are block sizes");
    assert_eq!(c.types[&a.int_type].1, 64 + 2 * 32);
    let c64 = c.classes[class(64) as usize];
    assert_eq!(
        (c64.size, c64.pools, c64.blocks, c64.bytes),
        (64, 2, 7, 7 * 64)
    );
    let c32 = c.classes[class(32) as usize];
    assert_eq!((c32.pools, c32.blocks), (1, 2));
    assert_eq!(
        c.stats,
        AllocatorStats {
            tables: 1,
            arenas: 1,
            pools: 3,
            blocks: 9,
            bytes: 7 * 64 + 2 * 32,
            objects: 9,
            ..Default::default()
        }
    );
}

#[test]
fn buffers_and_parked_objects_are_counted_as_unclassified() {
    let mut a = Arenas::new(Target::new(V311), 1);
    let arena = a.arena(0, 1);
    let some_str = a.t.str("x");
    let blocks = [
        // a list's item array: two object pointers
        Live(vec![some_str, some_str]),
        // a refcount and a pointer to something that is not a type (a str)
        Live(vec![1, some_str]),
        // a tuple parked on CPython's free list: its type intact, refcount 0
        Live(vec![0, a.int_type]),
        // a non-GC type where a GC object's pre-header would say otherwise: `list` needs
        // its `PyGC_Head` in front, so at the block start it is not an object
        Live(vec![1, a.t.list_type]),
        // a pointer into an arena in the type slot: never read, never a type
        Live(vec![1, arena + 0x100]),
        a.str_block(),
    ];
    a.pool(arena, 0, 0, class(48), &blocks);
    let reads = Arc::new(Mutex::new(vec![]));
    let log = reads.clone();
    a.mem()
        .on_read(move |h| log.lock().unwrap().push((h.addr, h.len)));
    let c = a.walk(&a.allocator());
    assert_eq!(count(&c, a.t.str_type), 1);
    assert_eq!(c.types.len(), 1);
    assert_eq!(c.stats.blocks, 6);
    assert_eq!(c.stats.objects, 1);
    assert_eq!(
        (c.stats.unclassified_blocks, c.stats.unclassified_bytes),
        (5, 5 * 48)
    );
    let reads = reads.lock().unwrap();
    let l = a.l;
    assert!(
        reads
            .iter()
            .filter(|&&(addr, _)| (ARENA_AT..ARENA_AT + 8 * l.arena_size).contains(&addr))
            .all(|&(addr, len)| addr == arena && len == l.pool_size as usize),
        "inside the arenas only whole pools are read, each in one read: {reads:x?}"
    );
}

#[test]
fn empty_unused_and_never_carved_pools_are_not_read_as_used() {
    let a = Arenas::new(Target::new(V311), 3);
    // entry 0 unused (address 0); arena 1: pool 0 used, pool 1 empty, the rest never carved
    let arena = a.arena(1, 2);
    a.pool(arena, 1, 0, class(16), &[a.str_block()]);
    a.empty_pool(arena, 1);
    let c = a.walk(&a.allocator());
    assert_eq!(
        (c.stats.arenas, c.stats.pools, c.stats.empty_pools),
        (1, 1, 1)
    );
    assert_eq!(c.stats.blocks, 1);
}

#[test]
fn a_pool_whose_header_and_free_list_disagree_is_torn_and_not_counted() {
    let a = Arenas::new(Target::new(V311), 1);
    let arena = a.arena(0, 4);
    let s = a.str_block();
    a.pool(arena, 0, 0, class(32), &[s.clone(), s.clone()]);
    // count says 3, the pool handed out 2 blocks, none free
    let p1 = a.pool(arena, 0, 1, class(32), &[s.clone(), s.clone()]);
    a.mem().put(p1 + ph::COUNT as u64, 3);
    // a free list that loops
    let p2 = a.pool(arena, 0, 2, class(32), &[s.clone(), Free, Free]);
    let (b1, b2) = (p2 + 48 + 32, p2 + 48 + 64);
    a.mem().put(b2, b1);
    // a free link outside the pool
    let p3 = a.pool(arena, 0, 3, class(32), &[s.clone(), Free]);
    a.mem().put(p3 + ph::FREEBLOCK as u64, p1 + 48);
    let c = a.walk(&a.allocator());
    assert_eq!((c.stats.pools, c.stats.torn_pools), (1, 3));
    assert_eq!(c.stats.torn_blocks, 3 + 1 + 1);
    assert_eq!(count(&c, a.t.str_type), 2, "only the consistent pool");
}

#[test]
fn a_pool_torn_by_one_read_is_read_again() {
    let a = Arenas::new(Target::new(V311), 1);
    let arena = a.arena(0, 1);
    let s = a.str_block();
    let p = a.pool(arena, 0, 0, class(32), &[s.clone(), s.clone(), Free]);
    // the target is halfway through an allocation as we read the pool the first time
    let mut first = true;
    a.mem().on_read(move |h| {
        if h.addr == p && first {
            first = false;
            h.put(p + ph::COUNT as u64, 3);
        } else if h.addr == p {
            h.put(p + ph::COUNT as u64, 2);
        }
    });
    let c = a.walk(&a.allocator());
    assert_eq!((c.stats.pools, c.stats.torn_pools), (1, 0));
    assert_eq!(count(&c, a.t.str_type), 2);
}

#[test]
fn unreadable_pools_and_nonsense_arena_entries_are_counted() {
    let a = Arenas::new(Target::new(V311), 3);
    let arena = a.arena(0, 2);
    a.pool(arena, 0, 0, class(32), &[a.str_block()]);
    a.pool(arena, 0, 1, class(32), &[a.str_block()]);
    a.mem().unmap(arena + a.l.pool_size + 4096, 8);
    // entry 2: pool_address before the arena (read while it changed)
    let e = a.table + 2 * obmalloc::arena::SIZE as u64;
    a.mem()
        .put_words(e, &[ARENA_AT + 0x1000_0000, ARENA_AT, 64 << 32]);
    let c = a.walk(&a.allocator());
    assert_eq!(
        (c.stats.pools, c.stats.unreadable_pools, c.stats.bad_arenas),
        (1, 1, 1)
    );
    // a table that cannot be read at all
    a.mem().put(a.statics.0, 0x1234_0000);
    let c = a.walk(&a.allocator());
    assert_eq!((c.stats.tables, c.stats.unreadable_tables), (0, 1));
    assert!(c.types.is_empty());
}

#[test]
fn a_walk_is_bounded_and_says_so() {
    let a = Arenas::new(Target::new(V311), 1);
    let arena = a.arena(0, 3);
    for n in 0..3 {
        a.pool(arena, 0, n, class(16), &[a.str_block()]);
    }
    let c = a.walk(&a.allocator().with_max_pools(2));
    assert!(c.stats.bounded);
    assert_eq!(c.stats.pools, 2);
    assert!(!a.walk(&a.allocator()).stats.bounded);
    let _ = a.max;
}

#[test]
fn the_39_geometry_has_4k_pools_and_gc_objects_without_managed_words() {
    let mut a = Arenas::new(
        Target::new(Version {
            major: 3,
            minor: 9,
            patch: 18,
        }),
        1,
    );
    assert_eq!(a.l.pool_size, 4096);
    let leak =
        a.t.heap_type("__main__", "Leak", 32, cpython::TPFLAGS_HAVE_GC);
    let arena = a.arena(0, 2);
    // 1 MiB would be 16 KiB pools: these are 4 KiB, the second pool right after the first
    a.pool(arena, 0, 0, class(48), &[a.gc_block(leak), a.str_block()]);
    a.pool(arena, 0, 1, class(48), &[a.gc_block(leak)]);
    let c = a.walk(&a.allocator());
    assert_eq!(count(&c, leak), 2);
    assert_eq!(count(&c, a.t.str_type), 1);
    assert_eq!(c.stats.unclassified_blocks, 0);
}

/// 3.12+: one table per interpreter with its own allocator, found through the interpreter
/// list; an interpreter sharing the main allocator has a zeroed state and adds nothing.
#[test]
fn every_interpreter_with_its_own_allocator_is_walked() {
    let mut t = Target::new(V312);
    let obmalloc::TablePlace::Interpreter { state, .. } = obmalloc::layout(V312).unwrap().table
    else {
        panic!()
    };
    let main = t.interp();
    // the interpreter struct is bigger than the fake's: room for the obmalloc state after it
    t.alloc(state + obmalloc::MGMT + 16);
    let shared = t.interpreter();
    t.alloc(state + obmalloc::MGMT + 16);
    let own = t.interpreter();
    t.alloc(state + obmalloc::MGMT + 16);
    let mut a = Arenas::new(t, 2);
    let mgmt = |i: crate::census::fake::Interp| i.addr + state + obmalloc::MGMT;
    a.mem().put_words(mgmt(main), &[a.table, 1]);
    let _ = shared; // all zero: shares the main allocator
    let own_table = a.t.alloc(obmalloc::arena::SIZE as u64);
    a.mem().put_words(mgmt(own), &[own_table, 1]);
    let arena = a.arena(0, 1);
    a.pool(arena, 0, 0, class(64), &[a.str_block(), a.str_block()]);
    let sub_arena = ARENA_AT + 16 * a.l.arena_size;
    a.mem().put_words(
        own_table,
        &[sub_arena, sub_arena + a.l.pool_size, 63 | 64 << 32],
    );
    a.pool(sub_arena, 0, 0, class(64), &[a.str_block()]);
    let alloc = Allocator::fake(a.t.mem(), V312, None, a.t.runtime, a.t.type_type);
    let c = a.walk(&alloc);
    assert_eq!(c.stats.tables, 2);
    assert_eq!(count(&c, a.t.str_type), 3);
}

#[test]
fn size_class_rows_show_changes_since_the_last_and_first_snapshot() {
    let snap = |blocks: &[(usize, u64)]| {
        let mut v: Vec<SizeClass> = (0..32)
            .map(|i| SizeClass {
                size: 16 * (i + 1),
                ..Default::default()
            })
            .collect();
        for &(i, b) in blocks {
            v[i].blocks = b;
            v[i].pools = 1;
            v[i].bytes = b * v[i].size;
        }
        v
    };
    let mut s = ClassSeries::default();
    let rows = s.add(&snap(&[(0, 10), (3, 5)]));
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.delta_last == 0 && r.delta_first == 0));
    s.add(&snap(&[(0, 15), (3, 5)]));
    let rows = s.add(&snap(&[(0, 12)]));
    let r0 = &rows[0];
    assert_eq!(
        (r0.size, r0.blocks, r0.delta_last, r0.delta_first),
        (16, 12, -3, 2)
    );
    assert_eq!(
        (rows[1].size, rows[1].blocks, rows[1].delta_last),
        (64, 0, -5),
        "a class emptied since the last snapshot shows once"
    );
    assert_eq!(s.add(&snap(&[(0, 12)])).len(), 1);
}
