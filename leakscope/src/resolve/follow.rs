//! Between sampling windows no free probe is attached: whether a followed object is still
//! the one born in a window is read from its memory. A freed block keeps its old bytes
//! until reused, so the checks are what a free or a reuse must change:
//!
//! - the reference count: a dead object's is 0 (it died when it reached 0), or the
//!   allocator wrote a free-list pointer over it;
//! - the type pointer: a block reused by another type has another one;
//! - a *tag*: a hash of the object's bytes (pre-header words other than the GC links, the
//!   object after its reference count, at most `TAG_BYTES`), taken at the first check after
//!   its window, when the free probe had just seen it alive. A successor of the same type
//!   at the same address has other contents (other field values, another values array).
//!
//! What it cannot tell: a successor with the very same bytes (the same small ints in the
//! same slots), and an object that changes its own tagged fields (a list that grows, a
//! str whose hash gets cached) is taken for a successor, i.e. dead. The first keeps a
//! churning site's followed count from dropping to zero but not growing (its addresses are
//! few and each is counted once); the second makes a mutating leak look smaller. Neither
//! makes a site look like it grows.
use crate::cpython::{GC_HEAD_SIZE, OB_TYPE};
use crate::model::aggregate::Followed;
use crate::target::Memory;

/// Bytes of the object (after its reference count) the tag covers.
pub const TAG_BYTES: u64 = 56;
/// A reference count above this is not one (a pointer the allocator wrote over it).
pub const MAX_REFCNT: u64 = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still the same object; `tag` is what to remember (new or unchanged).
    Alive {
        tag: u64,
    },
    Dead(Why),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Unreadable,
    RefcountZero,
    NotARefcount,
    OtherType,
    OtherContents,
}

/// Reads one followed object and says whether it is still the one that was born.
pub fn check(mem: &dyn Memory, o: &Followed) -> Verdict {
    if leakscope_common::is_native(o.type_ptr) {
        return check_native(mem, o);
    }
    let body = o
        .bytes
        .saturating_sub(o.preheader)
        .clamp(16, 16 + TAG_BYTES);
    let start = o.addr - o.preheader;
    let mut buf = vec![0u8; (o.preheader + body) as usize];
    if mem.read(start, &mut buf).is_err() {
        return Verdict::Dead(Why::Unreadable);
    }
    let word = |at: u64| {
        let i = (at - start) as usize;
        u64::from_le_bytes(buf[i..i + 8].try_into().unwrap())
    };
    let refcnt = word(o.addr);
    if refcnt == 0 {
        return Verdict::Dead(Why::RefcountZero);
    }
    if refcnt > MAX_REFCNT && refcnt as u32 != u32::MAX {
        // (3.12+ immortal objects keep a low word of all ones.)
        return Verdict::Dead(Why::NotARefcount);
    }
    if word(o.addr + OB_TYPE) != o.type_ptr {
        return Verdict::Dead(Why::OtherType);
    }
    // The GC links (the last 16 bytes of a pre-header) move with collections: not tagged.
    let gc_from = if o.preheader >= GC_HEAD_SIZE {
        o.preheader - GC_HEAD_SIZE
    } else {
        o.preheader
    } as usize;
    let obj = o.preheader as usize;
    let tag = fnv(&[&buf[..gc_from], &buf[obj + 8..]]).max(1);
    if o.tag != 0 && o.tag != tag {
        return Verdict::Dead(Why::OtherContents);
    }
    Verdict::Alive { tag }
}

