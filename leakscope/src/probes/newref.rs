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
//! Found by a linear sweep of `.text` with iced-x86 (GCC emits no data in `.text`, and each
//! match is three decoded instructions in a row: load/compare, test, jump). The callee is
//! not exported; it is the function nearly every match calls, and a site whose tracing
//! side calls anything else, or takes its argument from memory, is skipped (and listed).
//! Pure: works on the bytes of the file.
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
    /// `_PyTraceMalloc_NewReference`, the function the tracing side calls.
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
const MAX_TRACING_SIDE: usize = 8;

/// The sites in `.text` (`text` at link address `text_vaddr`) that test the word at `flag`
/// (`&_Py_tracemalloc_config.tracing`).
pub fn find(text: &[u8], text_vaddr: u64, flag: u64) -> NewRefPlan {
    let instrs: Vec<Instruction> = Decoder::with_ip(64, text, text_vaddr, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let at = |ip: u64| instrs.binary_search_by_key(&ip, |i| i.ip()).ok();
    // (jump, register holding the object, callee)
    let mut candidates: Vec<(usize, Passed)> = vec![];
    for (n, i) in instrs.iter().enumerate() {
        let reads_flag = i.is_ip_rel_memory_operand() && i.ip_rel_memory_address() == flag;
        if !reads_flag {
            continue;
        }
        // `mov r32, [flag]; test r32, r32; jcc`, or `cmp dword [flag], 0; jcc`.
        let jump = match i.mnemonic() {
            Mnemonic::Mov if i.op0_kind() == OpKind::Register => {
                let r = i.op0_register();
                match (instrs.get(n + 1), instrs.get(n + 2)) {
                    (Some(t), Some(_))
                        if t.mnemonic() == Mnemonic::Test
                            && t.op0_kind() == OpKind::Register
                            && t.op0_register() == r
                            && t.op1_kind() == OpKind::Register
                            && t.op1_register() == r =>
                    {
                        Some(n + 2)
                    }
                    _ => None,
                }
            }
            Mnemonic::Cmp if i.op1_kind() == OpKind::Immediate8to32 && i.immediate(1) == 0 => {
                Some(n + 1)
            }
            _ => None,
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
        candidates.push((jump, object_passed(&instrs, start, &at)));
    }
    // The callee nearly every site calls.
    let mut callees: hashbrown::HashMap<u64, usize> = hashbrown::HashMap::new();
    for (_, c) in &candidates {
        if let Ok((_, f)) = c {
            *callees.entry(*f).or_insert(0) += 1;
        }
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

/// Follows the tracing side from `start` (unconditional jumps included) to its call:
/// which register, as it was at the jump, reaches `rdi`, and the call's target.
fn object_passed(
    instrs: &[Instruction],
    start: usize,
    at: &dyn Fn(u64) -> Option<usize>,
) -> Passed {
    let mut n = start;
    // rdi holds what `rdi_from` held at the jump; `written`: registers changed since.
    let mut rdi_from = Register::RDI;
    let mut written: Vec<Register> = vec![];
    let mut factory = iced_x86::InstructionInfoFactory::new();
    for _ in 0..MAX_TRACING_SIDE {
        let i = instrs.get(n).ok_or("ran off .text")?;
        match (i.mnemonic(), i.flow_control()) {
            (Mnemonic::Call, FlowControl::Call) if i.op0_kind() == OpKind::NearBranch64 => {
                return Ok((rdi_from, i.near_branch_target()));
            }
            (Mnemonic::Jmp, FlowControl::UnconditionalBranch)
                if i.op0_kind() == OpKind::NearBranch64 =>
            {
                n = at(i.near_branch_target()).ok_or("jump into the middle of an instruction")?;
                continue;
            }
            (_, FlowControl::Next) => {
                let regs: Vec<Register> = factory
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
                    .collect();
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
        let plan = find(&code, base, FLAG);
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
        let plan = find(&code, base, FLAG + 8);
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
        let plan = find(&code, ip, FLAG);
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
        let plan = find(text, vaddr, flag + 4);
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
}
