//! Image classification with a pretrained CNN backbone: the recipe for `feature-extraction`
//! (frozen backbone; features cached, or recomputed per batch when augmenting), `full` and
//! `transfer` (gradual unfreezing by blocks, layer-wise learning rates, BatchNorm statistics
//! frozen in frozen layers), plus evaluation and prediction with a fine-tuned model directory.

use crate::ops::rng::SplitMix64;
use crate::data::image::{AugmentConfig, Image, ImageSplit, Transform, folder_classes, read_split};
use crate::io::hub::{self, RepoKind};
use crate::io::peft::AdapterFiles;
use crate::io::safetensors::write_safetensors;
use crate::methods::TrainPlan;
use crate::methods::feature_extraction::{self, FeatureExamples, to_tensor};
use crate::methods::lora::conv as conv_lora;
use crate::methods::lora::{self, BiasMode, InitLoraWeights, KEY_PREFIX, LoraConfig, LoraInit};
use crate::nn::conv_bn::ConvBn;
use crate::models::efficientnet_lite::EfficientNetLite;
use crate::models::image_classifier::{
    AnyImageClassifier, ConvUnit, ImageBackbone, ImageModelDir, checkpoint_tensors, load_image_classifier,
};
use crate::models::mobilenet_v2::MobileNetV2;
use crate::models::resnet::ResNet;
use crate::nn::classification_head::ClassificationHead;
use crate::models::{Head, count_params};
use crate::methods::Method;
use crate::nn::conv_bn::BatchNormMode;
use crate::recipe::Recipe;
use crate::tasks::text_classification::TrainReport;
use crate::training::checkpoint::RunDir;
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, MethodHooks, Split, classification_loss, evaluate, train};
use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::prelude::*;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Labelled image splits and their class names.
pub struct ImageData {
    pub labels: Vec<String>,
    /// Train, validation, test.
    pub splits: [Option<Arc<ImageSplit>>; 3],
}

impl ImageData {
    fn split(&self, split: Split) -> Option<&ImageSplit> {
        self.splits[feature_extraction::slot(split)].as_deref()
    }
    fn len(&self, split: Split) -> usize {
        self.split(split).map_or(0, ImageSplit::len)
    }
}

/// Read the recipe's splits. Class names: `data.labels`, else `labels.txt` in the dataset
/// directory (one per line, in label order), else the training folder's class directories.
pub fn load_image_data(recipe: &Recipe) -> Result<ImageData> {
    let cfg = &recipe.data;
    let dir = crate::data::dataset_dir(cfg)?;
    let labels = crate::data::label_names_for(cfg, &dir, || folder_classes(&dir.join(&cfg.train)))?;
    let mut train = read_split("train", &dir.join(&cfg.train), &labels)?;
    let mut validation =
        cfg.validation.as_ref().map(|v| read_split("validation", &dir.join(v), &labels)).transpose()?;
    let test = cfg.test.as_ref().map(|t| read_split("test", &dir.join(t), &labels)).transpose()?;
    let f = recipe.image.validation_split;
    if validation.is_none() && f > 0.0 {
        let k = (1.0 / f).round().max(2.0) as usize;
        let (held, kept): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|i| i % k == k - 1);
        validation = Some(train.select("validation", &held));
        train = train.select("train", &kept);
    }
    if let Some(n) = recipe.image.max_train_examples {
        if n < train.len() {
            train = train.select("train", &(0..n).collect::<Vec<_>>());
        }
    }
    if train.is_empty() {
        bail!("{}: the training split is empty", train.source.display());
    }
    Ok(ImageData { labels, splits: [Some(Arc::new(train)), validation.map(Arc::new), test.map(Arc::new)] })
}

