//! Quantized storage for frozen weights: bitsandbytes' NF4/FP4 with double quantization
//! ([`nf4`], our own: burn has none) and llama.cpp's GGUF blocks ([`ggml`]), behind one
//! [`FrozenWeight`]. Which layers get quantized, and LoRA on top (QLoRA), is `methods::lora::qlora`;
//! the product with a frozen weight is `ops::frozen_matmul`.

pub mod ggml;
pub mod nf4;

/// A frozen linear weight held quantized (`[out, in]`, PyTorch layout): NF4/FP4 for QLoRA, or
/// llama.cpp's blocks straight from a GGUF file. Layers dequantize it per forward pass.
#[derive(Debug)]
pub enum FrozenWeight {
    Nf4(nf4::Quantized4bit),
    Ggml(ggml::GgmlWeight),
}

impl FrozenWeight {
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::Nf4(q) => q.shape,
            Self::Ggml(g) => g.shape,
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Nf4(q) => q.dequantize(),
            Self::Ggml(g) => g.dequantize(),
        }
    }

    /// The dequantized weight as a constant tensor in our `[in, out]` layout (the transpose of
    /// the stored PyTorch `[out, in]`).
    pub fn to_tensor(&self, device: &burn::prelude::Device) -> burn::prelude::Tensor<2> {
        let data = burn::prelude::TensorData::new(self.dequantize(), self.shape());
        burn::prelude::Tensor::<2>::from_data(data, device).transpose()
    }

    /// Bytes held (codes and statistics).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Nf4(q) => q.bytes(),
            Self::Ggml(g) => g.bytes(),
        }
    }
}

use serde::{Deserialize, Serialize};

/// `[quantization]` in a recipe: how frozen linear weights are stored (QLoRA).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// Only 4 is supported.
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// `"nf4"` (default), `"fp4"`, or `"gguf"` (a GGUF model's own blocks, see below).
    #[serde(rename = "type", default = "default_type")]
    pub quant_type: String,
    #[serde(default = "default_true")]
    pub double_quant: bool,
    #[serde(default = "default_blocksize")]
    pub blocksize: usize,
    /// The dtype layers compute in; only `"f32"` on the CPU backend today.
    #[serde(default = "default_compute")]
    pub compute_dtype: String,
}

fn default_bits() -> u32 {
    4
}
fn default_type() -> String {
    "nf4".into()
}
fn default_true() -> bool {
    true
}
fn default_blocksize() -> usize {
    64
}
fn default_compute() -> String {
    "f32".into()
}

impl QuantConfig {
    /// `type = "gguf"`: keep a GGUF model's own block quantization (Q4_1, Q8_0, ...) for the
    /// frozen base instead of re-quantizing to NF4.
    pub fn keeps_file_quantization(&self) -> bool {
        self.quant_type == "gguf"
    }

    pub fn validate(&self) -> anyhow::Result<nf4::QuantType> {
        anyhow::ensure!(self.bits == 4, "quantization.bits = {} is not supported (4)", self.bits);
        anyhow::ensure!(
            self.compute_dtype == "f32",
            "quantization.compute_dtype = {:?}: only \"f32\" on this backend",
            self.compute_dtype
        );
        anyhow::ensure!(self.blocksize >= 2 && self.blocksize.is_multiple_of(2), "quantization.blocksize must be even");
        match self.quant_type.as_str() {
            "nf4" => Ok(nf4::QuantType::Nf4),
            "fp4" => Ok(nf4::QuantType::Fp4),
            other => anyhow::bail!("quantization.type = {other:?} is not supported (nf4, fp4)"),
        }
    }
}

/// What quantizing a model changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuantReport {
    pub layers: usize,
    pub parameters: usize,
    /// Bytes of those weights in f32, and quantized (codes + statistics).
    pub f32_bytes: usize,
    pub quantized_bytes: usize,
}

impl QuantReport {
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.quantized_bytes as f64 / self.parameters.max(1) as f64
    }
}
