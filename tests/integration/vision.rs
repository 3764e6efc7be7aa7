//! Vision: the code-free PyTorch checkpoint reader, and torchvision's real MobileNetV2 ImageNet
//! weights against torchvision on real photographs (fixtures by scripts/make_vision_fixtures.py).
//! The MobileNetV2 tests need the asset (scripts/fetch-assets.sh mobilenet);
//! FINETUNE_REQUIRE_ASSETS=1 makes its absence a failure.

use super::common::*;
use burn::prelude::*;
use finetune::data::image::{Image, Transform};
use finetune::io::pth::PthFile;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::Head;
use finetune::models::image_classifier::{ImageModelDir, load_image_classifier};
use std::path::PathBuf;

pub const MOBILENET_REPO: &str = "finetune/mobilenet_v2.imagenet1k_v1";

pub fn mobilenet_dir() -> Option<PathBuf> {
    match finetune::io::hub::resolve(MOBILENET_REPO, finetune::io::hub::RepoKind::Model, "main", &["config.json"]) {
        Ok(dir) => Some(dir),
        Err(_) => {
            assert!(
                std::env::var("FINETUNE_REQUIRE_ASSETS").is_err(),
                "MobileNetV2 is not in the hub cache: run scripts/fetch-assets.sh mobilenet"
            );
            eprintln!("SKIPPED: MobileNetV2 not in the hub cache (scripts/fetch-assets.sh mobilenet)");
            None
        }
    }
}

#[test]
fn pth_reader_reads_both_torch_save_layouts() {
    let dir = fixtures().join("pth");
    let expected = SafetensorsFile::open(&dir.join("expected.safetensors")).unwrap();
    for file in ["zip.pth", "legacy.pth"] {
        let pth = PthFile::open(&dir.join(file)).unwrap();
        let mut names = pth.names();
        names.sort();
        let mut want = expected.names();
        want.sort();
        assert_eq!(names, want, "{file}");
        for name in want {
            let e = expected.tensor(&name).unwrap();
            let got = pth.get(&name).unwrap();
            assert_eq!(got.shape, e.shape, "{file} {name}");
            assert_eq!(got.data, e.data, "{file} {name}");
        }
    }
}

#[test]
fn pth_reader_refuses_code_and_names_the_file() {
    let dir = fixtures().join("pth");
    let e = format!("{:#}", PthFile::open(&dir.join("evil.pth")).err().expect("must refuse"));
    assert!(e.contains("evil.pth") && e.contains("posix.system"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("legacy.pth")).unwrap();
    let cut = tmp.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = format!("{:#}", PthFile::open(&cut).err().expect("truncated"));
    assert!(e.contains("cut.pth") && e.contains("truncated"), "{e}");
    let junk = tmp.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let e = format!("{:#}", PthFile::open(&junk).err().expect("junk"));
    assert!(e.contains("junk.pth") && e.contains("not a PyTorch checkpoint"), "{e}");
}

fn reference_batch(dir: &ImageModelDir) -> (Tensor<4>, serde_json::Value) {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("mobilenet_v2-reference.json")).unwrap())
            .unwrap();
    let cfg = &dir.config.pretrained_cfg;
    let t = Transform { size: 224, crop_pct: 1.0, mean: cfg.mean, std: cfg.std };
    let names = reference["images"].as_array().unwrap();
    let mut pixels = vec![0f32; names.len() * 3 * 224 * 224];
    for (i, name) in names.iter().enumerate() {
        let img = Image::open(&fixtures().join("images").join(name.as_str().unwrap())).unwrap();
        assert_eq!((img.width, img.height, img.channels), (224, 224, 3));
        t.apply(&img, &mut pixels[i * 3 * 224 * 224..(i + 1) * 3 * 224 * 224]);
    }
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [names.len(), 3, 224, 224]), &Device::default());
    (x, reference)
}

/// torchvision's MobileNetV2 with its ImageNet weights, read from the legacy `.pth`: pooled
/// features and logits of four real photographs within 1e-4 of torchvision (eval mode), the
/// same top-1 classes, and train-mode logits (BatchNorm on batch statistics) within 1e-3.
#[test]
fn real_mobilenet_v2_matches_torchvision() {
    let Some(path) = mobilenet_dir() else { return };
    let dir = ImageModelDir::open(&path).unwrap();
    let device = Device::default();
    let (model, report) = load_image_classifier(&dir, 1000, 0.0, Head::FromCheckpoint, &device).unwrap();
    assert!(report.unused.is_empty() && report.initialized.is_empty(), "{report:?}");
    assert_eq!(report.loaded, 314 - 52, "every tensor but the 52 BatchNorm step counters");
    let (x, reference) = reference_batch(&dir);
    let expected = SafetensorsFile::open(&fixtures().join("mobilenet_v2-reference.safetensors")).unwrap();

    let features = model.features(x.clone());
    let d = max_abs_diff(&values(features.clone()), &expected.tensor("features").unwrap().data);
    assert!(d < 1e-4, "features differ by {d}");
    let logits = model.head.forward(features);
    let d = max_abs_diff(&values(logits.clone()), &expected.tensor("logits").unwrap().data);
    assert!(d < 1e-4, "logits differ by {d}");
    let top1: Vec<i64> = logits.argmax(1).into_data().convert::<i64>().try_into_vec().unwrap();
    let want: Vec<i64> = reference["top1"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(top1, want);
    let labels = dir.config.label_names.as_ref().unwrap();
    assert_eq!(labels[top1[0] as usize], "Egyptian cat");

    // Training mode: batch statistics (the autodiff device takes BatchNorm's training path).
    let train_device = finetune::device::training(&device);
    let (model, _) = load_image_classifier(&dir, 1000, 0.0, Head::FromCheckpoint, &train_device).unwrap();
    let logits = model.forward(x.to_device(&train_device));
    let d = max_abs_diff(&values(logits), &expected.tensor("train_logits").unwrap().data);
    assert!(d < 1e-3, "train-mode logits differ by {d}");
    // ... and the running statistics moved towards this batch's, as PyTorch's momentum 0.1 does.
    // (burn applies running-statistic updates when the model leaves training: `valid()`.)
    let after = finetune::models::image_classifier::torchvision_tensors(&model.valid());
    let (_, mean) = after.iter().find(|(k, _)| k == "features.0.1.running_mean").unwrap();
    let original = PthFile::open(&dir.weights).unwrap();
    let before = original.get("features.0.1.running_mean").unwrap();
    assert!(max_abs_diff(&mean.data, &before.data) > 1e-4, "running mean did not update");
}
