//! pymalloc (`Objects/obmalloc.c`): where its arena table lives, and how arenas, pools and
//! blocks read. x86_64, default (non-debug, GIL) builds; values and sources:
//! docs/cpython.md §11.
//!
//! The allocator serves requests of at most `SMALL_REQUEST_THRESHOLD` bytes from *pools*
//! (one size class each) carved out of *arenas* (`mmap`ed, `ARENA_SIZE` each); larger ones go
//! to `malloc` and are not here. An `arena_object` per arena sits in one array (`arenas`,
//! `maxarenas` entries; unused entries have `address == 0`).

use super::Version;

/// `ALIGNMENT` (3.12.1/3.13.0 `internal/pycore_obmalloc.h:132`; 3.9–3.11 `Objects/obmalloc.c`,
/// source only): block sizes are multiples of it.
pub const ALIGNMENT: u64 = 16;
/// `SMALL_REQUEST_THRESHOLD` (`pycore_obmalloc.h:157`): the largest block.
pub const SMALL_REQUEST_THRESHOLD: u64 = 512;
/// `NB_SMALL_SIZE_CLASSES`: 32 (also `sizeof(_obmalloc_pools.used)` = 64 pointers, DWARF).
pub const SIZE_CLASSES: usize = (SMALL_REQUEST_THRESHOLD / ALIGNMENT) as usize;

/// `INDEX2SIZE(szidx)` (`pycore_obmalloc.h:140`): the block size of size class `szidx`.
pub fn block_size(szidx: u32) -> u64 {
    (szidx as u64 + 1) * ALIGNMENT
}

/// `struct arena_object` (DWARF, the same in 3.9–3.13).
pub mod arena {
    /// `uintptr_t address`: where the arena's memory starts; 0 = unused entry.
    pub const ADDRESS: usize = 0;
    /// `block *pool_address`: the next pool never carved (pools below it were).
    pub const POOL_ADDRESS: usize = 8;
    /// `uint nfreepools`.
    pub const NFREEPOOLS: usize = 16;
    /// `uint ntotalpools`.
    pub const NTOTALPOOLS: usize = 20;
    /// `sizeof(struct arena_object)`.
    pub const SIZE: usize = 48;
}

/// `struct pool_header` (DWARF, the same in 3.9–3.13), at the start of every pool.
pub mod pool {
    /// `ref.count` (a `uint` in a pointer-sized union): blocks allocated.
    pub const COUNT: usize = 0;
    /// `block *freeblock`: head of the pool's free-block list (each free block's first word
    /// is the next; NULL ends it).
    pub const FREEBLOCK: usize = 8;
    /// `pool_header *nextpool`, `*prevpool`.
    pub const NEXTPOOL: usize = 16;
    pub const PREVPOOL: usize = 24;
    /// `uint arenaindex`: this pool's arena in the table.
    pub const ARENAINDEX: usize = 32;
    /// `uint szidx`: its size class.
    pub const SZIDX: usize = 36;
    /// `uint nextoffset`: offset of the first block never handed out.
    pub const NEXTOFFSET: usize = 40;
    /// `uint maxnextoffset`: `POOL_SIZE - block size`.
    pub const MAXNEXTOFFSET: usize = 44;
    /// `sizeof(struct pool_header)`.
    pub const SIZE: usize = 48;
    /// `POOL_OVERHEAD` = `sizeof(struct pool_header)` rounded up to `ALIGNMENT`
    /// (`pycore_obmalloc.h:309`): the first block's offset.
    pub const OVERHEAD: u64 = 48;
}

/// Where a build keeps its arena table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TablePlace {
    /// 3.9–3.11: the file-static `arenas` and `maxarenas` of `Objects/obmalloc.c`, found by
    /// symbol (`.symtab` of an unstripped build, or its debug file).
    Static,
    /// 3.12+: in each interpreter's `struct _obmalloc_state`, `mgmt.arenas` (+0) and
    /// `mgmt.maxarenas` (+8, a `uint`), `mgmt` at +`MGMT` in the state. The state is
    /// `PyInterpreterState.obmalloc` at `state`: embedded (3.12) or a pointer (3.13).
    Interpreter { state: u64, pointer: bool },
}

