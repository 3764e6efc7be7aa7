//! Integration tests (one binary, to keep link time down).

mod advise;
mod architecture;
mod causal_lm;
mod common;
mod errors;
mod gguf_export;
mod hostile;
mod hub;
mod matrix;
mod numerics;
mod peft;
mod quant;
mod speech;
mod sweep;
mod training;
mod vision;
