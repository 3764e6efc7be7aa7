//! Interop with Hugging Face peft: adapters written by Python peft (fixtures made by
//! scripts/make_fixtures.py) load here and give peft's logits; trainable-parameter counts match.

use super::common::*;
use burn::prelude::*;
use finetune::io::peft::AdapterFiles;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::text_classifier::{Pooling, TextClassifier};
use finetune::models::{Head, ModelDir, load_text_classifier};
use finetune::tasks::text_classification::attach_adapter;

fn peft_reference(name: &str) -> Vec<f32> {
    SafetensorsFile::open(&fixtures().join("peft-reference.safetensors")).unwrap().tensor(name).unwrap().data
}

fn tiny(device: &Device) -> TextClassifier {
    let dir = ModelDir::open(&tiny_bert()).unwrap();
    load_text_classifier(&dir, 3, Pooling::Pooler, 0.1, Head::FromCheckpoint, device).unwrap().0
}

fn with_adapter(name: &str, device: &Device) -> (TextClassifier, finetune::tasks::text_classification::AdapterSpec) {
    let files = AdapterFiles::read(&fixtures().join("peft").join(name)).unwrap();
    attach_adapter(tiny(device), &files, device).unwrap()
}

/// LoRA (with modules_to_save), rsLoRA (regex targets), DoRA and prompt tuning adapters written by
/// peft give peft's logits within 1e-5.
#[test]
fn peft_adapters_give_peft_logits() {
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    for name in ["lora", "rslora", "dora", "prompt"] {
        let (model, _) = with_adapter(name, &device);
        let logits = values(model.valid().forward(&input));
        let d = max_abs_diff(&logits, &peft_reference(&format!("{name}.logits")));
        assert!(d < 1e-5, "{name}: logits differ from peft by {d}");
    }
}

/// The number of trainable parameters equals peft's `print_trainable_parameters` for each config.
#[test]
fn trainable_parameter_counts_match_peft() {
    let device = Device::flex().autodiff();
    for name in ["lora", "rslora", "dora", "prompt"] {
        let (model, spec) = with_adapter(name, &device);
        let count: usize = finetune::io::params::list_params(&model)
            .iter()
            .filter(|p| spec.is_trainable(&p.path))
            .map(|p| p.numel())
            .sum();
        assert_eq!(count as f32, peft_reference(&format!("{name}.trainable_params"))[0], "{name}");
    }
}
