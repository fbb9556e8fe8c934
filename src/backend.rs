//! The compute device named by a pipeline's `device:` key.

use burn::tensor::Device;

/// The burn device for `name`: `cpu` is burn's pure-Rust `flex` backend.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        other => anyhow::bail!(
            "device `{other}` is not available in this build: it runs on `cpu` (burn's flex backend); \
             GPU devices need a build with a GPU backend (see the README)"
        ),
    }
}
