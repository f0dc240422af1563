//! Births on optimized builds, at every inlined copy of `_Py_NewReference`.
//!
//! Static and LTO builds (Debian's `/usr/bin/python3.11`) inline `_Py_NewReference` into
//! every function that makes an object, so no probe on a function sees them. But each copy
//! keeps the tracemalloc hook of its source (3.9–3.11 `Objects/object.c`):
//!
//! ```c
//! if (_Py_tracemalloc_config.tracing) { _PyTraceMalloc_NewReference(op); }
//! Py_SET_REFCNT(op, 1);
//! ```
//!
//! which compiles to a load or compare of `_Py_tracemalloc_config.tracing`, a conditional
//! jump, and, on the tracing side, `mov %R,%rdi; call _PyTraceMalloc_NewReference`. The
//! conditional jump is emulated by the kernel (a cheap hit) and register `R` holds the new
//! object there, already typed (`_PyObject_Init` sets `ob_type` before it calls
//! `_Py_NewReference`; a freelist pop reuses an object that kept its type). So the plan
//! probes every such jump and the BPF program reads the object from `R`: every birth,
//! free-list reuse included, as the complete builds' `_Py_NewReference` probe sees them.
//!
//! 3.13+ replaced the tracemalloc test with the reference tracer (`Objects/object.c`
//! `new_reference`):
//!
//! ```c
//! op->ob_refcnt = 1;
//! if (_PyRuntime.ref_tracer.tracer_func != NULL) { tracer_func(op, PyRefTracer_CREATE, data); }
//! ```
//!
//! the same shape with a 64-bit load, a register test and an indirect call through that
//! register on the tracing side (profile-guided builds first compare the pointer with
//! tracemalloc's tracer and inline a specialized call: the generic `jne` path is followed).
//!
//! Found by a linear sweep of `.text` with iced-x86 (GCC emits no data in `.text`): a load
//! or compare of the flag, its test (at most `MAX_BEFORE_TEST` unrelated instructions
//! later), and the jump. For the tracemalloc hook the callee is not exported: it is the
//! function nearly every match calls. A site whose tracing side calls anything else, or
//! takes its argument from memory, is skipped (and listed). Pure: works on the bytes of
//! the file.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// One inlined `_Py_NewReference`: probe its jump, read the object from `object`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRefSite {
    /// Link-time address of the conditional jump.
    pub vaddr: u64,
    pub instruction: String,
    /// The register that holds the new object at the jump.
    pub object: Register,
}

#[derive(Clone, Debug, Default)]
pub struct NewRefPlan {
    pub sites: Vec<NewRefSite>,
    /// `_PyTraceMalloc_NewReference`, the function the tracing side calls, or
    /// `TRACER_CALL` when it calls through the flag (3.13+'s reference tracer).
    pub callee: u64,
    /// Tests of the flag not understood, and why.
    pub skipped: Vec<(u64, String)>,
}

/// A 64-bit general register's word index in the kernel's `struct pt_regs`
/// (`leakscope_common::REG_*`), which `birth_reg` reads.
pub fn register_index(r: Register) -> Option<u32> {
    use leakscope_common::*;
    Some(match r {
        Register::R15 => REG_R15,
        Register::R14 => REG_R14,
        Register::R13 => REG_R13,
        Register::R12 => REG_R12,
        Register::RBP => REG_RBP,
        Register::RBX => REG_RBX,
        Register::R11 => REG_R11,
        Register::R10 => REG_R10,
        Register::R9 => REG_R9,
        Register::R8 => REG_R8,
        Register::RAX => REG_RAX,
        Register::RCX => REG_RCX,
        Register::RDX => REG_RDX,
        Register::RSI => REG_RSI,
        Register::RDI => REG_RDI,
        _ => return None,
    })
}

/// What reaches the tracing side's call: (register holding the object at the jump,
/// callee), or why it is not followed.
type Passed = Result<(Register, u64), String>;

/// Most instructions followed on the tracing side before the call.
const MAX_TRACING_SIDE: usize = 12;