/// Normalised pixels `[n, 3, size, size]` of `indices`, augmented when `augment` is given
/// (each image's randomness from `seed`, the batch and its position: reproducible and resumable).
fn prepare(
    split: &ImageSplit,
    indices: &[usize],
    t: &Transform,
    augment: Option<&AugmentConfig>,
    seed: u64,
) -> Vec<f32> {
    let per = 3 * t.size * t.size;
    let mut out = vec![0f32; indices.len() * per];
    let batch_key = indices.iter().fold(seed, |h, &i| SplitMix64::new(h ^ i as u64).next_u64());
    out.par_chunks_mut(per).zip(indices.par_iter()).enumerate().for_each(|(pos, (dst, &i))| match augment {
        Some(aug) => {
            let mut rng = SplitMix64::new(batch_key ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            t.apply_augmented(&split.images[i], aug, &mut rng, dst)
        }
        None => t.apply(&split.images[i], dst),
    });
    out
}

/// Image batches for a model that runs the backbone. The next training batch is prepared on a
/// background thread while the current one computes.
struct ImageExamples<'a> {
    data: &'a ImageData,
    transform: Transform,
    augment: Option<AugmentConfig>,
    seed: u64,
    device: Device,
    /// Batches being prepared: (indices, worker).
    pending: Mutex<Vec<(Vec<usize>, std::thread::JoinHandle<Vec<f32>>)>>,
}

impl<'a> ImageExamples<'a> {
    fn new(
        data: &'a ImageData,
        transform: Transform,
        augment: Option<AugmentConfig>,
        seed: u64,
        device: Device,
    ) -> Self {
        Self { data, transform, augment, seed, device, pending: Mutex::new(Vec::new()) }
    }

    fn batch(&self, split: Split, indices: &[usize]) -> Tensor<4> {
        let s = self.data.split(split).expect("split present");
        let prefetched = if split == Split::Train {
            let mut pending = self.pending.lock().expect("lock");
            let found = pending.iter().position(|(idx, _)| idx == indices);
            found.and_then(|i| pending.remove(i).1.join().ok())
        } else {
            None
        };
        let augment = if split == Split::Train { self.augment.as_ref() } else { None };
        let pixels = prefetched.unwrap_or_else(|| prepare(s, indices, &self.transform, augment, self.seed));
        let n = self.transform.size;
        Tensor::from_data(TensorData::new(pixels, [indices.len(), 3, n, n]), &self.device)
    }

    fn labels(&self, split: Split) -> &[usize] {
        &self.data.split(split).expect("split present").labels
    }

    fn prefetch_train(&self, indices: &[usize]) {
        let split = self.data.splits[0].clone().expect("train split");
        let (t, aug, seed, idx) = (self.transform.clone(), self.augment.clone(), self.seed, indices.to_vec());
        let handle = std::thread::spawn(move || prepare(&split, &idx, &t, aug.as_ref(), seed));
        let mut pending = self.pending.lock().expect("lock");
        if pending.len() >= 2 {
            pending.remove(0);
        }
        pending.push((indices.to_vec(), handle));
    }
}

impl<M: ImageBackbone> Examples<M> for ImageExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.data.len(split)
    }
    fn loss(&self, model: &M, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
    fn prefetch(&self, split: Split, indices: &[usize]) {
        if split == Split::Train {
            self.prefetch_train(indices);
        }
    }
}

impl Examples<AnyImageClassifier> for ImageExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.data.len(split)
    }
    fn loss(&self, model: &AnyImageClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
}

/// Feature extraction with augmentation: the frozen backbone (inference mode, no autodiff)
/// runs on every augmented batch, only the head trains. Without augmentation the features are
/// the same every epoch, so they are cached instead ([`FeatureExamples`]).
struct FrozenBackboneExamples<'a, M> {
    images: ImageExamples<'a>,
    backbone: M,
}

impl<M: ImageBackbone> Examples<ClassificationHead> for FrozenBackboneExamples<'_, M> {
    fn len(&self, split: Split) -> usize {
        Examples::<M>::len(&self.images, split)
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let features = self.backbone.features(self.images.batch(split, indices));
        classification_loss(head.forward(features), self.images.labels(split), indices)
    }
    fn prefetch(&self, split: Split, indices: &[usize]) {
        Examples::<M>::prefetch(&self.images, split, indices)
    }
}

