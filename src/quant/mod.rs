//! Quantized storage for frozen weights.

pub mod nf4;
