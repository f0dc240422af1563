//! The interpreter binary on disk: symbols, virtual-address ↔ file-offset translation and
//! the bytes of its code, read with the `object` crate (no process is run).
use anyhow::{Context, Result, anyhow};
use hashbrown::HashMap;
use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, read::elf::ElfFile64,
};
use std::path::{Path, PathBuf};

pub struct Binary {
    pub path: PathBuf,
    data: Vec<u8>,
    pub is_shared_object: bool,
    /// name → (vaddr, size), from `.dynsym` and (when not stripped) `.symtab`.
    symbols: HashMap<String, (u64, u64)>,
    /// (vaddr, memsz, file offset, filesz) of each PT_LOAD.
    segments: Vec<(u64, u64, u64, u64)>,
    /// Names that dynamic relocations of this file refer to.
    reloc_symbols: hashbrown::HashSet<String>,
    /// The GNU build id (hex), which names the file's separate debug file.
    build_id: Option<String>,
    /// The separate debug file whose `.symtab` was merged in (a stripped file's local
    /// symbols, e.g. pymalloc's file-static `arenas`).
    pub debug_file: Option<PathBuf>,
}

impl Binary {
    pub fn open(path: &Path) -> Result<Binary> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (is_shared_object, mut symbols, segments, reloc_symbols, build_id) = {
            let elf = ElfFile64::<object::Endianness>::parse(&*data)
                .map_err(|e| anyhow!("{} is not a 64-bit ELF file: {e}", path.display()))?;
            let is_shared_object = elf.kind() == object::ObjectKind::Dynamic;
            let mut symbols = HashMap::new();
            for sym in elf.dynamic_symbols().chain(elf.symbols()) {
                if sym.is_definition()
                    && let Ok(name) = sym.name()
                {
                    // `foo@@VERSION` in some tools; keep the plain name.
                    let name = name.split('@').next().unwrap_or(name);
                    symbols
                        .entry(name.to_string())
                        .or_insert((sym.address(), sym.size()));
                }
            }
            let segments = elf
                .segments()
                .map(|s| {
                    let (off, filesz) = s.file_range();
                    (s.address(), s.size(), off, filesz)
                })
                .collect();
            let mut reloc_symbols = hashbrown::HashSet::new();
            if let Some(relocs) = elf.dynamic_relocations() {
                for (_, reloc) in relocs {
                    if let object::RelocationTarget::Symbol(idx) = reloc.target()
                        && let Ok(sym) = elf.dynamic_symbol_table().unwrap().symbol_by_index(idx)
                        && let Ok(name) = sym.name()
                    {
                        reloc_symbols.insert(name.to_string());
                    }
                }
            }
            let build_id = elf
                .build_id()
                .ok()
                .flatten()
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>());
            let stripped = elf.section_by_name(".symtab").is_none();
            (
                is_shared_object,
                symbols,
                segments,
                reloc_symbols,
                (build_id, stripped),
            )
        };
        let (build_id, stripped) = build_id;
        // Only a stripped file (no `.symtab`) needs its debug file's symbols.
        let debug_file = build_id
            .as_deref()
            .filter(|_| stripped)
            .and_then(|id| merge_debug_symbols(&debug_file_candidates(path, id), id, &mut symbols));
        Ok(Binary {
            path: path.to_path_buf(),
            data,
            is_shared_object,
            symbols,
            segments,
            reloc_symbols,
            build_id,
            debug_file,
        })
    }

    pub fn build_id(&self) -> Option<&str> {
        self.build_id.as_deref()
    }

    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols.get(name).copied()
    }

    /// Symbols whose name is `name` or a compiler clone of it (`name.constprop.0`, …),
    /// never the `.cold` parts, which are not entry points.
    pub fn symbol_and_clones(&self, name: &str) -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = self
            .symbols
            .iter()
            .filter(|(n, _)| {
                n.as_str() == name
                    || (n.starts_with(name)
                        && n[name.len()..].starts_with('.')
                        && !n.contains(".cold"))
            })
            .map(|(n, &(a, s))| (n.clone(), a, s))
            .collect();
        out.sort();
        out
    }

    /// Calls to `name` inside this file are resolved at run time (a PLT/GOT relocation
    /// refers to it): the compiler treated it as interposable and never inlined it.
    pub fn relocates(&self, name: &str) -> bool {
        self.reloc_symbols.contains(name)
    }

    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.iter().find_map(|&(va, _, off, filesz)| {
            (vaddr >= va && vaddr < va + filesz).then(|| off + (vaddr - va))
        })
    }

    pub fn offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|&(va, _, off, filesz)| {
            (offset >= off && offset < off + filesz).then(|| va + (offset - off))
        })
    }

    /// The function symbol that starts at `vaddr` (the plain name over a clone's).
    pub fn symbol_at(&self, vaddr: u64) -> Option<(String, u64, u64)> {
        self.symbols
            .iter()
            .filter(|(_, (a, s))| *a == vaddr && *s > 0)
            .map(|(n, &(a, s))| (n.clone(), a, s))
            .min_by_key(|(n, _, _)| (n.contains('.'), n.len(), n.clone()))
    }

    /// The function whose extent holds `vaddr` (for labels).
    pub fn symbol_containing(&self, vaddr: u64) -> Option<(String, u64, u64)> {
        self.symbols
            .iter()
            .filter(|(_, (a, s))| *a <= vaddr && vaddr < a + s)
            .map(|(n, &(a, s))| (n.clone(), a, s))
            .min_by_key(|(n, _, _)| (n.contains('.'), n.len(), n.clone()))
    }

    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let off = self.vaddr_to_offset(vaddr)? as usize;
        self.data.get(off..off + len as usize)
    }

    /// Lowest PT_LOAD vaddr, page aligned: what a mapping at file offset 0 corresponds to.
    pub fn first_load_vaddr(&self) -> u64 {
        self.segments.iter().map(|s| s.0).min().unwrap_or(0) & !0xfff
    }

    /// A section's link-time address and bytes.
    pub fn section_at(&self, name: &str) -> Option<(u64, &[u8])> {
        let elf = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        let s = elf.section_by_name(name)?;
        let (off, size) = s.file_range()?;
        Some((
            s.address(),
            self.data.get(off as usize..(off + size) as usize)?,
        ))
    }

    pub fn section(&self, name: &str) -> Option<&[u8]> {
        let elf = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        let s = elf.section_by_name(name)?;
        let (off, size) = s.file_range()?;
        self.data.get(off as usize..(off + size) as usize)
    }

    /// `PY_VERSION_HEX` from the exported `Py_Version` (3.11+), else the `3.X.Y` string in
    /// `.rodata` (3.9/3.10; possibly tail-merged into a longer string), preferring the minor
    /// version the file name announces.
    pub fn python_version(&self, file_minor: Option<u32>) -> Option<(u32, u32, u32)> {
        if let Some((vaddr, _)) = self.symbol("Py_Version") {
            let b = self.bytes_at(vaddr, 4)?;
            let hex = u32::from_le_bytes(b.try_into().ok()?);
            return Some((hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff));
        }
        version_in_rodata(self.section(".rodata")?, file_minor)
    }
}

