//! What a recipe must satisfy before a run starts: the task × method table, the sections a
//! method needs, and each section's values — checked only for the tasks that read that section.
//! Nothing here reads a file; `finetune train` calls this before it resolves the model, reads
//! data or creates the run directory.

use super::{Recipe, Task};
use crate::methods::Method;
use crate::ops::context::Precision;
use anyhow::{Context, Result, bail};

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::TextClassification => "text-classification",
            Self::CausalLm => "causal-lm",
            Self::ImageClassification => "image-classification",
            Self::AudioClassification => "audio-classification",
            Self::Transcription => "transcription",
            Self::TokenClassification => "token-classification",
        }
    }

    /// The methods this task runs: the task × method table.
    pub fn methods(self) -> &'static [Method] {
        use Method::*;
        match self {
            Self::TextClassification => &[FeatureExtraction, Full, Transfer, Lora, PromptTuning],
            Self::CausalLm => &[Full, Lora, PromptTuning],
            Self::ImageClassification => &[FeatureExtraction, Full, Transfer, Lora],
            Self::AudioClassification => &[FeatureExtraction, Full, Lora],
            Self::Transcription => &[Full, Lora],
            Self::TokenClassification => &[Full, Transfer, Lora],
        }
    }

    /// Whether the task can hold its frozen base quantized under LoRA (QLoRA).
    pub fn quantizes(self) -> bool {
        matches!(self, Self::TextClassification | Self::TokenClassification | Self::CausalLm)
    }

    /// Whether the task ends in a classification head (`[head]` applies).
    fn has_head(self) -> bool {
        matches!(
            self,
            Self::TextClassification
                | Self::TokenClassification
                | Self::ImageClassification
                | Self::AudioClassification
        )
    }
}

impl Recipe {
    /// A regression or multi-label head (text classification only) selects checkpoints on loss or
    /// a correlation / micro- or macro-F1 or exact-match accuracy, a token classifier on entity
    /// F1, word accuracy or loss, a classifier on accuracy, macro-F1 or loss.
    fn check_problem_type(&self) -> Result<()> {
        use crate::nn::classification_head::ProblemType;
        use crate::training::config::Metric;
        let problem = self.head.problem_type;
        if problem != ProblemType::SingleLabelClassification && self.task != Task::TextClassification {
            bail!("head.problem_type = \"{}\" is available for task = \"text-classification\" only", problem.name());
        }
        let regression = problem == ProblemType::Regression;
        let sets = problem == ProblemType::MultiLabelClassification;
        let metric = self.training.metric;
        let tagging = self.task == Task::TokenClassification;
        let fits = match metric {
            Metric::Loss => true,
            Metric::Accuracy => !regression,
            Metric::Pearson | Metric::Spearman => regression,
            Metric::MacroF1 => !regression && !tagging,
            Metric::F1 => tagging,
            Metric::MicroF1 => sets,
        };
        if !fits {
            let (choices, what) = match (regression, sets, tagging) {
                (true, ..) => ("pearson, spearman, loss", "head.problem_type = \"regression\""),
                (_, true, _) => (
                    "micro_f1, macro_f1, accuracy (exact match), loss",
                    "head.problem_type = \"multi_label_classification\"",
                ),
                (.., true) => ("f1, accuracy, loss", "task = \"token-classification\""),
                _ => ("accuracy, macro_f1, loss", "a classifier"),
            };
            bail!("training.metric = \"{}\" does not apply to {what}; choose one of: {choices}", metric.name());
        }
        Ok(())
    }

