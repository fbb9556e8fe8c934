//! The built-in stage kinds, one file each.

mod download;

pub use download::{Download, DownloadConfig};

use crate::stage::Registry;

/// The stage kinds that ship with `pipeline`.
pub fn builtin() -> Registry {
    Registry::new().with(Download)
}
