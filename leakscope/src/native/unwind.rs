//! CFI unwinding of a native stack sample: the target's executable mappings ([`Modules`],
//! from `/proc/<pid>/maps`, each file loaded only when an address falls in it) and
//! [`Unwinder`], framehop over the mappings' `.eh_frame`/`.eh_frame_hdr`/`.debug_frame`.
//!
//! Nothing here reads the live target: stack reads outside the copied bytes fail, and the
//! walk stops there. Cost (release, this machine, the `unwind_cost` test): about 60–80 ns
//! per frame (0.7–1 µs for a 12-frame stack) once the rules for the addresses are in
//! framehop's 509-slot rule cache; a miss parses the FDE (gimli) for that address. Loading
//! a module is a one-time cost per file (its headers and CFI sections, not the whole file).
use crate::target::process::{Mapping, Process};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use hashbrown::HashMap;
use object::{Object, ObjectSection, ObjectSegment};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One stack sample from the uretprobe: registers and the stack bytes at `[sp, sp+len)`.
#[derive(Clone, Copy, Debug)]
pub struct NativeSample<'a> {
    /// A return address: the instruction after the call into the probed function.
    pub ip: u64,
    /// The caller's stack pointer (after the `ret`).
    pub sp: u64,
    pub bp: u64,
    /// The target's stack from `sp` upwards.
    pub stack: &'a [u8],
}

/// An executable, file-backed mapping of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    pub inode: u64,
    /// The path as the target sees it (what users are shown).
    pub path: String,
    /// The same file as a path valid in our namespace (`/proc/<pid>/root/...` or
    /// `/proc/<pid>/map_files/...`).
    pub file: PathBuf,
}

impl ExecMapping {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// The file offset of an address inside this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }

    fn same(&self, o: &ExecMapping) -> bool {
        self.start == o.start
            && self.end == o.end
            && self.offset == o.offset
            && self.inode == o.inode
    }
}

/// A miss (an address in no known mapping: a library dlopen'ed since) re-reads the maps at
/// most this often; the first miss always does.
const MISS_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The target's executable file-backed mappings, sorted by address. Re-read on a miss
/// (rate-limited) or on [`Modules::refresh`].
pub struct Modules {
    pid: u32,
    process: Option<Process>,
    maps: Vec<ExecMapping>,
    last_miss_refresh: Option<Instant>,
    /// Bumped whenever a refresh changed the set of mappings.
    generation: u64,
}

impl Modules {
    pub fn new(pid: u32) -> Modules {
        let mut m = Modules {
            pid,
            process: None,
            maps: Vec::new(),
            last_miss_refresh: None,
            generation: 0,
        };
        m.refresh();
        m
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mappings(&self) -> &[ExecMapping] {
        &self.maps
    }

    /// Changes whenever a refresh changed the set of mappings (for caches keyed by address).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Re-reads `/proc/<pid>/maps` now; false when it could not be read (the mappings are
    /// then kept as they were).
    pub fn refresh(&mut self) -> bool {
        if self.process.as_ref().is_none_or(|p| !p.alive()) {
            self.process = Process::open(self.pid).ok();
        }
        let Some(process) = &self.process else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) else {
            return false;
        };
        let maps = parse_exec_maps(&text, |m| process.file_of(m));
        if maps.len() != self.maps.len() || maps.iter().zip(&self.maps).any(|(a, b)| !a.same(b)) {
            self.generation += 1;
        }
        self.maps = maps;
        true
    }

    /// The mapping holding `addr`, without re-reading the maps.
    pub fn lookup(&self, addr: u64) -> Option<&ExecMapping> {
        let i = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[i];
        m.contains(addr).then_some(m)
    }

    /// The mapping holding `addr`; on a miss, re-reads the maps (at most once per
    /// [`MISS_REFRESH_EVERY`]) and looks again.
    pub fn find(&mut self, addr: u64) -> Option<&ExecMapping> {
        if self.lookup(addr).is_none() {
            let due = self
                .last_miss_refresh
                .is_none_or(|t| t.elapsed() >= MISS_REFRESH_EVERY);
            if !due {
                return None;
            }
            self.last_miss_refresh = Some(Instant::now());
            self.refresh();
        }
        self.lookup(addr)
    }
}

/// Executable file-backed mappings from a `/proc/<pid>/maps` text, sorted by start.
/// `file_of` turns one into a path valid for us.
fn parse_exec_maps(text: &str, file_of: impl Fn(&Mapping) -> PathBuf) -> Vec<ExecMapping> {
    let mut out: Vec<ExecMapping> = text
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let (s, e) = it.next()?.split_once('-')?;
            let perms = it.next()?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let inode: u64 = it.next()?.parse().ok()?;
            let path = it.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            let m = Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset,
                inode,
                path,
            };
            (m.start < m.end).then_some(())?;
            let file = file_of(&m);
            Some(ExecMapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                inode: m.inode,
                path: m.path,
                file,
            })
        })
        .collect();
    out.sort_by_key(|m| m.start);
    out
}

