//! Reading the target: its `/proc` entries, its memory, the interpreter's files on disk and
//! where the interpreter is mapped. Read-only, except `pause` (opt-in `census --pause`) and
//! `spawn` (`trace -- PROGRAM`: a program leakscope starts itself, stopped until attached).
pub mod elf;
pub mod interpreter;
pub mod memory;
pub mod pause;
pub mod process;
pub mod spawn;

pub use memory::{FakeMemory, Mem, Memory, ReadError};
pub use process::Process;
