//! Tasks: each wires a model family, its data and the methods into runnable jobs.

pub mod audio_classification;
pub mod causal_lm;
pub mod image_classification;
pub mod text_classification;
pub mod transcription;
