//! LoRA settings, mirroring the fields of peft's `LoraConfig` (and so of `adapter_config.json`).
//!
//! Which modules get an adapter and with what rank and alpha follows peft 0.21's rules exactly
//! (`check_target_module_exists`, `get_pattern_key`, `_maybe_include_all_linear_layers`):
//! `target_modules` (names, a regex, or `"all-linear"`), `exclude_modules`, `modules_to_save`,
//! `layers_to_transform` + `layers_pattern`, `rank_pattern` and `alpha_pattern`. An
//! `adapter_config.json` field that would change the numbers and that finetune does not implement
//! is refused by name ([`refuse_unsupported`]), never ignored.

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

/// peft's shorthand for every linear layer but the output layer.
pub const ALL_LINEAR: &str = "all-linear";

/// `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LayerIndexes {
    One(usize),
    Many(Vec<usize>),
}

impl LayerIndexes {
    fn contains(&self, i: usize) -> bool {
        match self {
            Self::One(j) => *j == i,
            Self::Many(v) => v.contains(&i),
        }
    }
    fn is_empty(&self) -> bool {
        matches!(self, Self::Many(v) if v.is_empty())
    }
}

/// A string or a list of strings (`layers_pattern`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `rank_pattern` / `alpha_pattern`: regular expressions over module names, in the file's order
/// (peft takes the first that matches).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatternMap<V>(pub Vec<(String, V)>);

