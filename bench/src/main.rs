//! Step-time benchmarks on the real all-MiniLM-L6-v2 weights (synthetic token ids, no padding):
//! a training step is forward + backward + AdamW update, exactly what the trainer does.
//!
//!     cargo run --release -p finetune-bench -- step METHOD [--batch 16] [--seq 128] [--steps 10]
//!         [--device cpu|cuda] [--precision f32|bf16] [--model DIR]
//!     cargo run --release -p finetune-bench -- matmul [--device cpu|cuda] [--precision f32|bf16]
//!
//! METHOD: full | lora | dora | qlora (LoRA over NF4) | prompt | transfer2 (head + top 2 layers)
//! | head | infer.
//! Prints one JSON line: ms/step (median after 3 warm-up steps), tokens/s, trainable parameters,
//! and on a GPU the bytes burn's allocator has reserved at the end (its high-water mark).
//! `--model` takes a model directory instead of the hub cache's all-MiniLM-L6-v2 (`bench/gpu.sh`
//! carries a bf16 copy to the GPU machine, which cannot download).
//! Run it under `/usr/bin/time -v` for peak RSS (bench/steps.sh does, alternating with PyTorch).

use burn::prelude::*;
use finetune::data::batch::collate;
use finetune::data::tokenizer::Encoded;
use finetune::io::hub::{RepoKind, resolve};
use finetune::methods::lora::{self, InitLoraWeights, LoraConfig, TargetModules};
use finetune::models::text_classifier::TextClassifier;
use finetune::models::{Head, ModelDir, load_text_classifier};
use finetune::nn::classification_head::Pooling;
use finetune::nn::soft_prompt::SoftPrompt;
use finetune::ops::context::Precision;
use finetune::training::optimizer::{AdamW, AdamWConfig, GradStore};
use finetune::training::trainer::cross_entropy;
use std::time::Instant;

// The same allocator and settings as the `finetune` binary (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn text_arg<'a>(args: &'a [String], name: &str, default: &'a str) -> &'a str {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, String::as_str)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().any(|a| a == name).then(|| text_arg(args, name, "").parse().expect("a number")).unwrap_or(default)
}

fn lora_config(dora: bool) -> LoraConfig {
    LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.1,
        target_modules: TargetModules::Names(vec!["query".into(), "value".into()]),
        use_rslora: false,
        use_dora: dora,
        init_lora_weights: InitLoraWeights::Flag(true),
        modules_to_save: vec!["classifier".into()],
        bias: lora::BiasMode::None,
    }
}

/// The model for `method`, with the right parameters trainable.
fn prepare(method: &str, files: &ModelDir, device: &Device) -> anyhow::Result<TextClassifier> {
    let (mut model, _) = load_text_classifier(files, 2, Pooling::Mean, 0.1, Head::New, device)?;
    let trainable: Box<dyn Fn(&str) -> bool> = match method {
        "full" => Box::new(|_| true),
        "lora" | "dora" | "qlora" => {
            let cfg = lora_config(method == "dora");
            if method == "qlora" {
                let q = finetune::quant::QuantConfig {
                    bits: 4,
                    quant_type: "nf4".into(),
                    double_quant: true,
                    blocksize: 64,
                    compute_dtype: "f32".into(),
                };
                finetune::methods::lora::qlora::quantize_model(&mut model, &q, |name| name == "classifier")?;
            }
            lora::inject(&mut model, &cfg, device)?;
            Box::new(move |p: &str| p.contains(".lora.") || p.starts_with("head."))
        }
        "prompt" => {
            model.prompt = Some(SoftPrompt::random(20, 384, device));
            Box::new(|p: &str| p.starts_with("prompt.") || p.starts_with("head."))
        }
        "transfer2" => Box::new(|p: &str| {
            p.starts_with("head.") || p.starts_with("bert.encoder.layer.4.") || p.starts_with("bert.encoder.layer.5.")
        }),
        "head" => Box::new(|p: &str| p.starts_with("head.")),
        other => anyhow::bail!("unknown method {other}"),
    };
    Ok(finetune::io::params::set_trainable(model, |p| trainable(&p.path)))
}

