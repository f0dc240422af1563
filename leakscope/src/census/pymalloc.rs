//! The allocator census: live blocks of pymalloc's arenas, read from the target's memory
//! with no probe, per size class and, where a block holds a validated object, per type. It
//! sees what the GC lists cannot: `str`, `bytes`, `int`, `float`, untracked containers and
//! objects of C types without GC, as long as they are at most 512 bytes (larger ones come
//! from `malloc` and are not in any arena).
//!
//! A walk reads the arena table (3.9–3.11: the file-statics `arenas`/`maxarenas`; 3.12+: each
//! interpreter's obmalloc state, `cpython::obmalloc`), then every pool ever carved from a
//! used arena, each pool in one read. A pool is used when its `ref.count` is not zero; its
//! live blocks are those below `nextoffset` that are not on its `freeblock` list. The
//! header and the free list must agree (count = blocks handed out − free ones, every free
//! link inside the pool on a block boundary); a pool that does not (the target wrote it
//! while we read) is read once more, and counted as torn if it still does not.
//!
//! A live block holds an object when, at one of the offsets an object can start at (0, after
//! a `PyGC_Head`, after the managed pre-header too), the refcount is plausible (1 to 2³²−1:
//! objects parked on CPython's own free lists have 0) and the word at +8 is a type object
//! (its type is `type` or a metatype, and the resolver reads it) whose pre-header is that
//! offset. Everything else is counted as unclassified, never dropped. Read-only and bounded.
use super::walker::Counts;
use crate::cpython::{self, GcLayout, Version, obmalloc};
use crate::resolve::types::Resolver;
use crate::target::Mem;
use anyhow::{Context, Result};
use hashbrown::HashMap;

/// Most arena-table entries read per table (64 GiB of 1 MiB arenas).
pub const MAX_ARENAS: u64 = 1 << 16;
/// Most pools one walk reads before it stops (and says so): 16 GiB of 16 KiB pools.
pub const MAX_POOLS: u64 = 1 << 20;
const MAX_INTERPRETERS: usize = 64;
/// Type pointers remembered per walk; past this, misses are not cached (still correct).
const MAX_TYPE_CACHE: usize = 1 << 20;

fn word(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}
fn word32(buf: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as u64
}

/// Where the arena tables are.
#[derive(Clone, Debug)]
enum Tables {
    /// Addresses of the `arenas` pointer and of `maxarenas` (3.9–3.11).
    Static { arenas: u64, maxarenas: u64 },
    /// Every interpreter's obmalloc state (3.12+), found through the interpreter list.
    Interpreters { runtime: u64, gc: GcLayout },
}

/// What an allocator census reads. `Send`: the trace session walks on its own thread.
#[derive(Clone)]
pub struct Allocator {
    mem: Mem,
    version: Version,
    layout: obmalloc::Layout,
    tables: Tables,
    type_type: u64,
    max_pools: u64,
}

const _: () = {
    const fn send<T: Send>() {}
    send::<Allocator>();
};

/// One size class: pools in use, live blocks and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SizeClass {
    /// Block size (`(szidx + 1) * 16`).
    pub size: u64,
    pub pools: u64,
    pub blocks: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AllocatorStats {
    /// Arena tables read (one per interpreter with its own allocator, 3.12+; else one).
    pub tables: u64,
    /// Arena tables that could not be read.
    pub unreadable_tables: u64,
    /// Arenas in use.
    pub arenas: u64,
    /// Arena-table entries in use whose fields made no sense (read while changing): skipped.
    pub bad_arenas: u64,
    /// Pools in use, read and consistent.
    pub pools: u64,
    /// Pools carved but empty (on an arena's free-pool list).
    pub empty_pools: u64,
    /// Pools that could not be read.
    pub unreadable_pools: u64,
    /// Pools whose header and free list disagreed twice: their blocks are not counted.
    pub torn_pools: u64,
    /// `ref.count` of the torn pools (blocks not counted).
    pub torn_blocks: u64,
    /// Live blocks in consistent pools, and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Live blocks holding a validated object.
    pub objects: u64,
    /// Live blocks holding no object we could validate (buffers: list items, dict tables,
    /// str data of big strings' owners…, or an object whose type did not validate).
    pub unclassified_blocks: u64,
    pub unclassified_bytes: u64,
    /// The walk reached MAX_POOLS.
    pub bounded: bool,
}

