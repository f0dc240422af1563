//! The walker over heaps laid out by `census::fake`, quiet and moving. Each test name is the
//! rule it checks; the heap changes (`on_read`) are the ones a running CPython makes.
use super::*;
use crate::census::fake::{self, Target, V311, V312};
use crate::target::memory::FakeHeap;

fn census(t: &Target) -> Census {
    let mut resolver = Resolver::new(t.mem(), t.version, t.image(), true);
    let heap = Heap::fake(t.mem(), t.version, t.runtime, t.type_type);
    Walker::new(&heap, &mut resolver).run()
}

fn count(c: &Census, ty: u64) -> u64 {
    c.types.get(&ty).map_or(0, |e| e.0)
}

/// Runs `change` once, just before the walker first reads node `node` (it reads a node's
/// pre-header, `PyGC_Head` and object header in one go, from `node - 16`).
fn before_reading(t: &Target, node: u64, change: impl FnOnce(&FakeHeap) + Send + 'static) {
    let mut change = Some(change);
    t.mem.on_read(move |h| {
        if h.addr == node - 16
            && let Some(c) = change.take()
        {
            c(h)
        }
    });
}

#[test]
fn census_counts_every_object_of_a_quiet_heap_once() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let dict = t.static_type("dict", 48, 0, cpython::TPFLAGS_HAVE_GC);
    t.objects(leak, 3, i.generation(0));
    t.objects(leak, 2, i.generation(1));
    t.objects(leak, 4, i.generation(2));
    t.objects(dict, 2, i.generation(2));
    t.objects(leak, 1, i.permanent());
    let c = census(&t);
    assert_eq!(count(&c, leak), 10);
    assert_eq!(count(&c, dict), 2);
    // Leak: 16 bytes + GC head + managed-dict pre-header; dict: 48 + GC head
    assert_eq!(c.types[&leak].1, 10 * 48);
    assert_eq!(c.types[&dict].1, 2 * 64);
    assert_eq!(
        c.stats,
        WalkStats {
            interpreters: 1,
            lists: 4,
            objects: 12,
            ..Default::default()
        }
    );
    assert!(c.garbage.is_empty());
}

#[test]
fn census_counts_a_quiet_312_heap_too() {
    let mut t = Target::new(V312);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    t.objects(leak, 5, i.generation(0));
    t.objects(leak, 7, i.generation(2));
    let c = census(&t);
    assert_eq!(count(&c, leak), 12);
    assert_eq!(
        c.stats.restarts + c.stats.lists_cut + c.stats.skipped_invalid,
        0
    );
}

#[test]
fn every_interpreter_is_walked() {
    let mut t = Target::new(V311);
    let main = t.interp();
    let sub = t.interpreter();
    let leak = t.class("__main__", "Leak");
    t.objects(leak, 3, main.generation(2));
    t.objects(leak, 4, sub.generation(0));
    let c = census(&t);
    assert_eq!(c.stats.interpreters, 2);
    assert_eq!(c.stats.lists, 8);
    assert_eq!(count(&c, leak), 7);
}

#[test]
fn torn_link_is_resynchronized_from_the_previous_node() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 4, i.generation(2));
    // the walker has read n[1] (whose next is n[2]); n[2] dies before it is read
    let dead = n[2];
    before_reading(&t, dead, move |h| fake::untrack(h, dead));
    let c = census(&t);
    assert_eq!(count(&c, leak), 3, "n[0], n[1], n[3]");
    assert_eq!(c.stats.restarts, 0, "resynchronized, not restarted");
}

#[test]
fn unreadable_node_whose_neighbours_agree_is_passed_by_resynchronizing() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 3, i.generation(2));
    // n[1] dies and its arena is unmapped before the walker, past n[0], reads it
    let dead = n[1];
    before_reading(&t, dead, move |h| {
        fake::untrack(h, dead);
        h.unmap(dead - 32, 96);
    });
    let c = census(&t);
    assert_eq!(count(&c, leak), 2);
    assert_eq!(c.stats.restarts + c.stats.lists_cut, 0);
}

#[test]
fn unreadable_page_in_a_list_is_counted_as_cut_or_restart() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 3, i.generation(2));
    // n[1]'s page is unreadable and n[0] still links to it: no way past it
    t.mem.unmap(n[1] - 32, 96);
    let c = census(&t);
    assert_eq!(count(&c, leak), 1, "only n[0]; n[2] is past the cut");
    assert_eq!(c.stats.restarts, MAX_RESTARTS as u64 + 1);
    assert_eq!(c.stats.lists_cut, 1);
}

#[test]
fn unreadable_list_head_cuts_only_that_list() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    t.objects(leak, 2, i.generation(0));
    t.objects(leak, 2, i.generation(2));
    t.mem.unmap(i.generation(1), 16);
    let c = census(&t);
    assert_eq!(count(&c, leak), 4);
    assert_eq!(c.stats.lists_cut, 1);
}