/// The input transform for `recipe` and the backbone's pretraining settings.
fn transform(recipe: &Recipe, dir: &ImageModelDir) -> Transform {
    let p = &dir.config.pretrained_cfg;
    Transform {
        size: recipe.image.size.unwrap_or(p.input_size[1]),
        crop_pct: recipe.image.crop_pct.unwrap_or(p.crop_pct),
        mean: p.mean,
        std: p.std,
    }
}

/// Cache key of frozen features: the weights, config, transform, and every split's pixels and labels.
fn cache_key(dir: &ImageModelDir, t: &Transform, data: &ImageData) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"finetune-image-features-v1\0");
    h.update(hub::sha256_file(&dir.weights)?.as_bytes());
    h.update(std::fs::read(&dir.config_path)?);
    h.update(format!("{t:?}").as_bytes());
    for s in data.splits.iter().flatten() {
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
fn split_features<M: ImageBackbone>(
    backbone: &M,
    split: &ImageSplit,
    t: &Transform,
    batch_size: usize,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> crate::io::safetensors::HostTensor {
    let dim = backbone.feature_dim();
    let mut out = Vec::with_capacity(split.len() * dim);
    let order: Vec<usize> = (0..split.len()).collect();
    for batch in order.chunks(batch_size) {
        let pixels = prepare(split, batch, t, None, 0);
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [batch.len(), 3, t.size, t.size]), device);
        out.extend(backbone.features(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 features"));
        progress.inc(batch.len() as u64);
    }
    crate::io::safetensors::HostTensor::new(vec![split.len(), dim], out)
}

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    let dir = ImageModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
    match dir.config.architecture.as_str() {
        "mobilenet_v2" => run_with::<MobileNetV2>(recipe, &dir, resume, show_progress),
        "efficientnet_lite0" => run_with::<EfficientNetLite>(recipe, &dir, resume, show_progress),
        _ => run_with::<ResNet>(recipe, &dir, resume, show_progress),
    }
}

fn run_with<M: ImageBackbone>(
    recipe: &Recipe,
    dir: &ImageModelDir,
    resume: bool,
    show_progress: bool,
) -> Result<TrainReport> {
    let base = crate::ops::device::select(&recipe.device)?;
    let _precision = crate::ops::context::enter(crate::ops::context::Precision::parse(&recipe.precision)?);
    let train_device = crate::ops::device::training(&base);
    let data = load_image_data(recipe)?;
    let t = transform(recipe, dir);
    tracing::info!(
        "{} classes; {} train / {} validation / {} test images at {}x{}",
        data.labels.len(),
        data.len(Split::Train),
        data.len(Split::Validation),
        data.len(Split::Test),
        t.size,
        t.size
    );
    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;
    base.seed(recipe.seed);
    train_device.seed(recipe.seed);
    let num_labels = data.labels.len();
    let head = if dir.config.label_names.as_deref() == Some(&data.labels[..]) && dir.config.finetune.is_some() {
        Head::FromCheckpoint
    } else {
        Head::New
    };
    let cfg = crate::training::trainer::TrainerConfig::new(&recipe.training, recipe.seed, num_labels, data.len(Split::Train), show_progress);
    let eval_batch = recipe.training.eval_batch_size;
    let dropout = recipe.head.dropout;

    // Training the backbone itself (full, transfer, LoRA): the hooks decide what learns. Returns
    // the best model in validation mode and its test metrics.
    let train_whole = |model: M, hooks: MethodHooks<'_, M>| -> Result<_> {
        let examples = ImageExamples::new(&data, t.clone(), recipe.image.augment.clone(), recipe.seed, base.clone());
        let outcome = train(model, &examples, &cfg, hooks, &run, resume, &train_device)?;
        let model = outcome.best_model.valid();
        let test = (Examples::<M>::len(&examples, Split::Test) > 0)
            .then(|| evaluate(&model, &examples, Split::Test, eval_batch, num_labels));
        Ok((model, outcome.state, test))
    };
    let mut adapter: Option<LoraConfig> = None;
    let (model, state, feature_info, test) = match recipe.method {
        Method::FeatureExtraction => {
            let (backbone, _) = load_image_classifier::<M>(dir, num_labels, dropout, head, &base)?;
            let fresh_head = ClassificationHead::new(backbone.feature_dim(), num_labels, dropout, 0.01, &train_device);
            let set_trainable = |m: ClassificationHead, _: usize, _: usize| (m, Vec::new());
            let lr_scale = |_: &str| 1.0;
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let (head, state, info, test) = if recipe.image.augment.is_some() {
                let images =
                    ImageExamples::new(&data, t.clone(), recipe.image.augment.clone(), recipe.seed, base.clone());
                let examples = FrozenBackboneExamples { images, backbone: backbone.clone() };
                let outcome = train(fresh_head, &examples, &cfg, hooks, &run, resume, &train_device)?;
                let head = outcome.best_model.valid();
                let test = (examples.len(Split::Test) > 0)
                    .then(|| evaluate(&head, &examples, Split::Test, eval_batch, num_labels));
                (head, outcome.state, None, test)
            } else {
                let present: Vec<&ImageSplit> = data.splits.iter().flatten().map(|s| s.as_ref()).collect();
                let names: Vec<(&str, usize)> = present.iter().map(|s| (s.name, s.len())).collect();
                let cache_dir =
                    recipe.feature_extraction.cache_dir.clone().unwrap_or_else(feature_extraction::default_cache_dir);
                let key = cache_key(dir, &t, &data)?;
                let cached =
                    feature_extraction::load_or_compute_with(&names, &key, &cache_dir, show_progress, |i, p| {
                        Ok(split_features(&backbone, present[i], &t, eval_batch, &base, p))
                    })?;
                let mut features = cached.splits.iter();
                let examples = FeatureExamples {
                    features: data
                        .splits
                        .each_ref()
                        .map(|s| s.as_ref().map(|_| to_tensor(features.next().expect("one per split"), &base))),
                    labels: data.splits.each_ref().map(|s| s.as_ref().map_or_else(Vec::new, |s| s.labels.clone())),
                };
                let outcome = train(fresh_head, &examples, &cfg, hooks, &run, resume, &train_device)?;
                let head = outcome.best_model.valid();
                let test = (examples.len(Split::Test) > 0)
                    .then(|| evaluate(&head, &examples, Split::Test, eval_batch, num_labels));
                (head, outcome.state, Some((cached.seconds, cached.cache_hit)), test)
            };
            let mut model = backbone;
            *model.head_mut() = head;
            (model, state, info, test)
        }
        Method::Full | Method::Transfer => {
            let (model, report) = load_image_classifier::<M>(dir, num_labels, dropout, head, &train_device)?;
            if !report.initialized.is_empty() {
                tracing::info!("newly initialised: {}", report.initialized.join(", "));
            }
            let plan = TrainPlan::new(recipe.method, &recipe.transfer, model.layer_groups(), M::layer_group);
            let bn_mode = recipe.image.batch_norm;
            let unfrozen = Cell::new(usize::MAX);
            let set_trainable = |m: M, epoch: usize, step: usize| {
                let k = plan.unfrozen(epoch, step);
                let previous = unfrozen.replace(k);
                if previous == k {
                    return (m, Vec::new());
                }
                let newly = plan.order[previous.min(k)..k].iter().map(|g| g.name()).collect();
                let m = crate::io::params::set_trainable(m, |p| plan.is_trainable(p, k));
                // BatchNorm follows its layer: batch statistics only where the layer trains.
                let m = m.set_batch_norm_training(&|bn| bn_mode == BatchNormMode::Train && plan.is_trainable(bn, k));
                (m, if previous == usize::MAX { Vec::new() } else { newly })
            };
            let lr_scale = |p: &str| plan.lr_scale(p);
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let (model, state, test) = train_whole(model, hooks)?;
            (model, state, None, test)
        }
        Method::Lora => {
            let mut lcfg = recipe.lora.clone().context("method = \"lora\" needs a [lora] section")?;
            // As for text: the new head trains in full and is saved with the adapter.
            if !lcfg.saves(M::CLASSIFIER_MODULE) {
                lcfg.modules_to_save.push(M::CLASSIFIER_MODULE.into());
            }
            let (mut model, _) = load_image_classifier::<M>(dir, num_labels, dropout, head, &train_device)?;
            let targeted = attach_lora(&mut model, &lcfg, lora_init(&lcfg)?, &train_device)?;
            tracing::info!("LoRA r={} on {} convolutions", lcfg.r, targeted.len());
            // BatchNorm keeps the base's statistics: an adapter cannot carry changed statistics.
            let model = model.set_batch_norm_training(&|_| false);
            let started = Cell::new(false);
            let set_trainable = |m: M, _: usize, _: usize| {
                if started.replace(true) {
                    return (m, Vec::new());
                }
                (crate::io::params::set_trainable(m, |p| p.contains(".lora.") || p.starts_with("head.")), Vec::new())
            };
            let lr_scale = |_: &str| 1.0;
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let (model, state, test) = train_whole(model, hooks)?;
            export_adapter(&model, &lcfg, &recipe.model, &data.labels, &t, &run.adapter())?;
            adapter = Some(lcfg);
            (model, state, None, test)
        }
        Method::PromptTuning => {
            bail!("prompt tuning is for token inputs; use feature-extraction, full, transfer or lora for images")
        }
    };
    if let Some(t) = &test {
        tracing::info!("test: loss {:.4} accuracy {:.4} macro-F1 {:.4}", t.loss, t.accuracy, t.macro_f1);
    }
    let meta = serde_json::json!({
        "method": recipe.method.name(),
        "base_model": recipe.model,
        "image_size": t.size,
        "crop_pct": t.crop_pct,
    });
    // LoRA runs also get the merged model, so `predict` and `eval` take it like any other.
    let mut merged = model.clone();
    merge_lora(&mut merged);
    export_model(&merged, dir, &data.labels, &t, meta, &run.model())?;
    let (total_params, trainable_params) = match recipe.method {
        Method::FeatureExtraction => (count_params(&model).0, count_params(model.head()).0),
        Method::Lora => learnable_counts(&model, |p| p.contains(".lora.") || p.starts_with("head.")),
        _ => {
            let plan = TrainPlan::new(recipe.method, &recipe.transfer, model.layer_groups(), M::layer_group);
            let k = plan.unfrozen(state.epoch.saturating_sub(1), state.step);
            learnable_counts(&model, |p| plan.is_trainable(p, k))
        }
    };
    let report = TrainReport {
        labels: data.labels.clone(),
        train_examples: data.len(Split::Train),
        total_params,
        trainable_params,
        test,
        feature_seconds: feature_info.map(|f| f.0),
        feature_cache_hit: feature_info.map(|f| f.1),
        model_dir: if adapter.is_some() { run.adapter() } else { run.model() },
        ..TrainReport::from_run(recipe, &state, &run)
    };
    run.finish(&report)?;
    Ok(report)
}