/// Where distributions install the debug file of a build id (`/usr/lib/debug/.build-id/ab/
/// cdef….debug`, as gdb looks it up): under the target's root when `path` is reached through
/// `/proc/<pid>/root`, then in ours.
fn debug_file_candidates(path: &Path, build_id: &str) -> Vec<PathBuf> {
    if build_id.len() < 3 {
        return vec![];
    }
    let rel = format!(
        "usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    );
    let mut out = vec![];
    let s = path.to_string_lossy();
    if let Some(rest) = s.strip_prefix("/proc/")
        && let Some((pid, _)) = rest.split_once("/root/")
    {
        out.push(PathBuf::from(format!("/proc/{pid}/root/{rel}")));
    }
    out.push(PathBuf::from(format!("/{rel}")));
    out
}

/// Adds the `.symtab` of the debug file of `build_id` (if one is installed and carries the
/// same build id) to `symbols`, keeping what the file itself defines. Returns its path.
fn merge_debug_symbols(
    candidates: &[PathBuf],
    build_id: &str,
    symbols: &mut HashMap<String, (u64, u64)>,
) -> Option<PathBuf> {
    candidates.iter().find_map(|p| {
        let data = std::fs::read(p).ok()?;
        let elf = ElfFile64::<object::Endianness>::parse(&*data).ok()?;
        let id = elf.build_id().ok()??;
        let hex: String = id.iter().map(|x| format!("{x:02x}")).collect();
        if hex != build_id {
            return None;
        }
        for sym in elf.symbols() {
            if sym.is_definition()
                && sym.address() != 0
                && let Ok(name) = sym.name()
            {
                let name = name.split('@').next().unwrap_or(name);
                symbols
                    .entry(name.to_string())
                    .or_insert((sym.address(), sym.size()));
            }
        }
        Some(p.clone())
    })
}

/// Finds `3.X.Y\0` strings; picks the most common one (matching `minor` when given).
pub fn version_in_rodata(rodata: &[u8], minor: Option<u32>) -> Option<(u32, u32, u32)> {
    let mut counts: HashMap<(u32, u32, u32), usize> = HashMap::new();
    let mut i = 0;
    while let Some(pos) = rodata[i..].windows(2).position(|w| w == b"3.") {
        let start = i + pos;
        i = start + 2;
        if start > 0 && (rodata[start - 1].is_ascii_digit() || rodata[start - 1] == b'.') {
            continue;
        }
        let rest = &rodata[start + 2..];
        let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
        let n1 = digits(rest);
        if n1 == 0 || n1 > 2 || rest.get(n1) != Some(&b'.') {
            continue;
        }
        let rest2 = &rest[n1 + 1..];
        let n2 = digits(rest2);
        if n2 == 0 || n2 > 2 || rest2.get(n2) != Some(&0) {
            continue;
        }
        let parse = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u32>().ok();
        let v = (3, parse(&rest[..n1])?, parse(&rest2[..n2])?);
        if minor.is_none_or(|m| m == v.1) {
            *counts.entry(v).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(v, c)| (c, v))
        .map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_files_by_build_id_in_the_target_root_then_ours() {
        let id = "571d98e01096d5c1c32420d229a6731a0a50d2a0";
        assert_eq!(
            debug_file_candidates(Path::new("/proc/42/root/usr/bin/python3.11"), id),
            [
                "/proc/42/root/usr/lib/debug/.build-id/57/1d98e01096d5c1c32420d229a6731a0a50d2a0.debug",
                "/usr/lib/debug/.build-id/57/1d98e01096d5c1c32420d229a6731a0a50d2a0.debug"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            debug_file_candidates(Path::new("/proc/42/map_files/1-2"), id).len(),
            1
        );
    }

    /// A stripped copy of pyenv's 3.11.7 libpython finds pymalloc's `arenas` in the debug
    /// file `objcopy --only-keep-debug` made, at the unstripped file's address; a debug file
    /// of another build is refused. Skipped where pyenv's 3.11.7 or objcopy is missing.
    #[test]
    fn stripped_file_symbols_come_from_its_debug_file() {
        let root = std::env::var("PYENV_ROOT")
            .unwrap_or_else(|_| format!("{}/.pyenv", std::env::var("HOME").unwrap_or_default()));
        let lib = PathBuf::from(format!("{root}/versions/3.11.7/lib/libpython3.11.so.1.0"));
        let dir = std::env::temp_dir().join(format!("leakscope-debuglink-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (stripped, debug) = (dir.join("lib.so"), dir.join("lib.debug"));
        let objcopy = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("objcopy")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !lib.exists()
            || !objcopy(&[
                "--only-keep-debug".as_ref(),
                lib.as_os_str(),
                debug.as_os_str(),
            ])
            || !objcopy(&[
                "--strip-all".as_ref(),
                lib.as_os_str(),
                stripped.as_os_str(),
            ])
        {
            eprintln!("skipped: no pyenv 3.11.7 or no objcopy");
            return;
        }
        let full = Binary::open(&lib).unwrap();
        let bare = Binary::open(&stripped).unwrap();
        assert!(
            bare.symbol("arenas").is_none(),
            "stripped: no local symbols"
        );
        let id = bare.build_id().unwrap().to_string();
        let mut symbols = bare.symbols.clone();
        assert_eq!(
            merge_debug_symbols(
                &[dir.join("missing.debug"), debug.clone()],
                &id,
                &mut symbols
            ),
            Some(debug.clone())
        );
        assert_eq!(symbols.get("arenas").copied(), full.symbol("arenas"));
        let mut symbols = bare.symbols.clone();
        assert_eq!(merge_debug_symbols(&[debug], "00ff", &mut symbols), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn version_tail_merged_into_a_path() {
        let rodata = b"\0/root/.pyenv/versions/3.9.18\0%.80s (%.80s)\0v13.2.1\0";
        assert_eq!(version_in_rodata(rodata, Some(9)), Some((3, 9, 18)));
    }

    #[test]
    fn version_ignores_other_minors_and_longer_numbers() {
        let rodata = b"\x003.2.0\0GLIBC_2.3.4\0x3.10.13\0";
        assert_eq!(version_in_rodata(rodata, Some(10)), Some((3, 10, 13)));
        assert_eq!(version_in_rodata(rodata, Some(11)), None);
    }
}
