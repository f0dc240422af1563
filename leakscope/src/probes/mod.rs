//! The probes: which functions of the interpreter to hook on this build and at which
//! decoded instruction (`plan`, `disasm`), and the kernel side seen from user space:
//! loading the BPF object, attaching pid-scoped uprobes, draining events, counters (`kernel`).
pub mod disasm;
pub mod kernel;
mod multi;
pub mod newref;
pub mod plan;
