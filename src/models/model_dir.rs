//! A pretrained model on disk, as a user gives it: a Hugging Face directory (`config.json` +
//! `model.safetensors` + `tokenizer.json`), a directory with a PyTorch checkpoint (read without
//! running Python), a CTranslate2 model (faster-whisper's `model.bin`), or a llama.cpp GGUF file.
//! One type for all of them; each architecture parses its own config from it
//! (`BertConfig`, `ImageConfig`, `WhisperConfig`, `LlamaConfig`).

use crate::io::WeightSource;
use crate::io::gguf::GgufFile;
use crate::io::pth::PthFile;
use crate::io::safetensors::{HostTensor, SafetensorsFile};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a model's weights are and how they are stored.
#[derive(Debug, Clone)]
pub enum Format {
    /// `model.safetensors`.
    Safetensors(PathBuf),
    /// `pytorch_model.bin` or one `*.pth`/`*.pt` (`torch.save`, zip or legacy layout).
    Pth(PathBuf),
    /// CTranslate2's `model.bin` (converted to Hugging Face names when loaded).
    CTranslate2(PathBuf),
    /// A llama.cpp GGUF file (weights, config, tokenizer and chat template inside).
    Gguf(Arc<GgufFile>),
}

/// A model's files.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory (a GGUF file's directory).
    pub dir: PathBuf,
    pub format: Format,
}

