//! The units in which a model is unfrozen (`methods::transfer`): a model declares its groups
//! top-down and the group of each parameter path.

/// A unit of gradual unfreezing. A model lists its groups top-down: the head first, the
/// embeddings (or stem) last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerGroup {
    /// The classifier (and the pooler, which only the head uses).
    Head,
    /// Encoder layer `i` (0 is the lowest).
    Layer(usize),
    Embeddings,
}

impl LayerGroup {
    pub fn name(self) -> String {
        match self {
            Self::Head => "head".into(),
            Self::Layer(i) => format!("layer.{i}"),
            Self::Embeddings => "embeddings".into(),
        }
    }
}
