//! Which functions to probe, where exactly, and what that lets us see, per build.
//!
//! - **complete** (a shared libpython whose own exports are interposable, e.g. pyenv's
//!   `--enable-shared` builds): the linker routes every internal call to `_Py_NewReference`
//!   through the GOT, so the compiler never inlined it and an entry probe sees every birth,
//!   freelist reuse included. Deaths are seen at the object allocator's free and realloc
//!   (found through the allocator table the interpreter really calls, read from its memory),
//!   which every object's memory passes through; freelist deaths surface as rebirths.
//! - **inlined** (static executables and LTO builds, e.g. Debian's `/usr/bin/python3.11`,
//!   3.9–3.11): `_Py_NewReference` is inlined into every function that makes an object, but
//!   each copy keeps its tracemalloc test (`if (_Py_tracemalloc_config.tracing)`), and
//!   the object is in a register at that test's conditional jump (`probes::newref`): every
//!   such jump is probed (`birth_reg`, emulated: a cheap hit), which sees every birth,
//!   free-list reuse included. The frees are inlined too: a birth at an address ends what
//!   lived there, the exported `tp_free`s are probed, and before each report every live
//!   object is read again (`resolve::follow`: reference count and type) for the rest.
//! - **partial** (the fallback when the inlined births are not found; static executables and LTO/`-Bsymbolic` libraries, e.g. Debian's
//!   `/usr/bin/python3.11`): builtins are created and destroyed through inlined copies that
//!   no probe sees. Instances of Python classes still pass through their type slots
//!   (`tp_alloc` = `PyType_GenericAlloc`, `tp_free` = `PyObject_GC_Del`/`PyObject_Free`),
//!   and C extensions call the exported API through their PLT, so those are counted and
//!   every static type of the interpreter itself is ignored.
use crate::cpython::hooks;
use crate::probes::disasm::{self, ProbePoint};
use crate::target::Process;
use crate::target::interpreter::Interpreter;
use anyhow::{Context, Result, bail};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    Complete,
    Inlined,
    Partial,
}

