//! What the events point at, read from the target's memory (through `target::Memory`) and
//! cached: type objects (`types`) and the code objects of captured stacks (`symbols`).
pub mod symbols;
pub mod types;
