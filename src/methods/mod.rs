//! Fine-tuning methods: which parameters train, when, and at what learning rate.
//!
//! - `full`: everything trains.
//! - `transfer`: the head and the top `trainable_layers` encoder layers train from the start;
//!   gradual unfreezing adds one layer group at a time, top-down (embeddings last), and
//!   layer-wise learning-rate decay scales each group's rate by its distance from the head.
//! - `feature-extraction`: the encoder never trains; its features are computed once and cached
//!   ([`feature_extraction`]), and only the head is trained on them.
//! - `lora`: low-rank adapters on chosen linear layers ([`lora`]); the base stays frozen.
//! - `prompt-tuning`: a trainable soft prompt before the input ([`prompt_tuning`]).

pub mod feature_extraction;
pub mod lora;
pub mod prompt_tuning;
pub mod transfer;

pub use transfer::TrainPlan;
