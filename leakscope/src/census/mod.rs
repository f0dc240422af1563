//! The census: live objects by type from the target's own GC lists, with no probe. The
//! validated, bounded walk (`walker`), the counts across snapshots (`series`, pure), and the
//! allocator census over pymalloc's arenas (`pymalloc`), which sees objects the GC lists do
//! not hold.
#[cfg(test)]
pub(crate) mod fake;
pub mod graph;
pub mod pymalloc;
pub mod series;
pub mod walker;

pub use pymalloc::{Allocator, AllocatorCensus, AllocatorStats, ClassRow, ClassSeries, SizeClass};
pub use series::{BLIND_SPOT, CensusRow, Series, plain_rows};
pub use walker::{Census, Counts, Heap, MAX_OBJECTS, WalkStats, Walker};