impl Coverage {
    pub fn sees(self) -> &'static str {
        match self {
            Coverage::Complete => "all objects",
            Coverage::Inlined => {
                "all objects (births at each inlined _Py_NewReference; deaths the probes \
                 miss are read back from memory before each report)"
            }
            Coverage::Partial => {
                "instances of classes defined in Python and objects of C-extension types \
                 (builtins created inside this optimized interpreter are not visible)"
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// `function+offset`, as shown by `--stats`.
    pub label: String,
    /// Name of the BPF program in `leakscope-ebpf`.
    pub program: &'static str,
    /// The file to attach to, reached through the target's root.
    pub path: PathBuf,
    pub file_offset: u64,
    pub point: ProbePoint,
    /// The function's first instruction (what `point` was moved forward from).
    pub entry: ProbePoint,
    /// What a native entry probe's function takes (`leakscope_common::NATIVE_*`; 0 for
    /// every other probe), passed to the program in the attach cookie.
    pub kind: u32,
}

pub struct Plan {
    pub coverage: Coverage,
    pub probes: Vec<ProbeSpec>,
}

impl Plan {
    /// Moves every probe back to its function's entry (for `cargo xtask bench`, to measure
    /// what the chosen offsets save). The entry is always an instruction boundary.
    pub fn at_entries(&mut self) {
        for p in &mut self.probes {
            p.file_offset -= p.point.offset;
            p.label = format!(
                "{}+0",
                p.label
                    .rsplit_once('+')
                    .map_or(p.label.as_str(), |(f, _)| f)
            );
            p.point = p.entry.clone();
        }
    }
}

pub fn plan(process: &Process, interp: &Interpreter) -> Result<Plan> {
    let bin = &interp.binary;
    let complete = bin.is_shared_object && bin.relocates(hooks::NEW_REFERENCE[0]);
    let mut probes = vec![];
    if complete {
        for name in hooks::NEW_REFERENCE {
            if let Some((vaddr, size)) = bin.symbol(name) {
                probes.push(entry_probe(
                    bin,
                    name,
                    vaddr,
                    size,
                    Register::RDI,
                    "birth_arg0",
                )?);
            }
        }
        for wrapper in [hooks::FREE_WRAPPER, hooks::REALLOC_WRAPPER] {
            probes.push(allocator_slot_probe(process, interp, wrapper)?);
        }
        return Ok(Plan {
            coverage: Coverage::Complete,
            probes,
        });
    }
    let frees = |probes: &mut Vec<ProbeSpec>| -> Result<()> {
        for name in hooks::FREES {
            // `.isra` clones may have their arguments rewritten: only the real entry is read.
            if let Some((vaddr, size)) = bin.symbol(name) {
                probes.push(entry_probe(
                    bin,
                    name,
                    vaddr,
                    size,
                    Register::RDI,
                    "free_arg0",
                )?);
            }
        }
        Ok(())
    };
    // `LEAKSCOPE_PARTIAL_PLAN=1` keeps to the partial plan (its census rows are tested so).
    let inlined = match std::env::var_os("LEAKSCOPE_PARTIAL_PLAN") {
        Some(v) if v == "1" => Err(anyhow::anyhow!("LEAKSCOPE_PARTIAL_PLAN=1")),
        _ => inlined_plan(interp),
    };
    match inlined {
        Ok(mut plan) => {
            frees(&mut plan.probes)?;
            return Ok(plan);
        }
        Err(e) => eprintln!(
            "leakscope: the inlined object births of {} are not found ({e:#}): only \
             instances of Python classes and C-extension types are seen",
            interp.target_path
        ),
    }
    for name in hooks::ALLOCATORS {
        for (clone, vaddr, _) in bin.symbol_and_clones(name) {
            let off = bin
                .vaddr_to_offset(vaddr)
                .context("allocator outside any segment")?;
            let code = bin.bytes_at(vaddr, 16).unwrap_or(&[]);
            let entry = disasm::first_instruction(code, vaddr);
            probes.push(ProbeSpec {
                label: format!("{clone} (return)"),
                program: "birth_ret",
                path: bin.path.clone(),
                file_offset: off,
                point: entry.clone(),
                entry,
                kind: 0,
            });
        }
    }
    frees(&mut probes)?;
    if probes.is_empty() {
        bail!(
            "none of the functions leakscope hooks is exported by {}",
            interp.target_path
        );
    }
    Ok(Plan {
        coverage: Coverage::Partial,
        probes,
    })
}

/// Fewest inlined `_Py_NewReference` copies a build must show before births are taken
/// there (Debian's 3.11 has over 200; a build with only a few is not what this expects).
const MIN_NEWREF_SITES: usize = 32;

/// The inlined plan (module docs): a `birth_reg` probe at every inlined `_Py_NewReference`.
fn inlined_plan(interp: &Interpreter) -> Result<Plan> {
    let bin = &interp.binary;
    let (text_vaddr, text) = bin.section_at(".text").context("no .text section")?;
    let flag = match interp.version.minor {
        // `_Py_tracemalloc_config.tracing` (`struct _PyTraceMalloc_Config { int initialized;
        // int tracing; ... }`, 3.9–3.11 `Include/internal/pycore_pymem.h`).
        ..=11 => {
            let (config, _) = bin
                .symbol(hooks::TRACEMALLOC_CONFIG)
                .with_context(|| format!("{} not found", hooks::TRACEMALLOC_CONFIG))?;
            crate::probes::newref::Flag::at(config + hooks::TRACEMALLOC_TRACING)
        }
        // 3.12 moved the flag into `_PyRuntime`, where it has no symbol of its own (no
        // optimized 3.12 build is at hand to find it by).
        12 => bail!(
            "Python {} keeps the tracemalloc flag inside _PyRuntime",
            interp.version
        ),
        _ => {
            let code = |name: &str| -> Result<(u64, &[u8])> {
                let (vaddr, size) = bin
                    .symbol(name)
                    .with_context(|| format!("{name} not found"))?;
                Ok((
                    vaddr,
                    bin.bytes_at(vaddr, size.max(1))
                        .with_context(|| format!("no code for {name}"))?,
                ))
            };
            let (nv, new_ref) = code(hooks::NEW_REFERENCE[0])?;
            let (sv, set) = code(hooks::SET_REF_TRACER)?;
            let (runtime, _) = bin.symbol("_PyRuntime").context("_PyRuntime not found")?;
            crate::probes::newref::tracer_flag(new_ref, nv, set, sv, runtime).with_context(
                || {
                    format!(
                        "{} does not test the reference tracer {} sets",
                        hooks::NEW_REFERENCE[0],
                        hooks::SET_REF_TRACER
                    )
                },
            )?
        }
    };
    let mut found = crate::probes::newref::find(text, text_vaddr, flag);
    // The exported copies are probed at their entry (`birth_arg0`), which also sees the
    // calls that were not inlined (Debian's shared libpython3.13+ inlines few): their own
    // test is not a site.
    let mut probes = vec![];
    let mut exported = vec![];
    for name in hooks::NEW_REFERENCE {
        if let Some((vaddr, size)) = bin.symbol(name) {
            probes.push(entry_probe(
                bin,
                name,
                vaddr,
                size,
                Register::RDI,
                "birth_arg0",
            )?);
            exported.push(vaddr..vaddr + size.max(1));
        }
    }
    found
        .sites
        .retain(|s| !exported.iter().any(|r| r.contains(&s.vaddr)));
    if found.sites.len() < MIN_NEWREF_SITES && exported.is_empty() {
        bail!(
            "only {} inlined copies of _Py_NewReference found, and no exported one",
            found.sites.len()
        );
    }
    for site in &found.sites {
        let point = ProbePoint {
            offset: 0,
            emulated: true,
            instruction: site.instruction.clone(),
        };
        let label = match bin.symbol_containing(site.vaddr) {
            Some((name, start, _)) => format!("{name}+{} (_Py_NewReference)", site.vaddr - start),
            None => format!("{:#x} (_Py_NewReference)", site.vaddr),
        };
        probes.push(ProbeSpec {
            label,
            program: "birth_reg",
            path: bin.path.clone(),
            file_offset: bin
                .vaddr_to_offset(site.vaddr)
                .context("a birth site outside any segment")?,
            point: point.clone(),
            entry: point,
            kind: crate::probes::newref::register_index(site.object)
                .context("a register the BPF program cannot read")?,
        });
    }
    Ok(Plan {
        coverage: Coverage::Inlined,
        probes,
    })
}

/// An entry probe on `name` in `bin` (the interpreter, or the C library), moved to the
/// first emulated instruction that keeps `arg` (`disasm::entry_probe`).
fn entry_probe(
    bin: &crate::target::elf::Binary,
    name: &str,
    vaddr: u64,
    size: u64,
    arg: Register,
    program: &'static str,
) -> Result<ProbeSpec> {
    let code = bin
        .bytes_at(vaddr, size.max(1))
        .with_context(|| format!("no code for {name}"))?;
    let point = disasm::entry_probe(code, vaddr, arg);
    Ok(ProbeSpec {
        label: format!("{name}+{}", point.offset),
        program,
        path: bin.path.clone(),
        file_offset: bin
            .vaddr_to_offset(vaddr)
            .context("symbol outside any segment")?
            + point.offset,
        point,
        entry: disasm::first_instruction(code, vaddr),
        kind: 0,
    })
}

/// `PyObject_Free(p)` is a thin wrapper in a non-LTO build that jumps through the object
/// allocator table (`jmp [_PyObject.free]` ≤3.11; `mov rax, [GOT(_PyRuntime)]; jmp
/// [rax+off]` 3.12+). Following it finds the function the interpreter really calls
/// (pymalloc, or whatever `PYTHONMALLOC` or an embedder installed), which we then probe; its
/// second argument is the pointer.
fn allocator_slot_probe(
    process: &Process,
    interp: &Interpreter,
    wrapper: &str,
) -> Result<ProbeSpec> {
    let bin = &interp.binary;
    let (vaddr, size) = bin
        .symbol(wrapper)
        .with_context(|| format!("{wrapper} not found"))?;
    let code = bin.bytes_at(vaddr, size.max(16)).context("no code")?;
    let func = jump_target(code, vaddr, interp.bias, &process.memory())
        .with_context(|| format!("{wrapper} does not jump through an allocator table"))?;
    let maps = process.maps()?;
    let m = maps
        .iter()
        .find(|m| func >= m.start && func < m.end && m.path.starts_with('/'))
        .with_context(|| format!("allocator function {func:#x} is not in a mapped file"))?;
    let file_offset = func - m.start + m.offset;
    let path = process.file_of(m);
    let owner = if m.path == interp.mapped_path {
        None
    } else {
        Some(crate::target::elf::Binary::open(&path)?)
    };
    let owner = owner.as_ref().unwrap_or(bin);
    // Symbol of the function (for its size and name); without one, the entry is the only
    // instruction boundary we know for sure.
    let func_vaddr = owner
        .offset_to_vaddr(file_offset)
        .context("allocator outside any segment")?;
    let entry =
        disasm::first_instruction(owner.bytes_at(func_vaddr, 16).unwrap_or(&[]), func_vaddr);
    let (label, point) = match owner.symbol_at(func_vaddr) {
        Some((name, vaddr, size)) => {
            let code = owner.bytes_at(vaddr, size).context("no code")?;
            let p = disasm::entry_probe(code, vaddr, Register::RSI);
            (format!("{name}+{}", p.offset), p)
        }
        None => (format!("{wrapper} target {func:#x}+0"), entry.clone()),
    };
    Ok(ProbeSpec {
        label,
        program: "free_arg1",
        path,
        file_offset: file_offset + point.offset,
        point,
        entry,
        kind: 0,
    })
}

/// Where the straight-line code at the start of a wrapper jumps to, by evaluating its loads
/// against the target's memory: `mov reg, [rip+x]`, `mov reg, [reg+x]`, `mov reg, reg`, then
/// `jmp [mem]` or `jmp reg`. Conditional branches are assumed not taken (the wrappers'
/// error paths); anything else the evaluator does not know ends the search.
fn jump_target(code: &[u8], vaddr: u64, bias: u64, mem: &crate::target::Mem) -> Option<u64> {
    let mut regs: hashbrown::HashMap<Register, u64> = hashbrown::HashMap::new();
    let address =
        |i: &iced_x86::Instruction, regs: &hashbrown::HashMap<Register, u64>| -> Option<u64> {
            if i.is_ip_rel_memory_operand() {
                Some(i.ip_rel_memory_address() + bias)
            } else if i.memory_index() == Register::None {
                Some(
                    regs.get(&i.memory_base())?
                        .wrapping_add(i.memory_displacement64()),
                )
            } else {
                None
            }
        };
    for i in Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE)
        .into_iter()
        .take(16)
    {
        match (i.mnemonic(), i.flow_control()) {
            (Mnemonic::Jmp, FlowControl::IndirectBranch) => {
                return match i.op0_kind() {
                    OpKind::Memory => mem.u64(address(&i, &regs)?).ok(),
                    OpKind::Register => regs.get(&i.op0_register().full_register()).copied(),
                    _ => None,
                };
            }
            (Mnemonic::Mov, _)
                if i.op0_kind() == OpKind::Register && i.op0_register().is_gpr64() =>
            {
                let dst = i.op0_register();
                let value = match i.op1_kind() {
                    OpKind::Memory => address(&i, &regs).and_then(|a| mem.u64(a).ok()),
                    OpKind::Register => regs.get(&i.op1_register().full_register()).copied(),
                    _ => None,
                };
                match value {
                    Some(v) => regs.insert(dst, v),
                    None => regs.remove(&dst),
                };
            }
            (_, FlowControl::Next | FlowControl::ConditionalBranch) => {
                // Any other write makes what we know of that register stale.
                regs.retain(|r, _| !writes_register(&i, *r));
            }
            _ => return None,
        }
    }
    None
}

fn writes_register(i: &iced_x86::Instruction, reg: Register) -> bool {
    (0..i.op_count()).any(|n| {
        i.op_kind(n) == OpKind::Register && i.op_register(n).full_register() == reg && n == 0
    })
}

/// The BPF stack walker's settings for this interpreter (`None`: this version has no
/// stack layout, or `_PyRuntime` is not exported).
pub fn stack_config(
    interp: &Interpreter,
    l: &crate::cpython::StackLayout,
    timing: bool,
) -> Option<leakscope_common::StackConfig> {
    use leakscope_common::{FRAME_WINDOW_WORDS, NO_OFFSET, StackConfig};
    let runtime = interp.runtime_addr("_PyRuntime")?;
    let read = l.frame_code.max(l.frame_prev).max(l.frame_instr) + 8;
    if read > 8 * FRAME_WINDOW_WORDS as u64 {
        return None;
    }
    Some(StackConfig {
        mode: if l.gil_ptr_off.is_some() { 2 } else { 1 },
        code_word: (l.frame_code / 8) as u32,
        prev_word: (l.frame_prev / 8) as u32,
        instr_word: (l.frame_instr / 8) as u32,
        tstate_addr: runtime + l.runtime_off,
        gil_ptr_off: l.gil_ptr_off.unwrap_or(0),
        gil_holder_off: crate::cpython::GIL_LAST_HOLDER,
        gil_locked_off: crate::cpython::GIL_LOCKED,
        native_tid_off: l.native_tid_off.unwrap_or(0),
        frame_off1: l.frame_path.0,
        frame_off2: l.frame_path.1.unwrap_or(NO_OFFSET),
        frame_read: read,
        timing: timing as u64,
        walk_filter: 0,
        gc_collecting: 0,
        pidns_dev: 0,
        pidns_ino: 0,
    })
}

/// The native allocator's probes (`--native`) and the code whose own allocations are not
/// recorded (`leakscope_common::NativeConfig`).
pub struct NativePlan {
    pub probes: Vec<ProbeSpec>,
    /// The C library the target maps, as the target names it.
    pub libc: String,
    pub skip: Vec<(u64, u64)>,
}

/// Allocating functions of the C library: name, what its arguments are. `aligned_alloc`
/// and `memalign` are one function in glibc (probed once, by file offset).
const NATIVE_ALLOCATORS: [(&str, u32); 9] = [
    ("malloc", leakscope_common::NATIVE_MALLOC),
    ("calloc", leakscope_common::NATIVE_CALLOC),
    ("realloc", leakscope_common::NATIVE_REALLOC),
    ("posix_memalign", leakscope_common::NATIVE_POSIX_MEMALIGN),
    ("aligned_alloc", leakscope_common::NATIVE_MEMALIGN),
    ("memalign", leakscope_common::NATIVE_MEMALIGN),
    ("valloc", leakscope_common::NATIVE_VALLOC),
    ("pvalloc", leakscope_common::NATIVE_VALLOC),
    ("mmap", leakscope_common::NATIVE_MMAP_CALL),
];
const NATIVE_RELEASERS: [&str; 2] = ["free", "munmap"];

/// The interpreter's allocators an extension may call instead of the C library's: name,
/// kind, number of arguments. The object domain (`PyMem_Malloc`…) serves small sizes from
/// pymalloc's pools, which no C library probe sees; the raw domain tail-calls `malloc`,
/// whose own probes then share its record (`NATIVE_PYMEM_DOMAIN`). Their frees reach
/// pymalloc's free (probed by the plan) or `free`. The interpreter's own calls return into
/// it and are skipped like its mallocs.
const PYMEM_ALLOCATORS: [(&str, u32, usize); 6] = [
    (
        "PyMem_Malloc",
        leakscope_common::NATIVE_MALLOC | leakscope_common::NATIVE_PYMEM_DOMAIN,
        1,
    ),
    (
        "PyMem_Calloc",
        leakscope_common::NATIVE_CALLOC | leakscope_common::NATIVE_PYMEM_DOMAIN,
        2,
    ),
    (
        "PyMem_Realloc",
        leakscope_common::NATIVE_REALLOC | leakscope_common::NATIVE_PYMEM_DOMAIN,
        2,
    ),
    ("PyMem_RawMalloc", leakscope_common::NATIVE_MALLOC, 1),
    ("PyMem_RawCalloc", leakscope_common::NATIVE_CALLOC, 2),
    ("PyMem_RawRealloc", leakscope_common::NATIVE_REALLOC, 2),
];

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so")
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || name.starts_with("ld-musl")
}