/// Learnable parameters (BatchNorm statistics excluded), total and those `trains` selects.
fn learnable_counts<M: ImageBackbone>(model: &M, trains: impl Fn(&str) -> bool) -> (usize, usize) {
    let params = crate::io::params::list_params(model);
    let learnable = params.iter().filter(|p| !p.path.contains("running_"));
    (learnable.clone().map(|p| p.numel()).sum(), learnable.filter(|p| trains(&p.path)).map(|p| p.numel()).sum())
}

fn lora_init(cfg: &LoraConfig) -> Result<LoraInit> {
    match &cfg.init_lora_weights {
        InitLoraWeights::Flag(true) => Ok(LoraInit::Kaiming),
        InitLoraWeights::Named(s) if s == "gaussian" => Ok(LoraInit::Gaussian),
        other => bail!("init_lora_weights {other:?} is not supported (true or \"gaussian\")"),
    }
}

/// Attach LoRA adapters to the convolutions `cfg` targets (the checkpoint's module names).
fn attach_lora<M: ImageBackbone>(
    model: &mut M,
    cfg: &LoraConfig,
    init: LoraInit,
    device: &Device,
) -> Result<Vec<String>> {
    if cfg.bias != BiasMode::None {
        bail!("lora.bias = {:?}: these convolutions have no bias; use \"none\"", cfg.bias);
    }
    let layers = model
        .conv_units_mut()
        .into_iter()
        .map(|ConvUnit { name, unit, .. }| {
            let ConvBn { conv, lora, .. } = unit;
            (name, &*conv, lora)
        })
        .collect();
    conv_lora::inject(layers, cfg, init, device)
}

