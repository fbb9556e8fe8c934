//! The built-in stage kinds, one file each.

use crate::stage::Registry;

/// The stage kinds that ship with `pipeline`.
pub fn builtin() -> Registry {
    Registry::new()
}
