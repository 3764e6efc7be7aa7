//! A fine-tuned (or pretrained) image classifier in use — prediction and evaluation — a base
//! backbone with a peft LoRA adapter, and the image batches training and evaluation share
//! ([`ImageExamples`], which prepares the next training batch on a background thread).

use crate::data::image::{AugmentConfig, Image, ImageData, ImageSplit, Transform, prepare_pixels, read_split};
use crate::io::peft::AdapterFiles;
use crate::methods::lora;
use crate::models::Head;
use crate::models::ModelDir;
use crate::models::image_classifier::{AnyImageClassifier, ImageBackbone, ImageConfig, load_image_classifier};
use crate::training::loss::Scored;
use crate::training::loss::classification_loss;
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split, evaluate};
use anyhow::{Result, bail};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A training batch being prepared on a background thread: its indices and the worker.
type Prefetch = (Vec<usize>, std::thread::JoinHandle<Vec<f32>>);

/// Image batches for a model that runs the backbone. The next training batch is prepared on a
/// background thread while the current one computes.
pub struct ImageExamples<'a> {
    data: &'a ImageData,
    transform: Transform,
    augment: Option<AugmentConfig>,
    seed: u64,
    device: Device,
    /// Batches being prepared: (indices, worker).
    pending: Mutex<Vec<Prefetch>>,
}

impl<'a> ImageExamples<'a> {
    pub fn new(
        data: &'a ImageData,
        transform: Transform,
        augment: Option<AugmentConfig>,
        seed: u64,
        device: Device,
    ) -> Self {
        Self { data, transform, augment, seed, device, pending: Mutex::new(Vec::new()) }
    }

    /// Pixels of `indices` of `split` (augmented for training).
    pub fn batch(&self, split: Split, indices: &[usize]) -> Tensor<4> {
        let s = self.data.split(split.slot()).expect("split present");
        let prefetched = if split == Split::Train {
            let mut pending = self.pending.lock().expect("lock");
            let found = pending.iter().position(|(idx, _)| idx == indices);
            found.and_then(|i| pending.remove(i).1.join().ok())
        } else {
            None
        };
        let augment = if split == Split::Train { self.augment.as_ref() } else { None };
        let pixels = prefetched.unwrap_or_else(|| prepare_pixels(s, indices, &self.transform, augment, self.seed));
        let n = self.transform.size;
        Tensor::from_data(TensorData::new(pixels, [indices.len(), 3, n, n]), &self.device)
    }

    pub fn labels(&self, split: Split) -> &[usize] {
        &self.data.split(split.slot()).expect("split present").labels
    }

    pub fn len(&self, split: Split) -> usize {
        self.data.len(split.slot())
    }

    pub fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }

    pub fn prefetch(&self, split: Split, indices: &[usize]) {
        if split != Split::Train {
            return;
        }
        let train = self.data.splits[0].clone().expect("train split");
        let (t, aug, seed, idx) = (self.transform.clone(), self.augment.clone(), self.seed, indices.to_vec());
        let handle = std::thread::spawn(move || prepare_pixels(&train, &idx, &t, aug.as_ref(), seed));
        let mut pending = self.pending.lock().expect("lock");
        if pending.len() >= 2 {
            pending.remove(0);
        }
        pending.push((indices.to_vec(), handle));
    }
}

impl<M: ImageBackbone> Examples<M> for ImageExamples<'_> {
    fn len(&self, split: Split) -> usize {
        ImageExamples::len(self, split)
    }
    fn loss(&self, model: &M, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
    fn prefetch(&self, split: Split, indices: &[usize]) {
        ImageExamples::prefetch(self, split, indices)
    }
}

impl Examples<AnyImageClassifier> for ImageExamples<'_> {
    fn len(&self, split: Split) -> usize {
        ImageExamples::len(self, split)
    }
    fn loss(&self, model: &AnyImageClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
}