/// Most instructions between the flag's load and its test (3.13+ stores the reference
/// count there: `mov rax,[flag]; mov qword [rcx],1; test rax,rax; jne`).
const MAX_BEFORE_TEST: usize = 3;

/// `callee` of a tracing side that calls through the register loaded from the flag.
pub const TRACER_CALL: u64 = u64::MAX;

/// The word every inlined copy tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag {
    /// Its link-time address (read RIP-relative by executables).
    pub addr: u64,
    /// Its offset in `_PyRuntime`, when shared libraries reach it as `[reg + offset]`
    /// with `reg` loaded from the GOT: any such read counts, and the tracing side must
    /// then prove it (the call through the loaded pointer, with CREATE and the data word
    /// next to it).
    pub field: Option<u64>,
}

impl Flag {
    /// The tracemalloc flag of 3.9–3.11: a symbol's word, read RIP-relative.
    pub fn at(addr: u64) -> Flag {
        Flag { addr, field: None }
    }

    /// Whether `i`'s memory operand is the word `extra` bytes past the flag.
    fn is_read_by(&self, i: &Instruction, extra: u64) -> bool {
        if i.is_ip_rel_memory_operand() {
            return i.ip_rel_memory_address() == self.addr + extra;
        }
        self.field.is_some_and(|f| {
            (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory)
                && i.memory_base().is_gpr64()
                && i.memory_index() == Register::None
                && i.memory_displacement64() == f + extra
        })
    }
}

