//! The compute device named by a pipeline's `device:` key.
//!
//! `cpu` is burn's pure-Rust `flex` backend. A build with the `tch` feature
//! adds libtorch: `cuda:N` (a whole GPU) and `libtorch` (libtorch on the
//! CPU, which runs the GPU code path on a machine without a GPU).

use burn::tensor::Device;

/// The burn device for `name`.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match parse(name)? {
        Named::Cpu => Ok(Device::flex()),
        Named::Libtorch => libtorch::cpu(),
        Named::Cuda(index) => libtorch::cuda(index),
    }
}

/// What a device computes with, for cache keys: `cpu`, `libtorch` or `cuda`.
/// Every `cuda:N` gives the same bits, so trials that lease different GPUs
/// share their cached stages.
pub fn kind(name: &str) -> anyhow::Result<&'static str> {
    Ok(match parse(name)? {
        Named::Cpu => "cpu",
        Named::Libtorch => "libtorch",
        Named::Cuda(_) => "cuda",
    })
}

/// A parsed device name.
enum Named {
    Cpu,
    Libtorch,
    Cuda(usize),
}

fn parse(name: &str) -> anyhow::Result<Named> {
    match name {
        "cpu" => Ok(Named::Cpu),
        "libtorch" => Ok(Named::Libtorch),
        "cuda" => Ok(Named::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Ok(Named::Cuda(index)),
            _ => anyhow::bail!(
                "unknown device `{other}`: expected `cpu`, `cuda:N` (a GPU, N from 0) or `libtorch` (libtorch on the CPU)"
            ),
        },
    }
}

/// libtorch devices, in builds with the `tch` feature.
#[cfg(feature = "tch")]
#[allow(deprecated)] // burn marks its libtorch backend deprecated in favour of CubeCL, which cannot build here
mod libtorch {
    use burn::tensor::Device;

    pub fn cpu() -> anyhow::Result<Device> {
        Ok(Device::libtorch())
    }

    pub fn cuda(index: usize) -> anyhow::Result<Device> {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if index >= count {
            anyhow::bail!("device `cuda:{index}` does not exist: libtorch sees {count} CUDA device(s)");
        }
        Ok(Device::libtorch_cuda(index))
    }
}

/// Without the `tch` feature, libtorch devices are refused with the reason.
#[cfg(not(feature = "tch"))]
mod libtorch {
    use burn::tensor::Device;

    const REASON: &str =
        "this build has no GPU backend: build with `--features tch` (libtorch from PyTorch 2.9.0, see the README)";

    pub fn cpu() -> anyhow::Result<Device> {
        anyhow::bail!("device `libtorch` is not available: {REASON}")
    }

    pub fn cuda(index: usize) -> anyhow::Result<Device> {
        anyhow::bail!("device `cuda:{index}` is not available: {REASON}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gpu_index_is_one_kind_and_bad_names_are_refused() {
        assert_eq!(kind("cpu").unwrap(), "cpu");
        assert_eq!(kind("cuda:0").unwrap(), "cuda");
        assert_eq!(kind("cuda:3").unwrap(), kind("cuda").unwrap());
        assert_eq!(kind("libtorch").unwrap(), "libtorch");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let message = kind(bad).unwrap_err().to_string();
            assert!(
                message.contains(&format!("`{bad}`")) && message.contains("cuda:N"),
                "{message}"
            );
        }
    }
}