fn is_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || name.starts_with("ld64.so")
}

/// Plans entry and return probes on the allocators of the C library the target really maps
/// (opened through its root), and entry probes on `free` and `munmap`.
pub fn native(process: &Process, interp: &Interpreter) -> Result<NativePlan> {
    let maps = process.maps()?;
    let Some(m) = maps
        .iter()
        .find(|m| m.offset == 0 && m.path.starts_with('/') && is_libc(&m.path))
    else {
        bail!(
            "--native: process {} maps no C library (libc.so.6 or musl's loader); native \
             allocations cannot be traced",
            process.pid
        );
    };
    let path = process.file_of(m);
    let bin = crate::target::elf::Binary::open(&path)
        .with_context(|| format!("--native: reading the C library {}", m.path))?;
    let mut probes: Vec<ProbeSpec> = vec![];
    let mut seen = hashbrown::HashSet::new();
    for (name, kind) in NATIVE_ALLOCATORS {
        let Some((vaddr, size)) = bin.symbol(name) else {
            continue;
        };
        let off = bin
            .vaddr_to_offset(vaddr)
            .with_context(|| format!("{name} outside any segment of {}", m.path))?;
        if !seen.insert(off) {
            continue;
        }
        let code = bin.bytes_at(vaddr, size.clamp(1, 16)).unwrap_or(&[]);
        // A return probe must sit at the entry: it takes the return address at the stack
        // pointer there. The entry probe shares its breakpoint (one trap for both).
        let entry = disasm::first_instruction(code, vaddr);
        for (program, label) in [("native_enter", "entry"), ("native_ret", "return")] {
            probes.push(ProbeSpec {
                label: format!("{name} ({label})"),
                program,
                path: path.clone(),
                file_offset: off,
                point: entry.clone(),
                entry: entry.clone(),
                kind,
            });
        }
    }
    if probes.is_empty() {
        bail!(
            "--native: {} exports none of malloc, calloc, realloc",
            m.path
        );
    }
    let py = &interp.binary;
    for (name, kind, args) in PYMEM_ALLOCATORS {
        let Some((vaddr, size)) = py.symbol(name) else {
            continue;
        };
        let code = py
            .bytes_at(vaddr, size.max(1))
            .with_context(|| format!("no code for {name}"))?;
        // Entry and return share the breakpoint, moved to an emulated instruction when
        // nothing before it touched the stack or the arguments.
        let point = disasm::call_probe(code, vaddr, args);
        let kind = kind | leakscope_common::NATIVE_VIA_INTERPRETER;
        let off = py
            .vaddr_to_offset(vaddr)
            .with_context(|| format!("{name} outside any segment"))?
            + point.offset;
        for (program, label) in [("native_enter", "entry"), ("native_ret", "return")] {
            probes.push(ProbeSpec {
                label: format!("{name}+{} ({label})", point.offset),
                program,
                path: py.path.clone(),
                file_offset: off,
                point: point.clone(),
                entry: disasm::first_instruction(code, vaddr),
                kind,
            });
        }
    }
    for name in NATIVE_RELEASERS {
        if let Some((vaddr, size)) = bin.symbol(name) {
            probes.push(entry_probe(
                &bin,
                name,
                vaddr,
                size,
                Register::RDI,
                "native_free",
            )?);
        }
    }
    // Whole mapped extents: return addresses only ever fall in their code.
    let extent = |keep: &dyn Fn(&str) -> bool| {
        let spans: Vec<_> = maps.iter().filter(|x| keep(&x.path)).collect();
        Some((
            spans.iter().map(|x| x.start).min()?,
            spans.iter().map(|x| x.end).max()?,
        ))
    };
    let libc_path = m.path.clone();
    let mut skip = vec![];
    let lo = interp.ranges.iter().map(|r| r.0).min();
    let hi = interp.ranges.iter().map(|r| r.1).max();
    if let (Some(lo), Some(hi)) = (lo, hi) {
        skip.push((lo, hi));
    }
    skip.extend(extent(&|p| p == libc_path));
    skip.extend(extent(&is_loader));
    Ok(NativePlan {
        probes,
        libc: m.path.clone(),
        skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_library_is_glibc_or_musl_by_its_file_name() {
        for p in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/libc-2.31.so",
            "/lib/ld-musl-x86_64.so.1",
        ] {
            assert!(is_libc(p), "{p}");
        }
        for p in [
            "/usr/lib/libcurl.so.4",
            "/usr/lib/x86_64-linux-gnu/libcrypt.so.1",
            "/usr/lib/libc++.so.1",
            "/lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(!is_libc(p), "{p}");
        }
        assert!(is_loader("/lib64/ld-linux-x86-64.so.2"));
    }
}
