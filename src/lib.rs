//! finetune: fine-tune pretrained Hugging Face models in Rust on burn.
//!
//! Layout: [`models`] (architectures and loading), [`methods`] (what trains, and how),
//! [`data`] (datasets, tokenization, batching), [`training`] (the loop, optimizer, checkpoints),
//! [`tasks`] (recipes wiring them for a task), [`io`] (file formats, hub cache), [`cli`].

pub mod allocator;
pub mod cli;
pub mod data;
pub mod inference;
pub mod io;
pub mod methods;
pub mod models;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod quant;
pub mod recipe;
pub mod tasks;
pub mod training;