pub struct AllocatorCensus {
    /// Indexed by size class (`szidx`), all `obmalloc::SIZE_CLASSES` of them.
    pub classes: Vec<SizeClass>,
    /// Objects and bytes (block sizes) per type pointer.
    pub types: Counts,
    pub stats: AllocatorStats,
}

impl Allocator {
    /// Where this build keeps its arena table. Fails in one line when it cannot be found
    /// (3.9–3.11 need the `arenas` symbol: an unstripped build or its debug file).
    pub fn of(
        process: &crate::target::Process,
        interp: &crate::target::interpreter::Interpreter,
    ) -> Result<Allocator> {
        let layout = obmalloc::layout(interp.version)
            .with_context(|| format!("no pymalloc layout for Python {}", interp.version))?;
        let tables = match layout.table {
            obmalloc::TablePlace::Static => {
                // By symbol; a stripped build's from the code that walks the table.
                let from_code = || {
                    let (vaddr, size) = interp.binary.symbol(obmalloc::ALLOCATED_BLOCKS_FN)?;
                    let code = interp.binary.bytes_at(vaddr, size.max(16))?;
                    let (a, m) = obmalloc::table_from_code(code, vaddr)?;
                    Some((a + interp.bias, m + interp.bias))
                };
                let (arenas, maxarenas) = match (
                    interp.runtime_addr(obmalloc::ARENAS_SYMBOL),
                    interp.runtime_addr(obmalloc::MAXARENAS_SYMBOL),
                ) {
                    (Some(a), Some(m)) => (a, m),
                    _ => from_code().with_context(|| {
                        format!(
                            "pymalloc's arena table is not in the symbols of {} (the file-static \
                             `arenas` of Objects/obmalloc.c), nor found in {}'s code; a stripped \
                             build: {}",
                            interp.target_path,
                            obmalloc::ALLOCATED_BLOCKS_FN,
                            match interp.binary.build_id() {
                                Some(id) => format!(
                                    "install the debug file with build id {id}, e.g. from the \
                                     distribution's -dbg package for exactly this build"
                                ),
                                None => "no build id to find a debug file by".into(),
                            }
                        )
                    })?,
                };
                Tables::Static { arenas, maxarenas }
            }
            obmalloc::TablePlace::Interpreter { .. } => Tables::Interpreters {
                runtime: interp
                    .runtime_addr("_PyRuntime")
                    .context("_PyRuntime not found")?,
                gc: cpython::gc_layout_from(interp.version, interp.binary.section(".PyRuntime"))
                    .map_err(anyhow::Error::msg)?,
            },
        };
        Ok(Allocator {
            mem: process.memory(),
            version: interp.version,
            layout,
            tables,
            type_type: interp
                .runtime_addr("PyType_Type")
                .context("PyType_Type not found")?,
            max_pools: MAX_POOLS,
        })
    }