fn merge_lora<M: ImageBackbone>(model: &mut M) {
    for ConvUnit { unit, .. } in model.conv_units_mut() {
        let ConvBn { conv, lora, .. } = unit;
        conv_lora::merge(conv, lora);
    }
}

/// Write a LoRA run's adapter in peft's format (`lora_A`/`lora_B` of each adapted convolution,
/// the classifier as a module to save, under torchvision's module names) plus `finetune.json`.
pub fn export_adapter<M: ImageBackbone>(
    model: &M,
    cfg: &LoraConfig,
    base_model: &str,
    labels: &[String],
    t: &Transform,
    dir: &Path,
) -> Result<()> {
    let host = |x: Tensor<4>| {
        let shape = x.dims().to_vec();
        crate::io::safetensors::HostTensor::new(
            shape,
            x.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"),
        )
    };
    let mut tensors = Vec::new();
    let mut m = model.clone();
    for ConvUnit { name, unit, .. } in m.conv_units_mut() {
        if let Some(a) = &unit.lora {
            tensors.push((format!("{KEY_PREFIX}{name}.lora_A.weight"), host(a.a.val())));
            tensors.push((format!("{KEY_PREFIX}{name}.lora_B.weight"), host(a.b.val())));
        }
    }
    let head = crate::models::checkpoint_tensors(model, |p| model.checkpoint_key(p), |p| p.path.starts_with("head."));
    tensors.extend(head.into_iter().map(|(k, v)| (format!("{KEY_PREFIX}{k}"), v)));
    let mut config = lora::adapter_config_json(cfg, base_model, "");
    // A vision backbone is not one of peft's task types.
    config["task_type"] = serde_json::Value::Null;
    AdapterFiles::write(dir, &config, tensors)?;
    let extra = serde_json::json!({ "labels": labels, "finetune": { "image_size": t.size, "crop_pct": t.crop_pct } });
    crate::io::atomic::write_atomic(&dir.join("finetune.json"), serde_json::to_string_pretty(&extra)?.as_bytes())
}