/// `_obmalloc_state.mgmt` (DWARF 3.12.1, 3.13.0: 0x200, after `pools.used[64]`).
pub const MGMT: u64 = 0x200;
/// `_obmalloc_mgmt.arenas`, `.maxarenas` (DWARF 3.12.1, 3.13.0).
pub const MGMT_ARENAS: u64 = 0;
pub const MGMT_MAXARENAS: u64 = 8;
/// Symbols of the 3.9–3.11 file-statics (DWARF: 3.9.18 `Objects/obmalloc.c:1180,1182`,
/// 3.10.13 `:1212,1214`, 3.11.7 `:1243,1245`).
pub const ARENAS_SYMBOL: &str = "arenas";
pub const MAXARENAS_SYMBOL: &str = "maxarenas";

/// One build's pymalloc geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `ARENA_SIZE`: 256 KiB (3.9), 1 MiB (3.10+: `USE_LARGE_ARENAS` on 64-bit).
    pub arena_size: u64,
    /// `POOL_SIZE`: 4 KiB (3.9), 16 KiB (3.10+: `USE_LARGE_POOLS`, with the radix tree).
    pub pool_size: u64,
    pub table: TablePlace,
}

/// Per version. 3.12/3.13 `ARENA_BITS` 20 (`pycore_obmalloc.h:211`), `POOL_BITS` 14 (`:226`);
/// 3.9–3.11 from the interpreters' own `sys._debugmallocstats()` (docs/cpython.md §11);
/// `PyInterpreterState.obmalloc` DWARF: 3.12.1 0xf78 (a struct), 3.13.0 0x2a30 (a pointer).
pub fn layout(v: Version) -> Option<Layout> {
    const KIB: u64 = 1024;
    let (arena_size, pool_size) = match v.minor {
        9 => (256 * KIB, 4 * KIB),
        10..=13 => (1024 * KIB, 16 * KIB),
        _ => return None,
    };
    let table = match v.minor {
        9..=11 => TablePlace::Static,
        12 => TablePlace::Interpreter {
            state: 0xf78,
            pointer: false,
        },
        13 => TablePlace::Interpreter {
            state: 0x2a30,
            pointer: true,
        },
        _ => return None,
    };
    Some(Layout {
        arena_size,
        pool_size,
        table,
    })
}

impl Layout {
    /// `MAX_POOLS_IN_ARENA` (`ARENA_SIZE / POOL_SIZE`, 64 in every version).
    pub fn pools_per_arena(&self) -> u64 {
        self.arena_size / self.pool_size
    }

    /// Blocks of `size` bytes in one pool.
    pub fn capacity(&self, size: u64) -> u64 {
        (self.pool_size - pool::OVERHEAD) / size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::tests::v;

    #[test]
    fn geometry_per_version() {
        assert_eq!(layout(v(9)).unwrap().pool_size, 4096);
        assert_eq!(layout(v(9)).unwrap().arena_size, 256 << 10);
        for minor in 9..=13 {
            let l = layout(v(minor)).unwrap();
            assert_eq!(l.pools_per_arena(), 64, "3.{minor}");
        }
        assert_eq!(layout(v(13)).unwrap().arena_size, 1 << 20);
        assert!(layout(v(8)).is_none());
        // `sys._debugmallocstats()`, size class 0 (16 bytes): 253 blocks per pool on 3.9,
        // 1021 on 3.10+ (used + free in one pool)
        assert_eq!(layout(v(9)).unwrap().capacity(16), 253);
        assert_eq!(layout(v(11)).unwrap().capacity(16), 1021);
        assert_eq!(block_size(0), 16);
        assert_eq!(block_size(SIZE_CLASSES as u32 - 1), SMALL_REQUEST_THRESHOLD);
    }
}