    /// `(arenas, maxarenas)` of every arena table, distinct and non-null.
    fn tables(&self, stats: &mut AllocatorStats) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = vec![];
        let mut add = |arenas: Option<u64>, max: Option<u64>, stats: &mut AllocatorStats| {
            match (arenas, max) {
                (Some(0), _) => {} // an interpreter sharing the main allocator (3.12)
                (Some(a), Some(m)) => {
                    if !out.iter().any(|&(x, _)| x == a) {
                        out.push((a, m));
                    }
                }
                _ => stats.unreadable_tables += 1,
            }
        };
        let u32_at = |addr: u64| {
            let mut b = [0u8; 4];
            self.mem
                .read(addr, &mut b)
                .ok()
                .map(|_| u32::from_le_bytes(b) as u64)
        };
        match &self.tables {
            Tables::Static { arenas, maxarenas } => {
                add(self.mem.u64(*arenas).ok(), u32_at(*maxarenas), stats)
            }
            Tables::Interpreters { runtime, gc } => {
                let obmalloc::TablePlace::Interpreter { state, pointer } = self.layout.table else {
                    unreachable!("Interpreters tables come from an Interpreter place")
                };
                let mut seen = vec![];
                let mut interp = self.mem.u64(runtime + gc.interpreters_head).unwrap_or(0);
                while interp != 0 && !seen.contains(&interp) && seen.len() < MAX_INTERPRETERS {
                    seen.push(interp);
                    let st = if pointer {
                        self.mem.u64(interp + state).ok()
                    } else {
                        Some(interp + state)
                    };
                    match st {
                        Some(0) => {}
                        Some(st) => {
                            let mgmt = st + obmalloc::MGMT;
                            add(
                                self.mem.u64(mgmt + obmalloc::MGMT_ARENAS).ok(),
                                u32_at(mgmt + obmalloc::MGMT_MAXARENAS),
                                stats,
                            )
                        }
                        None => stats.unreadable_tables += 1,
                    }
                    interp = self.mem.u64(interp + gc.interp_next).unwrap_or(0);
                }
            }
        }
        out
    }

    /// Used arenas of every table, per table: `(arena index, address, first pool, end of
    /// the carved pools)`.
    fn arenas(&self, stats: &mut AllocatorStats) -> Vec<Vec<(u64, u64, u64, u64)>> {
        let l = &self.layout;
        let mut out = vec![];
        for (table, max) in self.tables(stats) {
            let n = max.min(MAX_ARENAS);
            if max > MAX_ARENAS {
                stats.bounded = true;
            }
            let mut buf = vec![0u8; n as usize * obmalloc::arena::SIZE];
            if self.mem.read(table, &mut buf).is_err() {
                stats.unreadable_tables += 1;
                continue;
            }
            stats.tables += 1;
            let mut arenas = vec![];
            for (i, e) in buf.chunks_exact(obmalloc::arena::SIZE).enumerate() {
                let address = word(e, obmalloc::arena::ADDRESS);
                if address == 0 {
                    continue;
                }
                let carved = word(e, obmalloc::arena::POOL_ADDRESS);
                let total = word32(e, obmalloc::arena::NTOTALPOOLS);
                let first = address.next_multiple_of(l.pool_size);
                let ok = address.is_multiple_of(4096)
                    && (first..=address + l.arena_size).contains(&carved)
                    && (carved - first).is_multiple_of(l.pool_size)
                    && total <= l.pools_per_arena()
                    && word32(e, obmalloc::arena::NFREEPOOLS) <= total;
                if ok {
                    stats.arenas += 1;
                    arenas.push((i as u64, address, first, carved));
                } else {
                    stats.bad_arenas += 1;
                }
            }
            out.push(arenas);
        }
        out
    }

    /// One census of the allocator.
    pub fn walk(&self, resolver: &mut Resolver) -> AllocatorCensus {
        self.walk_into(resolver, None)
    }

    /// `walk`, also returning (object, type) of every block that holds an object.
    pub fn walk_objects(&self, resolver: &mut Resolver) -> (AllocatorCensus, Vec<(u64, u64)>) {
        let mut objects = vec![];
        let census = self.walk_into(resolver, Some(&mut objects));
        (census, objects)
    }

    fn walk_into(
        &self,
        resolver: &mut Resolver,
        mut objects: Option<&mut Vec<(u64, u64)>>,
    ) -> AllocatorCensus {
        let l = self.layout;
        let mut census = AllocatorCensus {
            classes: (0..obmalloc::SIZE_CLASSES as u32)
                .map(|i| SizeClass {
                    size: obmalloc::block_size(i),
                    ..Default::default()
                })
                .collect(),
            types: HashMap::new(),
            stats: AllocatorStats::default(),
        };
        let tables = self.arenas(&mut census.stats);
        // Arena ranges, sorted: a type object is never inside one (type objects are larger
        // than any pymalloc block), so a candidate type pointer there is rejected unread.
        let mut ranges: Vec<(u64, u64)> = tables
            .iter()
            .flatten()
            .map(|&(_, address, _, _)| (address, address + l.arena_size))
            .collect();
        ranges.sort_unstable();
        let mut types = TypeCheck {
            mem: &self.mem,
            type_type: self.type_type,
            version: self.version,
            arenas: ranges,
            valid: HashMap::new(),
            resolver,
        };
        let mut buf = vec![0u8; l.pool_size as usize];
        let mut read = 0u64;
        'tables: for arenas in &tables {
            for &(index, _, first, carved) in arenas {
                for p in (first..carved).step_by(l.pool_size as usize) {
                    if read >= self.max_pools {
                        census.stats.bounded = true;
                        break 'tables;
                    }
                    read += 1;
                    let mut pool = None;
                    let mut count = 0;
                    for _attempt in 0..2 {
                        if self.mem.read(p, &mut buf).is_err() {
                            break;
                        }
                        count = word32(&buf, obmalloc::pool::COUNT);
                        pool = Some(parse_pool(&buf, p, index, &l));
                        if matches!(pool, Some(Ok(_))) {
                            break;
                        }
                    }
                    match pool {
                        None => census.stats.unreadable_pools += 1,
                        Some(Err(Torn)) => {
                            census.stats.torn_pools += 1;
                            census.stats.torn_blocks += count;
                        }
                        Some(Ok(None)) => census.stats.empty_pools += 1,
                        Some(Ok(Some(live))) => self.count_pool(
                            &buf,
                            p,
                            &live,
                            &mut types,
                            &mut census,
                            objects.as_deref_mut(),
                        ),
                    }
                }
            }
        }
        census
    }

    fn count_pool(
        &self,
        buf: &[u8],
        pool: u64,
        live: &Live,
        types: &mut TypeCheck,
        census: &mut AllocatorCensus,
        mut objects: Option<&mut Vec<(u64, u64)>>,
    ) {
        let size = obmalloc::block_size(live.szidx);
        let class = &mut census.classes[live.szidx as usize];
        class.pools += 1;
        census.stats.pools += 1;
        for (i, &free) in live.free.iter().enumerate() {
            if free {
                continue;
            }
            class.blocks += 1;
            class.bytes += size;
            census.stats.blocks += 1;
            census.stats.bytes += size;
            let at = (obmalloc::pool::OVERHEAD + i as u64 * size) as usize;
            match types.object_in(&buf[at..at + size as usize]) {
                Some(t) => {
                    census.stats.objects += 1;
                    if let Some(o) = objects.as_deref_mut() {
                        let pre = types
                            .type_flags(t)
                            .map_or(0, |f| cpython::preheader_size(self.version, f));
                        o.push((pool + at as u64 + pre, t));
                    }
                    let e = census.types.entry(t).or_default();
                    e.0 += 1;
                    e.1 += size;
                }
                None => {
                    census.stats.unclassified_blocks += 1;
                    census.stats.unclassified_bytes += size;
                }
            }
        }
    }
}