/// A native block has no reference count or type: its tag is the word before it (glibc's
/// chunk size, which a merge with a neighbour changes) and its first bytes, which a free
/// overwrites (glibc's tcache writes its next pointer and its per-process key there, the
/// other bins their list pointers; a safe-linked null is not zero). A block the program
/// itself rewrites is taken for dead (a leak looks smaller, never larger). An unmapped
/// mapping is unreadable: dead. A `PyMem_Malloc` block may sit in a pymalloc pool, with a
/// neighbour's last word in front: only its first bytes, where pymalloc's free writes the
/// pool's free-list pointer (3.11 `Objects/obmalloc.c` `pymalloc_free`).
fn check_native(mem: &dyn Memory, o: &Followed) -> Verdict {
    let heap = o.type_ptr == leakscope_common::NATIVE_HEAP;
    let before = if heap { 8 } else { 0 };
    let body = o.bytes.clamp(8, 8 + TAG_BYTES);
    let mut buf = vec![0u8; (before + body) as usize];
    if mem.read(o.addr - before, &mut buf).is_err() {
        return Verdict::Dead(Why::Unreadable);
    }
    let tag = fnv(&[&buf]).max(1);
    if o.tag != 0 && o.tag != tag {
        return Verdict::Dead(Why::OtherContents);
    }
    Verdict::Alive { tag }
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FakeMemory;

    const T: u64 = 0x7000;
    const U: u64 = 0x8000;

    fn followed(addr: u64, preheader: u64, tag: u64) -> Followed {
        Followed {
            addr,
            type_ptr: T,
            site: 1,
            epoch: 1,
            bytes: preheader + 32,
            preheader,
            tag,
        }
    }

    fn object(m: &FakeMemory, addr: u64, refcnt: u64, ty: u64, field: u64) {
        m.put_words(addr - 32, &[0xd1c7, 0xa1, 0x1111, 0x2222]);
        m.put_words(addr, &[refcnt, ty, field, 0]);
    }

    #[test]
    fn the_same_object_stays_alive_however_its_refcount_and_gc_links_move() {
        let m = FakeMemory::new();
        object(&m, 0x1000, 1, T, 42);
        let Verdict::Alive { tag } = check(&*m, &followed(0x1000, 32, 0)) else {
            panic!("a live object is alive");
        };
        m.put_words(0x1000, &[7]);
        m.put_words(0x1000 - 16, &[0x3333, 0x4444]);
        assert_eq!(
            check(&*m, &followed(0x1000, 32, tag)),
            Verdict::Alive { tag }
        );
    }

    #[test]
    fn a_freed_or_reused_block_is_never_a_survivor() {
        let m = FakeMemory::new();
        object(&m, 0x1000, 1, T, 42);
        let Verdict::Alive { tag } = check(&*m, &followed(0x1000, 32, 0)) else {
            panic!();
        };
        let f = followed(0x1000, 32, tag);
        // Dead at refcount 0 (freed, not reused yet).
        object(&m, 0x1000, 0, T, 42);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::RefcountZero));
        // pymalloc wrote its free-list pointer over the refcount.
        object(&m, 0x1000, 0x7f12_3456_7890, T, 42);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::NotARefcount));
        // Reused by another type.
        object(&m, 0x1000, 1, U, 42);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::OtherType));
        // Reused by the same type with other contents.
        object(&m, 0x1000, 1, T, 43);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::OtherContents));
        // Unmapped.
        m.unmap(0x1000 - 32, 64);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::Unreadable));
    }

    #[test]
    fn a_freed_native_block_is_dead_a_kept_one_alive() {
        let m = FakeMemory::new();
        // glibc chunk: size word, then the block.
        m.put_words(0x3000 - 8, &[0x1011, 0xaaaa, 0xbbbb, 0xcccc]);
        let mut f = Followed {
            addr: 0x3000,
            type_ptr: leakscope_common::NATIVE_HEAP,
            site: 1,
            epoch: 1,
            bytes: 24,
            preheader: 0,
            tag: 0,
        };
        let Verdict::Alive { tag } = check(&*m, &f) else {
            panic!("a kept block is alive");
        };
        f.tag = tag;
        assert_eq!(check(&*m, &f), Verdict::Alive { tag });
        // free(): tcache writes its next pointer and key into the block.
        m.put_words(0x3000, &[0x5555_0003, 0x1234_5678_9abc_def0]);
        assert_eq!(check(&*m, &f), Verdict::Dead(Why::OtherContents));
        // munmap'ed: unreadable.
        let g = Followed {
            type_ptr: leakscope_common::NATIVE_MMAP,
            addr: 0x9000,
            ..f
        };
        assert_eq!(check(&*m, &g), Verdict::Dead(Why::Unreadable));
    }

    #[test]
    fn an_object_without_pre_header_is_checked_from_its_own_address() {
        let m = FakeMemory::new();
        m.put_words(0x2000, &[1, T, 5, 6]);
        let f = followed(0x2000, 0, 0);
        assert!(matches!(check(&*m, &f), Verdict::Alive { .. }));
    }
}
