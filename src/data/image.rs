//! Labelled images: IDX files (MNIST / Fashion-MNIST) and image folders (`class/*.png|jpg`),
//! turned into normalised `[3, size, size]` tensors, with seeded on-the-fly augmentation.
//!
//! Every geometric step (resize, centre crop, random resized crop, flip, rotation) is an affine
//! map from output pixels to source coordinates, so an image is resampled once, bilinearly,
//! whatever the augmentation. Grayscale images are repeated into three channels; the pretrained
//! backbone's mean and std then normalise each channel.

use crate::nn::conv_bn::BatchNormMode;
use crate::ops::rng::SplitMix64;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An 8-bit image, row-major, `channels` 1 (gray) or 3 (RGB) interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    pub fn open(path: &Path) -> Result<Self> {
        let img = image::open(path).with_context(|| format!("{}: cannot decode image", path.display()))?;
        Ok(if img.color().has_color() {
            let rgb = img.to_rgb8();
            Self { width: rgb.width() as usize, height: rgb.height() as usize, channels: 3, pixels: rgb.into_raw() }
        } else {
            let g = img.to_luma8();
            Self { width: g.width() as usize, height: g.height() as usize, channels: 1, pixels: g.into_raw() }
        })
    }

    /// Channel `c` (0 for gray images) at integer coordinates clamped to the border, in [0, 1].
    fn at(&self, x: isize, y: isize, c: usize) -> f32 {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        let c = if self.channels == 1 { 0 } else { c };
        self.pixels[(y * self.width + x) * self.channels + c] as f32 / 255.0
    }

    /// Bilinear sample at continuous coordinates (pixel centres at integer + 0.5).
    fn sample(&self, x: f32, y: f32, c: usize) -> f32 {
        let (x, y) = (x - 0.5, y - 0.5);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let top = self.at(x0, y0, c) * (1.0 - fx) + self.at(x0 + 1, y0, c) * fx;
        let bottom = self.at(x0, y0 + 1, c) * (1.0 - fx) + self.at(x0 + 1, y0 + 1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// Random augmentation applied to training images (never to validation or test).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random resized crop: the crop covers this range of the image's area...
    #[serde(default = "default_scale")]
    pub crop_scale: [f32; 2],
    /// ...with an aspect ratio in this range (log-uniform). `crop_scale = [1, 1]` disables it.
    #[serde(default = "default_ratio")]
    pub crop_ratio: [f32; 2],
    /// Probability of a horizontal flip.
    #[serde(default = "default_flip")]
    pub hflip: f32,
    /// Rotate by a uniform angle in ±this many degrees.
    #[serde(default)]
    pub rotate_degrees: f32,
    /// Multiply brightness by a factor in 1 ± this.
    #[serde(default)]
    pub brightness: f32,
    /// Scale contrast around the image mean by a factor in 1 ± this.
    #[serde(default)]
    pub contrast: f32,
}

fn default_scale() -> [f32; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f32; 2] {
    [0.75, 4.0 / 3.0]
}
fn default_flip() -> f32 {
    0.5
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale: default_scale(),
            crop_ratio: default_ratio(),
            hflip: default_flip(),
            rotate_degrees: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        }
    }
}

/// How images become model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output side length.
    pub size: usize,
    /// Evaluation: the crop is this fraction of the resized image's short side.
    pub crop_pct: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Source-space rectangle and transform for one output image.
#[derive(Debug, Clone, Copy)]
struct View {
    /// Centre of the crop in source pixels.
    cx: f32,
    cy: f32,
    /// Crop size in source pixels.
    w: f32,
    h: f32,
    flip: bool,
    /// Radians.
    angle: f32,
    brightness: f32,
    contrast: f32,
}

impl Transform {
    /// The evaluation view: resize the short side to `size / crop_pct`, take the centre `size`.
    fn centre_view(&self, img: &Image) -> View {
        let short = img.width.min(img.height) as f32;
        let side = short * self.crop_pct;
        View {
            cx: img.width as f32 / 2.0,
            cy: img.height as f32 / 2.0,
            w: side,
            h: side,
            flip: false,
            angle: 0.0,
            brightness: 1.0,
            contrast: 1.0,
        }
    }

