//! Where exactly to put an entry probe, decided by a real x86-64 decoder (iced-x86).
//!
//! A uprobe costs ~1 µs when the kernel *emulates* the probed instruction (push, nop,
//! relative jmp/call/jcc) and 11–16 µs when it must single-step it (most others, e.g. `mov`).
//! Many hot CPython functions start with a `mov`, so we move the probe forward to the first
//! emulated instruction, provided that it is still the same event:
//! - every instruction before it is straight-line (no branch, call or return), so every call
//!   of the function reaches it exactly once;
//! - no branch anywhere in the function lands after the entry and at or before it (that
//!   would skip it or fire it twice);
//! - the argument register the program reads has not been written yet.
//!
//! Offsets come only from decoded instruction boundaries; when no candidate qualifies the
//! answer is the entry itself (offset 0), which is always correct.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbePoint {
    /// Bytes from the function's entry.
    pub offset: u64,
    /// The kernel emulates the instruction there (cheap hit).
    pub emulated: bool,
    /// The instruction, for `--stats` and error messages.
    pub instruction: String,
}

/// Is this one of the instructions the x86 uprobe code emulates instead of single-stepping?
pub fn kernel_emulates(instr: &Instruction) -> bool {
    match instr.mnemonic() {
        Mnemonic::Nop => true,
        Mnemonic::Push => instr.op0_kind() == OpKind::Register && instr.op0_register().is_gpr64(),
        Mnemonic::Call | Mnemonic::Jmp => instr.op0_kind() == OpKind::NearBranch64,
        _ => instr.is_jcc_short_or_near(),
    }
}

fn writes(info_factory: &mut InstructionInfoFactory, instr: &Instruction, reg: Register) -> bool {
    info_factory.info(instr).used_registers().iter().any(|u| {
        u.register().full_register() == reg
            && matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
    })
}

/// The probe point at the function's entry: always an instruction boundary.
pub fn first_instruction(code: &[u8], ip: u64) -> ProbePoint {
    let first = Decoder::with_ip(64, code, ip, DecoderOptions::NONE).decode();
    ProbePoint {
        offset: 0,
        emulated: kernel_emulates(&first),
        instruction: format!("{first}"),
    }
}

/// `code` is the whole function (its symbol size), loaded at `ip`; `arg` the register the
/// probe reads (RDI for the first argument, RSI for the second).
pub fn entry_probe(code: &[u8], ip: u64, arg: Register) -> ProbePoint {
    probe_keeping(code, ip, &[arg])
}

/// Where an entry probe and a return probe can share one breakpoint: as `entry_probe`, and
/// also before anything moved the stack pointer (the return probe takes the return address
/// at it) or wrote one of the function's first `args` argument registers (at most 3).
pub fn call_probe(code: &[u8], ip: u64, args: usize) -> ProbePoint {
    let mut keep = vec![Register::RSP];
    keep.extend(
        [Register::RDI, Register::RSI, Register::RDX]
            .iter()
            .take(args),
    );
    probe_keeping(code, ip, &keep)
}

