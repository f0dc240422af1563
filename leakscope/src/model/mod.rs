//! The pure core: no I/O, no clock, cannot fail. The live set and the growth rule
//! (`aggregate`), interned allocation sites (`sites`), the overhead budget (`budget`),
//! retention chains over a heap view (`chains`) and findings grouped from them (`findings`).
pub mod aggregate;
pub mod budget;
pub mod chains;
pub mod findings;
pub mod sites;
