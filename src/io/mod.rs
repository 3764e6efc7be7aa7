//! File formats and storage: safetensors, the hub cache, atomic writes, parameter mapping.

pub mod atomic;
pub mod ctranslate2;
pub mod gguf;
pub mod hub;
pub mod params;
pub mod peft;
pub mod pickle;
pub mod pth;
pub mod safetensors;
