//! The one place that turns a device name into a burn device. burn 0.22 dispatches at run time,
//! so a GPU backend is one more arm here (behind its cargo feature), not a generic parameter
//! threaded through the code.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// The plain (inference) device for `name`: `cpu`, or (in a `--features cuda` build) `cuda` /
/// `cuda:N` for the N-th GPU.
pub fn select(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        gpu if gpu == "cuda" || gpu == "gpu" || gpu.starts_with("cuda:") => cuda(gpu),
        other => bail!("unknown device '{other}' (expected cpu, cuda or cuda:N)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(name: &str) -> Result<Device> {
    let index = match name.strip_prefix("cuda:") {
        Some(n) => {
            n.parse::<usize>().map_err(|_| anyhow::anyhow!("device '{name}': expected cuda:N with N a number"))?
        }
        None => 0,
    };
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(name: &str) -> Result<Device> {
    bail!("device '{name}' needs a build with `--features cuda`; this build has the CPU backend only")
}

/// Whether `device` computes on the host CPU (burn's flex backend), with or without autodiff.
pub fn is_host(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// The same device with autodiff, for training.
pub fn training(base: &Device) -> Device {
    base.clone().autodiff()
}

/// The autodiff tensor type of the CPU backend (what a tensor on `Device::flex().autodiff()` holds).
pub type HostAutodiffTensor =
    <burn::backend::Autodiff<burn::backend::Flex> as burn::backend::BackendTypes>::FloatTensorPrimitive;

/// The CPU backend's tensor behind `t`, for ops that work on its buffer directly. `t` must be on
/// the CPU without autodiff (callers check `is_host` first; anything else is a bug).
pub fn host_tensor<const D: usize>(t: burn::prelude::Tensor<D>) -> burn_flex::FlexTensor {
    match t.try_into_primitive::<burn::backend::Flex>() {
        Ok(t) => t,
        Err(err) => panic!("a CPU tensor is not a Flex primitive: {err:?}"),
    }
}

/// The CPU autodiff tensor behind `t` (on `Device::flex().autodiff()`), for custom autodiff nodes.
pub fn host_autodiff_tensor<const D: usize>(t: burn::prelude::Tensor<D>) -> HostAutodiffTensor {
    match t.try_into_primitive::<burn::backend::Autodiff<burn::backend::Flex>>() {
        Ok(t) => t,
        Err(err) => panic!("an autodiff CPU tensor is not an Autodiff<Flex> primitive: {err:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_resolve_or_explain() {
        let cpu = super::select("cpu").unwrap();
        assert!(super::is_host(&cpu) && super::is_host(&super::training(&cpu)));
        let err = super::select("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device 'tpu'"), "{err}");
        let err = super::select("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda"), "{err}");
        #[cfg(not(feature = "cuda"))]
        assert!(super::select("cuda").unwrap_err().to_string().contains("--features cuda"));
    }
}