/// The sites in `.text` (`text` at link address `text_vaddr`) that test the word at `flag`
/// (`&_Py_tracemalloc_config.tracing`).
pub fn find(text: &[u8], text_vaddr: u64, flag: Flag) -> NewRefPlan {
    let instrs: Vec<Instruction> = Decoder::with_ip(64, text, text_vaddr, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let at = |ip: u64| instrs.binary_search_by_key(&ip, |i| i.ip()).ok();
    // (jump, register holding the object, callee)
    let mut candidates: Vec<(usize, Passed)> = vec![];
    for (n, i) in instrs.iter().enumerate() {
        if !flag.is_read_by(i, 0) {
            continue;
        }
        // `mov r, [flag]; (unrelated)*; test r, r; jcc`, or `cmp [flag], 0; jcc`.
        let (jump, tracer) = match i.mnemonic() {
            Mnemonic::Mov if i.op0_kind() == OpKind::Register => {
                let r = i.op0_register();
                (
                    match test_of(&instrs, n + 1, r) {
                        Some(t) if instrs.get(t + 1).is_some() => Some(t + 1),
                        _ => None,
                    },
                    r.is_gpr64().then_some(r),
                )
            }
            Mnemonic::Cmp if i.op1_kind() == OpKind::Immediate8to32 && i.immediate(1) == 0 => {
                (Some(n + 1), None)
            }
            _ => (None, None),
        };
        let Some(jump) = jump else { continue };
        let j = &instrs[jump];
        // Not tracing is the usual side: `jne` jumps to the hook, `je` jumps past it.
        let tracing_side = match j.code() {
            Code::Jne_rel8_64 | Code::Jne_rel32_64 => at(j.near_branch_target()),
            Code::Je_rel8_64 | Code::Je_rel32_64 => Some(jump + 1),
            _ => {
                candidates.push((jump, Err("the flag's jump is not je/jne".into())));
                continue;
            }
        };
        let Some(start) = tracing_side else {
            candidates.push((
                jump,
                Err("jump target is not an instruction boundary".into()),
            ));
            continue;
        };
        let tracer = tracer.map(|r| (r, flag));
        candidates.push((jump, object_passed(&instrs, start, tracer, &at)));
    }
    // The callee nearly every site calls.
    let mut callees: hashbrown::HashMap<u64, usize> = hashbrown::HashMap::new();
    for (_, c) in &candidates {
        if let Ok((_, f)) = c {
            *callees.entry(*f).or_insert(0) += 1;
        }
    }
    // A call through the tracer pointer is the hook whatever the majority calls.
    if callees.contains_key(&TRACER_CALL) {
        callees.retain(|&f, _| f == TRACER_CALL);
    }
    let callee = callees
        .iter()
        .max_by_key(|&(&f, &n)| (n, f))
        .map_or(0, |(&f, _)| f);
    let mut plan = NewRefPlan {
        callee,
        ..Default::default()
    };
    for (jump, c) in candidates {
        let j = &instrs[jump];
        match c {
            Ok((reg, f)) if f == callee => plan.sites.push(NewRefSite {
                vaddr: j.ip(),
                instruction: format!("{j}"),
                object: reg,
            }),
            Ok((_, f)) => plan.skipped.push((
                j.ip(),
                format!("the tracing side calls {f:#x}, not {callee:#x}"),
            )),
            Err(why) => plan.skipped.push((j.ip(), why)),
        }
    }
    plan
}

/// The `test r, r` of register `r` at most `MAX_BEFORE_TEST` instructions from `from`,
/// with nothing between that writes `r` or branches.
fn test_of(instrs: &[Instruction], from: usize, r: Register) -> Option<usize> {
    let mut factory = iced_x86::InstructionInfoFactory::new();
    let end = (from + MAX_BEFORE_TEST + 1).min(instrs.len());
    for (n, t) in instrs.iter().enumerate().take(end).skip(from) {
        if t.mnemonic() == Mnemonic::Test
            && t.op0_kind() == OpKind::Register
            && t.op0_register() == r
            && t.op1_kind() == OpKind::Register
            && t.op1_register() == r
        {
            return Some(n);
        }
        if t.flow_control() != FlowControl::Next
            || writes(&mut factory, t).contains(&r.full_register())
        {
            return None;
        }
    }
    None
}

/// 3.13+: where `_PyRuntime.ref_tracer.tracer_func` is (`runtime`: `_PyRuntime`'s
/// address), which has no symbol: the word `_Py_NewReference` (`new_ref`, its code at
/// `new_ref_vaddr`) loads and tests first, confirmed by `PyRefTracer_SetTracer` (`set`)
/// storing a register there.
pub fn tracer_flag(
    new_ref: &[u8],
    new_ref_vaddr: u64,
    set: &[u8],
    set_vaddr: u64,
    runtime: u64,
) -> Option<Flag> {
    let decoded = |code: &[u8], ip: u64| -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .into_iter()
            .take(48)
            .take_while(|i| i.code() != Code::INVALID)
            .collect()
    };
    let body = decoded(new_ref, new_ref_vaddr);
    let (_, load) = body.iter().enumerate().find(|&(n, i)| {
        i.mnemonic() == Mnemonic::Mov
            && i.op0_kind() == OpKind::Register
            && i.op0_register().is_gpr64()
            && i.op1_kind() == OpKind::Memory
            && test_of(&body, n + 1, i.op0_register()).is_some()
    })?;
    let flag = if load.is_ip_rel_memory_operand() {
        let addr = load.ip_rel_memory_address();
        Flag {
            addr,
            field: addr.checked_sub(runtime),
        }
    } else if load.memory_base().is_gpr64() && load.memory_index() == Register::None {
        // PIC: `mov rdx, [rip + GOT(_PyRuntime)]; mov rax, [rdx + offset]`.
        let offset = load.memory_displacement64();
        Flag {
            addr: runtime + offset,
            field: Some(offset),
        }
    } else {
        return None;
    };
    decoded(set, set_vaddr)
        .iter()
        .any(|i| {
            i.mnemonic() == Mnemonic::Mov
                && i.op0_kind() == OpKind::Memory
                && flag.is_read_by(i, 0)
                && i.op1_kind() == OpKind::Register
                && i.op1_register().is_gpr64()
        })
        .then_some(flag)
}

/// The full registers an instruction writes.
fn writes(factory: &mut iced_x86::InstructionInfoFactory, i: &Instruction) -> Vec<Register> {
    factory
        .info(i)
        .used_registers()
        .iter()
        .filter(|u| {
            matches!(
                u.access(),
                iced_x86::OpAccess::Write
                    | iced_x86::OpAccess::CondWrite
                    | iced_x86::OpAccess::ReadWrite
                    | iced_x86::OpAccess::ReadCondWrite
            )
        })
        .map(|u| u.register().full_register())
        .collect()
}

