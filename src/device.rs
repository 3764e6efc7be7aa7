//! The one place that turns a device name into a burn device. burn 0.22 dispatches at run time,
//! so a GPU backend is one more arm here (behind its cargo feature), not a generic parameter
//! threaded through the code.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// The plain (inference) device for `name`.
pub fn select(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "cuda" | "gpu" => bail!("device '{name}' needs a build with GPU support; this build has the CPU backend only"),
        other => bail!("unknown device '{other}' (cpu)"),
    }
}

/// The same device with autodiff, for training.
pub fn training(base: &Device) -> Device {
    base.clone().autodiff()
}