fn probe_keeping(code: &[u8], ip: u64, keep: &[Register]) -> ProbePoint {
    let instrs: Vec<Instruction> = Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid())
        .collect();
    let targets: Vec<u64> = instrs
        .iter()
        .filter(|i| matches!(i.op0_kind(), OpKind::NearBranch64))
        .map(|i| i.near_branch_target())
        .collect();
    let mut factory = InstructionInfoFactory::new();
    let entry = |i: &Instruction, emulated| ProbePoint {
        offset: i.ip() - ip,
        emulated,
        instruction: format!("{i}"),
    };
    let Some(first) = instrs.first() else {
        return ProbePoint {
            offset: 0,
            emulated: false,
            instruction: "?".into(),
        };
    };
    for instr in &instrs {
        if instr.ip() > ip && targets.iter().any(|&t| t > ip && t <= instr.ip()) {
            break;
        }
        if kernel_emulates(instr) {
            return entry(instr, true);
        }
        if instr.flow_control() != FlowControl::Next
            || keep.iter().any(|&r| writes(&mut factory, instr, r))
        {
            break;
        }
    }
    entry(first, kernel_emulates(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(code: &[u8], arg: Register, offset: u64, emulated: bool) {
        let p = entry_probe(code, 0x1000, arg);
        assert_eq!((p.offset, p.emulated), (offset, emulated), "{p:?}");
    }

    // Bytes below are the real first instructions of pyenv 3.11.7's libpython functions.

    #[test]
    fn py_newreference_moves_to_push_rbx() {
        // mov rax,[rip+..]; push rbx; mov rbx,rdi
        let code = [
            0x48, 0x8b, 0x05, 0x01, 0x99, 0x29, 0x00, 0x53, 0x48, 0x89, 0xfb,
        ];
        check(&code, Register::RDI, 7, true);
    }

    #[test]
    fn pyobject_free_wrapper_has_no_cheap_point() {
        // mov rsi,rdi; mov rdi,[rip+..]; jmp [rip+..]  (rdi overwritten before the jmp)
        let code = [
            0x48, 0x89, 0xfe, 0x48, 0x8b, 0x3d, 0xe6, 0xcf, 0x2a, 0x00, 0xff, 0x25, 0x00, 0xd0,
            0x2a, 0x00,
        ];
        check(&code, Register::RDI, 0, false);
    }

    #[test]
    fn pymalloc_free_probes_the_jcc_reading_rsi() {
        // test rsi,rsi; je +0x7b; mov rcx,rsi
        let code = [0x48, 0x85, 0xf6, 0x74, 0x7b, 0x48, 0x89, 0xf1];
        check(&code, Register::RSI, 3, true);
    }

    #[test]
    fn push_at_entry_stays_at_entry() {
        check(&[0x41, 0x56, 0x41, 0x55], Register::RDI, 0, true); // push r14; push r13
    }

    #[test]
    fn stops_when_the_argument_is_overwritten() {
        // mov rdi,[rax]; push rbx
        check(&[0x48, 0x8b, 0x38, 0x53], Register::RDI, 0, false);
        // ...but another register's write does not matter
        check(&[0x48, 0x8b, 0x30, 0x53], Register::RDI, 3, true);
    }

    #[test]
    fn never_past_a_branch_target() {
        // mov rax,[rax]; push rbx; ...; jmp back to the push: the push is a loop head
        let code = [0x48, 0x8b, 0x00, 0x53, 0x90, 0xeb, 0xfc];
        check(&code, Register::RDI, 0, false);
    }

    #[test]
    fn a_call_probe_moves_past_argument_copies_but_not_past_the_stack() {
        // PyMem_Malloc (pyenv 3.11.7): mov rsi,rdi; test rdi,rdi; js +0x10
        let code = [0x48, 0x89, 0xfe, 0x48, 0x85, 0xff, 0x78, 0x10];
        let p = call_probe(&code, 0x1000, 1);
        assert_eq!((p.offset, p.emulated), (6, true), "{p:?}");
        // PyMem_Realloc: mov rdx,rsi; test rsi,rsi; js: rdx is not one of its 2 arguments...
        let code = [0x48, 0x89, 0xf2, 0x48, 0x85, 0xf6, 0x78, 0x18];
        assert_eq!(call_probe(&code, 0x1000, 2).offset, 6);
        // ...but would be a third's
        assert_eq!(call_probe(&code, 0x1000, 3).offset, 0);
        // mov rdi,rsi: the first argument overwritten
        assert_eq!(call_probe(&[0x48, 0x89, 0xf7, 0x90], 0x1000, 1).offset, 0);
        // sub rsp,8; push rbx: the stack moved before the push
        let code = [0x48, 0x83, 0xec, 0x08, 0x53];
        assert_eq!(call_probe(&code, 0x1000, 1).offset, 0);
        // push rbx at the entry is the entry
        assert_eq!(call_probe(&[0x53, 0x90], 0x1000, 1).offset, 0);
    }

    #[test]
    fn never_past_a_return() {
        // mov eax,1; ret; push rbx
        check(&[0xb8, 0x01, 0, 0, 0, 0xc3, 0x53], Register::RDI, 0, false);
    }
}