#[cfg(test)]
impl Allocator {
    /// An allocator over memory a test built: a 3.9–3.11 static table at `arenas` /
    /// `maxarenas`, or (3.12+) the interpreters of `runtime`.
    pub(crate) fn fake(
        mem: Mem,
        version: Version,
        statics: Option<(u64, u64)>,
        runtime: u64,
        type_type: u64,
    ) -> Allocator {
        Allocator {
            mem,
            version,
            layout: obmalloc::layout(version).unwrap(),
            tables: match statics {
                Some((arenas, maxarenas)) => Tables::Static { arenas, maxarenas },
                None => Tables::Interpreters {
                    runtime,
                    gc: cpython::gc_layout(version).unwrap(),
                },
            },
            type_type,
            max_pools: MAX_POOLS,
        }
    }

    pub(crate) fn with_max_pools(mut self, n: u64) -> Allocator {
        self.max_pools = n;
        self
    }
}

/// A pool's header and free list disagree.
#[derive(Debug, PartialEq, Eq)]
struct Torn;

/// A used pool's live blocks: `free[i]` for block `i` of those handed out.
#[derive(Debug)]
struct Live {
    szidx: u32,
    free: Vec<bool>,
}

/// Reads a pool: `Ok(None)` for an empty one, its live blocks for a used one, `Torn` when its
/// header and free list do not agree (see the module doc).
fn parse_pool(
    buf: &[u8],
    addr: u64,
    arena_index: u64,
    l: &obmalloc::Layout,
) -> Result<Option<Live>, Torn> {
    use obmalloc::pool;
    let count = word32(buf, pool::COUNT);
    if count == 0 {
        return Ok(None);
    }
    let szidx = word32(buf, pool::SZIDX);
    if szidx >= obmalloc::SIZE_CLASSES as u64 || word32(buf, pool::ARENAINDEX) != arena_index {
        return Err(Torn);
    }
    let size = obmalloc::block_size(szidx as u32);
    let next = word32(buf, pool::NEXTOFFSET);
    let handed = (next.checked_sub(pool::OVERHEAD).ok_or(Torn)?) / size;
    if word32(buf, pool::MAXNEXTOFFSET) != l.pool_size - size
        || next > l.pool_size
        || !(next - pool::OVERHEAD).is_multiple_of(size)
        || handed > l.capacity(size)
        || count > handed
    {
        return Err(Torn);
    }
    let mut free = vec![false; handed as usize];
    let mut f = word(buf, pool::FREEBLOCK);
    let mut nfree = 0;
    while f != 0 {
        let off = f.checked_sub(addr + pool::OVERHEAD).ok_or(Torn)?;
        let i = off / size;
        if !off.is_multiple_of(size) || i >= handed || free[i as usize] {
            return Err(Torn);
        }
        free[i as usize] = true;
        nfree += 1;
        f = word(buf, (pool::OVERHEAD + off) as usize);
    }
    if handed - nfree != count {
        return Err(Torn);
    }
    Ok(Some(Live {
        szidx: szidx as u32,
        free,
    }))
}

