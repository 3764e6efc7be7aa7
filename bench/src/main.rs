//! Micro-benchmarks: forward and training-step time of the MiniLM-shaped encoder on the real
//! weights, and raw matmul throughput.
//!
//!     cargo run --release -p finetune-bench -- [forward|train|matmul] [batch] [seq]

use burn::prelude::*;
use finetune::data::batch::collate;
use finetune::data::tokenizer::Encoded;
use finetune::io::hub::{RepoKind, resolve};
use finetune::models::text_classifier::Pooling;
use finetune::models::{Head, ModelDir, load_text_classifier};
use finetune::training::trainer::cross_entropy;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("forward");
    let batch: usize = args.get(2).map_or(64, |s| s.parse().unwrap());
    let seq: usize = args.get(3).map_or(32, |s| s.parse().unwrap());
    let device = Device::flex();
    if what == "matmul" {
        for n in [384usize, 1024, 2048] {
            let a = Tensor::<2>::random([batch * seq, n], burn::tensor::Distribution::Default, &device);
            let b = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, &device);
            let mut t = vec![];
            for _ in 0..5 {
                let s = Instant::now();
                let _ = a.clone().matmul(b.clone()).into_data();
                t.push(s.elapsed().as_secs_f64());
            }
            let flops = 2.0 * (batch * seq * n * n) as f64;
            println!(
                "matmul [{}x{n}]x[{n}x{n}]: {:.2} ms, {:.1} GFLOP/s",
                batch * seq,
                median(t.clone()) * 1e3,
                flops / median(t) / 1e9
            );
        }
        return Ok(());
    }
    let dir = resolve(
        "sentence-transformers/all-MiniLM-L6-v2",
        RepoKind::Model,
        "main",
        &["config.json", "model.safetensors"],
    )?;
    let files = ModelDir::open(&dir)?;
    let encoded: Vec<Encoded> = (0..batch)
        .map(|i| Encoded {
            ids: (0..seq).map(|j| (1000 + (i * 31 + j * 7) % 20000) as u32).collect(),
            type_ids: vec![0; seq],
        })
        .collect();
    let order: Vec<usize> = (0..batch).collect();
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(), [batch]),
        &device,
    );
    match what {
        "forward" => {
            let (model, _) = load_text_classifier(&files, 2, Pooling::Mean, 0.0, Head::New, &device)?;
            let model = model.valid();
            let input = collate(&encoded, &order, 0, &device);
            let mut t = vec![];
            for _ in 0..5 {
                let s = Instant::now();
                let _ = model.forward(&input).into_data();
                t.push(s.elapsed().as_secs_f64());
            }
            println!("forward batch {batch} seq {seq}: {:.1} ms", median(t) * 1e3);
        }
        "train" => {
            let ad = device.clone().autodiff();
            let (model, _) = load_text_classifier(&files, 2, Pooling::Mean, 0.1, Head::New, &ad)?;
            let model = if std::env::var("NO_DROPOUT").is_ok() { model.without_dropout() } else { model };
            // TOP_LAYERS=k: only the head and the top k encoder layers train (the transfer method).
            let model = match std::env::var("TOP_LAYERS").ok().and_then(|v| v.parse::<usize>().ok()) {
                Some(k) => finetune::io::params::set_trainable(model, |p| {
                    let g = finetune::methods::LayerGroup::of_path(p);
                    matches!(g, finetune::methods::LayerGroup::Head)
                        || matches!(g, finetune::methods::LayerGroup::Layer(i) if i + k >= 6)
                }),
                None => model,
            };
            let input = collate(&encoded, &order, 0, &device);
            let (mut tf, mut tb) = (vec![], vec![]);
            for _ in 0..4 {
                let s = Instant::now();
                let loss = cross_entropy(model.forward(&input), labels.clone());
                let _: f32 = loss.clone().into_scalar();
                tf.push(s.elapsed().as_secs_f64());
                let s = Instant::now();
                let grads = loss.backward();
                drop(grads);
                tb.push(s.elapsed().as_secs_f64());
            }
            println!(
                "batch {batch} seq {seq}: forward {:.1} ms, backward {:.1} ms",
                median(tf) * 1e3,
                median(tb) * 1e3
            );
        }
        other => anyhow::bail!("unknown benchmark {other}"),
    }
    Ok(())
}
