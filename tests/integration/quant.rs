//! NF4 quantization bit-exact against bitsandbytes (`quantize_4bit`, CPU) on real MiniLM weight
//! matrices (fixture made by scripts/make_fixtures.py --minilm).

use super::common::*;
use finetune::io::safetensors::SafetensorsFile;
use finetune::quant::nf4::{Absmax, QuantType, Quantized4bit, dynamic_map_signed};

fn minilm_weights() -> Option<SafetensorsFile> {
    let dir = finetune::io::hub::resolve(
        "sentence-transformers/all-MiniLM-L6-v2",
        finetune::io::hub::RepoKind::Model,
        "main",
        &["model.safetensors"],
    );
    match dir {
        Ok(d) => Some(SafetensorsFile::open(&d.join("model.safetensors")).unwrap()),
        Err(_) => {
            assert!(std::env::var("FINETUNE_REQUIRE_ASSETS").is_err(), "MiniLM is not in the hub cache");
            eprintln!("SKIPPED: MiniLM not in the hub cache (scripts/fetch-assets.sh model)");
            None
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn dynamic_map_equals_bitsandbytes() {
    let reference = SafetensorsFile::open(&fixtures().join("nf4-reference.safetensors")).unwrap();
    assert_eq!(dynamic_map_signed().to_vec(), reference.tensor("dynamic_map").unwrap().data);
}

#[test]
fn nf4_matches_bitsandbytes_bit_for_bit() {
    let Some(weights) = minilm_weights() else { return };
    let reference = SafetensorsFile::open(&fixtures().join("nf4-reference.safetensors")).unwrap();
    let meta = reference.user_metadata();
    let matrices = [
        ("q0", "encoder.layer.0.attention.self.query.weight"),
        ("ffn3", "encoder.layer.3.intermediate.dense.weight"),
        ("out5", "encoder.layer.5.output.dense.weight"),
    ];
    for (short, key) in matrices {
        let w = weights.tensor(key).unwrap();
        let shape = [w.shape[0], w.shape[1]];
        for double in [false, true] {
            let tag = format!("{short}.{}", if double { "dq" } else { "plain" });
            let q = Quantized4bit::quantize(&w.data, shape, QuantType::Nf4, 64, double);
            assert_eq!(sha256(&q.packed), meta[&format!("{tag}.packed_sha256")], "{tag}: packed codes differ");
            if let Ok(packed) = reference.tensor(&format!("{tag}.packed")) {
                let ours: Vec<f32> = q.packed.iter().map(|&b| b as f32).collect();
                assert_eq!(ours, packed.data, "{tag}: packed codes differ");
            }
            match &q.absmax {
                Absmax::F32(a) => assert_eq!(a, &reference.tensor(&format!("{tag}.absmax")).unwrap().data, "{tag}"),
                Absmax::Double { codes, absmax2, offset, blocksize } => {
                    assert_eq!(*blocksize, 256);
                    assert_eq!(*offset, reference.tensor(&format!("{tag}.offset")).unwrap().data[0], "{tag}: offset");
                    assert_eq!(absmax2, &reference.tensor(&format!("{tag}.absmax2")).unwrap().data, "{tag}: absmax2");
                    let stored = reference.tensor(&format!("{tag}.absmax_codes")).unwrap().data;
                    let ours: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
                    let differing = ours.iter().zip(&stored).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differing,
                        0,
                        "{tag}: {differing} of {} absmax codes differ from bitsandbytes",
                        codes.len()
                    );
                }
            }
            let ours: Vec<f32> = q.dequantize().into_iter().step_by(61).collect();
            let d = max_abs_diff(&ours, &reference.tensor(&format!("{tag}.dequantized_every_61")).unwrap().data);
            assert!(d <= 1e-6, "{tag}: dequantized values differ by {d}");
        }
    }
}

/// The quantized linear layer (its own autodiff node, `ops::frozen_matmul`): the forward equals the
/// product with the dequantized weight, its input gradient equals the one through that weight
/// (analytic), finite differences agree, the weight gets no gradient, and `Dense::dequantize`
/// (generation's float copy) keeps the function.
#[test]
fn quantized_linear_gradient_is_the_dequantized_weights() {
    use burn::prelude::*;
    use finetune::nn::dense::Dense;
    use finetune::quant::nf4::QuantType;
    let device = Device::flex().autodiff();
    device.seed(5);
    let mut dense = Dense::new(64, 32, 0.2, true, &device);
    dense.quantize(QuantType::Nf4, 64, true);
    let w = dense.effective_weight().inner(); // [in, out], dequantized
    let x = Tensor::<2>::random([3, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device).require_grad();
    let r = Tensor::<2>::random([3, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let y = dense.forward(x.clone());
    let plain =
        values(x.clone().inner().matmul(w.clone()) + dense.bias.as_ref().unwrap().val().inner().unsqueeze::<2>());
    let d = max_abs_diff(&values(y.clone().inner()), &plain);
    assert!(d < 1e-5, "forward differs from x·W + b by {d}");
    let loss = (y * r.clone()).sum();
    let grads = loss.backward();
    let gx = values(x.grad(&grads).expect("input gradient"));
    let analytic = values(r.clone().inner().matmul(w.clone().transpose()));
    let d = max_abs_diff(&gx, &analytic);
    assert!(d < 1e-5, "input gradient differs from r·Wᵀ by {d}");
    assert!(dense.weight.val().grad(&grads).is_none(), "the quantized weight must get no gradient");
    // Held in f32 again (generation's float copy), the layer computes the same function.
    let mut float = dense.clone();
    assert!(float.dequantize() && float.quantized.is_none() && !float.dequantize());
    let d = max_abs_diff(&values(float.forward(x.clone()).inner()), &plain);
    assert!(d < 1e-5, "the dequantized layer differs by {d}");
    // Central finite differences in f64 on the dequantized function.
    let xs: Vec<f32> = values(x.clone().inner());
    let (wv, rv) = (values(w), values(r.inner()));
    let f = |xv: &[f32]| -> f64 {
        let mut total = 0f64;
        for row in 0..3 {
            for o in 0..32 {
                let y: f64 = (0..64).map(|i| xv[row * 64 + i] as f64 * wv[i * 32 + o] as f64).sum();
                total += y * rv[row * 32 + o] as f64;
            }
        }
        total
    };
    for idx in [0usize, 17, 63, 100, 191] {
        let (mut plus, mut minus) = (xs.clone(), xs.clone());
        plus[idx] += 1e-2;
        minus[idx] -= 1e-2;
        let fd = (f(&plus) - f(&minus)) / 2e-2;
        assert!((fd - gx[idx] as f64).abs() < 1e-3, "element {idx}: finite difference {fd} vs autodiff {}", gx[idx]);
    }
}

/// QLoRA end to end on the tiny model: base linear layers in NF4, LoRA adapters train, and the
/// adapter evaluated later (base re-quantized from finetune.json) reproduces the run's test score.
#[test]
fn qlora_trains_adapters_over_a_4bit_base() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "lora", "run", "");
    let text = std::fs::read_to_string(&recipe).unwrap()
        + "\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"query\", \"value\"]\n\n[quantization]\ntype = \"nf4\"\ndouble_quant = true\n";
    std::fs::write(&recipe, text).unwrap();
    let report = {
        let _guard = serial();
        finetune::tasks::text_classification::run(&finetune::recipe::Recipe::load(&recipe, &[]).unwrap(), false, false)
            .unwrap()
    };
    let files = finetune::io::peft::AdapterFiles::read(&report.model_dir).unwrap();
    let b = files.tensor("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight").unwrap();
    assert!(b.data.iter().any(|&v| v != 0.0), "no gradient reached the adapter");
    let metrics = eval_adapter_cli(&tiny_bert(), &report.model_dir, &dir.path().join("data/test.csv"));
    let test = report.test.unwrap();
    assert!((metrics["loss"].as_f64().unwrap() - test.loss).abs() < 1e-5, "{metrics} vs {test:?}");
}
