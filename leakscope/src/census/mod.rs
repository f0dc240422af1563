//! The census: live objects by type from the target's own GC lists, with no probe. The
//! validated, bounded walk (`walker`) and the counts across snapshots (`series`, pure).
#[cfg(test)]
pub(crate) mod fake;
pub mod series;
pub mod walker;

pub use series::{BLIND_SPOT, CensusRow, Series, plain_rows};
pub use walker::{Census, Counts, Heap, MAX_OBJECTS, WalkStats, Walker};
