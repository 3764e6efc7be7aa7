//! `finetune inspect`: what a model is and what each method would train.

use crate::inference::text::MODEL_FILES;
use crate::io::hub::{self, RepoKind};
use crate::methods::Method;
use crate::methods::TrainPlan;
use crate::models::decoder;
use crate::models::{Head, ModelDir, load_text_classifier};
use crate::nn::classification_head::Pooling;
use crate::nn::layer_group::LayerGroup;
use anyhow::Result;

pub fn run(
    spec: &str,
    gguf_file: Option<&str>,
    method: &str,
    trainable_layers: usize,
    quantize: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut out = Out { json, map: serde_json::Map::new() };
    inspect(&mut out, spec, gguf_file, method, trainable_layers, quantize)?;
    if json {
        println!("{}", serde_json::Value::Object(out.map));
    }
    Ok(())
}

/// The report, as text lines or (`--json`) one JSON object of the same facts.
struct Out {
    json: bool,
    map: serde_json::Map<String, serde_json::Value>,
}

impl Out {
    fn say(&mut self, key: &str, value: serde_json::Value, text: String) {
        if !self.json {
            println!("{text}");
        }
        self.map.insert(key.to_string(), value);
    }
    fn text(&self, text: String) {
        if !self.json {
            println!("{text}");
        }
    }
}

fn inspect(
    out: &mut Out,
    spec: &str,
    gguf_file: Option<&str>,
    method: &str,
    trainable_layers: usize,
    quantize: Option<&str>,
) -> Result<()> {
    let path = crate::inference::lm::resolve_model(spec, gguf_file, "main")?;
    let opened = ModelDir::open(&path);
    // A GGUF file is a decoder or nothing: its own error, not a hub lookup of the path.
    if path.extension().is_some_and(|e| e == "gguf") || opened.as_ref().is_ok_and(|f| f.gguf().is_some()) {
        return run_decoder(out, &opened?, quantize);
    }
    if let Ok(files) = &opened
        && decoder::config(files).is_ok()
    {
        return run_decoder(out, files, quantize);
    }
    let method: Method = method.parse()?;
    let local = std::path::Path::new(spec).exists();
    let files = ModelDir::open(&if local { path } else { hub::resolve(spec, RepoKind::Model, "main", &MODEL_FILES)? })?;
    let cfg = crate::models::bert::BertConfig::read(&files)?;
    let labels = files.labels()?;
    let num_labels = labels.as_ref().map_or(2, Vec::len);
    let device = crate::ops::device::select("cpu")?;
    let (model, report) = load_text_classifier(&files, num_labels, Pooling::Mean, 0.1, Head::FromCheckpoint, &device)?;
    out.say("model", files.dir.display().to_string().into(), format!("model:       {}", files.dir.display()));
    out.say(
        "arch",
        serde_json::json!({"family": "bert", "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads, "ffn": cfg.intermediate_size, "vocab": cfg.vocab_size,
            "max_positions": cfg.max_position_embeddings}),
        format!(
            "arch:        BERT encoder, {} layers, hidden {}, {} heads, FFN {}, vocab {}, max positions {}",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.max_position_embeddings
        ),
    );
    match &labels {
        Some(l) => out.say("labels", serde_json::json!(l), format!("head:        fine-tuned classifier, labels {l:?}")),
        None => out.say(
            "labels",
            serde_json::Value::Null,
            format!("head:        none in the checkpoint (a new {num_labels}-label head would be initialised)"),
        ),
    }
    if !report.unused.is_empty() {
        out.say("unused_keys", serde_json::json!(report.unused), format!("unused keys: {}", report.unused.join(", ")));
    }
    let transfer = crate::methods::transfer::TransferConfig { trainable_layers, ..Default::default() };
    let plan = TrainPlan::new(method, &transfer, model.layer_groups(), crate::models::text_classifier::layer_group);
    let start = plan.unfrozen(0, 0);
    let params = crate::io::params::list_params(&model);
    let total: usize = params.iter().map(|p| p.numel()).sum();
    out.text(format!("\n{:<12} {:>12}  trains under '{}'", "group", "parameters", method.name()));
    let mut trainable = 0;
    let mut groups = Vec::new();
    for group in &plan.order {
        let n: usize = params
            .iter()
            .filter(|p| crate::models::text_classifier::layer_group(&p.path) == *group)
            .map(|p| p.numel())
            .sum();
        let trains = match method {
            Method::FeatureExtraction => *group == LayerGroup::Head,
            Method::Lora | Method::PromptTuning => *group == LayerGroup::Head && model.pooling != Pooling::Pooler,
            _ => plan.order[..start].contains(group),
        };
        if trains {
            trainable += n;
        }
        let note = match (method, trains) {
            (Method::FeatureExtraction, false) => "frozen (features cached once)".to_string(),
            (Method::Lora | Method::PromptTuning, false) => "frozen (adapter trains)".to_string(),
            (Method::Transfer, false) => "frozen at start (gradual unfreezing adds groups top-down)".to_string(),
            (_, false) => "frozen".to_string(),
            (_, true) => "trains".to_string(),
        };
        out.text(format!("{:<12} {:>12}  {note}", group.name(), n));
        groups.push(serde_json::json!({"group": group.name(), "parameters": n, "trains": trains, "note": note}));
    }
    if method.is_peft() {
        let extra = match method {
            Method::Lora => {
                let mut with = model.clone();
                let lora: crate::methods::lora::LoraConfig = serde_json::from_value(serde_json::json!({
                    "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]
                }))?;
                crate::methods::lora::inject(&mut with, &lora, &device)?;
                crate::io::params::list_params(&with)
                    .iter()
                    .filter(|p| p.path.contains(".lora."))
                    .map(|p| p.numel())
                    .sum::<usize>()
            }
            _ => 20 * cfg.hidden_size,
        };
        let what = if method == Method::Lora { "LoRA r=8 on query, value" } else { "soft prompt, 20 tokens" };
        out.text(format!("{:<12} {:>12}  trains ({what})", "adapter", extra));
        groups.push(serde_json::json!({"group": "adapter", "parameters": extra, "trains": true, "note": what}));
        trainable += extra;
    }
    out.text(format!("{:<12} {:>12}", "total", total));
    out.map.insert("method".into(), method.name().into());
    out.map.insert("groups".into(), groups.into());
    out.map.insert("parameters".into(), total.into());
    out.say(
        "trainable",
        trainable.into(),
        format!("trainable:   {trainable} ({:.2}%)", 100.0 * trainable as f64 / total.max(1) as f64),
    );
    if let Some(kind) = quantize {
        let mut model = model;
        // The head stays in float, as bitsandbytes' llm_int8_skip_modules keeps it.
        let report =
            crate::methods::lora::qlora::quantize_model(&mut model, &quant_config(kind), |name| name == "classifier")?;
        print_quantized(out, kind, total, &report, "embeddings, norms and head stay f32");
    }
    Ok(())
}

