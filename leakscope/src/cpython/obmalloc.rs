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
/// Exported, and it walks the arena table (`for (i = 0; i < maxarenas; ++i) { base =
/// arenas[i].address; ...}`, 3.9–3.11 `Objects/obmalloc.c`): where a stripped build's
/// table is found (`table_from_code`).
pub const ALLOCATED_BLOCKS_FN: &str = "_Py_GetAllocatedBlocks";

/// `(arenas, maxarenas)`, link-time addresses of the two file-statics, from the code of
/// `_Py_GetAllocatedBlocks` at `ip`: `maxarenas` is the first 32-bit load from
/// `[rip+x]`; `arenas` the 64-bit load from `[rip+y]` whose register is then read through
/// at offset 0 (`arenas[0].address`; the other 64-bit load is `raw_allocated_blocks`, a
/// count). Seen on Debian's python3.11 (`mov r9d,[rip+..]` → 0xac4618, `mov rdi,[rip+..]`
/// then `mov rax,[rdi]` → 0xac4628) and pyenv's 3.11.7, where the symbols say the same
/// (`tests::allocated_blocks_code_gives_the_arena_table`).
pub fn table_from_code(code: &[u8], ip: u64) -> Option<(u64, u64)> {
    use iced_x86::{Decoder, DecoderOptions, OpKind};
    let mut maxarenas = None;
    let mut loads: Vec<(iced_x86::Register, u64)> = vec![];
    for i in Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .take(24)
    {
        if i.mnemonic() == iced_x86::Mnemonic::Mov
            && i.op0_kind() == OpKind::Register
            && i.is_ip_rel_memory_operand()
        {
            let r = i.op0_register();
            if r.is_gpr32() && maxarenas.is_none() {
                maxarenas = Some(i.ip_rel_memory_address());
            } else if r.is_gpr64() {
                loads.push((r, i.ip_rel_memory_address()));
            }
            continue;
        }
        if i.op_count() == 2
            && i.op1_kind() == OpKind::Memory
            && i.memory_displacement64() == 0
            && i.memory_index() == iced_x86::Register::None
            && let Some(&(_, arenas)) = loads.iter().find(|(r, _)| *r == i.memory_base())
        {
            return Some((arenas, maxarenas?));
        }
    }
    None
}

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

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The first 80 bytes of `_Py_GetAllocatedBlocks`, read from the files with
    /// `python3 -c "d=open(F,'rb').read(); print(d[OFF:OFF+0x50].hex())"`: Debian's
    /// `/usr/bin/python3.11` (3.11.2-6+deb12u6, at 0x6d0190, file offset 0x2d0190, no
    /// symbols for the statics) and pyenv's 3.11.7 libpython (at 0x1af280, = its file
    /// offset), whose `.symtab` has `arenas` 0x5b7a60 and `maxarenas` 0x5b7a58.
    #[test]
    fn allocated_blocks_code_gives_the_arena_table() {
        let debian = hex(
            "488b1509423b00448b0d7a443f004531c0488b3d80443f004539c10f84ef7fe1ff488b074885c00f84e77fe1ff4805ff3f0000488b7708482500c0ffffeb0b8b084805004000004801ca4839f072f0e9",
        );
        assert_eq!(
            table_from_code(&debian, 0x6d0190),
            Some((0xac4628, 0xac4618))
        );
        let pyenv = hex(
            "8b05d2874000488b159385400085c07458488b35c88740004c8d044049c1e0044901f0eb0c0f1f004883c6304939f07438488b064885c074ef4805ff3f0000488b7e08482500c0ffff4839f873da6690",
        );
        assert_eq!(
            table_from_code(&pyenv, 0x1af280),
            Some((0x5b7a60, 0x5b7a58))
        );
    }
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
