//! End-to-end tests of the `pgq` facade, including compatibility with the reference PGQ
//! extension (Skytools PGQ 3.5).

mod compat;
mod migrate;
mod pgqd;