impl ModelDir {
    /// `path` is a model directory, a `.gguf` file, or a directory holding one `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "gguf") {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                return Ok(Self { dir, format: Format::Gguf(Arc::new(GgufFile::open(path)?)) });
            }
            bail!("{}: expected a model directory or a .gguf file", path.display());
        }
        if !path.is_dir() {
            bail!("{}: no such model directory or file", path.display());
        }
        let dir = path.to_path_buf();
        let file = |name: &str| Some(path.join(name)).filter(|p| p.is_file());
        let format = if let Some(f) = file("model.safetensors") {
            Format::Safetensors(f)
        } else if let Some(f) = file("model.bin") {
            Format::CTranslate2(f)
        } else if let Some(f) = file("pytorch_model.bin") {
            Format::Pth(f)
        } else {
            let with_ext = |exts: &[&str]| -> Result<Vec<PathBuf>> {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)))
                    .collect();
                found.sort();
                Ok(found)
            };
            let (mut pth, ggufs) = (with_ext(&["pth", "pt"])?, with_ext(&["gguf"])?);
            match (pth.len(), ggufs.as_slice()) {
                (1, _) => Format::Pth(pth.remove(0)),
                (0, [one]) => Format::Gguf(Arc::new(GgufFile::open(one)?)),
                (0, []) => bail!(
                    "{}: no weights (model.safetensors, pytorch_model.bin, a .pth file, CTranslate2's model.bin or a \
                     .gguf file); is this a model directory?",
                    path.display()
                ),
                (0, many) => bail!("{}: several .gguf files ({}); name one", path.display(), many.len()),
                _ => bail!("{}: several .pth files ({pth:?}); keep one", path.display()),
            }
        };
        Ok(Self { dir, format })
    }

    /// `config.json` (absent for a GGUF file, whose config is inside it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// `tokenizer.json` beside the weights (it may not exist).
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// The weights file.
    pub fn weights_path(&self) -> PathBuf {
        match &self.format {
            Format::Safetensors(p) | Format::Pth(p) | Format::CTranslate2(p) => p.clone(),
            Format::Gguf(g) => g.path().to_path_buf(),
        }
    }

    /// The model for messages: its weights file.
    pub fn describe(&self) -> String {
        self.weights_path().display().to_string()
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.format {
            Format::Gguf(g) => Some(g),
            _ => None,
        }
    }

    /// The raw `config.json` as JSON.
    pub fn raw_config(&self) -> Result<serde_json::Value> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: no readable config.json; is this a Hugging Face model directory?", self.dir.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
    }

    /// Labels stored by a fine-tuned classifier (`id2label` of a `*ForSequenceClassification`),
    /// in id order; `None` for a base model. A classifier saved without `id2label` gets
    /// transformers' default names `LABEL_0..` for as many classes as its head has.
    pub fn labels(&self) -> Result<Option<Vec<String>>> {
        let raw = self.raw_config()?;
        // finetune's own mean/CLS-pooled classifiers say `BertModel` (so that transformers cannot
        // silently add a random pooler) and carry their pooling under "finetune".
        let has_head = raw.get("finetune").is_some_and(|f| f.get("pooling").is_some())
            || raw.get("architectures").and_then(|a| a.as_array()).is_some_and(|a| {
                a.iter().any(|v| v.as_str().is_some_and(|s| s.ends_with("ForSequenceClassification")))
            });
        if !has_head {
            return Ok(None);
        }
        let Some(map) = raw.get("id2label").and_then(|m| m.as_object()) else {
            let from_config = raw.get("num_labels").and_then(|n| n.as_u64()).map(|n| n as usize);
            let from_head = || -> Option<usize> {
                let Ok(Weights::Safetensors(w)) = self.weights() else { return None };
                ["classifier.weight", "score.weight", "classifier.out_proj.weight"]
                    .iter()
                    .find_map(|k| w.tensor(k).ok().map(|t| t.shape[0]))
            };
            let Some(n) = from_config.or_else(from_head).filter(|&n| (1..=1 << 20).contains(&n)) else {
                bail!(
                    "{}: a *ForSequenceClassification without id2label, num_labels or a classifier.weight: \
                     how many classes it has is unknown",
                    self.config_path().display()
                );
            };
            tracing::warn!(
                "{}: no id2label; the {n} classes are named LABEL_0..LABEL_{}",
                self.config_path().display(),
                n - 1
            );
            return Ok(Some((0..n).map(|i| format!("LABEL_{i}")).collect()));
        };
        let mut pairs: Vec<(usize, String)> = map
            .iter()
            .map(|(k, v)| {
                let id = k
                    .parse::<usize>()
                    .with_context(|| format!("{}: id2label key '{k}'", self.config_path().display()))?;
                Ok((id, v.as_str().unwrap_or_default().to_string()))
            })
            .collect::<Result<_>>()?;
        pairs.sort();
        Ok(Some(pairs.into_iter().map(|(_, l)| l).collect()))
    }

    /// The checkpoint tensors of a safetensors or PyTorch model (a CTranslate2 or GGUF model is
    /// read through its architecture's own view, which renames its tensors).
    pub fn weights(&self) -> Result<Weights> {
        Ok(match &self.format {
            Format::Safetensors(p) => Weights::Safetensors(SafetensorsFile::open(p)?),
            Format::Pth(p) => Weights::Pth(PthFile::open(p)?),
            Format::CTranslate2(_) | Format::Gguf(_) => {
                bail!("{}: this architecture does not read {}", self.dir.display(), self.describe())
            }
        })
    }

    /// Require the Hugging Face layout (`config.json` and `model.safetensors`).
    pub fn require_safetensors(&self) -> Result<()> {
        if !self.config_path().is_file() {
            bail!("{}: no config.json; is this a Hugging Face model directory?", self.dir.display());
        }
        match &self.format {
            Format::Safetensors(_) => Ok(()),
            Format::Pth(p) => bail!(
                "{}: only {} (pickle) is present; finetune reads model.safetensors for this architecture \
                 (convert with `transformers` save_pretrained(safe_serialization=True))",
                self.dir.display(),
                p.file_name().unwrap_or_default().to_string_lossy()
            ),
            _ => bail!("{}: no model.safetensors", self.dir.display()),
        }
    }
}

/// A checkpoint read from a safetensors or PyTorch file.
pub enum Weights {
    Safetensors(SafetensorsFile),
    Pth(PthFile),
}

impl WeightSource for Weights {
    fn describe(&self) -> String {
        match self {
            Self::Safetensors(f) => f.describe(),
            Self::Pth(f) => f.describe(),
        }
    }
    fn contains(&self, key: &str) -> bool {
        match self {
            Self::Safetensors(f) => WeightSource::contains(f, key),
            Self::Pth(f) => WeightSource::contains(f, key),
        }
    }
    fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors(f) => WeightSource::names(f),
            Self::Pth(f) => WeightSource::names(f),
        }
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        match self {
            Self::Safetensors(f) => f.tensor_with_shape(key, expected),
            Self::Pth(f) => f.tensor_with_shape(key, expected),
        }
    }
}