/// The base model with a peft LoRA adapter (ours or Python peft's) attached: adapters on the
/// convolutions it names, the classifier from the adapter when it carries one.
pub fn load_with_adapter<M: ImageBackbone>(base: &ImageModelDir, adapter_dir: &Path, device: &Device) -> Result<M> {
    let files = AdapterFiles::read(adapter_dir)?;
    let cfg: LoraConfig = serde_json::from_value(files.config.clone())
        .with_context(|| format!("{}: not a LoRA adapter_config.json", adapter_dir.display()))?;
    let head_key = format!("{KEY_PREFIX}{}", M::CLASSIFIER_WEIGHT);
    let num_classes = files.tensors.get(&head_key).map_or(base.config.num_classes, |t| t.shape[0]);
    let (mut model, _) = load_image_classifier::<M>(base, num_classes, 0.0, Head::FromCheckpoint, device)?;
    attach_lora(&mut model, &cfg, LoraInit::Gaussian, device)?;
    let mut used = std::collections::BTreeSet::new();
    for ConvUnit { name, unit, .. } in model.conv_units_mut() {
        let Some(a) = unit.lora.as_mut() else { continue };
        for (suffix, param) in [("lora_A", &mut a.a), ("lora_B", &mut a.b)] {
            let key = format!("{KEY_PREFIX}{name}.{suffix}.weight");
            let t = files.tensor(&key)?;
            let want = param.dims().to_vec();
            if t.shape != want {
                bail!("{}: '{key}' has shape {:?}, expected {:?}", adapter_dir.display(), t.shape, want);
            }
            let value =
                Tensor::<4>::from_data(TensorData::new(t.data.clone(), [want[0], want[1], want[2], want[3]]), device);
            *param = Param::initialized(param.id, value);
            used.insert(key);
        }
    }
    let keys: Vec<(String, String)> = crate::io::params::list_params(&model)
        .into_iter()
        .map(|p| {
            let k = format!("{KEY_PREFIX}{}", model.checkpoint_key(&p.path));
            (p.path, k)
        })
        .collect();
    let model = crate::models::import_by_key(
        model,
        &files.tensors,
        |i| keys.iter().find(|(p, _)| *p == i.path).map(|(_, k)| k.clone()).unwrap_or_default(),
        &mut used,
    )?;
    let unused: Vec<&String> = files.tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        bail!("{}: tensors that match no layer of the model: {unused:?}", adapter_dir.display());
    }
    Ok(model)
}

