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
use finetune::models::ModelDir;
use finetune::models::efficientnet_lite::EfficientNetLite;
use finetune::models::image_classifier::{ImageBackbone, ImageConfig, load_image_classifier};
use finetune::models::mobilenet_v2::MobileNetV2;
use finetune::models::resnet::ResNet;
use std::path::PathBuf;

pub const MOBILENET_REPO: &str = "finetune/mobilenet_v2.imagenet1k_v1";

pub fn mobilenet_dir() -> Option<PathBuf> {
    cached_asset(MOBILENET_REPO, finetune::io::hub::RepoKind::Model, "config.json", "mobilenet")
}

pub const EFFICIENTNET_REPO: &str = "finetune/efficientnet_lite0.imagenet";

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

fn reference_batch(dir: &ModelDir) -> (Tensor<4>, serde_json::Value) {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("mobilenet_v2-reference.json")).unwrap())
            .unwrap();
    let config = ImageConfig::read(dir).unwrap();
    let cfg = &config.pretrained_cfg;
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
    let dir = ModelDir::open(&path).unwrap();
    let device = Device::default();
    let (model, report) = load_image_classifier::<MobileNetV2>(&dir, 1000, 0.0, Head::FromCheckpoint, &device).unwrap();
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
    let config = ImageConfig::read(&dir).unwrap();
    let labels = config.label_names.as_ref().unwrap();
    assert_eq!(labels[top1[0] as usize], "Egyptian cat");

    // Training mode: batch statistics (the autodiff device takes BatchNorm's training path).
    let train_device = finetune::ops::device::training(&device);
    let (model, _) =
        load_image_classifier::<MobileNetV2>(&dir, 1000, 0.0, Head::FromCheckpoint, &train_device).unwrap();
    let logits = model.forward(x.to_device(&train_device));
    let d = max_abs_diff(&values(logits), &expected.tensor("train_logits").unwrap().data);
    assert!(d < 1e-3, "train-mode logits differ by {d}");
    // ... and the running statistics moved towards this batch's, as PyTorch's momentum 0.1 does.
    // (burn applies running-statistic updates when the model leaves training: `valid()`.)
    let after = finetune::models::image_classifier::checkpoint_tensors(&model.valid());
    let (_, mean) = after.iter().find(|(k, _)| k == "features.0.1.running_mean").unwrap();
    let original = PthFile::open(&dir.weights_path()).unwrap();
    let before = original.get("features.0.1.running_mean").unwrap();
    assert!(max_abs_diff(&mean.data, &before.data) > 1e-4, "running mean did not update");
}

/// EfficientNet-Lite0 with its real ImageNet weights (TensorFlow's, ported to PyTorch), read
/// from the legacy `.pth`: features and logits of the four photographs within 1e-4 of the
/// reference implementation (`efficientnet_lite_pytorch`), TensorFlow "SAME" padding included,
/// and train-mode logits within 1e-3.
#[test]
fn real_efficientnet_lite0_matches_reference() {
    let Some(path) = cached_asset(EFFICIENTNET_REPO, finetune::io::hub::RepoKind::Model, "config.json", "efficientnet")
    else {
        return;
    };
    let dir = ModelDir::open(&path).unwrap();
    let device = Device::default();
    let (model, report) =
        load_image_classifier::<EfficientNetLite>(&dir, 1000, 0.0, Head::FromCheckpoint, &device).unwrap();
    assert!(report.unused.is_empty() && report.initialized.is_empty(), "{report:?}");
    let (x, _) = reference_batch(&dir);
    let expected = SafetensorsFile::open(&fixtures().join("efficientnet_lite0-reference.safetensors")).unwrap();
    let features = model.features(x.clone());
    let d = max_abs_diff(&values(features.clone()), &expected.tensor("features").unwrap().data);
    assert!(d < 1e-4, "features differ by {d}");
    let logits = model.head.forward(features);
    let d = max_abs_diff(&values(logits.clone()), &expected.tensor("logits").unwrap().data);
    assert!(d < 1e-4, "logits differ by {d}");
    let top1: Vec<i64> = logits.argmax(1).into_data().convert::<i64>().try_into_vec().unwrap();
    let config = ImageConfig::read(&dir).unwrap();
    let labels = config.label_names.as_ref().unwrap();
    let names: Vec<&str> = top1.iter().map(|&i| labels[i as usize].as_str()).collect();
    assert_eq!(names, ["tiger cat", "espresso", "bobsled", "missile"]);

    let train_device = finetune::ops::device::training(&device);
    let (model, _) =
        load_image_classifier::<EfficientNetLite>(&dir, 1000, 0.0, Head::FromCheckpoint, &train_device).unwrap();
    let d = max_abs_diff(
        &values(model.forward(x.to_device(&train_device))),
        &expected.tensor("train_logits").unwrap().data,
    );
    assert!(d < 1e-3, "train-mode logits differ by {d}");
}

