//! Data handling shared by the stages: tables, fetching, randomness,
//! vocabularies and batches.

pub mod batches;
pub mod fetch;
pub mod prefix;
pub mod rng;
pub mod table;
pub mod vocab;