/// Write a fine-tuned image model: `config.json` (the base's, with the new classes, the input
/// settings used and what finetune did) and `model.safetensors` under the base checkpoint's
/// keys, so e.g. `torchvision.models.mobilenet_v2(num_classes=...)` loads it with `load_state_dict`.
pub fn export_model<M: ImageBackbone>(
    model: &M,
    base: &ImageModelDir,
    labels: &[String],
    t: &Transform,
    meta: serde_json::Value,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = base.config.clone();
    config.num_classes = labels.len();
    config.label_names = Some(labels.to_vec());
    config.pretrained_cfg.input_size = [3, t.size, t.size];
    config.pretrained_cfg.crop_pct = t.crop_pct;
    config.finetune = Some(meta);
    crate::io::atomic::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    write_safetensors(&out.join("model.safetensors"), &checkpoint_tensors(model), None)
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
}

impl FinetunedImageClassifier {
    pub fn load(path: &Path, device: &str) -> Result<Self> {
        let device = crate::ops::device::select(device)?;
        let dir = ImageModelDir::open(path)?;
        let n = dir.config.num_classes;
        let labels = dir.config.label_names.clone().unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect());
        if labels.len() != n {
            bail!("{}: {} label names for {n} classes", dir.config_path.display(), labels.len());
        }
        let model = AnyImageClassifier::load(&dir, n, Head::FromCheckpoint, &device)?;
        let p = &dir.config.pretrained_cfg;
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
                TensorData::new(prepare(&split, &idx, &self.transform, None, 0), [chunk.len(), 3, s, s]),
                &self.device,
            );
            let probs = burn::tensor::activation::softmax(self.model.forward(x), 1);
            let probs: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            for (row, path) in probs.chunks(self.labels.len()).zip(chunk) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let top: Vec<(String, f32)> =
                    order.iter().take(top_k).map(|&i| (self.labels[i].clone(), row[i])).collect();
                out.push(ImagePrediction { image: path.clone(), label: top[0].0.clone(), top });
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
