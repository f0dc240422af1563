//! Native addresses → function, library, file:line, with blazesym over the mapped files
//! (opened through `/proc/<pid>/root` or `map_files`, so containers work), cached by address.
//!
//! Every address is taken as a return address (what [`super::Unwinder`] yields, the
//! uretprobe's `ip` included): the lookup is at `addr - 1`, the call instruction, so the
//! line is the call's, not the next statement's.
//!
//! Cost (release, this machine, the `symbolize_cost` test): a cached address is a hash
//! lookup and a clone (~40 ns); a new address in an already opened file 5–10 µs; the first
//! address in a file pays once for its symbols (0.3 ms for the 10 MB test executable) and
//! DWARF (~35 ms for libc with its build-id debug file installed).
use super::unwind::{ExecMapping, Modules};
use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use hashbrown::HashMap;
use std::path::PathBuf;

/// One symbolized native frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NativeFrame {
    pub addr: u64,
    /// Demangled (C++, Rust). Without a symbol: `?? (libfoo.so+0x1234)`, the offset being
    /// the address's offset in the file; in no mapping: `?? (0x7f…)`.
    pub function: String,
    /// The file as the target sees it; empty when the address is in no mapping.
    pub library: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Functions the compiler inlined into `function` at this address, innermost first,
    /// each with its own file and line (DWARF's inline records); `file`/`line` above are
    /// then the outermost inlined call's.
    pub inlined: Vec<InlinedFrame>,
}

/// A function inlined at an address, and where in it the address is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InlinedFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Above this many cached addresses the cache starts over (a bound, not a tuning knob).
const CACHE_MAX: usize = 1 << 20;

/// Symbolizes addresses of one process. Not `Send` (blazesym's caches are `Rc`-based).
pub struct NativeSymbolizer {
    modules: Modules,
    seen_generation: u64,
    blaze: Symbolizer,
    cache: HashMap<u64, NativeFrame>,
}

impl NativeSymbolizer {
    pub fn new(pid: u32) -> NativeSymbolizer {
        NativeSymbolizer::with_modules(Modules::new(pid))
    }

    pub fn with_modules(modules: Modules) -> NativeSymbolizer {
        // Debug files (debug links, build ids) in the target's root first, then ours.
        let pid = modules.pid();
        let debug_dirs = [
            PathBuf::from(format!("/proc/{pid}/root/usr/lib/debug")),
            PathBuf::from(format!("/proc/{pid}/root/lib/debug")),
            PathBuf::from("/usr/lib/debug"),
            PathBuf::from("/lib/debug"),
        ];
        let blaze = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .set_debug_dirs(Some(debug_dirs))
            .build();
        NativeSymbolizer {
            seen_generation: modules.generation(),
            modules,
            blaze,
            cache: HashMap::new(),
        }
    }

    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    /// The frame of one (return) address.
    pub fn symbolize(&mut self, addr: u64) -> NativeFrame {
        if let Some(f) = self.cache.get(&addr) {
            return f.clone();
        }
        let lookup = addr.saturating_sub(1);
        let Some(m) = self.modules.find(lookup).cloned() else {
            // Not cached: a library mapped later may cover it.
            return NativeFrame {
                addr,
                function: format!("?? ({addr:#x})"),
                library: String::new(),
                file: None,
                line: None,
                inlined: vec![],
            };
        };
        if self.modules.generation() != self.seen_generation {
            self.seen_generation = self.modules.generation();
            self.cache.clear();
        }
        let frame = self.resolve(addr, lookup, &m);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(addr, frame.clone());
        frame
    }

    pub fn symbolize_all(&mut self, addrs: &[u64]) -> Vec<NativeFrame> {
        addrs.iter().map(|&a| self.symbolize(a)).collect()
    }

    fn resolve(&self, addr: u64, lookup: u64, m: &ExecMapping) -> NativeFrame {
        let src = Source::Elf(Elf::new(m.file.clone()));
        let sym = match self
            .blaze
            .symbolize_single(&src, Input::FileOffset(m.file_offset(lookup)))
        {
            Ok(Symbolized::Sym(sym)) => Some(sym),
            Ok(_) | Err(_) => None,
        };
        let Some(sym) = sym else {
            let base = m.path.rsplit('/').next().unwrap_or(&m.path);
            return NativeFrame {
                addr,
                function: format!("?? ({base}+{:#x})", m.file_offset(addr)),
                library: m.path.clone(),
                file: None,
                line: None,
                inlined: vec![],
            };
        };
        // With inline info on, `code_info` is the location in the outermost function (the
        // symbol's): the call site of the first inlined callee, or the address's own line.
        // Each inlined function's is the location in it (blazesym 0.2.7
        // `dwarf/resolver.rs`, which moves each call site up by one layer), outermost
        // first.
        let (file, line) = match sym.code_info.as_deref() {
            Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
            None => (None, None),
        };
        let inlined = sym
            .inlined
            .iter()
            .rev()
            .map(|f| InlinedFrame {
                function: f.name.to_string(),
                file: f
                    .code_info
                    .as_ref()
                    .map(|ci| ci.to_path().display().to_string()),
                line: f.code_info.as_ref().and_then(|ci| ci.line),
            })
            .collect();
        NativeFrame {
            addr,
            function: sym.name.into_owned(),
            library: m.path.clone(),
            file,
            line,
            inlined,
        }
    }
}