/// The base backbone with a peft LoRA adapter (ours or Python peft's) attached: adapters on the
/// convolutions it names, the classifier from the adapter when it carries one.
pub fn load_with_adapter<M: ImageBackbone>(base: &ModelDir, adapter_dir: &Path, device: &Device) -> Result<M> {
    let files = AdapterFiles::read(adapter_dir)?;
    let head_key = format!("{}{}", lora::adapter::KEY_PREFIX, M::CLASSIFIER_WEIGHT);
    let num_classes = files.tensors.get(&head_key).map_or(ImageConfig::read(base)?.num_classes, |t| t.shape[0]);
    let (model, _) = load_image_classifier::<M>(base, num_classes, 0.0, Head::FromCheckpoint, device)?;
    Ok(lora::adapter::load_adapter(model, &files, device)?.0)
}

/// A fine-tuned (or pretrained) image classifier ready for prediction.
pub struct FinetunedImageClassifier {
    pub model: AnyImageClassifier,
    pub labels: Vec<String>,
    pub transform: Transform,
    device: Device,
}

/// One image's prediction: the top classes with their probabilities.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImagePrediction {
    pub image: PathBuf,
    pub label: String,
    pub top: Vec<(String, f32)>,
    /// Every label's probability, in label order (as text predictions give them).
    pub probabilities: Vec<(String, f32)>,
}

impl FinetunedImageClassifier {
    pub fn load(path: &Path, device: &str) -> Result<Self> {
        let device = crate::ops::device::select(device)?;
        let dir = ModelDir::open(path)?;
        let config = ImageConfig::read(&dir)?;
        let n = config.num_classes;
        let labels = config.label_names.clone().unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect());
        if labels.len() != n {
            bail!("{}: {} label names for {n} classes", dir.config_path().display(), labels.len());
        }
        let model = AnyImageClassifier::load(&dir, n, Head::FromCheckpoint, &device)?;
        let p = &config.pretrained_cfg;
        let transform = Transform { size: p.input_size[1], crop_pct: p.crop_pct, mean: p.mean, std: p.std };
        Ok(Self { model, labels, transform, device })
    }

    pub fn predict(&self, images: &[PathBuf], top_k: usize) -> Result<Vec<ImagePrediction>> {
        let mut out = Vec::new();
        for chunk in images.chunks(16) {
            let decoded: Vec<Image> = chunk.iter().map(|p| Image::open(p)).collect::<Result<_>>()?;
            let split =
                ImageSplit { name: "predict", source: PathBuf::new(), labels: vec![0; decoded.len()], images: decoded };
            let idx: Vec<usize> = (0..chunk.len()).collect();
            let s = self.transform.size;
            let x = Tensor::<4>::from_data(
                TensorData::new(prepare_pixels(&split, &idx, &self.transform, None, 0), [chunk.len(), 3, s, s]),
                &self.device,
            );
            let probs = burn::tensor::activation::softmax(self.model.forward(x), 1);
            let probs: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            for (row, path) in probs.chunks(self.labels.len()).zip(chunk) {
                let top = super::top_k(row, &self.labels, top_k);
                let probabilities = self.labels.iter().cloned().zip(row.iter().copied()).collect();
                out.push(ImagePrediction { image: path.clone(), label: top[0].0.clone(), top, probabilities });
            }
        }
        Ok(out)
    }

    /// Accuracy, macro-F1 and loss on an IDX file or a folder of class directories.
    pub fn evaluate_split(&self, path: &Path, batch_size: usize) -> Result<EvalMetrics> {
        let split = read_split("test", path, &self.labels)?;
        let data = ImageData { labels: self.labels.clone(), splits: [None, None, Some(Arc::new(split))] };
        let examples = ImageExamples::new(&data, self.transform.clone(), None, 0, self.device.clone());
        Ok(evaluate(&self.model, &examples, Split::Test, batch_size, self.labels.len()))
    }
}