/// Type validation for one walk (cached by pointer).
struct TypeCheck<'a> {
    mem: &'a Mem,
    type_type: u64,
    version: Version,
    /// Sorted arena ranges.
    arenas: Vec<(u64, u64)>,
    valid: HashMap<u64, Option<u64>>,
    resolver: &'a mut Resolver,
}

impl TypeCheck<'_> {
    /// The type of the object this block holds, if one validates.
    fn object_in(&mut self, block: &[u8]) -> Option<u64> {
        let version = self.version;
        cpython::object_in_block(block, version, &mut |t| self.type_flags(t)).map(|(_, t)| t)
    }

    /// `tp_flags` of `t` if it is a type object: its own type is `type` or a metatype, and
    /// the resolver reads it (as `census::Walker` checks types).
    fn type_flags(&mut self, t: u64) -> Option<u64> {
        if t == 0 || !t.is_multiple_of(8) || t >= 1 << 47 || self.in_arena(t) {
            return None;
        }
        if let Some(&v) = self.valid.get(&t) {
            return v;
        }
        let v = (|| {
            let meta = self.mem.u64(t + cpython::OB_TYPE).ok()?;
            let meta_ok = meta == self.type_type
                || (self.mem.u64(meta + cpython::OB_TYPE).ok()? == self.type_type
                    && self.mem.u64(meta + cpython::TP_FLAGS).ok()?
                        & cpython::TPFLAGS_TYPE_SUBCLASS
                        != 0);
            if !meta_ok {
                return None;
            }
            self.resolver.get(t).map(|i| i.flags)
        })();
        if self.valid.len() < MAX_TYPE_CACHE || v.is_some() {
            self.valid.insert(t, v);
        }
        v
    }

    fn in_arena(&self, a: u64) -> bool {
        let i = self.arenas.partition_point(|&(s, _)| s <= a);
        i > 0 && a < self.arenas[i - 1].1
    }
}

/// Size classes across snapshots: each class's change since the last and the first. Pure.
#[derive(Default)]
pub struct ClassSeries {
    first: Option<Vec<SizeClass>>,
    last: Option<Vec<SizeClass>>,
}

/// One size class in a report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClassRow {
    pub size: u64,
    pub pools: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub delta_last: i64,
    pub delta_first: i64,
}

impl ClassSeries {
    /// Rows for the classes in use now or at the last snapshot, smallest first.
    pub fn add(&mut self, classes: &[SizeClass]) -> Vec<ClassRow> {
        let blocks = |s: &Option<Vec<SizeClass>>, i: usize| {
            s.as_ref().and_then(|v| v.get(i)).map(|c| c.blocks as i64)
        };
        let rows = classes
            .iter()
            .enumerate()
            .filter(|&(i, c)| c.blocks > 0 || blocks(&self.last, i).is_some_and(|b| b > 0))
            .map(|(i, c)| ClassRow {
                size: c.size,
                pools: c.pools,
                blocks: c.blocks,
                bytes: c.bytes,
                delta_last: c.blocks as i64 - blocks(&self.last, i).unwrap_or(c.blocks as i64),
                delta_first: c.blocks as i64 - blocks(&self.first, i).unwrap_or(c.blocks as i64),
            })
            .collect();
        if self.first.is_none() {
            self.first = Some(classes.to_vec());
        }
        self.last = Some(classes.to_vec());
        rows
    }
}

#[cfg(test)]
#[path = "pymalloc_tests.rs"]
mod tests;
