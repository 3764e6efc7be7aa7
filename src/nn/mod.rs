//! Layers every architecture is built from, and the layers parameter-efficient methods add.
//! They compute with `ops` and know nothing of checkpoints, recipes or methods' policies: a LoRA
//! adapter is a layer here; which layers get one, what trains and how it is saved is
//! `methods::lora`.
//!
//! - [`dense`]: the linear layer (one `[rows, in] × [in, out]` product; optional LoRA adapter;
//!   optional quantized frozen weight); [`conv_bn`]: convolution + BatchNorm + activation (optional
//!   LoRA adapter); [`layer_norm`]; [`dropout`]; [`classification_head`].
//! - [`lora`], [`conv_lora`]: the adapters of a linear layer and of a convolution;
//!   [`soft_prompt`]: prompt tuning's trainable embeddings.
//! - [`layer_group`]: the units of gradual unfreezing, as a model declares them.

pub mod classification_head;
pub mod conv_bn;
pub mod conv_lora;
pub mod dense;
pub mod dropout;
pub mod layer_group;
pub mod layer_norm;
pub mod lora;
pub mod soft_prompt;
