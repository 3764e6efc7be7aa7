//! LoRA settings, mirroring the fields of peft's `LoraConfig` (and so of `adapter_config.json`).

use serde::{Deserialize, Serialize};

/// Which modules get an adapter: a list of names (a module matches when its name equals an entry
/// or ends with `.entry`) or one regular expression that must match the whole name — peft's rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

/// Which biases of the base model train (peft's `bias`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BiasMode {
    #[default]
    None,
    /// Biases of the adapted layers.
    LoraOnly,
    /// Every bias.
    All,
}

/// `init_lora_weights`: `true` (Kaiming-uniform A), `"gaussian"`, or `false` (B random too — only
/// for tests, as peft).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Flag(bool),
    Named(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        Self::Flag(true)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// peft writes `null` when there are none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub modules_to_save: Vec<String>,
    #[serde(default)]
    pub bias: BiasMode,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Beyond any layer's width: a larger rank can only be a typo or a damaged file, and would
/// allocate adapters before any weight is read.
pub const MAX_RANK: usize = 1 << 16;

impl LoraConfig {
    /// Check the values a recipe can get wrong (errors name the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            (1..=MAX_RANK).contains(&self.r),
            "lora.r = {}: the rank must be 1 to {MAX_RANK} (ranks of 4 to 64 are usual)",
            self.r
        );
        ensure!(
            self.lora_alpha > 0.0 && self.lora_alpha.is_finite(),
            "lora.lora_alpha = {}: must be positive (the adapters are scaled by alpha / r)",
            self.lora_alpha
        );
        ensure!(
            (0.0..1.0).contains(&self.lora_dropout),
            "lora.lora_dropout = {}: must be in [0, 1)",
            self.lora_dropout
        );
        if let TargetModules::Regex(re) = &self.target_modules {
            regex::Regex::new(re).map_err(|e| anyhow::anyhow!("lora.target_modules: not a regular expression: {e}"))?;
        }
        Ok(())
    }

    /// The multiplier of `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// Does the module named `name` (Hugging Face module path) get an adapter?
    pub fn targets(&self, name: &str) -> bool {
        if self.saves(name) {
            return false;
        }
        match &self.target_modules {
            TargetModules::Names(names) => names.iter().any(|t| name == t || name.ends_with(&format!(".{t}"))),
            TargetModules::Regex(re) => regex_full_match(re, name),
        }
    }

    /// Is the module named `name` (or one of its parents) trained in full and saved with the adapter?
    pub fn saves(&self, name: &str) -> bool {
        in_modules(name, &self.modules_to_save)
    }
}

/// Is module `name` one of `modules` or inside one (peft's `modules_to_save` rule)?
pub fn in_modules(name: &str, modules: &[String]) -> bool {
    modules.iter().any(|m| contains_segment(name, m))
}

/// `module` occurs in `name` as whole dotted segments (peft: `(^|.*\.){m}($|\..*)`).
fn contains_segment(name: &str, module: &str) -> bool {
    let mut rest = name;
    while let Some(i) = rest.find(module) {
        let before_ok = i == 0 || rest.as_bytes()[i - 1] == b'.';
        let after = i + module.len();
        let after_ok = after == rest.len() || rest.as_bytes()[after] == b'.';
        if before_ok && after_ok {
            return true;
        }
        rest = &rest[i + 1..];
    }
    false
}

fn regex_full_match(pattern: &str, name: &str) -> bool {
    match regex::Regex::new(&format!("^(?:{pattern})$")) {
        Ok(re) => re.is_match(name),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: TargetModules, save: &[&str]) -> LoraConfig {
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: targets,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::default(),
            modules_to_save: save.iter().map(|s| s.to_string()).collect(),
            bias: BiasMode::None,
        }
    }

    #[test]
    fn peft_matching_rules() {
        let c = cfg(TargetModules::Names(vec!["query".into(), "value".into()]), &["classifier"]);
        assert!(c.targets("bert.encoder.layer.0.attention.self.query"));
        assert!(!c.targets("bert.encoder.layer.0.attention.self.key"));
        assert!(!c.targets("bert.encoder.layer.0.attention.self.query_proj"));
        assert!(c.saves("classifier"));
        assert!(!c.targets("classifier"));
        let c = cfg(TargetModules::Regex(r".*layer\.[01]\..*(query|value)".into()), &[]);
        assert!(c.targets("bert.encoder.layer.1.attention.self.value"));
        assert!(!c.targets("bert.encoder.layer.2.attention.self.value"));
        assert_eq!(cfg(TargetModules::Names(vec![]), &[]).scale(), 2.0);
        let mut rs = cfg(TargetModules::Names(vec![]), &[]);
        rs.use_rslora = true;
        assert!((rs.scale() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn peft_null_modules_to_save_reads_as_none() {
        let c: LoraConfig = serde_json::from_value(serde_json::json!({
            "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": null
        }))
        .unwrap();
        assert!(c.modules_to_save.is_empty());
    }
}