impl<V: Copy> PatternMap<V> {
    /// peft's `get_pattern_key`: the first pattern `p` with `^(.*\.)?(p)$` matching `name`.
    pub fn get(&self, name: &str) -> Option<V> {
        self.0.iter().find(|(p, _)| regex_full_match(&format!(r"(?:.*\.)?(?:{p})"), name)).map(|(_, v)| *v)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for PatternMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PatternMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = PatternMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from module-name patterns to values (or null)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(PatternMap(out))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PatternMap(Vec::new()))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(PatternMap(Vec::new()))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Names, one regular expression, or `"all-linear"` (resolved against the model by
    /// [`LoraConfig::resolve_all_linear`] into the list of names peft would save).
    pub target_modules: TargetModules,
    /// Modules never adapted, whatever `target_modules` says (names or one regex, as targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<TargetModules>,
    /// Only modules inside these layer indexes (with a list of `target_modules` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<LayerIndexes>,
    /// The name of the layer list the index follows (`layers`, `h`, `layer`); default: the
    /// first numbered segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_pattern: Option<OneOrMany>,
    /// A rank per module-name pattern, overriding `r`.
    #[serde(default, skip_serializing_if = "PatternMap::is_empty")]
    pub rank_pattern: PatternMap<usize>,
    /// An alpha per module-name pattern, overriding `lora_alpha`.
    #[serde(default, skip_serializing_if = "PatternMap::is_empty")]
    pub alpha_pattern: PatternMap<f64>,
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

/// `adapter_config.json` fields that change an adapter's numbers and that finetune does not
/// implement, with the value that means "off". A file with any other value is refused by name.
const UNSUPPORTED: [(&str, &str); 14] = [
    ("lora_bias", "false"),
    ("use_qalora", "false"),
    ("use_bdlora", "null or false"),
    ("target_parameters", "null or []"),
    ("trainable_token_indices", "null"),
    ("layer_replication", "null"),
    ("megatron_config", "null"),
    ("loftq_config", "{}"),
    ("alora_invocation_tokens", "null"),
    ("monteclora_config", "null"),
    ("arrow_config", "null"),
    ("kasa_config", "null"),
    ("ensure_weight_tying", "false"),
    ("velora_config", "null"),
];

/// Fields that never change what a loaded adapter computes (metadata, training-time or
/// initialisation-time settings whose effect is in the stored tensors). `fan_in_fan_out` says
/// how the *base* layer stores its weight (true for GPT-2's `Conv1D`; peft resets it to the
/// layer's own layout either way): LoRA's A and B are the same.
const HARMLESS: [&str; 17] = [
    "fan_in_fan_out",
    "peft_type",
    "task_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "megatron_core",
    "runtime_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "qalora_group_size",
    "lora_dropout",
    "init_lora_weights",
    "modules_to_save",
];

/// Refuse an `adapter_config.json` that asks for something finetune does not implement and that
/// would change the outputs, naming the field: the listed peft options, `init_lora_weights`
/// methods that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA), and any field
/// finetune does not know at all unless it is null, false or empty.
pub fn refuse_unsupported(config: &serde_json::Value) -> anyhow::Result<()> {
    use serde_json::Value;
    let off = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) => false,
        Value::Bool(true) => false,
    };
    let Some(fields) = config.as_object() else { anyhow::bail!("adapter_config.json is not a JSON object") };
    let known: std::collections::BTreeSet<&str> = [
        "r",
        "lora_alpha",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "use_rslora",
        "use_dora",
        "bias",
    ]
    .into_iter()
    .chain(HARMLESS)
    .collect();
    for (key, value) in fields {
        if let Some((_, default)) = UNSUPPORTED.iter().find(|(k, _)| k == key) {
            anyhow::ensure!(
                off(value),
                "{key} = {value}: peft's {key} is not supported by finetune (only {default}); \
                 the adapter would compute something else, so it is refused"
            );
        } else if key == "init_lora_weights"
            && let Value::String(init) = value
        {
            let rewrites_base = ["pissa", "olora", "corda", "loftq", "lora-ga", "lora_ga"];
            anyhow::ensure!(
                !rewrites_base.iter().any(|m| init.to_ascii_lowercase().starts_with(m)),
                "init_lora_weights = \"{init}\": this initialisation changes the base model's weights, which \
                 the adapter alone does not carry; convert it to a plain LoRA adapter in peft \
                 (save_pretrained(..., path_initial_model_for_weight_conversion=...)) and load that"
            );
        } else if !known.contains(key.as_str()) && !off(value) {
            anyhow::bail!(
                "{key} = {value}: an adapter_config.json field finetune does not know; it may change what \
                 the adapter computes, so the adapter is refused (remove the field if it is harmless)"
            );
        }
    }
    Ok(())
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
        for (key, modules) in
            [("target_modules", Some(&self.target_modules)), ("exclude_modules", self.exclude_modules.as_ref())]
        {
            if let Some(TargetModules::Regex(re)) = modules
                && !(key == "target_modules" && self.is_all_linear())
            {
                regex::Regex::new(re).map_err(|e| anyhow::anyhow!("lora.{key}: not a regular expression: {e}"))?;
            }
        }
        let layer_indexes = self.layers_to_transform.as_ref().is_some_and(|l| !l.is_empty());
        ensure!(
            !layer_indexes || matches!(self.target_modules, TargetModules::Names(_)),
            "lora.layers_to_transform needs target_modules as a list of names (peft ignores layer indexes with a regular expression; put the layers in the expression instead)"
        );
        ensure!(
            layer_indexes || self.layers_pattern.as_ref().is_none_or(|p| p.items().is_empty()),
            "lora.layers_pattern is only used with lora.layers_to_transform; set both or neither"
        );
        for p in self.layers_pattern.iter().flat_map(OneOrMany::items) {
            regex::Regex::new(p)
                .map_err(|e| anyhow::anyhow!("lora.layers_pattern '{p}': not a regular expression: {e}"))?;
        }
        for (p, r) in &self.rank_pattern.0 {
            regex::Regex::new(p)
                .map_err(|e| anyhow::anyhow!("lora.rank_pattern '{p}': not a regular expression: {e}"))?;
            ensure!((1..=MAX_RANK).contains(r), "lora.rank_pattern '{p}' = {r}: the rank must be 1 to {MAX_RANK}");
        }
        for (p, a) in &self.alpha_pattern.0 {
            regex::Regex::new(p)
                .map_err(|e| anyhow::anyhow!("lora.alpha_pattern '{p}': not a regular expression: {e}"))?;
            ensure!(*a > 0.0 && a.is_finite(), "lora.alpha_pattern '{p}' = {a}: must be positive");
        }
        Ok(())
    }

    /// `target_modules = "all-linear"` (peft compares case-insensitively).
    pub fn is_all_linear(&self) -> bool {
        matches!(&self.target_modules, TargetModules::Regex(s) if s.eq_ignore_ascii_case(ALL_LINEAR))
    }

    /// Replace `"all-linear"` by the names it means for a model whose linear layers are `linear`
    /// and whose output layer (left out, as peft does) is `output`: the list peft itself writes to
    /// `adapter_config.json`. Other settings are returned unchanged.
    pub fn resolve_all_linear(&mut self, linear: &[String], output: Option<&str>) {
        if self.is_all_linear() {
            let names = linear.iter().filter(|n| Some(n.as_str()) != output).cloned().collect();
            self.target_modules = TargetModules::Names(names);
        }
    }

    /// The rank of the adapter on module `name` (`rank_pattern`, else `r`).
    pub fn rank_of(&self, name: &str) -> usize {
        self.rank_pattern.get(name).unwrap_or(self.r)
    }

    /// The multiplier of `B·A` on module `name`: alpha / r, or alpha / √r with rsLoRA, each from
    /// its pattern if one matches.
    pub fn scale_of(&self, name: &str) -> f64 {
        let (r, alpha) = (self.rank_of(name) as f64, self.alpha_pattern.get(name).unwrap_or(self.lora_alpha));
        if self.use_rslora { alpha / r.sqrt() } else { alpha / r }
    }

    /// The multiplier of `B·A` for modules no pattern names.
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// Does the module named `name` (Hugging Face module path) get an adapter? peft's
    /// `check_target_module_exists`, step by step.
    pub fn targets(&self, name: &str) -> bool {
        if self.excludes(name) || self.saves(name) {
            return false;
        }
        match &self.target_modules {
            TargetModules::Regex(re) => !self.is_all_linear() && regex_full_match(re, name),
            TargetModules::Names(names) if names.iter().any(|t| t == name) => true,
            TargetModules::Names(names) => {
                names.iter().any(|t| name.ends_with(&format!(".{t}"))) && self.in_transformed_layer(name)
            }
        }
    }

    fn excludes(&self, name: &str) -> bool {
        match &self.exclude_modules {
            None => false,
            Some(TargetModules::Regex(re)) => regex_full_match(re, name),
            Some(TargetModules::Names(names)) => names.iter().any(|x| name == x || name.ends_with(&format!(".{x}"))),
        }
    }

    /// `layers_to_transform`: the module's layer index (the first numbered segment, or the one
    /// after `layers_pattern`) is listed; true when no indexes are set.
    fn in_transformed_layer(&self, name: &str) -> bool {
        let Some(indexes) = self.layers_to_transform.as_ref().filter(|l| !l.is_empty()) else { return true };
        let patterns = self.layers_pattern.as_ref().map(OneOrMany::items).unwrap_or_default();
        let index = if patterns.is_empty() {
            first_capture(r"^.*?\.[^.]*\.(\d+)\.", name)
        } else {
            patterns.iter().find_map(|p| first_capture(&format!(r"^(?:.*?\.)?(?:{p})\.(\d+)\."), name))
        };
        index.and_then(|i| i.parse().ok()).is_some_and(|i| indexes.contains(i))
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

fn first_capture(pattern: &str, name: &str) -> Option<String> {
    regex::Regex::new(pattern).ok()?.captures(name).map(|c| c[1].to_string())
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
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: PatternMap::default(),
            alpha_pattern: PatternMap::default(),
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
    fn layer_indexes_and_patterns_follow_peft() {
        let mut c = cfg(TargetModules::Names(vec!["w1".into(), "q_proj".into()]), &[]);
        c.layers_to_transform = Some(LayerIndexes::One(1));
        // The first numbered segment is the layer, not an expert index further in.
        assert!(c.targets("model.layers.1.experts.0.w1"));
        assert!(!c.targets("model.layers.0.experts.1.w1"));
        assert!(!c.targets("lm_head.q_proj"), "no layer index: not in a transformed layer");
        c.layers_pattern = Some(OneOrMany::One("layers".into()));
        assert!(c.targets("model.layers.1.self_attn.q_proj"));
        assert!(!c.targets("model.blocks.1.self_attn.q_proj"));
        c.validate().unwrap();
        // An exact name in target_modules bypasses the layer check, as in peft.
        c.target_modules = TargetModules::Names(vec!["model.layers.0.self_attn.q_proj".into()]);
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        c.target_modules = TargetModules::Regex(".*q_proj".into());
        assert!(c.validate().unwrap_err().to_string().contains("layers_to_transform"));

        let mut p = cfg(TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]), &[]);
        p.rank_pattern = PatternMap(vec![(r"layers\.0\.self_attn\.q_proj".into(), 16), ("q_proj".into(), 2)]);
        p.alpha_pattern = PatternMap(vec![("v_proj".into(), 4.0)]);
        assert_eq!(p.rank_of("model.layers.0.self_attn.q_proj"), 16, "the first matching pattern wins");
        assert_eq!(p.rank_of("model.layers.1.self_attn.q_proj"), 2);
        assert_eq!(p.rank_of("model.layers.1.self_attn.xq_proj"), 8, "patterns match whole segments");
        assert_eq!(p.scale_of("model.layers.1.self_attn.v_proj"), 4.0 / 8.0);
        p.exclude_modules = Some(TargetModules::Regex(r".*layers\.1\..*".into()));
        assert!(p.targets("model.layers.0.self_attn.v_proj") && !p.targets("model.layers.1.self_attn.v_proj"));
        let mut all = cfg(TargetModules::Regex("All-Linear".into()), &[]);
        assert!(all.is_all_linear());
        all.resolve_all_linear(&["a.q".into(), "lm_head".into()], Some("lm_head"));
        assert_eq!(all.target_modules, TargetModules::Names(vec!["a.q".into()]));
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