/// A decoder: architecture, parameters, how a GGUF file stores them, and (with `quantize`) the
/// memory of the frozen base under QLoRA (`nf4`/`fp4`) or kept in the file's blocks (`gguf`).
fn run_decoder(out: &mut Out, files: &ModelDir, quantize: Option<&str>) -> Result<()> {
    let cfg = decoder::config(files)?;
    let device = crate::ops::device::select("cpu")?;
    out.say("model", files.describe().into(), format!("model:       {}", files.describe()));
    let arch = serde_json::json!({"family": cfg.model_type(), "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads, "kv_heads": cfg.num_kv_heads(), "head_dim": cfg.head_dim(),
        "ffn": cfg.intermediate_size, "vocab": cfg.vocab_size, "rope_theta": cfg.rope_theta(),
        "tied_embeddings": cfg.tie_word_embeddings});
    let text = format!(
        "arch:        {} decoder, {} layers, hidden {}, {} query / {} key-value heads (head dim {}), FFN {}, \
         vocab {}, rope theta {}, {} embeddings",
        cfg.model_type(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.rope_theta(),
        if cfg.tie_word_embeddings { "tied" } else { "separate input/output" }
    );
    out.say("arch", arch, text);
    if let Some(g) = files.gguf() {
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for info in g.tensors.values() {
            *kinds.entry(info.ggml_type.name()).or_default() += 1;
        }
        let stored = serde_json::json!(kinds);
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        out.say("stored_as", stored, format!("stored as:   {} tensors: {}", g.tensors.len(), kinds.join(", ")));
    }
    let (model, _, _) = decoder::load(files, &device)?;
    let total: usize = crate::io::params::list_params(&model).iter().map(|p| p.numel()).sum();
    out.say("parameters", total.into(), format!("parameters:  {total} ({:.1} MB in f32)", 4.0 * total as f64 / 1e6));
    let Some(kind) = quantize else { return Ok(()) };
    let report = if kind == "gguf" {
        decoder::load_keeping_quantization(files, &device)?.2
    } else {
        let mut model = model;
        crate::methods::lora::qlora::quantize_model(&mut model, &quant_config(kind), |_| false)?
    };
    print_quantized(out, kind, total, &report, "embeddings and norms stay f32");
    Ok(())
}

/// 4-bit quantization of `kind` (`nf4`, `fp4`) with double quantization, blocks of 64.
fn quant_config(kind: &str) -> crate::quant::QuantConfig {
    crate::quant::QuantConfig {
        bits: 4,
        quant_type: kind.to_string(),
        double_quant: true,
        blocksize: 64,
        compute_dtype: "f32".into(),
    }
}

/// The memory of a model of `total` f32 parameters after `report`'s quantization.
fn print_quantized(out: &mut Out, kind: &str, total: usize, report: &crate::quant::QuantReport, kept: &str) {
    let before = 4 * total;
    let after = before - report.f32_bytes + report.quantized_bytes;
    out.text(format!(
        "\nquantized:   {} linear layers, {} parameters as {kind} ({:.3} bits/parameter)",
        report.layers,
        report.parameters,
        report.bits_per_parameter()
    ));
    out.say(
        "quantized",
        serde_json::json!({"kind": kind, "layers": report.layers, "parameters": report.parameters,
            "bits_per_parameter": report.bits_per_parameter(), "bytes_f32": before, "bytes_quantized": after}),
        format!(
            "memory:      {:.1} MB in f32 -> {:.1} MB ({:.1} MB of linear weights -> {:.1} MB; {kept})",
            before as f64 / 1e6,
            after as f64 / 1e6,
            report.f32_bytes as f64 / 1e6,
            report.quantized_bytes as f64 / 1e6
        ),
    );
}