fn main() -> anyhow::Result<()> {
    finetune::allocator::reuse_freed_pages();
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("step");
    let device_name = text_arg(&args, "--device", "cpu");
    let device = finetune::ops::device::select(device_name)?;
    let precision = Precision::parse(text_arg(&args, "--precision", "f32"))?;
    let _precision = finetune::ops::context::enter(precision);
    if what == "matmul" {
        for n in [384usize, 1536, 2048] {
            let a = Tensor::<2>::random([2048, n], burn::tensor::Distribution::Default, &device);
            let b = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, &device);
            let mut t = vec![];
            for _ in 0..5 {
                let s = Instant::now();
                let _ = finetune::ops::matmul::matmul(a.clone(), b.clone()).into_data();
                t.push(s.elapsed().as_secs_f64());
            }
            let flops = 2.0 * (2048 * n * n) as f64;
            println!(
                "{{\"matmul\":\"2048x{n}x{n}\",\"ms\":{:.2},\"gflops\":{:.1}}}",
                median(t.clone()) * 1e3,
                flops / median(t) / 1e9
            );
        }
        return Ok(());
    }
    let method = args.get(2).map(String::as_str).unwrap_or("full");
    let (batch, seq, steps) = (arg(&args, "--batch", 16), arg(&args, "--seq", 128), arg(&args, "--steps", 10));
    let dir = match args.iter().position(|a| a == "--model").map(|_| text_arg(&args, "--model", "")) {
        Some(path) => std::path::PathBuf::from(path),
        None => resolve(
            "sentence-transformers/all-MiniLM-L6-v2",
            RepoKind::Model,
            "main",
            &["config.json", "model.safetensors"],
        )?,
    };
    let files = ModelDir::open(&dir)?;
    let encoded: Vec<Encoded> = (0..batch)
        .map(|i| Encoded {
            ids: (0..seq).map(|j| (1000 + (i * 31 + j * 7) % 20000) as u32).collect(),
            type_ids: vec![0; seq],
        })
        .collect();
    let order: Vec<usize> = (0..batch).collect();
    let input = collate(&encoded, &order, 0, &device);
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(), [batch]),
        &device,
    );
    let mut times = vec![];
    let trainable;
    if method == "infer" {
        let (model, _) = load_text_classifier(&files, 2, Pooling::Mean, 0.0, Head::New, &device)?;
        let model = model.valid();
        trainable = 0;
        for _ in 0..steps + 3 {
            let s = Instant::now();
            let _ = model.forward(&input).into_data();
            times.push(s.elapsed().as_secs_f64());
        }
    } else {
        let ad = device.clone().autodiff();
        let mut model = prepare(method, &files, &ad)?;
        trainable =
            finetune::io::params::list_params(&model).iter().filter(|p| p.trainable).map(|p| p.numel()).sum::<usize>();
        let mut optim = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weight_decay: 0.01 });
        for step in 0..steps + 3 {
            finetune::ops::context::seed_dropout(step as u64);
            let s = Instant::now();
            let loss = cross_entropy(model.forward(&input), labels.clone());
            let mut grads = GradStore::default();
            grads.accumulate(&model, loss.backward());
            grads.clip_global_norm(1.0);
            model = optim.step(model, &grads, &|_| 1e-4);
            let _: f32 = loss.into_scalar();
            times.push(s.elapsed().as_secs_f64());
            // On a GPU the first steps include compiling the kernels; seeing each step's time
            // tells that apart from a slow steady state, even in a run that gets cut off.
            eprintln!("step {step}: {:.1} ms", times[step] * 1e3);
        }
    }
    let ms = median(times[3..].to_vec()) * 1e3;
    let reserved = device.memory_pool_usage().map_or("null".to_string(), |u| u.bytes_reserved.to_string());
    println!(
        "{{\"framework\":\"finetune\",\"method\":\"{method}\",\"device\":\"{device_name}\",\"precision\":\"{}\",\"batch\":{batch},\"seq\":{seq},\"ms_per_step\":{ms:.1},\"tokens_per_s\":{:.0},\"trainable_params\":{trainable},\"device_bytes_reserved\":{reserved}}}",
        precision.name(),
        (batch * seq) as f64 / (ms / 1e3)
    );
    Ok(())
}
