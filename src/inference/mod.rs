//! Fine-tuned models in use: loading a model directory or a base plus an adapter, predicting,
//! evaluating on a labelled file, generating, transcribing, merging. The batch builders here
//! ([`text::TokenExamples`], [`image::ImageExamples`], [`audio::AudioExamples`]) are also what
//! the tasks train on: a split is scored the same way during training and after it.

pub mod audio;
pub mod gguf_export;
pub mod image;
pub mod lm;
pub mod text;
pub mod tokens;
pub mod transcriber;

/// The `k` most probable labels of one row of class probabilities, most probable first.
pub fn top_k(probabilities: &[f32], labels: &[String], k: usize) -> Vec<(String, f32)> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order.iter().take(k).map(|&i| (labels[i].clone(), probabilities[i])).collect()
}