/// Follows the tracing side from `start` (unconditional jumps included) to its call:
/// which register, as it was at the jump, reaches `rdi`, and the call's target. With
/// `tracer` (the register loaded from the flag, 3.13+), a comparison of it with a constant
/// and the `jne` after it lead to the generic path, which calls through it (`TRACER_CALL`).
fn object_passed(
    instrs: &[Instruction],
    start: usize,
    tracer: Option<(Register, Flag)>,
    at: &dyn Fn(u64) -> Option<usize>,
) -> Passed {
    let mut n = start;
    // rdi holds what `rdi_from` held at the jump; `written`: registers changed since.
    let mut rdi_from = Register::RDI;
    let mut written: Vec<Register> = vec![];
    // Whether esi (the tracer's event argument) was last set to 0 on this path.
    let mut event_zero: Option<bool> = None;
    // Whether rdx (its data argument) was last loaded from the word after the pointer.
    let mut data_loaded = false;
    let mut factory = iced_x86::InstructionInfoFactory::new();
    for _ in 0..MAX_TRACING_SIDE {
        let i = instrs.get(n).ok_or("ran off .text")?;
        let through_tracer = |i: &Instruction| {
            tracer.is_some_and(|(t, _)| {
                i.op0_kind() == OpKind::Register && i.op0_register() == t && !written.contains(&t)
            })
        };
        match (i.mnemonic(), i.flow_control()) {
            (Mnemonic::Call, FlowControl::Call) if i.op0_kind() == OpKind::NearBranch64 => {
                return Ok((rdi_from, i.near_branch_target()));
            }
            (Mnemonic::Call, FlowControl::IndirectCall)
            | (Mnemonic::Jmp, FlowControl::IndirectBranch)
                if through_tracer(i) =>
            {
                // `tracer_func(op, event, data)`: births pass PyRefTracer_CREATE (0); the
                // inlined `_Py_Dealloc`s test the same pointer and pass DESTROY (1).
                return match (event_zero, data_loaded) {
                    (Some(true), true) => Ok((rdi_from, TRACER_CALL)),
                    (Some(true), false) => Err("the tracer is not passed its data word".into()),
                    _ => Err("the tracer is not told PyRefTracer_CREATE (a dealloc?)".into()),
                };
            }
            // `cmp tracer, imm` (is it tracemalloc's?): flags only.
            (Mnemonic::Cmp, FlowControl::Next) if through_tracer(i) => {}
            (Mnemonic::Jne, FlowControl::ConditionalBranch)
                if n > 0
                    && instrs[n - 1].mnemonic() == Mnemonic::Cmp
                    && through_tracer(&instrs[n - 1]) =>
            {
                n = at(i.near_branch_target()).ok_or("jump into the middle of an instruction")?;
                continue;
            }
            (Mnemonic::Jmp, FlowControl::UnconditionalBranch)
                if i.op0_kind() == OpKind::NearBranch64 =>
            {
                n = at(i.near_branch_target()).ok_or("jump into the middle of an instruction")?;
                continue;
            }
            (_, FlowControl::Next) => {
                let regs = writes(&mut factory, i);
                if regs.contains(&Register::RDX) {
                    data_loaded = i.mnemonic() == Mnemonic::Mov
                        && i.op0_register() == Register::RDX
                        && tracer.is_some_and(|(_, f)| f.is_read_by(i, 8));
                }
                if regs.contains(&Register::RSI) {
                    let zero_reg = i.op0_kind() == OpKind::Register
                        && i.op1_kind() == OpKind::Register
                        && i.op0_register() == i.op1_register();
                    let zero_imm = i.mnemonic() == Mnemonic::Mov
                        && i.op1_kind() == OpKind::Immediate32
                        && i.immediate(1) == 0;
                    event_zero = Some((i.mnemonic() == Mnemonic::Xor && zero_reg) || zero_imm);
                }
                if regs.contains(&Register::RDI) {
                    // Only `mov rdi, R` of a register untouched since the jump is followed.
                    if i.mnemonic() == Mnemonic::Mov
                        && i.op0_register() == Register::RDI
                        && i.op1_kind() == OpKind::Register
                        && i.op1_register().is_gpr64()
                        && !written.contains(&i.op1_register())
                        && rdi_from == Register::RDI
                    {
                        rdi_from = i.op1_register();
                    } else {
                        return Err(format!("rdi comes from `{i}`"));
                    }
                }
                written.extend(regs.into_iter().filter(|&r| r != Register::RDI));
            }
            _ => return Err(format!("the tracing side branches at `{i}`")),
        }
        n += 1;
    }
    Err("no call on the tracing side".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: u64 = 0xa39f44;

    /// Real code: two functions of Debian's python3.11 (`tests/fixtures/newref/README.md`
    /// says how they were recorded), laid at their addresses in one buffer.
    fn code() -> (Vec<u8>, u64) {
        let parse = |text: &str| {
            let mut lines = text.lines();
            let addr = u64::from_str_radix(lines.next().unwrap().trim_start_matches("0x"), 16);
            let hex = lines.next().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (addr.unwrap(), bytes)
        };
        let long = parse(include_str!(
            "../../../tests/fixtures/newref/_PyLong_New-311-deb12.hex"
        ));
        let float = parse(include_str!(
            "../../../tests/fixtures/newref/PyFloat_FromDouble-311-deb12.hex"
        ));
        // _PyLong_New (0x5096f0) .. PyFloat_FromDouble (0x510690): int3 between.
        let mut buf = vec![0xccu8; (float.0 + float.1.len() as u64 - long.0) as usize];
        buf[..long.1.len()].copy_from_slice(&long.1);
        let at = (float.0 - long.0) as usize;
        buf[at..at + float.1.len()].copy_from_slice(&float.1);
        (buf, long.0)
    }

    #[test]
    fn finds_the_object_register_of_each_inlined_new_reference() {
        let (code, base) = code();
        let plan = find(&code, base, Flag::at(FLAG));
        let sites: Vec<(u64, Register)> = plan.sites.iter().map(|s| (s.vaddr, s.object)).collect();
        // objdump: `_PyLong_New`: mov edx,[flag]; test edx,edx; jne 0x50989f → mov rdi,rax;
        // `PyFloat_FromDouble`: the same at 0x5106d6 → 0x510723: mov rdi,rax.
        assert_eq!(
            sites,
            [(0x5097a2, Register::RAX), (0x5106d6, Register::RAX)],
            "{plan:?}"
        );
        assert_eq!(plan.callee, 0x5b6a40);
        assert!(plan.sites.iter().all(|s| s.instruction.starts_with("jne")));
    }

    #[test]
    fn nothing_reads_the_flag_nothing_found() {
        let (code, base) = code();
        let plan = find(&code, base, Flag::at(FLAG + 8));
        assert!(plan.sites.is_empty() && plan.skipped.is_empty());
    }

    #[test]
    fn a_tracing_side_that_reloads_rdi_is_skipped() {
        // mov eax,[rip+flag]; test eax,eax; jne +1; ret; mov rdi,[rsp]; call +0
        let ip = 0x1000u64;
        let rel = (FLAG as i64 - (ip as i64 + 6)) as i32;
        let mut code = vec![0x8b, 0x05];
        code.extend_from_slice(&rel.to_le_bytes());
        code.extend_from_slice(&[0x85, 0xc0, 0x75, 0x01, 0xc3]);
        code.extend_from_slice(&[0x48, 0x8b, 0x3c, 0x24, 0xe8, 0, 0, 0, 0, 0xc3]);
        let plan = find(&code, ip, Flag::at(FLAG));
        assert!(plan.sites.is_empty(), "{plan:?}");
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.skipped[0].1.contains("rdi comes from"), "{plan:?}");
    }

    /// The real interpreter, when it is the one this was written against.
    #[test]
    fn debian_python311_has_a_site_per_inlined_new_reference() {
        let path = std::path::Path::new("/usr/bin/python3.11");
        let Ok(bin) = crate::target::elf::Binary::open(path) else {
            eprintln!("no /usr/bin/python3.11: skipped");
            return;
        };
        if bin.build_id() != Some("571d98e01096d5c1c32420d229a6731a0a50d2a0") {
            eprintln!("another /usr/bin/python3.11: skipped");
            return;
        }
        let (flag, _) = bin.symbol("_Py_tracemalloc_config").unwrap();
        let (vaddr, text) = bin.section_at(".text").unwrap();
        let plan = find(text, vaddr, Flag::at(flag + 4));
        // objdump: 215 calls of 0x5b6a40 (_PyTraceMalloc_NewReference), 286 flag reads.
        assert_eq!(plan.callee, 0x5b6a40);
        assert!(
            plan.sites.len() >= 180,
            "{} sites, skipped {:?}",
            plan.sites.len(),
            plan.skipped
        );
        // PyFloat_FromDouble: mov edx,[flag]; test edx,edx; jne (object in rax).
        assert!(
            plan.sites
                .iter()
                .any(|s| s.vaddr == 0x5106d6 && s.object == Register::RAX)
        );
    }

    fn fixture(text: &str) -> (u64, Vec<u8>) {
        let mut lines = text.lines();
        let addr = u64::from_str_radix(lines.next().unwrap().trim_start_matches("0x"), 16);
        let hex = lines.next().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        (addr.unwrap(), bytes)
    }

    /// Debian sid's static python3.14 (3.14.10): `_PyRuntime` at 0xba07c0.
    fn sid_314_flag() -> Flag {
        let (nv, new_ref) = fixture(include_str!(
            "../../../tests/fixtures/newref/_Py_NewReference-314-sid.hex"
        ));
        let (sv, set) = fixture(include_str!(
            "../../../tests/fixtures/newref/PyRefTracer_SetTracer-314-sid.hex"
        ));
        tracer_flag(&new_ref, nv, &set, sv, 0xba07c0).expect("the tracer's word")
    }

    #[test]
    fn the_reference_tracer_word_is_found_in_code_that_tests_and_sets_it() {
        // objdump: `mov rax,[rip+0x4b3165] # ba30e0 <_PyRuntime+0x2920>`; the setter
        // `mov [rip+0x71c580],rdi # ba30e0`.
        assert_eq!(
            sid_314_flag(),
            Flag {
                addr: 0xba30e0,
                field: Some(0x2920)
            }
        );
        // The shared libpython3.15 reaches it through the GOT: `mov rdx,[rip+GOT];
        // mov rax,[rdx+0x2998]`; its setter first calls the old tracer, then stores.
        let (nv, new_ref) = fixture(include_str!(
            "../../../tests/fixtures/newref/_Py_NewReference-315-sid-so.hex"
        ));
        let (sv, set) = fixture(include_str!(
            "../../../tests/fixtures/newref/PyRefTracer_SetTracer-315-sid-so.hex"
        ));
        assert_eq!(
            tracer_flag(&new_ref, nv, &set, sv, 0x8d3460),
            Some(Flag {
                addr: 0x8d3460 + 0x2998,
                field: Some(0x2998)
            })
        );
        // A setter that stores elsewhere confirms nothing.
        assert_eq!(tracer_flag(&new_ref, nv, &new_ref, nv, 0x8d3460), None);
    }

    #[test]
    fn a_313_style_birth_calls_the_tracer_with_create_through_the_generic_path() {
        let (base, code) = fixture(include_str!(
            "../../../tests/fixtures/newref/PyFloat_FromDouble-314-sid.hex"
        ));
        let plan = find(&code, base, sid_314_flag());
        // objdump: the freelist path `mov rax,[flag]; mov qword [rcx],1; test rax,rax;
        // jne 0x56b4c9`, there `cmp rax,0x66af00` (tracemalloc's tracer, inlined) and
        // `jne 0x56b566`: `mov rdi,rcx; mov rdx,[flag+8]; xor esi,esi; call rax`.
        let sites: Vec<(u64, Register)> = plan.sites.iter().map(|s| (s.vaddr, s.object)).collect();
        assert_eq!(sites, [(0x56b3c4, Register::RCX)], "{plan:?}");
        assert_eq!(plan.callee, TRACER_CALL);
    }

    /// `mov rax,[rip+flag]; test rax,rax; jne +1; ret;` then the tracing side `mov rdi,rbx;
    /// mov rdx,[rip+flag+8]; mov esi,EVENT; call rax`.
    fn tracer_site(event: u8) -> (Vec<u8>, u64) {
        let ip = 0x1000u64;
        let rel = |at: u64, target: u64| ((target as i64) - (at as i64)) as i32;
        let mut code = vec![0x48, 0x8b, 0x05];
        code.extend_from_slice(&rel(ip + 7, FLAG).to_le_bytes());
        code.extend_from_slice(&[0x48, 0x85, 0xc0, 0x75, 0x01, 0xc3]);
        code.extend_from_slice(&[0x48, 0x89, 0xdf]); // mov rdi,rbx
        let at = ip + code.len() as u64;
        code.extend_from_slice(&[0x48, 0x8b, 0x15]); // mov rdx,[rip+..]
        code.extend_from_slice(&rel(at + 7, FLAG + 8).to_le_bytes());
        code.extend_from_slice(&[0xbe, event, 0, 0, 0]); // mov esi,event
        code.extend_from_slice(&[0xff, 0xd0, 0xc3]); // call rax; ret
        (code, ip)
    }

    #[test]
    fn the_tracer_told_of_a_dealloc_is_not_a_birth() {
        let (code, ip) = tracer_site(0);
        let plan = find(&code, ip, Flag::at(FLAG));
        let sites: Vec<(u64, Register)> = plan.sites.iter().map(|s| (s.vaddr, s.object)).collect();
        assert_eq!(sites, [(0x100a, Register::RBX)], "{plan:?}");
        // `mov esi,1`: PyRefTracer_DESTROY, an inlined _Py_Dealloc.
        let (code, ip) = tracer_site(1);
        let plan = find(&code, ip, Flag::at(FLAG));
        assert!(plan.sites.is_empty(), "{plan:?}");
        assert!(plan.skipped[0].1.contains("PyRefTracer_CREATE"), "{plan:?}");
    }

    /// Every build Debian sid's root file system (`scripts/setup`) holds: the word is found
    /// and hundreds of inlined births in the executables; the shared libraries inline
    /// few (they call the exported `_Py_NewReference`, which the plan probes at entry).
    #[test]
    #[ignore = "needs the sid root file system scripts/setup builds; `cargo xtask test` runs it"]
    fn sid_builds_have_their_inlined_births_found() {
        let root = std::env::var("LEAKSCOPE_SID_ROOT")
            .unwrap_or_else(|_| "/var/cache/leakscope/sid".into());
        let root = std::path::Path::new(&root);
        for minor in [13, 14, 15] {
            for (file, least) in [
                (format!("usr/bin/python3.{minor}"), 300),
                (
                    format!("usr/lib/x86_64-linux-gnu/libpython3.{minor}.so.1.0"),
                    1,
                ),
            ] {
                let path = root.join(&file);
                let bin = crate::target::elf::Binary::open(&path)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                let code = |name: &str| {
                    let (v, n) = bin.symbol(name).unwrap();
                    (v, bin.bytes_at(v, n).unwrap())
                };
                let (nv, new_ref) = code("_Py_NewReference");
                let (sv, set) = code("PyRefTracer_SetTracer");
                let runtime = bin.symbol("_PyRuntime").unwrap().0;
                let flag = tracer_flag(new_ref, nv, set, sv, runtime).expect(&file);
                let (vaddr, text) = bin.section_at(".text").unwrap();
                let plan = find(text, vaddr, flag);
                assert!(
                    plan.sites.len() >= least,
                    "{file}: {} sites",
                    plan.sites.len()
                );
                assert_eq!(plan.callee, TRACER_CALL, "{file}");
            }
        }
    }
}