/// The unwind sections of one ELF file, and its loadable segments.
struct ElfUnwindData {
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Arc<[u8]>)>,
    eh_frame_hdr: Option<(Range<u64>, Arc<[u8]>)>,
    debug_frame: Option<Arc<[u8]>>,
    /// (vaddr, file offset, file size, executable) of each PT_LOAD.
    segments: Vec<(u64, u64, u64, bool)>,
}

impl ElfUnwindData {
    /// Reads only the headers and the CFI sections (not the whole file).
    fn load(path: &Path) -> Option<ElfUnwindData> {
        let file = std::fs::File::open(path).ok()?;
        let cache = object::ReadCache::new(file);
        let obj = object::File::parse(&cache).ok()?;
        if obj.architecture() != object::Architecture::X86_64 {
            return None;
        }
        let range = |name: &str| {
            let s = obj.section_by_name(name)?;
            Some(s.address()..s.address().checked_add(s.size())?)
        };
        let data = |name: &str| -> Option<(Range<u64>, Arc<[u8]>)> {
            let s = obj.section_by_name(name)?;
            let bytes = s.data().ok()?;
            (!bytes.is_empty()).then(|| {
                Some((
                    s.address()..s.address().checked_add(s.size())?,
                    bytes.into(),
                ))
            })?
        };
        // `.debug_frame` is used only if stored uncompressed (rare: it is usually in a
        // separate debug file, and `.eh_frame` is there anyway).
        let debug_frame = obj.section_by_name(".debug_frame").and_then(|s| {
            let c = s.compressed_file_range().ok()?;
            if c.format != object::CompressionFormat::None {
                return None;
            }
            let bytes = s.data().ok()?;
            (!bytes.is_empty()).then(|| Arc::<[u8]>::from(bytes))
        });
        let segments = obj
            .segments()
            .map(|seg| {
                let (off, size) = seg.file_range();
                let exec = match seg.flags() {
                    object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                    _ => false,
                };
                (seg.address(), off, size, exec)
            })
            .collect();
        Some(ElfUnwindData {
            text: range(".text"),
            got: range(".got"),
            eh_frame: data(".eh_frame"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame,
            segments,
        })
    }

    fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// The load bias of a mapping of this file: the address its vaddr 0 is at.
    fn bias(&self, m: &ExecMapping) -> Option<u64> {
        const PAGE: u64 = 4096;
        let covers = |&&(_, off, size, _): &&(u64, u64, u64, bool)| {
            off & !(PAGE - 1) <= m.offset && m.offset < off.saturating_add(size)
        };
        let seg = self
            .segments
            .iter()
            .filter(covers)
            .find(|s| s.3)
            .or_else(|| self.segments.iter().find(covers))?;
        let (vaddr, off, _, _) = *seg;
        // The mapping's start holds file offset `m.offset`, i.e. vaddr + (m.offset - off).
        let svma_at_start = vaddr.wrapping_add(m.offset).wrapping_sub(off);
        Some(m.start.wrapping_sub(svma_at_start))
    }

    fn framehop_module(&self, m: &ExecMapping, bias: u64) -> Module<Arc<[u8]>> {
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text.clone(),
            got_svma: self.got.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|e| e.0.clone()),
            eh_frame: self.eh_frame.as_ref().map(|e| e.1.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|e| e.0.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|e| e.1.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        };
        Module::new(m.path.clone(), m.start..m.end, bias, info)
    }
}

/// A mapping handed to framehop (or found unusable), keyed by its start.
struct Added {
    mapping: ExecMapping,
    usable: bool,
}

/// Unwinds [`NativeSample`]s of one process with CFI. Keep one per target: modules and
/// framehop's rule cache live across calls.
pub struct Unwinder {
    modules: Modules,
    seen_generation: u64,
    framehop: UnwinderX86_64<Arc<[u8]>>,
    cache: CacheX86_64,
    /// Parsed files by (path, inode); `None` when unreadable or not x86_64 ELF.
    files: HashMap<(String, u64), Option<Arc<ElfUnwindData>>>,
    added: HashMap<u64, Added>,
}

impl Unwinder {
    pub fn new(pid: u32) -> Unwinder {
        Unwinder::with_modules(Modules::new(pid))
    }

    pub fn with_modules(modules: Modules) -> Unwinder {
        Unwinder {
            seen_generation: modules.generation(),
            modules,
            framehop: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            files: HashMap::new(),
            added: HashMap::new(),
        }
    }

    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    pub fn modules_mut(&mut self) -> &mut Modules {
        &mut self.modules
    }

