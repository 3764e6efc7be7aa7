//! Tasks: each a thin adapter over the shared `pipeline` — how its model is loaded and saved,
//! how batches are built and scored, and what its report adds. `train` picks the task a recipe
//! names.

pub mod audio_classification;
pub mod causal_lm;
pub mod image_classification;
pub mod text_classification;
pub mod token_classification;
pub mod transcription;

use crate::pipeline::{ReportExtra, TrainReport};
use crate::recipe::{Recipe, Task};
use anyhow::Result;

/// A finished run's report, as JSON (`results.json`) and as the summary lines to print.
pub struct Outcome {
    pub json: serde_json::Value,
    pub summary: Vec<String>,
}

impl<E: ReportExtra> TryFrom<TrainReport<E>> for Outcome {
    type Error = anyhow::Error;
    fn try_from(report: TrainReport<E>) -> Result<Self> {
        Ok(Self { json: serde_json::to_value(&report)?, summary: report.summary() })
    }
}

/// Train per `recipe` (with `resume`, continue its run), whatever its task.
pub fn train(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<Outcome> {
    match recipe.task {
        Task::TextClassification => text_classification::run(recipe, resume, show_progress)?.try_into(),
        Task::CausalLm => causal_lm::run(recipe, resume, show_progress)?.try_into(),
        Task::ImageClassification => image_classification::run(recipe, resume, show_progress)?.try_into(),
        Task::AudioClassification => audio_classification::run(recipe, resume, show_progress)?.try_into(),
        Task::Transcription => transcription::run(recipe, resume, show_progress)?.try_into(),
        Task::TokenClassification => token_classification::run(recipe, resume, show_progress)?.try_into(),
    }
}