/// The deterministic fill of scripts/make_vision_fixtures.py's `formula`: values in [-0.5, 0.5)
/// from the key and the flat index, scaled by the tensor's role.
fn formula(key: &str, shape: &[usize]) -> Vec<f32> {
    let h = key.bytes().fold(0x811C_9DC5u64, |h, b| ((h ^ b as u64) * 0x0100_0193) % (1 << 32));
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| {
            let u = ((i * 2_654_435_761 + h) % (1 << 32)) as f64 / 4_294_967_296.0 - 0.5;
            let v = if key.ends_with("running_mean") {
                0.1 * u
            } else if key.ends_with("running_var") {
                1.0 + (u + 0.5)
            } else if shape.len() == 1 && key.ends_with("weight") {
                1.0 + 0.2 * u
            } else if shape.len() == 1 {
                0.1 * u
            } else {
                u * 2.0 * (6.0 / (n / shape[0]) as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

/// torchvision's resnet18 and resnet50 layouts: a checkpoint under torchvision's keys (every
/// tensor from `formula`, as the fixture script filled torchvision's own models) loads with no
/// key left over, and pooled features and logits agree with torchvision's within 1e-4.
#[test]
fn resnet18_and_resnet50_match_torchvision() {
    let device = Device::default();
    let expected = SafetensorsFile::open(&fixtures().join("resnet-reference.safetensors")).unwrap();
    let input: Vec<f32> = formula("input", &[2, 3, 64, 64]).iter().map(|v| v * 4.0).collect();
    let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, 64, 64]), &device);
    for depth in [18, 50] {
        let tmp = tempfile::tempdir().unwrap();
        let shapes =
            finetune::models::image_classifier::checkpoint_tensors(&ResNet::new(depth, 10, 0.0, &device).unwrap());
        let tensors: Vec<(String, finetune::io::safetensors::HostTensor)> = shapes
            .into_iter()
            .map(|(k, t)| {
                let data = formula(&k, &t.shape);
                (k, finetune::io::safetensors::HostTensor::new(t.shape, data))
            })
            .collect();
        finetune::io::safetensors::write_safetensors(&tmp.path().join("model.safetensors"), &tensors, None).unwrap();
        let config = serde_json::json!({
            "architecture": format!("resnet{depth}"),
            "num_classes": 10,
            "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        });
        std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        let dir = ModelDir::open(tmp.path()).unwrap();
        let (model, report) = load_image_classifier::<ResNet>(&dir, 10, 0.0, Head::FromCheckpoint, &device).unwrap();
        assert!(report.unused.is_empty() && report.initialized.is_empty(), "{report:?}");
        let features = model.features(x.clone());
        let want = expected.tensor(&format!("resnet{depth}.features")).unwrap();
        let d = max_abs_diff(&values(features.clone()), &want.data);
        assert!(d < 1e-4, "resnet{depth} features differ by {d}");
        let want = expected.tensor(&format!("resnet{depth}.logits")).unwrap();
        let d = max_abs_diff(&values(model.head.forward(features)), &want.data);
        assert!(d < 1e-4, "resnet{depth} logits differ by {d}");
    }
}

/// A small image-folder dataset of real Fashion-MNIST images (`train/<class>/<i>.png`, ...):
/// `per_class` images of each of three classes per split. None without the asset.
pub fn fashion_folders(dir: &std::path::Path, per_class: usize) -> Option<PathBuf> {
    let repo = cached_asset(
        "finetune/fashion-mnist",
        finetune::io::hub::RepoKind::Dataset,
        "train-images-idx3-ubyte.gz",
        "fashion-mnist",
    )?;
    let images = finetune::data::image::read_idx_images(&repo.join("train-images-idx3-ubyte.gz")).unwrap();
    let labels = finetune::data::image::read_idx_labels(&repo.join("train-labels-idx1-ubyte.gz")).unwrap();
    let classes = [(0usize, "tshirt"), (1, "trouser"), (8, "bag")];
    let out = dir.join("fashion3");
    let mut taken = [0usize; 3];
    for (img, &y) in images.iter().zip(&labels) {
        let Some(c) = classes.iter().position(|(l, _)| *l == y) else { continue };
        let n = taken[c];
        if n >= 3 * per_class {
            continue;
        }
        taken[c] += 1;
        let split = ["train", "validation", "test"][n / per_class];
        let folder = out.join(split).join(classes[c].1);
        std::fs::create_dir_all(&folder).unwrap();
        image::save_buffer(folder.join(format!("{n}.png")), &img.pixels, 28, 28, image::ExtendedColorType::L8).unwrap();
    }
    Some(out)
}

/// A MobileNetV2 recipe on `data`; `image_extra` goes into the `[image]` table, `extra` after it.
fn image_recipe(
    dir: &std::path::Path,
    data: &std::path::Path,
    method: &str,
    image_extra: &str,
    extra: &str,
) -> PathBuf {
    image_recipe_for(MOBILENET_REPO, dir, data, method, image_extra, extra)
}

fn image_recipe_for(
    model: &str,
    dir: &std::path::Path,
    data: &std::path::Path,
    method: &str,
    image_extra: &str,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"task = "image-classification"
method = "{method}"
model = "{model}"
seed = 3
output_dir = "{out}"
[data]
dataset = "{data}"
train = "train"
validation = "validation"
test = "test"
[image]
size = 32
crop_pct = 1.0
{image_extra}
[feature_extraction]
cache_dir = "{cache}"
{extra}
"#,
        out = dir.join(method).display(),
        data = data.display(),
        cache = dir.join("features").display(),
    );
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Run the `finetune` binary with `args`; it must succeed and print JSON.
fn cli_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn train_cli(recipe: &std::path::Path) -> serde_json::Value {
    cli_json(&["train".as_ref(), "--json".as_ref(), "--no-progress".as_ref(), recipe.as_os_str()])
}

/// Gradual unfreezing on real images: after 3 steps with one more group every step, the head,
/// the final conv and block 17 have trained and nothing below has; BatchNorm statistics moved
/// only in the layers that trained. The saved model loads for `finetune predict` and `eval`.
#[test]
fn gradual_unfreezing_trains_top_down_and_freezes_batch_norm_below() {
    let Some(base) = mobilenet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_folders(tmp.path(), 8) else { return };
    let recipe = image_recipe(
        tmp.path(),
        &data,
        "transfer",
        "",
        "[transfer]\ntrainable_layers = 0\nunfreeze_every_steps = 1\n[training]\nepochs = 1\nbatch_size = 8\n\
         learning_rate = 1e-2\nwarmup_ratio = 0.0\n[image.augment]\ncrop_scale = [0.8, 1.0]\nrotate_degrees = 10.0\n",
    );
    let report = train_cli(&recipe);
    assert_eq!(report["optimizer_steps"], 3);
    let model_dir = PathBuf::from(report["model_dir"].as_str().unwrap());
    let trained = SafetensorsFile::open(&model_dir.join("model.safetensors")).unwrap();
    let original = PthFile::open(&ModelDir::open(&base).unwrap().weights_path()).unwrap();
    let changed = |key: &str| max_abs_diff(&trained.tensor(key).unwrap().data, &original.get(key).unwrap().data) > 0.0;
    assert!(changed("features.18.0.weight") && changed("features.18.1.running_mean"));
    assert!(changed("features.17.conv.0.0.weight") && changed("features.17.conv.3.running_var"));
    for frozen in [
        "features.16.conv.0.0.weight",
        "features.16.conv.3.running_mean",
        "features.1.conv.0.0.weight",
        "features.0.0.weight",
        "features.0.1.running_var",
    ] {
        assert!(!changed(frozen), "{frozen} changed");
    }
    let log = std::fs::read_to_string(tmp.path().join("transfer/metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"unfreeze\"").count(), 2, "{log}");

    let png = data.join("test/trouser").read_dir().unwrap().next().unwrap().unwrap().path();
    let model_arg = model_dir.as_os_str();
    let p = cli_json(&["predict".as_ref(), "--json".as_ref(), "--model".as_ref(), model_arg, png.as_os_str()]);
    assert!(["bag", "trouser", "tshirt"].contains(&p["label"].as_str().unwrap()), "{p}");
    let test_dir = data.join("test");
    let m = cli_json(&[
        "eval".as_ref(),
        "--json".as_ref(),
        "--model".as_ref(),
        model_arg,
        "--data".as_ref(),
        test_dir.as_os_str(),
    ]);
    assert_eq!(m["examples"], 24);
    assert!((m["accuracy"].as_f64().unwrap() - report["test"]["accuracy"].as_f64().unwrap()).abs() < 1e-9);
}

/// `batch_norm = "frozen"` with full fine-tuning: every weight trains, no statistic moves.
#[test]
fn full_fine_tuning_with_frozen_batch_norm_statistics() {
    let Some(base) = mobilenet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_folders(tmp.path(), 4) else { return };
    let recipe = image_recipe(
        tmp.path(),
        &data,
        "full",
        "batch_norm = \"frozen\"",
        "[training]\nepochs = 1\nbatch_size = 12\nlearning_rate = 1e-3\nwarmup_ratio = 0.0\n",
    );
    let report = train_cli(&recipe);
    let trained =
        SafetensorsFile::open(&PathBuf::from(report["model_dir"].as_str().unwrap()).join("model.safetensors")).unwrap();
    let original = PthFile::open(&ModelDir::open(&base).unwrap().weights_path()).unwrap();
    let mut wrong = Vec::new();
    for name in trained.names() {
        let diff = match original.get(&name) {
            Some(o) if !name.starts_with("classifier.") => max_abs_diff(&trained.tensor(&name).unwrap().data, &o.data),
            _ => continue,
        };
        if name.contains("running_") == (diff > 0.0) {
            wrong.push(format!("{name}: {diff}"));
        }
    }
    assert!(wrong.is_empty(), "statistics that moved or weights that did not train: {wrong:#?}");
}

/// Feature extraction computes the frozen features once; a second run reads them from the
/// cache and gives the same result.
#[test]
fn image_feature_extraction_caches_features() {
    let Some(_) = mobilenet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_folders(tmp.path(), 6) else { return };
    let recipe = image_recipe(
        tmp.path(),
        &data,
        "feature-extraction",
        "",
        "[training]\nepochs = 5\nbatch_size = 6\nlearning_rate = 1e-2\n",
    );
    let first = train_cli(&recipe);
    assert_eq!(first["feature_cache_hit"], false);
    assert_eq!(first["trainable_params"], 1280 * 3 + 3);
    std::fs::remove_dir_all(tmp.path().join("feature-extraction")).unwrap();
    let second = train_cli(&recipe);
    assert_eq!(second["feature_cache_hit"], true);
    assert_eq!(first["test"], second["test"]);
    assert!(first["test"]["accuracy"].as_f64().unwrap() > 0.5, "{first}");
}

/// A LoRA adapter written by Python peft for torchvision's MobileNetV2 (the 3×3 stem conv and
/// three 1×1 convolutions, non-zero B, a new 3-class classifier in modules_to_save) loads onto
/// the real weights and gives peft's logits on the four photographs.
#[test]
fn peft_conv_lora_adapter_gives_peft_logits() {
    let Some(path) = mobilenet_dir() else { return };
    let dir = ModelDir::open(&path).unwrap();
    let device = Device::default();
    let model = finetune::inference::image::load_with_adapter::<MobileNetV2>(
        &dir,
        &fixtures().join("peft/mobilenet-lora"),
        &device,
    )
    .unwrap();
    let (x, _) = reference_batch(&dir);
    let expected = SafetensorsFile::open(&fixtures().join("mobilenet-lora-reference.safetensors")).unwrap();
    let d = max_abs_diff(&values(model.forward(x)), &expected.tensor("logits").unwrap().data);
    assert!(d < 1e-4, "logits differ from peft's by {d}");
}

/// LoRA on 1×1 convolutions of real Fashion-MNIST images: only the adapters and the head train,
/// no BatchNorm statistic moves; the saved adapter reloads onto the base and gives the merged
/// model's predictions.
#[test]
fn image_lora_trains_only_adapters_and_head() {
    let Some(base) = mobilenet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_folders(tmp.path(), 6) else { return };
    let recipe = image_recipe(
        tmp.path(),
        &data,
        "lora",
        "",
        "[training]\nepochs = 1\nbatch_size = 9\nlearning_rate = 1e-2\nwarmup_ratio = 0.0\n\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"features.18.0\", \"features.17.conv.2\"]\n",
    );
    let report = train_cli(&recipe);
    assert_eq!(report["trainable_params"], 4 * (320 + 1280) + 4 * (960 + 320) + 1280 * 3 + 3);
    let adapter = PathBuf::from(report["model_dir"].as_str().unwrap());
    let files = finetune::io::peft::AdapterFiles::read(&adapter).unwrap();
    let b = files.tensor("base_model.model.features.18.0.lora_B.weight").unwrap();
    assert_eq!(b.shape, vec![1280, 4, 1, 1]);
    assert!(b.data.iter().any(|v| *v != 0.0), "lora_B did not train");
    assert_eq!(files.tensors.len(), 6, "{:?}", files.tensors.keys().collect::<Vec<_>>());

    // The merged model differs from the base only in the adapted convolutions and the head.
    let merged = SafetensorsFile::open(&tmp.path().join("lora/model/model.safetensors")).unwrap();
    let original = PthFile::open(&ModelDir::open(&base).unwrap().weights_path()).unwrap();
    for name in merged.names() {
        let Some(o) = original.get(&name).filter(|_| !name.starts_with("classifier.")) else { continue };
        let moved = max_abs_diff(&merged.tensor(&name).unwrap().data, &o.data) > 0.0;
        let adapted = name == "features.18.0.weight" || name == "features.17.conv.2.weight";
        assert_eq!(moved, adapted, "{name}");
    }
    // Base + adapter == merged model.
    let device = Device::default();
    let dir = ModelDir::open(&base).unwrap();
    let with_adapter = finetune::inference::image::load_with_adapter::<MobileNetV2>(&dir, &adapter, &device).unwrap();
    let merged_dir = ModelDir::open(&tmp.path().join("lora/model")).unwrap();
    let (merged_model, _) =
        load_image_classifier::<MobileNetV2>(&merged_dir, 3, 0.0, Head::FromCheckpoint, &device).unwrap();
    let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let d = max_abs_diff(&values(with_adapter.forward(x.clone())), &values(merged_model.forward(x)));
    assert!(d < 1e-4, "adapter vs merged logits differ by {d}");
}

/// EfficientNet-Lite0 through the same task: LoRA on its 3×3 stride-2 stem (TensorFlow "SAME"
/// padding, which the adapter's convolution must reproduce) and its 1×1 head conv. Only the
/// adapters and the `_fc` head train; base + adapter gives the merged model's logits; the merged
/// model loads for `finetune eval`.
#[test]
fn efficientnet_lora_with_same_padding_matches_merged_model() {
    let Some(base) = cached_asset(EFFICIENTNET_REPO, finetune::io::hub::RepoKind::Model, "config.json", "efficientnet")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_folders(tmp.path(), 6) else { return };
    let recipe = image_recipe_for(
        EFFICIENTNET_REPO,
        tmp.path(),
        &data,
        "lora",
        "",
        "[training]\nepochs = 1\nbatch_size = 9\nlearning_rate = 1e-2\nwarmup_ratio = 0.0\n\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"_conv_stem\", \"_conv_head\"]\n",
    );
    let report = train_cli(&recipe);
    assert_eq!(report["trainable_params"], 4 * 3 * 9 + 32 * 4 + 4 * 320 + 1280 * 4 + 1280 * 3 + 3);
    let adapter = PathBuf::from(report["model_dir"].as_str().unwrap());
    let files = finetune::io::peft::AdapterFiles::read(&adapter).unwrap();
    let mut keys: Vec<&String> = files.tensors.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base_model.model._conv_head.lora_A.weight",
            "base_model.model._conv_head.lora_B.weight",
            "base_model.model._conv_stem.lora_A.weight",
            "base_model.model._conv_stem.lora_B.weight",
            "base_model.model._fc.bias",
            "base_model.model._fc.weight",
        ]
    );
    assert!(files.tensor("base_model.model._conv_stem.lora_B.weight").unwrap().data.iter().any(|v| *v != 0.0));

    let device = Device::default();
    let dir = ModelDir::open(&base).unwrap();
    let with_adapter =
        finetune::inference::image::load_with_adapter::<EfficientNetLite>(&dir, &adapter, &device).unwrap();
    let merged_dir = ModelDir::open(&tmp.path().join("lora/model")).unwrap();
    let (merged, _) =
        load_image_classifier::<EfficientNetLite>(&merged_dir, 3, 0.0, Head::FromCheckpoint, &device).unwrap();
    // An odd size too: SAME padding then pads both sides of the stem.
    for size in [32, 33] {
        let x = Tensor::<4>::random([2, 3, size, size], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let d = max_abs_diff(&values(with_adapter.forward(x.clone())), &values(merged.forward(x)));
        assert!(d < 1e-4, "{size}px: adapter vs merged logits differ by {d}");
    }
    let test_dir = data.join("test");
    let m = cli_json(&[
        "eval".as_ref(),
        "--json".as_ref(),
        "--model".as_ref(),
        tmp.path().join("lora/model").as_os_str(),
        "--data".as_ref(),
        test_dir.as_os_str(),
    ]);
    assert!((m["accuracy"].as_f64().unwrap() - report["test"]["accuracy"].as_f64().unwrap()).abs() < 1e-9);
}

/// The CNN kernels against PyTorch (`scripts/make_cnn_kernel_fixtures.py`): outputs and every
/// gradient of pointwise convolutions (a 9×10 map and a 2×2 one, which takes the channel-major
/// path), depthwise 3×3 and 5×5 convolutions at stride 2 (the 5×5 with TensorFlow's asymmetric
/// "SAME" padding), BatchNorm + ReLU6 with batch statistics (and the running averages after the
/// step: PyTorch's unbiased variance) and BatchNorm + ReLU with running statistics. Relative
/// error (max |diff| / max |reference|) ≤ 1e-5.
#[test]
fn cnn_kernels_match_pytorch() {
    use burn::module::{Param, RunningState};
    use burn::tensor::ops::ConvOptions;
    use finetune::nn::conv_bn::{Activation, batch_norm_activation};

    let st = SafetensorsFile::open(&fixtures().join("cnn-kernels-reference.safetensors")).unwrap();
    let device = Device::flex().autodiff();
    let tensor = |name: &str| {
        let t = st.tensor(name).unwrap();
        Tensor::<4>::from_data(TensorData::new(t.data, [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]), &device)
    };
    let vector = |name: &str| {
        let t = st.tensor(name).unwrap();
        Tensor::<1>::from_data(TensorData::new(t.data, [t.shape[0]]), &device)
    };
    let check = |ours: Vec<f32>, name: &str| {
        let reference = st.tensor(name).unwrap().data;
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&ours, &reference) / scale;
        assert!(err <= 1e-5, "{name}: relative error {err}");
    };
    let values = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();

    for (case, stride, padding, groups) in [
        ("pw", 1, [(0, 0), (0, 0)], 1),
        ("pws", 1, [(0, 0), (0, 0)], 1),
        ("dw3", 2, [(1, 1), (1, 1)], 6),
        ("dw5", 2, [(1, 2), (1, 2)], 4),
    ] {
        let x = tensor(&format!("{case}.x")).require_grad();
        let w = tensor(&format!("{case}.w")).require_grad();
        let options = ConvOptions::new_with_padding([stride, stride], padding, [1, 1], groups);
        let y = finetune::ops::conv2d::conv2d(x.clone(), w.clone(), options);
        let grads = (y.clone() * tensor(&format!("{case}.g"))).sum().backward();
        check(values(y), &format!("{case}.y"));
        check(values(x.grad(&grads).unwrap()), &format!("{case}.dx"));
        check(values(w.grad(&grads).unwrap()), &format!("{case}.dw"));
    }

    for (case, train, activation) in [("bn", true, Activation::Relu6), ("bne", false, Activation::Relu)] {
        let mut bn = burn::nn::BatchNormConfig::new(5).with_epsilon(1e-3).with_momentum(0.1).init(&device);
        bn.gamma = Param::from_tensor(vector(&format!("{case}.gamma")).require_grad());
        bn.beta = Param::from_tensor(vector(&format!("{case}.beta")).require_grad());
        bn.running_mean = RunningState::new(Tensor::<1>::full([5], 0.5, &device));
        bn.running_var = RunningState::new(Tensor::<1>::full([5], 2.0, &device));
        bn.training = Param::from_bool(train);
        let x = tensor(&format!("{case}.x")).require_grad();
        let y = batch_norm_activation(&bn, x.clone(), activation);
        let grads = (y.clone() * tensor(&format!("{case}.g"))).sum().backward();
        check(values(y), &format!("{case}.y"));
        check(values(x.grad(&grads).unwrap()), &format!("{case}.dx"));
        let grad_1d = |p: &Param<Tensor<1>>| p.grad(&grads).unwrap().into_data().try_into_vec::<f32>().unwrap();
        check(grad_1d(&bn.gamma), &format!("{case}.dgamma"));
        check(grad_1d(&bn.beta), &format!("{case}.dbeta"));
        let running = |s: &RunningState<Tensor<1>>| s.value_sync().into_data().try_into_vec::<f32>().unwrap();
        check(running(&bn.running_mean), &format!("{case}.running_mean"));
        check(running(&bn.running_var), &format!("{case}.running_var"));
    }
}
