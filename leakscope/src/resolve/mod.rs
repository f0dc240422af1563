//! What the events point at, read from the target's memory (through `target::Memory`) and
//! cached: type objects (`types`), the code objects of captured stacks (`symbols`), and
//! whether objects followed between sampling windows are still alive (`follow`).
pub mod follow;
pub mod symbols;
pub mod types;
