//! QLoRA (Dettmers et al. 2023): the frozen base's linear weights held in 4 bits (NF4 with
//! double quantization, `quant::nf4`), LoRA adapters in f32 on top. Layers named in
//! `modules_to_save` (the head) stay in float, as bitsandbytes' `llm_int8_skip_modules` keeps them.

use crate::models::Adaptable;
use crate::quant::{QuantConfig, QuantReport};

/// Quantize the weight of every linear layer for which `keep_float(name)` is false (like
/// bitsandbytes' `llm_int8_skip_modules`, the head stays in float).
pub fn quantize_model<M: Adaptable>(
    model: &mut M,
    cfg: &QuantConfig,
    keep_float: impl Fn(&str) -> bool,
) -> anyhow::Result<QuantReport> {
    let quant_type = cfg.validate()?;
    let mut report = QuantReport::default();
    for (name, dense) in model.dense_layers_mut() {
        if keep_float(&name) || dense.quantized.is_some() {
            continue;
        }
        let n = dense.d_in() * dense.d_out();
        if n % cfg.blocksize != 0 {
            continue;
        }
        dense.quantize(quant_type, cfg.blocksize, cfg.double_quant);
        report.layers += 1;
        report.parameters += n;
        report.f32_bytes += 4 * n;
        report.quantized_bytes += dense.quantized.as_ref().map_or(0, |q| q.bytes());
    }
    Ok(report)
}

/// Hold every quantized linear layer in f32 again; returns how many were quantized.
pub fn dequantize_model<M: Adaptable>(model: &mut M) -> usize {
    model.dense_layers_mut().into_iter().map(|(_, dense)| dense.dequantize()).filter(|&was| was).count()
}

/// A copy of `model` with its quantized layers in f32, or `None` when none is quantized. For
/// token-by-token generation: each step is a product with one or a few rows, for which
/// dequantizing every layer again (what a quantized layer does per forward pass) costs more than
/// the product itself.
pub fn float_copy<M: Adaptable + Clone>(model: &M) -> Option<M> {
    if model.dense_layers().iter().all(|(_, d)| d.quantized.is_none()) {
        return None;
    }
    let mut copy = model.clone();
    dequantize_model(&mut copy);
    Some(copy)
}

/// Log what quantizing did (`what`: e.g. "QLoRA: quantized to nf4").
pub fn log_report(what: &str, r: &QuantReport) {
    tracing::info!(
        "{what} {} layers ({} parameters, {:.3} bits/parameter): {:.1} MB -> {:.1} MB",
        r.layers,
        r.parameters,
        r.bits_per_parameter(),
        r.f32_bytes as f64 / 1e6,
        r.quantized_bytes as f64 / 1e6
    );
}