#[test]
fn object_whose_preheader_is_unreadable_is_still_counted() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 2, i.generation(2));
    t.mem.unmap(n[0] - 16, 16); // the two words before its PyGC_Head
    let c = census(&t);
    assert_eq!(count(&c, leak), 2);
    assert_eq!(c.stats.restarts, 0);
}

#[test]
fn list_merged_into_an_older_generation_mid_walk_is_counted_once() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let young = t.objects(leak, 3, i.generation(0));
    t.objects(leak, 2, i.generation(1));
    // a young collection while the walker is inside generation 0: every survivor moves to
    // generation 1 (gc_list_merge), generation 0 is left empty
    let (g0, g1) = (i.generation(0), i.generation(1));
    before_reading(&t, young[1], move |h| fake::merge(h, g0, g1));
    let c = census(&t);
    assert!(fake::nodes(&*t.mem, g0).is_empty() && fake::nodes(&*t.mem, g1).len() == 5);
    assert_eq!(
        count(&c, leak),
        5,
        "each once, though gen 0's were passed twice"
    );
    assert_eq!(c.stats.restarts, 0, "a merge is followed, not restarted");
}

#[test]
fn a_loop_in_a_list_ends_the_walk_counted() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 3, i.generation(2));
    // n[2] links back to n[1], whose back-link still says n[0]: torn, and no resync
    t.mem.put(n[2], n[1]);
    let c = census(&t);
    assert_eq!(count(&c, leak), 3);
    assert_eq!(c.stats.restarts, MAX_RESTARTS as u64 + 1);
    assert_eq!(c.stats.lists_cut, 1);
}

#[test]
fn a_circular_list_that_is_not_ours_is_left_after_going_round() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 4, i.generation(2));
    // a collection moves n[0] and n[1] to its own list on its stack (`unreachable`), whose
    // head is no generation's, while the walker is between them: every link agrees, and the
    // walker goes round that list
    let unreachable = t.alloc(64) + 16;
    fake::init(&*t.mem, unreachable);
    let (a, b) = (n[0], n[1]);
    before_reading(&t, b, move |h| {
        for node in [a, b] {
            fake::untrack(h, node);
            fake::append(h, node, unreachable);
        }
    });
    let c = census(&t);
    assert_eq!(count(&c, leak), 4);
    assert_eq!(c.stats.restarts, 1);
    assert_eq!(
        c.stats.skipped_invalid, 1,
        "the stack list's head, read as an object, did not validate"
    );
}

#[test]
fn node_seen_twice_in_a_pass_does_not_cut_the_list() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let n = t.objects(leak, 3, i.generation(0));
    // n[0] dies and its block is reused at once for a new object at the end of gen 0: the
    // walker meets that address again after n[2]
    let (a, g0) = (n[0], i.generation(0));
    before_reading(&t, n[2], move |h| fake::free_and_reuse(h, a, leak, g0));
    let c = census(&t);
    assert_eq!(count(&c, leak), 3, "one object per address");
    assert_eq!(c.stats.restarts + c.stats.lists_cut, 0);
}

/// The case the end-to-end census test once found: a resync through a node freed and reused
/// at another list's tail leads to that list's head; that is not a merge (our list is not
/// empty), so the walk starts over instead of stopping there (it used to stop: 25k of 50k
/// objects counted, nothing reported).
#[test]
fn freed_and_reused_node_moved_to_another_list_restarts_not_stops() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    t.objects(leak, 1, i.generation(0));
    let n = t.objects(leak, 5, i.generation(2));
    let (moved, g0) = (n[1], i.generation(0));
    before_reading(&t, n[2], move |h| fake::free_and_reuse(h, moved, leak, g0));
    let c = census(&t);
    assert_eq!(count(&c, leak), 6);
    assert_eq!(c.stats.restarts, 1);
    assert_eq!(c.stats.lists_cut, 0);
}

#[test]
fn garbage_type_pointer_is_skipped_and_counted() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let ok = t.objects(leak, 1, i.generation(2))[0];
    let instance = ok + 16; // an object, not a type: its type's type is not `type`
    let nameless = t.static_type("", 0, 0, 0); // looks like a type, but basicsize 0
    for bad in [0, 0x1234_5674, 0xdead_0000, instance, nameless] {
        let node = t.objects(leak, 1, i.generation(2))[0];
        t.mem.put(node + 24, bad);
    }
    let c = census(&t);
    assert_eq!(c.stats.objects, 6);
    assert_eq!(c.stats.skipped_invalid, 5);
    assert_eq!(c.types.len(), 1, "{:?}", c.types);
    assert_eq!(count(&c, leak), 1);
}

#[test]
fn instance_of_a_class_with_a_metaclass_is_counted() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let flags = cpython::TPFLAGS_HAVE_GC | cpython::TPFLAGS_TYPE_SUBCLASS;
    let meta = t.heap_type("__main__", "Meta", 0x370, flags);
    let flags = cpython::TPFLAGS_HAVE_GC | cpython::TPFLAGS_MANAGED_DICT;
    let cls = t.heap_type_of(meta, "__main__", "WithMeta", 16, flags);
    t.objects(cls, 2, i.generation(2));
    let c = census(&t);
    assert_eq!(count(&c, cls), 2);
    assert_eq!(c.stats.skipped_invalid, 0);
}

