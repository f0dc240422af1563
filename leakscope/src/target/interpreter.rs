//! Finding the CPython interpreter inside a target: the mapped `libpython3.X.so`, or for
//! static builds the executable itself; its version read from the file, never by running
//! anything; and where it is loaded.
use crate::cpython::{self, Version};
use crate::target::elf::Binary;
use crate::target::process::{Mapping, Process};
use anyhow::{Result, bail};

pub struct Interpreter {
    /// The file as the target names it (inside its root).
    pub target_path: String,
    /// The file as its mappings show it to us (`Mapping::path`).
    pub mapped_path: String,
    pub binary: Binary,
    pub version: Version,
    /// Runtime address = file vaddr + bias.
    pub bias: u64,
    /// Address ranges the file is mapped at (its static data lives there).
    pub ranges: Vec<(u64, u64)>,
}

fn is_libpython(path: &str) -> Option<Option<u32>> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("libpython3.")?;
    if !name.contains(".so") {
        return None;
    }
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some(minor.parse().ok())
}

fn minor_from_exe_name(path: &str) -> Option<u32> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("python3.")?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

impl Interpreter {
    /// Where a symbol of the interpreter file lives in the target.
    pub fn runtime_addr(&self, name: &str) -> Option<u64> {
        self.binary.symbol(name).map(|(vaddr, _)| vaddr + self.bias)
    }

    pub fn find(process: &Process) -> Result<Interpreter> {
        let maps = process.maps()?;
        // One mapping per file (the one at file offset 0).
        let files: Vec<&Mapping> = maps
            .iter()
            .filter(|m| m.path.starts_with('/') && m.offset == 0)
            .collect();
        // A shared libpython wins; otherwise a mapped executable that carries `_PyRuntime`.
        let mut chosen = None;
        if let Some(lib) = files.iter().find(|m| is_libpython(&m.path).is_some()) {
            chosen = Some((*lib, is_libpython(&lib.path).flatten()));
        } else {
            for m in files.iter().filter(|m| !m.path.contains(".so")) {
                if let Ok(bin) = Binary::open(&process.file_of(m))
                    && (bin.symbol("_PyRuntime").is_some() || bin.section(".PyRuntime").is_some())
                {
                    chosen = Some((*m, minor_from_exe_name(&m.path)));
                    break;
                }
            }
        }
        let Some((mapping, file_minor)) = chosen else {
            bail!(
                "process {} ({}) is not running CPython: no libpython3.X.so and no executable \
                 with _PyRuntime in its memory maps",
                process.pid,
                process.comm
            );
        };
        let mapped_path = mapping.path.clone();
        let target_path = process.as_target_sees(&mapped_path);
        let binary = Binary::open(&process.file_of(mapping))?;
        let Some((major, minor, patch)) = binary.python_version(file_minor) else {
            bail!("cannot tell the Python version of {target_path}");
        };
        let version = Version {
            major,
            minor,
            patch,
        };
        if !version.is_supported() {
            bail!(
                "process {} runs Python {version}, which leakscope does not support (supported: {})",
                process.pid,
                cpython::SUPPORTED
            );
        }
        // 3.13t/3.14t: another object header, no GIL, mimalloc heaps (nothing here fits).
        if cpython::debug_offsets::is_free_threaded(version, binary.section(".PyRuntime")) {
            bail!(
                "process {}: {}",
                process.pid,
                cpython::debug_offsets::free_threaded(version)
            );
        }
        let mine: Vec<&Mapping> = maps.iter().filter(|m| m.path == mapped_path).collect();
        let base = mapping.start;
        let bias = if binary.is_shared_object {
            base - binary.first_load_vaddr()
        } else {
            0
        };
        let ranges = mine.iter().map(|m| (m.start, m.end)).collect();
        Ok(Interpreter {
            target_path,
            mapped_path,
            binary,
            version,
            bias,
            ranges,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpython_names() {
        assert_eq!(
            is_libpython("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"),
            Some(Some(11))
        );
        assert_eq!(is_libpython("/opt/lib/libpython3.9.so"), Some(Some(9)));
        assert_eq!(is_libpython("/usr/lib/libpython3.11.a"), None);
        assert_eq!(is_libpython("/usr/bin/python3.11"), None);
        assert_eq!(minor_from_exe_name("/usr/bin/python3.11"), Some(11));
        assert_eq!(minor_from_exe_name("/usr/bin/python3"), None);
    }
}
