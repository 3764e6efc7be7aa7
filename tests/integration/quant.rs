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
                    // bitsandbytes' CPU kernel (0.50.2) is not always nearest, notably near zero
                    // where its bucketed search is coarse (see `double_quantize`): a few codes
                    // differ. Bound how many, and how much the decoded block maxima differ.
                    let stored = reference.tensor(&format!("{tag}.absmax_codes")).unwrap().data;
                    let differing = codes.iter().zip(&stored).filter(|(a, b)| **a as f32 != **b).count();
                    let map = dynamic_map_signed();
                    let theirs: Vec<f32> =
                        stored.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax2[i / 256] + offset).collect();
                    let ours = q.absmax.values();
                    let rel = ours.iter().zip(&theirs).map(|(a, b)| ((a - b) / b).abs()).fold(0f32, f32::max);
                    eprintln!(
                        "{tag}: {differing} of {} absmax codes differ from bitsandbytes; block maxima within {rel:.2e} relative",
                        codes.len()
                    );
                    assert!(differing * 50 <= codes.len(), "{tag}: {differing} of {} absmax codes differ", codes.len());
                    // Known gap, not a target: one code step near zero moves a block maximum by up to ~4.4%.
                    assert!(rel < 5e-2, "{tag}: block maxima differ by {rel} relative");
                    continue;
                }
            }
            let ours: Vec<f32> = q.dequantize().into_iter().step_by(61).collect();
            let d = max_abs_diff(&ours, &reference.tensor(&format!("{tag}.dequantized_every_61")).unwrap().data);
            assert!(d <= 1e-6, "{tag}: dequantized values differ by {d}");
        }
    }
}
