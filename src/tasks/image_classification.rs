//! Image classification (`task = "image-classification"`) with a pretrained CNN backbone
//! (MobileNetV2, EfficientNet-Lite0, ResNet): feature extraction (features cached, or the frozen
//! backbone run on every augmented batch), full, transfer (gradual unfreezing by blocks,
//! layer-wise learning rates, BatchNorm statistics frozen in frozen layers) and LoRA on
//! convolutions (adapter plus the merged model). The model is saved under the base checkpoint's
//! keys with the new classes in `config.json`.

use crate::data::Targets;
use crate::data::image::{AugmentConfig, ImageData, ImageSplit, Transform, load_image_data, prepare_pixels};
use crate::inference::image::ImageExamples;
use crate::io::hub::{self, RepoKind};
use crate::io::safetensors::HostTensor;
use crate::methods::Method;
use crate::models::Head;
use crate::models::ModelDir;
use crate::models::efficientnet_lite::EfficientNetLite;
use crate::models::image_classifier::{ImageBackbone, ImageConfig, load_image_classifier, save_model};
use crate::models::mobilenet_v2::MobileNetV2;
use crate::models::resnet::ResNet;
use crate::nn::classification_head::ClassificationHead;
use crate::pipeline::{self, Devices, NoExtra, Task, TrainReport};
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::loss::Scored;
use crate::training::loss::classification_loss;
use crate::training::trainer::{Examples, Split};
use anyhow::Result;
use burn::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    let dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
    let config = ImageConfig::read(&dir)?;
    fn with<M: ImageBackbone + Clone + 'static>(
        recipe: &Recipe,
        dir: ModelDir,
        config: ImageConfig,
        resume: bool,
        show_progress: bool,
    ) -> Result<TrainReport> {
        pipeline::run(recipe, resume, show_progress, |devices| {
            ImageClassification::<M>::prepare(recipe, dir, config, devices)
        })
    }
    match config.architecture.as_str() {
        "mobilenet_v2" => with::<MobileNetV2>(recipe, dir, config, resume, show_progress),
        "efficientnet_lite0" => with::<EfficientNetLite>(recipe, dir, config, resume, show_progress),
        _ => with::<ResNet>(recipe, dir, config, resume, show_progress),
    }
}

/// An image-classification run over backbone `M`.
pub struct ImageClassification<M> {
    dir: ModelDir,
    data: ImageData,
    transform: Transform,
    augment: Option<AugmentConfig>,
    head: Head,
    head_dropout: f64,
    base_model: String,
    seed: u64,
    eval_batch_size: usize,
    device: Device,
    backbone: std::marker::PhantomData<M>,
}

impl<M: ImageBackbone> ImageClassification<M> {
    fn prepare(recipe: &Recipe, dir: ModelDir, config: ImageConfig, devices: &Devices) -> Result<Self> {
        let data = load_image_data(&recipe.data, &recipe.image)?;
        let p = &config.pretrained_cfg;
        let transform = Transform {
            size: recipe.image.size.unwrap_or(p.input_size[1]),
            crop_pct: recipe.image.crop_pct.unwrap_or(p.crop_pct),
            mean: p.mean,
            std: p.std,
        };
        tracing::info!(
            "{} classes; {} train / {} validation / {} test images at {}x{}",
            data.labels.len(),
            data.len(0),
            data.len(1),
            data.len(2),
            transform.size,
            transform.size
        );
        // A fine-tuned checkpoint's head is kept when it was trained for exactly these classes.
        let head = if config.label_names.as_deref() == Some(&data.labels[..]) && config.finetune.is_some() {
            Head::FromCheckpoint
        } else {
            Head::New
        };
        Ok(Self {
            dir,
            data,
            transform,
            augment: recipe.image.augment.clone(),
            head,
            head_dropout: recipe.head.dropout,
            base_model: recipe.model.clone(),
            seed: recipe.seed,
            eval_batch_size: recipe.training.eval_batch_size,
            device: devices.base.clone(),
            backbone: std::marker::PhantomData,
        })
    }

    fn images(&self) -> ImageExamples<'_> {
        ImageExamples::new(&self.data, self.transform.clone(), self.augment.clone(), self.seed, self.device.clone())
    }

    fn present(&self) -> Vec<&ImageSplit> {
        self.data.splits.iter().flatten().map(|s| s.as_ref()).collect()
    }
}

/// Feature extraction with augmentation: the frozen backbone (no autodiff) runs on every
/// augmented batch and only the head trains.
struct FrozenBackboneExamples<'a, M> {
    images: ImageExamples<'a>,
    backbone: &'a M,
}

