//! Integration tests (one binary, to keep link time down).

mod common;
mod errors;
mod hub;
mod numerics;
mod peft;
mod quant;
mod training;
