//! The pure core: no I/O, no clock, cannot fail. The live set and the growth rule
//! (`aggregate`), and interned allocation sites (`sites`).
pub mod aggregate;
pub mod sites;