    /// Check the recipe as far as that is possible without reading a file.
    pub fn validate(&self) -> Result<()> {
        let task = self.task;
        if !task.methods().contains(&self.method) {
            let names: Vec<&str> = task.methods().iter().map(|m| m.name()).collect();
            bail!(
                "method = \"{}\" is not available for task = \"{}\"; it supports: {}",
                self.method.name(),
                task.name(),
                names.join(", ")
            );
        }
        self.training.validate()?;
        if self.training.gradient_checkpointing == Some(true) && task != Task::CausalLm {
            bail!(
                "training.gradient_checkpointing recomputes decoder layers (task = \"causal-lm\"); task = \"{}\" has \
                 none: remove the setting",
                task.name()
            );
        }
        self.data.validate()?;
        Precision::parse(&self.precision)?;
        match self.method {
            Method::Lora => self
                .lora
                .as_ref()
                .context("method = \"lora\" needs a [lora] section (r, lora_alpha, target_modules, ...)")?
                .validate()?,
            Method::PromptTuning => self
                .prompt_tuning
                .as_ref()
                .context("method = \"prompt-tuning\" needs a [prompt_tuning] section (num_virtual_tokens, ...)")?
                .validate()?,
            Method::Transfer => self.transfer.validate()?,
            Method::Full | Method::FeatureExtraction => {}
        }
        if let Some(q) = &self.quantization {
            if self.method != Method::Lora {
                bail!("[quantization] needs method = \"lora\" (QLoRA): other methods train the base weights");
            }
            if !task.quantizes() {
                bail!(
                    "[quantization] is not available for task = \"{}\" (text-classification and causal-lm hold \
                     their base quantized)",
                    task.name()
                );
            }
            if q.keeps_file_quantization() {
                if task != Task::CausalLm {
                    bail!(
                        "quantization.type = \"gguf\" keeps a GGUF decoder's own quantization (task = \"causal-lm\")"
                    );
                }
            } else {
                q.validate()?;
            }
        }
        if task.has_head() {
            self.head.validate()?;
            self.check_problem_type()?;
        }
        match task {
            Task::AudioClassification => self.audio.validate()?,
            Task::ImageClassification => self.image.validate()?,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(task: &str, method: &str) -> Result<Recipe> {
        let text = format!(
            r#"
task = "{task}"
method = "{method}"
model = "m"
output_dir = "r"
[data]
dataset = "d"
train = "t.csv"
[training]
epochs = 1
batch_size = 2
learning_rate = 1e-3
[lora]
r = 4
lora_alpha = 8
target_modules = ["q"]
[prompt_tuning]
num_virtual_tokens = 4
"#
        );
        Recipe::parse(&text, &[])
    }

    /// Every cell of the table parses or is refused naming what the task supports.
    #[test]
    fn task_by_method_table() {
        let tasks =
            ["text-classification", "causal-lm", "image-classification", "audio-classification", "transcription"];
        let methods = ["feature-extraction", "full", "transfer", "lora", "prompt-tuning"];
        let mut accepted = 0;
        for t in tasks {
            for m in methods {
                match recipe(t, m) {
                    Ok(r) => {
                        assert!(r.task.methods().contains(&r.method));
                        accepted += 1;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        assert!(msg.contains(&format!("not available for task = \"{t}\"")), "{msg}");
                        assert!(msg.contains("it supports: "), "{msg}");
                    }
                }
            }
        }
        assert_eq!(accepted, 5 + 3 + 4 + 3 + 2);
        let err = format!("{:#}", recipe("image-classification", "prompt-tuning").unwrap_err());
        assert!(err.contains("feature-extraction, full, transfer, lora"), "{err}");
    }

    #[test]
    fn sections_are_checked_for_the_tasks_that_read_them() {
        let with = |task: &str, set: &str| {
            Recipe::parse(
                &format!(
                    "task = \"{task}\"\nmethod = \"full\"\nmodel = \"m\"\noutput_dir = \"r\"\n[data]\ndataset = \"d\"\ntrain = \"t\"\n[training]\nepochs = 1\nbatch_size = 1\nlearning_rate = 1e-3\n"
                ),
                &[set.to_string()],
            )
        };
        assert!(with("audio-classification", "audio.seconds=60").is_err());
        assert!(with("transcription", "audio.seconds=60").is_ok());
        assert!(with("image-classification", "image.validation_split=1.5").is_err());
        assert!(with("text-classification", "image.validation_split=1.5").is_ok());
        assert!(with("text-classification", "head.dropout=1.0").is_err());
        assert!(with("causal-lm", "head.dropout=1.0").is_ok());
        let gc = "training.gradient_checkpointing=true";
        assert!(with("causal-lm", gc).is_ok());
        assert!(with("text-classification", gc).unwrap_err().to_string().contains("training.gradient_checkpointing"));
        assert!(with("text-classification", "training.gradient_checkpointing=false").is_ok());
        let q = "quantization.type=nf4";
        assert!(with("text-classification", q).unwrap_err().to_string().contains("needs method = \"lora\""));
        let lora = |task: &str| recipe(task, "lora").map(|r| r.to_toml()).and_then(|t| Recipe::parse(&t, &[q.into()]));
        assert!(lora("text-classification").is_ok() && lora("causal-lm").is_ok());
        let err = lora("image-classification").unwrap_err().to_string();
        assert!(err.contains("not available for task = \"image-classification\""), "{err}");
    }

    /// Every out-of-range setting is refused at parse time, naming the key.
    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            ("training.checkpoint_every_steps=0", "training.checkpoint_every_steps"),
            ("training.max_steps=0", "training.max_steps"),
            ("training.adam_beta1=1.5", "adam_beta1"),
            ("training.adam_beta2=-0.1", "adam_beta2"),
            ("training.weight_decay=-5", "training.weight_decay"),
            ("training.warmup_ratio=2", "training.warmup_ratio"),
            ("training.max_grad_norm=-1", "training.max_grad_norm"),
            ("training.adam_epsilon=0", "training.adam_epsilon"),
            ("training.early_stopping.patience=0", "training.early_stopping.patience"),
            ("lora.r=0", "lora.r"),
            ("lora.lora_alpha=0", "lora.lora_alpha"),
            ("lora.lora_dropout=1.0", "lora.lora_dropout"),
            ("data.max_length=1", "data.max_length"),
            ("head.dropout=1.0", "head.dropout"),
        ];
        for (set, key) in cases {
            let text = recipe("text-classification", "lora").unwrap().to_toml();
            let err = format!("{:#}", Recipe::parse(&text, &[set.to_string()]).unwrap_err());
            assert!(err.contains(key), "{set}: {err}");
        }
        let prompt = |set: &str| {
            Recipe::parse(&recipe("text-classification", "prompt-tuning").unwrap().to_toml(), &[set.into()])
        };
        assert!(
            format!("{:#}", prompt("prompt_tuning.num_virtual_tokens=0").unwrap_err()).contains("num_virtual_tokens")
        );
        let transfer =
            |set: &str| Recipe::parse(&recipe("text-classification", "transfer").unwrap().to_toml(), &[set.into()]);
        assert!(format!("{:#}", transfer("transfer.layer_lr_decay=0").unwrap_err()).contains("layer_lr_decay"));
        assert!(
            format!("{:#}", transfer("transfer.unfreeze_every_steps=0").unwrap_err()).contains("unfreeze_every_steps")
        );
        let image =
            |set: &str| Recipe::parse(&recipe("image-classification", "full").unwrap().to_toml(), &[set.into()]);
        assert!(format!("{:#}", image("image.crop_pct=0").unwrap_err()).contains("image.crop_pct"));
        assert!(format!("{:#}", image("image.augment.hflip=2").unwrap_err()).contains("image.augment.hflip"));
    }
}