#[test]
fn gc_garbage_items_are_validated() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let held = t.objects(leak, 2, i.generation(2));
    let bad_type = t.object(leak);
    t.mem.put(bad_type + 24, 0xdead_0000);
    let items = [held[0] + 16, 0xdead_1000, held[1] + 16, bad_type + 16];
    t.set_garbage(i, &items);
    let c = census(&t);
    assert_eq!(c.garbage.get(&leak), Some(&(2, 96)));
    assert_eq!(c.garbage.len(), 1);
    assert_eq!(c.stats.skipped_invalid, 2, "unreadable item, garbage type");
    assert_eq!(
        count(&c, leak),
        2,
        "gc.garbage items are on the GC lists too"
    );
}

// The short walk. Under extreme churn, about one running census in 50–150 came out far
// short with no restart and no cut reported. The cause: after a torn link the walker
// resynchronized from `prev`'s *current* successor, trusting that `prev` was still where it
// had been read. But `prev` itself may have died and had its block reused at once for a new
// object, tracked at the end of generation 0; then `prev`'s new links agree with each other,
// the resync "succeeds" and the walk goes on from `prev`'s new place. When that place is the
// tail of the list being walked (generation 0 itself, or an older generation after a
// collection merged generation 0 into it), the walker reaches its own head and ends the list
// there, as if complete: every node that was after `prev` is missed, and nothing says so.

/// Generation 0, the simplest case: `prev` moves to the end of the very list being walked.
#[test]
fn resync_through_a_node_moved_to_our_own_tail_does_not_end_the_walk() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let g0 = i.generation(0);
    let n = t.objects(leak, 5, g0);
    // the walker has counted n[1]; n[1] dies and a new object takes its block (tracked at
    // gen 0's end, after n[4]) before the walker reads n[2], whose back-link now says n[0]
    let moved = n[1];
    before_reading(&t, n[2], move |h| fake::free_and_reuse(h, moved, leak, g0));
    let c = census(&t);
    assert_eq!(count(&c, leak), 5, "n[2], n[3] and n[4] are still there");
    assert_eq!(c.stats.restarts, 1);
}

/// The far-short case: `prev`, in generation 2 (where most of a population lives), dies; a
/// new object takes its block in generation 0, and a collection of generation 1 merges the
/// young generations into generation 2, so the block is now at generation 2's tail. The old
/// resync went from there to generation 2's head: 10 of 100 counted, nothing reported.
#[test]
fn resync_through_a_node_moved_and_merged_into_the_list_being_walked_restarts() {
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let (g0, g1, g2) = (i.generation(0), i.generation(1), i.generation(2));
    let old = t.objects(leak, 100, g2);
    t.objects(leak, 3, g1);
    t.objects(leak, 2, g0);
    let moved = old[9];
    before_reading(&t, old[10], move |h| {
        fake::free_and_reuse(h, moved, leak, g0);
        fake::merge(h, g0, g1);
        fake::merge(h, g1, g2);
    });
    let c = census(&t);
    assert_eq!(count(&c, leak), 105);
    assert_eq!(c.stats.restarts, 1);
}

/// A target replacing half its population during each walk, in bursts (the walker is
/// descheduled, the target runs on), each freed block reused at once at generation 0's end,
/// with a young collection every 70 births and a generation-1 collection every third one.
/// No walk comes out far short (before the fix: 7 of 200, down to 170 of 1,000 counted, 2
/// of them with nothing reported).
/// Seeded: the same heap changes on every run.
#[test]
fn extreme_churn_never_gives_a_short_walk_with_nothing_reported() {
    const N: usize = 1000;
    let mut t = Target::new(V311);
    let i = t.interp();
    let leak = t.class("__main__", "Leak");
    let (g0, g1, g2) = (i.generation(0), i.generation(1), i.generation(2));
    let population = t.objects(leak, N, g2);
    let mut rng = fake::Rng(7);
    let mut births = 0u64;
    t.mem.on_read(move |h| {
        if rng.below(50) != 0 {
            return;
        }
        for _ in 0..25 {
            let victim = population[rng.below(N)];
            fake::free_and_reuse(h, victim, leak, g0);
            births += 1;
            if births.is_multiple_of(70) {
                fake::merge(h, g0, g1);
                if births.is_multiple_of(210) {
                    fake::merge(h, g1, g2);
                }
            }
        }
    });
    let (mut short, mut silent, mut restarts) = (0, 0, 0);
    let mut min = N as u64;
    for _ in 0..200 {
        let c = census(&t);
        restarts += c.stats.restarts;
        min = min.min(count(&c, leak));
        if count(&c, leak) < N as u64 * 8 / 10 {
            short += 1;
            if c.stats.restarts + c.stats.lists_cut == 0 {
                silent += 1;
            }
        }
    }
    assert_eq!(
        (short, silent),
        (0, 0),
        "short walks (of which silent) in 200; fewest counted {min}, {restarts} restarts"
    );
}