    /// Addresses innermost first, starting with `s.ip` (a return address: its CFI is looked
    /// up at `ip - 1`), then each caller's return address. Stops after `max` addresses,
    /// when unwinding fails, reaches the end of the stack or leaves the copied bytes, when a
    /// return address is in no executable mapping, or before the first address for which
    /// `stop` is true (not included). Never reads the target's memory; never panics on bad
    /// input.
    pub fn unwind(&mut self, s: &NativeSample, max: usize, stop: &dyn Fn(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        if max == 0 || s.ip == 0 || stop(s.ip) {
            return out;
        }
        out.push(s.ip);
        if !self.prepare(s.ip - 1) {
            return out;
        }
        let (base, stack) = (s.sp, s.stack);
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(base).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut regs = UnwindRegsX86_64::new(s.ip, s.sp, s.bp);
        let mut addr = s.ip;
        while out.len() < max {
            let Some(frame) = FrameAddress::from_return_address(addr) else {
                break;
            };
            let sp_before = regs.sp();
            let ra =
                match self
                    .framehop
                    .unwind_frame(frame, &mut regs, &mut self.cache, &mut read_stack)
                {
                    Ok(Some(ra)) => ra,
                    Ok(None) | Err(_) => break,
                };
            // A caller's frame is above its callee's; anything else is garbage.
            if regs.sp() <= sp_before || ra == 0 || stop(ra) || !self.prepare(ra - 1) {
                break;
            }
            out.push(ra);
            addr = ra;
        }
        out
    }

    /// Makes sure the module holding `lookup` is known to framehop; false when the address
    /// is in no executable mapping or its file has no usable CFI.
    fn prepare(&mut self, lookup: u64) -> bool {
        let Some(m) = self.modules.find(lookup).cloned() else {
            return false;
        };
        if self.modules.generation() != self.seen_generation {
            self.forget_stale();
        }
        if let Some(a) = self.added.get(&m.start) {
            return a.usable;
        }
        let data = self
            .files
            .entry((m.path.clone(), m.inode))
            .or_insert_with(|| ElfUnwindData::load(&m.file).map(Arc::new))
            .clone();
        let module = data
            .filter(|d| d.has_cfi())
            .and_then(|d| Some(d.framehop_module(&m, d.bias(&m)?)));
        let usable = module.is_some();
        if let Some(module) = module {
            self.framehop.add_module(module);
        }
        self.added.insert(m.start, Added { mapping: m, usable });
        usable
    }

    /// After the maps changed: drop the modules whose mapping is gone or replaced.
    fn forget_stale(&mut self) {
        self.seen_generation = self.modules.generation();
        let stale: Vec<u64> = self
            .added
            .iter()
            .filter(|(_, a)| {
                self.modules
                    .lookup(a.mapping.start)
                    .is_none_or(|now| !now.same(&a.mapping))
            })
            .map(|(&start, _)| start)
            .collect();
        for start in stale {
            if let Some(a) = self.added.remove(&start)
                && a.usable
            {
                self.framehop.remove_module(start);
            }
        }
        let live: hashbrown::HashSet<(&str, u64)> = self
            .modules
            .mappings()
            .iter()
            .map(|m| (m.path.as_str(), m.inode))
            .collect();
        self.files
            .retain(|(path, inode), _| live.contains(&(path.as_str(), *inode)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_maps_only_file_backed_executable() {
        let text = "\
7f0000001000-7f0000002000 r-xp 00001000 08:01 42 /usr/lib/lib a.so\n\
7f0000000000-7f0000001000 r--p 00000000 08:01 42 /usr/lib/lib a.so\n\
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0 [vdso]\n\
7e0000000000-7e0000001000 rwxp 00000000 00:00 0 \n\
garbage line\n\
7d0000002000-7d0000001000 r-xp 00000000 08:01 43 /backwards.so\n";
        let maps = parse_exec_maps(text, |m| PathBuf::from(format!("/x{}", m.path)));
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].path, "/usr/lib/lib a.so");
        assert_eq!(maps[0].file, PathBuf::from("/x/usr/lib/lib a.so"));
        assert_eq!(maps[0].file_offset(0x7f0000001010), 0x1010);
    }

    #[test]
    fn bias_of_a_pie_text_mapping() {
        let d = ElfUnwindData {
            text: None,
            got: None,
            eh_frame: None,
            eh_frame_hdr: None,
            debug_frame: None,
            // r--: [0, 0x1000) at 0; r-x: vaddr 0x1040 at offset 0x1040.
            segments: vec![(0, 0, 0x1000, false), (0x1040, 0x1040, 0x500, true)],
        };
        let m = ExecMapping {
            start: 0x5555_0000_1000,
            end: 0x5555_0000_2000,
            offset: 0x1000,
            inode: 1,
            path: "/a".into(),
            file: "/a".into(),
        };
        assert_eq!(d.bias(&m), Some(0x5555_0000_0000));
    }

    #[test]
    fn miss_refresh_is_rate_limited() {
        let mut m = Modules::new(std::process::id());
        assert!(!m.mappings().is_empty());
        assert!(m.find(1).is_none()); // first miss re-reads
        let t = m.last_miss_refresh;
        assert!(t.is_some());
        assert!(m.find(1).is_none()); // second does not
        assert_eq!(m.last_miss_refresh, t);
    }
}
