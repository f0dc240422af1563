//! What the events point at, read from the target's memory (through `target::Memory`) and
//! cached: type objects (`types`), the code objects of captured stacks (`symbols`), and
//! whether objects followed between sampling windows are still alive (`follow`), native
//! allocations' mixed stacks (`native`).
pub mod follow;
pub mod native;
pub mod symbols;
pub mod types;
