//! Native stacks: the C frames (C extensions, libraries) under an allocation that the BPF
//! side caught at a uretprobe on libc `malloc` and friends, as registers plus a copy of the
//! user stack. Pure user space: nothing here reads the live target's memory, only its
//! `/proc/<pid>/maps` and its files (through `/proc/<pid>/root` or `map_files`).
//!
//! - [`unwind`]: the target's executable mappings ([`Modules`]) and the CFI unwinder
//!   ([`Unwinder`]): return addresses from a [`NativeSample`].
//! - [`symbolize`]: addresses → function, library, file:line ([`NativeSymbolizer`]).
//!
//! Crates. Unwinding is `framehop` (samply's unwinder): it unwinds from saved registers and
//! stack bytes with `.eh_frame`/`.eh_frame_hdr`/`.debug_frame` CFI through gimli, caches
//! rules per address and only recovers rip/rsp/rbp, which is what a per-event unwinder
//! needs; the sections it is given are read with `object` (lazily, through a `ReadCache`).
//! Symbolization is `blazesym` (libbpf's symbolizer, made for BPF tools): it reads `.symtab`
//! and `.dynsym`, DWARF line tables and inline info, debug links and build-id debug files,
//! compressed debug sections, and demangles C++ and Rust, all maintained in one place,
//! where `addr2line` would have left symbol tables, debug links and demangling to us.
pub mod symbolize;
pub mod unwind;

pub use symbolize::{NativeFrame, NativeSymbolizer};
pub use unwind::{ExecMapping, Modules, NativeSample, Unwinder};

#[cfg(test)]
mod tests {
    //! Real unwinds of this test process: a naked function plays the probed `malloc` and
    //! records what the uretprobe would see (the return address, the stack pointer after the
    //! `ret`, rbp) and a copy of the stack from there, while its callers' frames are live.
    use super::*;
    use std::cell::RefCell;
    use std::hint::black_box;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    const STACK_BYTES: usize = 4096;

    /// `ip`, `sp`, `bp` at offsets 0, 8, 16 (written by `capture`).
    #[repr(C)]
    struct Captured {
        ip: u64,
        sp: u64,
        bp: u64,
        stack: Vec<u8>,
    }

    impl Captured {
        fn new() -> Captured {
            Captured {
                ip: 0,
                sp: 0,
                bp: 0,
                stack: Vec::new(),
            }
        }

