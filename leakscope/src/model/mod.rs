//! The pure core: no I/O, no clock, cannot fail. The live set and the growth rule
//! (`aggregate`), interned allocation sites (`sites`), and the overhead budget (`budget`).
pub mod aggregate;
pub mod budget;
pub mod sites;
