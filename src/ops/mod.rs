//! Kernels: the compute finetune writes itself instead of taking burn's composed ops, each with
//! its backward pass (when it has one) and a test against a reference. Everything above (`nn`,
//! the models) calls these; they know nothing of layers, models or recipes.
//!
//! - [`matmul`]: products in the run's precision; `bf16_gemm` and `bf16_matmul` are the
//!   AVX512-BF16 kernel and its autodiff node; [`frozen_matmul`] multiplies by a quantized frozen
//!   weight without keeping its dequantized copy for the backward pass.
//! - [`attention_softmax`], [`layer_norm`]: fused CPU training passes (burn recorded 5-10 ops).
//! - [`conv2d`]: the backward pass of pointwise and depthwise convolutions (GEMMs on the NCHW
//!   buffers, direct depthwise loops); [`batch_norm`]: BatchNorm with its activation, two passes
//!   each way on the NCHW buffer; [`relu`]: ReLU / ReLU6 in one pass each way; [`transpose`]:
//!   batched 2-D transposes (8×8 AVX blocks) for layout changes; [`buffer`]: output buffers
//!   without zero-filling for kernels that assign every element.
//! - [`head_loss`]: the causal-LM loss fused with a tied output projection, in chunks of rows
//!   (never the whole `[targets, vocab]` logits).
//! - [`checkpoint`]: gradient checkpointing of a block (recomputed in the backward pass).
//! - [`adamw`]: the optimizer's update in one pass; [`dropout_mask`]: the mask generator.
//! - [`context`]: the run's precision and dropout generator; [`device`]: device names and access
//!   to the CPU backend's buffers; [`rng`], [`simd`], [`simd_math`]: shared helpers.

pub mod adamw;
pub mod attention_softmax;
pub mod batch_norm;
mod bf16_gemm;
mod bf16_matmul;
pub mod buffer;
pub mod checkpoint;
pub mod context;
pub mod conv2d;
pub mod device;
pub mod dropout_mask;
pub mod frozen_matmul;
pub mod head_loss;
pub mod layer_norm;
pub mod matmul;
pub mod relu;
pub mod rng;
pub mod simd;
pub mod simd_math;
pub mod transpose;

/// Whether this CPU runs the AVX512-BF16 GEMM (`precision = "bf16"` pays off).
pub use bf16_gemm::available as bf16_gemm_available;