        fn sample(&self) -> NativeSample<'_> {
            NativeSample {
                ip: self.ip,
                sp: self.sp,
                bp: self.bp,
                stack: &self.stack,
            }
        }
    }

    /// The uretprobe's view of a return from here: `[rsp]` is the return address, the
    /// caller's `sp` after the `ret` is `rsp + 8`. Then copies the stack (a tail jump, so
    /// the callers' frames are untouched while it copies).
    #[unsafe(naked)]
    unsafe extern "C" fn capture(out: *mut Captured) {
        core::arch::naked_asm!(
            "mov rax, [rsp]",
            "mov [rdi], rax",
            "lea rax, [rsp + 8]",
            "mov [rdi + 8], rax",
            "mov [rdi + 16], rbp",
            "jmp {finish}",
            finish = sym finish_capture,
        )
    }

    extern "C" fn finish_capture(out: *mut Captured) {
        // SAFETY: `capture` is only called with a valid, exclusive pointer.
        let out = unsafe { &mut *out };
        out.stack = copy_own_stack(out.sp, STACK_BYTES);
    }

    /// Up to `len` bytes from `sp`, read like the target's (process_vm_readv), in chunks so
    /// the end of the stack mapping just shortens the copy.
    fn copy_own_stack(sp: u64, len: usize) -> Vec<u8> {
        let mem = crate::target::Process::open(std::process::id())
            .expect("own process")
            .memory();
        let mut out = Vec::with_capacity(len);
        let mut chunk = [0u8; 256];
        while out.len() < len {
            if mem.read(sp + out.len() as u64, &mut chunk).is_err() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[inline(never)]
    fn rust_inner(n: u64) -> Captured {
        let mut c = Captured::new();
        unsafe { capture(black_box(&mut c)) };
        black_box(n);
        c
    }

    #[inline(never)]
    fn rust_middle(n: u64) -> Captured {
        let c = rust_inner(black_box(n + 1));
        black_box(&c);
        c
    }

    #[inline(never)]
    fn rust_outer(n: u64) -> Captured {
        let c = rust_middle(black_box(n * 3));
        black_box(&c);
        c
    }

    fn exe() -> PathBuf {
        std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .expect("current exe")
    }

    fn names(frames: &[NativeFrame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    fn show(frames: &[NativeFrame]) -> String {
        frames
            .iter()
            .map(|f| {
                format!(
                    "  {:#x} {} ({}) {}:{}\n",
                    f.addr,
                    f.function,
                    f.library,
                    f.file.as_deref().unwrap_or("?"),
                    f.line.unwrap_or(0)
                )
            })
            .collect()
    }

    // Never inlined into the harness's `call_once`, so its own name is the fourth frame.
    #[test]
    #[inline(never)]
    fn unwinds_own_rust_frames_without_frame_pointers() {
        let c = rust_outer(black_box(7));
        assert!(c.stack.len() >= 64, "stack copy failed");
        let mut unwinder = Unwinder::new(std::process::id());
        let mut sym = NativeSymbolizer::new(std::process::id());
        let exe = exe().display().to_string();
        // With the real rbp and with garbage in it: CFI, not a frame-pointer chain.
        for bp in [c.bp, 0x1234_5678_9abc_def0] {
            let s = NativeSample { bp, ..c.sample() };
            let addrs = unwinder.unwind(&s, 64, &|_| false);
            let frames = sym.symbolize_all(&addrs);
            let n = names(&frames);
            assert!(frames.len() >= 4, "bp {bp:#x}:\n{}", show(&frames));
            assert!(n[0].ends_with("::rust_inner"), "{}", show(&frames));
            assert!(n[1].ends_with("::rust_middle"), "{}", show(&frames));
            assert!(n[2].ends_with("::rust_outer"), "{}", show(&frames));
            assert!(
                n[3].contains("unwinds_own_rust_frames"),
                "{}",
                show(&frames)
            );
            for f in &frames[..4] {
                assert_eq!(f.library, exe);
            }
            assert_eq!(addrs[0], c.ip);
        }
    }

    #[test]
    fn stop_excludes_the_first_stop_address() {
        let c = rust_outer(black_box(11));
        let mut unwinder = Unwinder::new(std::process::id());
        let sym = RefCell::new(NativeSymbolizer::new(std::process::id()));
        let is = |suffix: &'static str| {
            let sym = &sym;
            move |a: u64| sym.borrow_mut().symbolize(a).function.ends_with(suffix)
        };
        let at_outer = is("::rust_outer");
        let addrs = unwinder.unwind(&c.sample(), 64, &at_outer);
        let frames = sym.borrow_mut().symbolize_all(&addrs);
        assert_eq!(frames.len(), 2, "{}", show(&frames));
        assert!(frames[1].function.ends_with("::rust_middle"));
        // Stop at the first address: nothing.
        let at_inner = is("::rust_inner");
        assert!(unwinder.unwind(&c.sample(), 64, &at_inner).is_empty());
        // `max` bounds it.
        assert_eq!(unwinder.unwind(&c.sample(), 2, &|_| false).len(), 2);
        assert!(unwinder.unwind(&c.sample(), 0, &|_| false).is_empty());
    }

    #[test]
    fn unmapped_address_is_an_honest_unknown() {
        let mut sym = NativeSymbolizer::new(std::process::id());
        let f = sym.symbolize(0x10);
        assert_eq!(f.function, "?? (0x10)");
        assert_eq!(f.library, "");
        assert_eq!((f.file, f.line), (None, None));
        assert!(sym.symbolize(0).function.starts_with("??"));
        assert!(sym.symbolize(u64::MAX).function.starts_with("??"));
        let mut unwinder = Unwinder::new(std::process::id());
        let s = NativeSample {
            ip: 0x10,
            sp: 0x1000,
            bp: 0,
            stack: &[0; 64],
        };
        assert_eq!(unwinder.unwind(&s, 64, &|_| false), vec![0x10]);
    }

    #[test]
    fn garbage_stacks_stop_cleanly() {
        let c = rust_outer(black_box(5));
        let mut unwinder = Unwinder::new(std::process::id());
        let text: Vec<(u64, u64)> = unwinder
            .modules()
            .mappings()
            .iter()
            .map(|m| (m.start, m.end))
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let mut stack = vec![0u8; (next() % 512) as usize];
            for (i, b) in stack.iter_mut().enumerate() {
                *b = next() as u8;
                // Some real code addresses in the garbage, to lure it on.
                if i % 64 == 0 && round % 2 == 0 && i + 8 <= c.stack.len() {
                    *b = c.stack[i];
                }
            }
            let sp = match round % 4 {
                0 => c.sp,
                1 => u64::MAX - 3,
                2 => 0,
                _ => next(),
            };
            let ip = if round % 3 == 0 { c.ip } else { next() };
            let s = NativeSample {
                ip,
                sp,
                bp: next(),
                stack: &stack,
            };
            let addrs = unwinder.unwind(&s, 32, &|_| false);
            assert!(addrs.len() <= 32);
            for &a in addrs.iter().skip(1) {
                assert!(
                    text.iter().any(|&(s, e)| s < a && a <= e),
                    "{a:#x} not in code"
                );
            }
        }
    }

    /// A C "extension" built like one (-O2, no frame pointers): three C frames between
    /// Rust and the callback.
    const C_SOURCE: &str = r#"
typedef void (*ls_cb)(void *);

__attribute__((noinline)) int ls_leaf(ls_cb cb, void *arg, int n) {
    volatile char buf[64];
    buf[n & 63] = (char)n;
    cb(arg); /* LEAF_CALL */
    return buf[(n + 1) & 63] + n;
}

__attribute__((noinline)) int ls_middle(ls_cb cb, void *arg, int n) {
    int a = n * 7, b = n ^ 5, c = n + 11;
    int r = ls_leaf(cb, arg, n + 1); /* MIDDLE_CALL */
    return r + a * b - c;
}

int ls_entry(ls_cb cb, void *arg, int n) {
    int r = ls_middle(cb, arg, n * 2); /* ENTRY_CALL */
    return r * 3 + n;
}
"#;

    fn line_of(marker: &str) -> u32 {
        C_SOURCE
            .lines()
            .position(|l| l.contains(marker))
            .expect("marker") as u32
            + 1
    }

    type Entry =
        unsafe extern "C" fn(unsafe extern "C" fn(*mut Captured), *mut Captured, i32) -> i32;

    /// Builds the C library with `flags` in a fresh directory; None without gcc.
    fn build_c(name: &str, flags: &[&str]) -> Option<(PathBuf, PathBuf)> {
        let dir =
            std::env::temp_dir().join(format!("leakscope-native-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let src = dir.join("ls.c");
        std::fs::write(&src, C_SOURCE).ok()?;
        let so = dir.join(format!("lib{name}.so"));
        let out = std::process::Command::new("gcc")
            .args(flags)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                Some((dir.canonicalize().ok()?, so.canonicalize().ok()?))
            }
            Ok(o) => panic!("gcc failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                eprintln!("no gcc ({e}): skipping the C library test");
                None
            }
        }
    }

    fn dlsym(so: &Path, name: &str) -> *mut libc::c_void {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(so.as_os_str().as_bytes()).expect("path");
        let name = std::ffi::CString::new(name).expect("name");
        // SAFETY: plain dlopen/dlsym of a library we just built; it is never closed.
        unsafe {
            let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!h.is_null(), "dlopen {}", so.display());
            let f = libc::dlsym(h, name.as_ptr());
            assert!(!f.is_null(), "dlsym {name:?}");
            f
        }
    }

    /// No `push rbp; mov rbp, rsp` at the start (after an optional endbr64).
    fn has_frame_pointer_prologue(f: *const u8) -> bool {
        // SAFETY: reads the first bytes of a function in a loaded library.
        let b = unsafe { std::slice::from_raw_parts(f, 8) };
        let b = if b[..4] == [0xf3, 0x0f, 0x1e, 0xfa] {
            &b[4..]
        } else {
            b
        };
        b[..4] == [0x55, 0x48, 0x89, 0xe5]
    }

    #[inline(never)]
    fn call_c_entry(entry: Entry) -> Captured {
        let mut c = Captured::new();
        // SAFETY: `entry` is `ls_entry`, which calls `capture(&mut c)` once.
        let r = unsafe { entry(capture, black_box(&mut c), black_box(3)) };
        black_box(r);
        c
    }

    /// The real case: unwinding from the return into a C function through two more C
    /// frames without frame pointers, back into Rust; names, library and file:line.
    fn check_c_library(name: &str, flags: &[&str]) {
        // The unwinder and symbolizer exist before the library is loaded: they find it
        // by re-reading the maps on the first miss.
        let mut unwinder = Unwinder::new(std::process::id());
        let mut sym = NativeSymbolizer::new(std::process::id());
        let Some((dir, so)) = build_c(name, flags) else {
            return;
        };
        let entry = dlsym(&so, "ls_entry");
        for f in ["ls_entry", "ls_middle", "ls_leaf"] {
            assert!(
                !has_frame_pointer_prologue(dlsym(&so, f).cast()),
                "{f} keeps rbp"
            );
        }
        // SAFETY: `ls_entry` has this signature (C_SOURCE).
        let entry: Entry = unsafe { std::mem::transmute(entry) };
        let c = call_c_entry(entry);
        let so_path = so.display().to_string();
        let exe = exe().display().to_string();
        for bp in [c.bp, 0] {
            let s = NativeSample { bp, ..c.sample() };
            let addrs = unwinder.unwind(&s, 64, &|_| false);
            let frames = sym.symbolize_all(&addrs);
            let all = show(&frames);
            assert!(frames.len() >= 4, "{name}, bp {bp:#x}:\n{all}");
            let expect = [
                ("ls_leaf", "LEAF_CALL"),
                ("ls_middle", "MIDDLE_CALL"),
                ("ls_entry", "ENTRY_CALL"),
            ];
            for (f, (function, marker)) in frames.iter().zip(expect) {
                assert_eq!(f.function, function, "{all}");
                assert_eq!(f.library, so_path, "{all}");
                assert!(
                    f.file.as_deref().is_some_and(|p| p.ends_with("ls.c")),
                    "{all}"
                );
                assert_eq!(f.line, Some(line_of(marker)), "{all}");
            }
            assert!(frames[3].function.ends_with("::call_c_entry"), "{all}");
            assert_eq!(frames[3].library, exe, "{all}");
            if bp == c.bp {
                eprintln!("{name}:\n{all}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unwinds_through_c_frames_without_frame_pointers_eh_frame() {
        check_c_library("lseh", &["-O2", "-fomit-frame-pointer", "-g"]);
    }

    /// The same with CFI only in `.debug_frame` (no unwind tables, no start files, so no
    /// `.eh_frame` content at all).
    #[test]
    fn unwinds_through_c_frames_without_frame_pointers_debug_frame() {
        check_c_library(
            "lsdf",
            &[
                "-O2",
                "-fomit-frame-pointer",
                "-g",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
                "-nostartfiles",
            ],
        );
    }

    /// A stripped library (no .symtab, no DWARF): exported functions by `.dynsym`, and the
    /// honest `?? (lib+off)` form for an address covered by no symbol.
    #[test]
    fn stripped_library_symbols() {
        let mut sym = NativeSymbolizer::new(std::process::id());
        let Some((dir, so)) = build_c("lsstrip", &["-O2", "-fomit-frame-pointer", "-s"]) else {
            return;
        };
        let leaf = dlsym(&so, "ls_leaf") as u64;
        // As a return address 8 bytes in: looked up at +7.
        let f = sym.symbolize(leaf + 8);
        assert_eq!(f.function, "ls_leaf");
        assert_eq!(f.library, so.display().to_string());
        assert_eq!((f.file.as_deref(), f.line), (None, None));
        // The ELF header page is mapped read-only, not executable: unmapped for us; the
        // last byte of the executable mapping is covered by no function.
        let m = sym.modules().lookup(leaf).cloned().expect("library mapped");
        let f = sym.symbolize(m.end);
        let base = so.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            f.function,
            format!("?? ({base}+{:#x})", m.file_offset(m.end))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unwind_cost() {
        let c = rust_outer(black_box(9));
        let mut unwinder = Unwinder::new(std::process::id());
        let frames = unwinder.unwind(&c.sample(), 64, &|_| false).len();
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(unwinder.unwind(black_box(&c.sample()), 64, &|_| false));
        }
        let per = t.elapsed().as_nanos() as f64 / n as f64;
        eprintln!(
            "unwind: {per:.0} ns per unwind of {frames} frames ({:.0} ns/frame), warm cache",
            per / frames as f64
        );
    }

    #[test]
    fn symbolize_cost() {
        let c = rust_outer(black_box(13));
        let mut unwinder = Unwinder::new(std::process::id());
        let addrs = unwinder.unwind(&c.sample(), 64, &|_| false);
        let mut sym = NativeSymbolizer::new(std::process::id());
        let t = Instant::now();
        sym.symbolize(addrs[0]);
        let first = t.elapsed();
        // Each new address alone: the first in a file (libc below) pays for its symbols and
        // DWARF once, so the median is the per-address cost.
        let mut each: Vec<u128> = addrs[1..]
            .iter()
            .map(|&a| {
                let t = Instant::now();
                black_box(sym.symbolize(a));
                t.elapsed().as_nanos()
            })
            .collect();
        each.sort_unstable();
        let median = each.get(each.len() / 2).copied().unwrap_or(0);
        let max = each.last().copied().unwrap_or(0);
        let n = 100_000;
        let t = Instant::now();
        for i in 0..n {
            black_box(sym.symbolize(addrs[i % addrs.len()]));
        }
        let warm = t.elapsed().as_nanos() as f64 / n as f64;
        eprintln!(
            "symbolize: first {first:?} (parses the file), then per new address median \
             {median} ns (max {max} ns), {warm:.0} ns cached"
        );
        // A first address in libc: its symbols, and the DWARF of its debug file if installed.
        let t = Instant::now();
        let f = sym.symbolize(libc::malloc as *const () as u64 + 9);
        eprintln!("symbolize: first in libc {:?}: {}", t.elapsed(), f.function);
        assert!(f.function.contains("malloc"), "{f:?}");
    }
}
