//! `pipeline`: declarative, content-cached experiment pipelines for text classification.
//!
//! A pipeline file ([`spec`]) lists stages; each stage kind implements
//! [`stage::Stage`]; the [`dag`] scheduler runs them and caches every output in
//! the [`store`] under a key made of everything that determines it.

pub mod allocator;
pub mod backend;
pub mod cli;
pub mod console;
pub mod dag;
pub mod data;
pub mod model;
pub mod report;
pub mod results;
pub mod search;
pub mod session;
pub mod spec;
pub mod stage;
pub mod stages;
pub mod store;
pub mod sweep;
pub mod tracking;
pub mod train;