    /// torchvision's `RandomResizedCrop` sampling (10 tries, then the centre crop), plus flip,
    /// rotation and colour jitter.
    fn random_view(&self, img: &Image, aug: &AugmentConfig, rng: &mut SplitMix64) -> View {
        let (iw, ih) = (img.width as f32, img.height as f32);
        let mut view = View {
            cx: iw / 2.0,
            cy: ih / 2.0,
            w: iw.min(ih),
            h: iw.min(ih),
            flip: false,
            angle: 0.0,
            brightness: 1.0,
            contrast: 1.0,
        };
        let area = iw * ih;
        let (lr0, lr1) = (aug.crop_ratio[0].ln(), aug.crop_ratio[1].ln());
        for _ in 0..10 {
            let target = area * uniform(rng, aug.crop_scale[0], aug.crop_scale[1]);
            let ratio = uniform(rng, lr0, lr1).exp();
            let w = (target * ratio).sqrt().round();
            let h = (target / ratio).sqrt().round();
            if w >= 1.0 && h >= 1.0 && w <= iw && h <= ih {
                let x0 = (uniform(rng, 0.0, 1.0) * (iw - w + 1.0)).floor().min(iw - w);
                let y0 = (uniform(rng, 0.0, 1.0) * (ih - h + 1.0)).floor().min(ih - h);
                view = View { cx: x0 + w / 2.0, cy: y0 + h / 2.0, w, h, ..view };
                break;
            }
        }
        view.flip = uniform(rng, 0.0, 1.0) < aug.hflip;
        view.angle = uniform(rng, -aug.rotate_degrees, aug.rotate_degrees).to_radians();
        view.brightness = 1.0 + uniform(rng, -aug.brightness, aug.brightness);
        view.contrast = 1.0 + uniform(rng, -aug.contrast, aug.contrast);
        view
    }

    /// `img` as a normalised `[3, size, size]` tensor (channel-major), without augmentation.
    pub fn apply(&self, img: &Image, out: &mut [f32]) {
        self.render(img, self.centre_view(img), out)
    }

    /// With random augmentation drawn from `rng`.
    pub fn apply_augmented(&self, img: &Image, aug: &AugmentConfig, rng: &mut SplitMix64, out: &mut [f32]) {
        let view = self.random_view(img, aug, rng);
        self.render(img, view, out)
    }

    fn render(&self, img: &Image, v: View, out: &mut [f32]) {
        let s = self.size;
        assert_eq!(out.len(), 3 * s * s, "output buffer size");
        let (sin, cos) = v.angle.sin_cos();
        let (sx, sy) = (v.w / s as f32, v.h / s as f32);
        let mut values = vec![0f32; 3 * s * s];
        for oy in 0..s {
            for ox in 0..s {
                // Output pixel centre relative to the crop centre, in source pixels.
                let mut dx = (ox as f32 + 0.5 - s as f32 / 2.0) * sx;
                let dy = (oy as f32 + 0.5 - s as f32 / 2.0) * sy;
                if v.flip {
                    dx = -dx;
                }
                let x = v.cx + cos * dx - sin * dy;
                let y = v.cy + sin * dx + cos * dy;
                for c in 0..3 {
                    values[c * s * s + oy * s + ox] = img.sample(x, y, c);
                }
            }
        }
        if v.contrast != 1.0 {
            let mean = values.iter().sum::<f32>() / values.len() as f32;
            values.iter_mut().for_each(|p| *p = (mean + (*p - mean) * v.contrast).clamp(0.0, 1.0));
        }
        if v.brightness != 1.0 {
            values.iter_mut().for_each(|p| *p = (*p * v.brightness).clamp(0.0, 1.0));
        }
        for c in 0..3 {
            let (m, sd) = (self.mean[c], self.std[c]);
            for (o, p) in out[c * s * s..(c + 1) * s * s].iter_mut().zip(&values[c * s * s..(c + 1) * s * s]) {
                *o = (p - m) / sd;
            }
        }
    }
}

fn uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    lo + (hi - lo) * u
}

/// One split of labelled images.
#[derive(Debug, Clone)]
pub struct ImageSplit {
    pub name: &'static str,
    pub source: PathBuf,
    pub images: Vec<Image>,
    pub labels: Vec<usize>,
}

