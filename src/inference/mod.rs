//! Fine-tuned models in use: loading a model directory or a base plus an adapter, predicting,
//! evaluating on a labelled file, generating, transcribing, merging. The batch builders here
//! ([`text::TokenExamples`], [`image::ImageExamples`], [`audio::AudioExamples`]) are also what
//! the tasks train on: a split is scored the same way during training and after it.

pub mod audio;
pub mod image;
pub mod lm;
pub mod text;
pub mod transcriber;