impl<M: ImageBackbone> Examples<ClassificationHead> for FrozenBackboneExamples<'_, M> {
    fn len(&self, split: Split) -> usize {
        self.images.len(split)
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let features = self.backbone.features(self.images.batch(split, indices));
        classification_loss(head.forward(features), self.images.labels(split), indices)
    }
    fn prefetch(&self, split: Split, indices: &[usize]) {
        self.images.prefetch(split, indices)
    }
}

impl<M: ImageBackbone + Clone + 'static> Task for ImageClassification<M> {
    type Model = M;
    type Extra = NoExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::ImageClassification
    }
    fn num_outputs(&self) -> usize {
        self.data.labels.len()
    }
    fn labels(&self) -> Vec<String> {
        self.data.labels.clone()
    }
    fn train_len(&self) -> usize {
        self.data.len(0)
    }
    fn head_modules(&self) -> Vec<String> {
        vec![M::CLASSIFIER_MODULE.into()]
    }

    fn load_model(&mut self, device: &Device) -> Result<M> {
        let (model, report) =
            load_image_classifier::<M>(&self.dir, self.num_outputs(), self.head_dropout, self.head, device)?;
        if !report.initialized.is_empty() {
            tracing::info!("newly initialised: {}", report.initialized.join(", "));
        }
        Ok(model)
    }

    fn examples<'a>(&'a self, _model: &M) -> Box<dyn Examples<M> + 'a> {
        Box::new(self.images())
    }

    fn save_model(&self, model: &M, method: Method, dir: &Path) -> Result<()> {
        let t = &self.transform;
        let meta = serde_json::json!({
            "method": method.name(),
            "base_model": self.base_model,
            "image_size": t.size,
            "crop_pct": t.crop_pct,
        });
        save_model(model, &self.dir, &self.data.labels, (t.size, t.crop_pct), meta, dir)
    }

    fn saves_merged_model(&self) -> bool {
        true
    }

    fn adapter_notes(&self, _: Method) -> Option<serde_json::Value> {
        let t = &self.transform;
        Some(
            serde_json::json!({ "labels": self.data.labels, "finetune": { "image_size": t.size, "crop_pct": t.crop_pct } }),
        )
    }
    fn head_mut(model: &mut M) -> &mut ClassificationHead {
        model.head_mut()
    }
    fn head_init_std(&self) -> f64 {
        0.01
    }
    fn feature_splits(&self) -> Vec<(&'static str, usize)> {
        self.present().iter().map(|s| (s.name, s.len())).collect()
    }
    fn split_targets(&self, slot: usize) -> Option<Targets> {
        self.data.split(slot).map(|s| Targets::Classes(s.labels.clone()))
    }

    /// The weights, config and transform, and every split's pixels and labels.
    fn feature_cache_key(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"finetune-image-features-v1\0");
        h.update(hub::sha256_file(&self.dir.weights_path())?.as_bytes());
        h.update(std::fs::read(self.dir.config_path())?);
        h.update(format!("{:?}", self.transform).as_bytes());
        for s in self.present() {
            h.update(s.name.as_bytes());
            h.update((s.len() as u64).to_le_bytes());
            for (img, &y) in s.images.iter().zip(&s.labels) {
                h.update(
                    [img.width as u32, img.height as u32, img.channels as u32, y as u32].map(u32::to_le_bytes).concat(),
                );
                h.update(&img.pixels);
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Pooled backbone features of a whole split, in split order.
    fn compute_features(&self, model: &M, i: usize, progress: &indicatif::ProgressBar) -> Result<HostTensor> {
        let (split, t) = (self.present()[i], &self.transform);
        let dim = model.feature_dim();
        let mut out = Vec::with_capacity(split.len() * dim);
        let order: Vec<usize> = (0..split.len()).collect();
        for batch in order.chunks(self.eval_batch_size) {
            let pixels = prepare_pixels(split, batch, t, None, 0);
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [batch.len(), 3, t.size, t.size]), &self.device);
            out.extend(model.features(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 features"));
            progress.inc(batch.len() as u64);
        }
        Ok(HostTensor::new(vec![split.len(), dim], out))
    }

    fn augmented_features<'a>(&'a self, model: &'a M) -> Option<Box<dyn Examples<ClassificationHead> + 'a>> {
        self.augment.is_some().then(|| {
            Box::new(FrozenBackboneExamples { images: self.images(), backbone: model })
                as Box<dyn Examples<ClassificationHead>>
        })
    }
}