impl ImageSplit {
    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    /// Keep the examples at `indices`, in that order.
    pub fn select(&self, name: &'static str, indices: &[usize]) -> Self {
        Self {
            name,
            source: self.source.clone(),
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// Read a split: an IDX image file (its labels file is found by name, `-images-idx3-` →
/// `-labels-idx1-`), or a directory with one sub-directory of images per class.
pub fn read_split(name: &'static str, path: &Path, labels: &[String]) -> Result<ImageSplit> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if path.is_dir() {
        read_image_folder(name, path, labels)
    } else if file_name.contains("-images-idx3-") {
        let labels_path = path.with_file_name(file_name.replace("-images-idx3-", "-labels-idx1-"));
        let images = read_idx_images(path)?;
        let ys = read_idx_labels(&labels_path)?;
        if ys.len() != images.len() {
            bail!("{}: {} images but {} has {} labels", path.display(), images.len(), labels_path.display(), ys.len());
        }
        if let Some((i, &y)) = ys.iter().enumerate().find(|(_, y)| **y >= labels.len()) {
            bail!("{}: label {y} of image {i} is not below the {} class names", labels_path.display(), labels.len());
        }
        Ok(ImageSplit { name, source: path.to_path_buf(), images, labels: ys })
    } else {
        bail!(
            "{}: not an image split (expected a directory of class folders or an IDX `*-images-idx3-ubyte[.gz]` file)",
            path.display()
        )
    }
}

/// Class names of an image-folder split: its sub-directory names, sorted (torchvision's
/// `ImageFolder` order).
pub fn folder_classes(dir: &Path) -> Result<Vec<String>> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!("{}: no class sub-directories", dir.display());
    }
    Ok(classes)
}

fn read_image_folder(name: &'static str, dir: &Path, labels: &[String]) -> Result<ImageSplit> {
    let mut images = Vec::new();
    let mut ys = Vec::new();
    for class in folder_classes(dir)? {
        let Some(y) = labels.iter().position(|l| *l == class) else {
            bail!("{}: class folder '{class}' is not one of the labels {labels:?}", dir.display());
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(&class))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| matches!(e.to_string_lossy().to_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        files.sort();
        for f in files {
            images.push(Image::open(&f)?);
            ys.push(y);
        }
    }
    if images.is_empty() {
        bail!("{}: no .png/.jpg images in the class folders", dir.display());
    }
    Ok(ImageSplit { name, source: dir.to_path_buf(), images, labels: ys })
}

/// An IDX file (optionally gzipped): magic `0 0 8 ndim`, then `ndim` big-endian u32 sizes, then
/// the bytes. Returns the sizes and the bytes. Decompression stops at the size the header
/// promises, so a gzip bomb costs no more memory than an honest file of that header.
fn read_idx(path: &Path, ndim: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    /// More than any image set this tool trains on; a larger header is damage.
    const MAX_BYTES: u64 = 1 << 34;
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let gz = raw.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(&raw[..])) } else { Box::new(&raw[..]) };
    let corrupt = |e: std::io::Error| anyhow::anyhow!("{}: corrupt gzip data ({e})", path.display());
    let header_len = 4 + 4 * ndim as usize;
    let mut header = Vec::with_capacity(header_len);
    reader.by_ref().take(header_len as u64).read_to_end(&mut header).map_err(corrupt)?;
    if header.len() < 4 || header[..3] != [0, 0, 0x08] || header[3] != ndim {
        bail!("{}: not an IDX file of unsigned bytes with {ndim} dimension(s)", path.display());
    }
    if header.len() < header_len {
        bail!("{}: truncated IDX header", path.display());
    }
    let dims: Vec<usize> =
        header[4..].chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize).collect();
    let body = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).filter(|&n| n <= MAX_BYTES);
    let Some(body) = body else {
        bail!("{}: IDX header promises sizes {dims:?}, more data than an image set holds (damaged?)", path.display());
    };
    // Capacity from the file's own size: the header's promise is not trusted for an allocation.
    let mut data = Vec::with_capacity(if gz { 0 } else { (body as usize).min(raw.len()) });
    reader.take(body + 1).read_to_end(&mut data).map_err(corrupt)?;
    if data.len() as u64 != body {
        let found = if data.len() as u64 > body { "more".to_string() } else { data.len().to_string() };
        bail!("{}: IDX header promises {body} bytes of data, the file has {found}", path.display());
    }
    Ok((dims, data))
}

pub fn read_idx_images(path: &Path) -> Result<Vec<Image>> {
    let (dims, bytes) = read_idx(path, 3)?;
    let (h, w) = (dims[1], dims[2]);
    if h == 0 || w == 0 {
        bail!("{}: images of {h}x{w} pixels", path.display());
    }
    Ok(bytes.chunks_exact(h * w).map(|p| Image { width: w, height: h, channels: 1, pixels: p.to_vec() }).collect())
}

pub fn read_idx_labels(path: &Path) -> Result<Vec<usize>> {
    let (_, bytes) = read_idx(path, 1)?;
    Ok(bytes.iter().map(|&b| b as usize).collect())
}

/// `[image]` in a recipe: how images are fed to an image backbone (`task = "image-classification"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Input side length; default: the backbone's pretraining size (224 for ImageNet models).
    pub size: Option<usize>,
    /// Evaluation crop as a fraction of the resized short side; default: the backbone's
    /// (0.875 for ImageNet models). 1.0 keeps the whole image (e.g. Fashion-MNIST).
    pub crop_pct: Option<f32>,
    /// Without a validation file: hold out this fraction of the training images, every
    /// `round(1/f)`-th one (index ≡ k-1 mod k), so any language reproduces the split.
    #[serde(default)]
    pub validation_split: f64,
    /// Train on the first this many training images only (quick runs on a CPU).
    pub max_train_examples: Option<usize>,
    /// Random augmentation of training images; absent: none.
    pub augment: Option<AugmentConfig>,
    /// BatchNorm in trainable layers: `train` (batch statistics, running averages updated, as
    /// PyTorch's `model.train()`), or `frozen` (the pretrained statistics throughout). Frozen
    /// layers always use the pretrained statistics.
    #[serde(default)]
    pub batch_norm: BatchNormMode,
}

impl ImageConfig {
    /// Check the values a recipe can get wrong (errors name the key and the range).
    pub fn validate(&self) -> Result<()> {
        use anyhow::ensure;
        ensure!(
            self.size.is_none_or(|s| (8..=4096).contains(&s)),
            "image.size = {:?}: must be in [8, 4096]",
            self.size
        );
        ensure!(
            self.crop_pct.is_none_or(|c| c > 0.0 && c <= 1.0),
            "image.crop_pct = {:?}: must be in (0, 1]",
            self.crop_pct
        );
        ensure!(
            (0.0..1.0).contains(&self.validation_split),
            "image.validation_split = {}: must be in [0, 1)",
            self.validation_split
        );
        ensure!(self.max_train_examples != Some(0), "image.max_train_examples = 0: must be at least 1");
        if let Some(a) = &self.augment {
            let [lo, hi] = a.crop_scale;
            ensure!(
                0.0 < lo && lo <= hi && hi <= 1.0,
                "image.augment.crop_scale = {:?}: must be 0 < low <= high <= 1",
                a.crop_scale
            );
            let [lo, hi] = a.crop_ratio;
            ensure!(
                0.0 < lo && lo <= hi && hi.is_finite(),
                "image.augment.crop_ratio = {:?}: must be 0 < low <= high",
                a.crop_ratio
            );
            ensure!((0.0..=1.0).contains(&a.hflip), "image.augment.hflip = {}: must be in [0, 1]", a.hflip);
            for (key, v) in
                [("rotate_degrees", a.rotate_degrees), ("brightness", a.brightness), ("contrast", a.contrast)]
            {
                ensure!(v >= 0.0 && v.is_finite(), "image.augment.{key} = {v}: must be at least 0");
            }
            ensure!(a.brightness < 1.0 && a.contrast < 1.0, "image.augment.brightness and contrast must be below 1");
        }
        Ok(())
    }
}

/// Labelled image splits (train, validation, test; absent splits `None`) and their class names.
pub struct ImageData {
    pub labels: Vec<String>,
    pub splits: [Option<std::sync::Arc<ImageSplit>>; 3],
}

impl ImageData {
    /// Split `slot` (0 train, 1 validation, 2 test).
    pub fn split(&self, slot: usize) -> Option<&ImageSplit> {
        self.splits[slot].as_deref()
    }
    pub fn len(&self, slot: usize) -> usize {
        self.split(slot).map_or(0, ImageSplit::len)
    }
}

/// Read the splits of `[data]`. Class names: `data.labels`, else `labels.txt` in the dataset
/// directory (one per line, in label order), else the training folder's class directories.
/// Without a validation file `image.validation_split` holds out every `round(1/f)`-th training
/// image; `image.max_train_examples` keeps the first images only.
pub fn load_image_data(cfg: &super::DataConfig, image: &ImageConfig) -> Result<ImageData> {
    let dir = super::dataset_dir(cfg)?;
    let labels = super::label_names_for(cfg, &dir, || folder_classes(&dir.join(&cfg.train)))?;
    let mut train = read_split("train", &dir.join(&cfg.train), &labels)?;
    let mut validation =
        cfg.validation.as_ref().map(|v| read_split("validation", &dir.join(v), &labels)).transpose()?;
    let test = cfg.test.as_ref().map(|t| read_split("test", &dir.join(t), &labels)).transpose()?;
    let f = image.validation_split;
    if validation.is_none() && f > 0.0 {
        let k = (1.0 / f).round().max(2.0) as usize;
        let (held, kept): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|i| i % k == k - 1);
        validation = Some(train.select("validation", &held));
        train = train.select("train", &kept);
    }
    if let Some(n) = image.max_train_examples
        && n < train.len()
    {
        train = train.select("train", &(0..n).collect::<Vec<_>>());
    }
    if train.is_empty() {
        bail!("{}: the training split is empty", train.source.display());
    }
    if let Some(w) = super::class_imbalance(&train.labels, &labels, &train.source) {
        tracing::warn!("{w}");
    }
    use std::sync::Arc;
    Ok(ImageData { labels, splits: [Some(Arc::new(train)), validation.map(Arc::new), test.map(Arc::new)] })
}

/// Normalised pixels `[n, 3, size, size]` of `indices`, augmented when `augment` is given
/// (each image's randomness from `seed`, the batch and its position: reproducible and resumable).
pub fn prepare_pixels(
    split: &ImageSplit,
    indices: &[usize],
    t: &Transform,
    augment: Option<&AugmentConfig>,
    seed: u64,
) -> Vec<f32> {
    use rayon::prelude::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Image {
        Image {
            width: w,
            height: h,
            channels: 1,
            pixels: (0..w * h).map(|i| ((i % w) * 255 / (w - 1)) as u8).collect(),
        }
    }

    #[test]
    fn identity_view_reproduces_pixels() {
        let img = gradient(8, 8);
        let t = Transform { size: 8, crop_pct: 1.0, mean: [0.0; 3], std: [1.0; 3] };
        let mut out = vec![0f32; 3 * 64];
        t.apply(&img, &mut out);
        for c in 0..3 {
            for i in 0..64 {
                assert!((out[c * 64 + i] - img.pixels[i] as f32 / 255.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn flip_mirrors_and_augmentation_is_seeded() {
        let img = gradient(8, 8);
        let t = Transform { size: 8, crop_pct: 1.0, mean: [0.0; 3], std: [1.0; 3] };
        let aug = AugmentConfig { crop_scale: [1.0, 1.0], crop_ratio: [1.0, 1.0], hflip: 1.0, ..Default::default() };
        let mut out = vec![0f32; 3 * 64];
        t.apply_augmented(&img, &aug, &mut SplitMix64::new(1), &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6 && out[7].abs() < 1e-6, "{:?}", &out[..8]);
        let aug = AugmentConfig { rotate_degrees: 15.0, brightness: 0.2, contrast: 0.2, ..Default::default() };
        let mut a = vec![0f32; 3 * 64];
        let mut b = vec![0f32; 3 * 64];
        t.apply_augmented(&img, &aug, &mut SplitMix64::new(7), &mut a);
        t.apply_augmented(&img, &aug, &mut SplitMix64::new(7), &mut b);
        assert_eq!(a, b);
        t.apply_augmented(&img, &aug, &mut SplitMix64::new(8), &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn idx_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-images-idx3-ubyte");
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        bytes.extend([1u8; 7]);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("x-images-idx3-ubyte") && e.contains("promises 8 bytes of data, the file has 7"), "{e}");
        // Sizes whose product overflows, and a gzip stream that is cut short.
        let huge = [0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        std::fs::write(&p, huge).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("more data than an image set holds"), "{e}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &[&bytes[..], &[1]].concat()).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(&p, &gz[..gz.len() - 12]).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("x-images-idx3-ubyte"), "{e}");
        bytes.push(1);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_idx_images(&p).unwrap().len(), 2);
    }
}
