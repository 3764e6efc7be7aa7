//! Moving parameters between a burn module and name-keyed host tensors.
//!
//! burn names every parameter by its field path (`encoder.layer.3.attention.output.dense.weight`)
//! and tells us which struct owns it. That is enough to map a whole model onto a checkpoint's
//! keys with one small renaming function per architecture, so loading and saving share one
//! definition of the names instead of two hand-written lists that can drift apart.

use super::safetensors::HostTensor;
use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// One parameter as burn sees it.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    /// Dotted field path, e.g. `bert.encoder.layer.0.intermediate.dense.weight`.
    pub path: String,
    /// The struct that owns the parameter, e.g. `Linear`, `LayerNorm`, `Embedding`.
    pub owner: String,
    /// Every struct on the way down to it, outermost first (the owner last).
    pub owners: Vec<String>,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the parameter lives inside a struct named `ty` (e.g. a LoRA adapter): what a
    /// parameter *is* comes from the layer that holds it, not from its path's spelling.
    pub fn within(&self, ty: &str) -> bool {
        self.owners.iter().any(|o| o == ty)
    }

    /// Linear layers keep `[in, out]` (burn's convention); PyTorch checkpoints keep `[out, in]`.
    pub fn is_linear_weight(&self) -> bool {
        matches!(self.owner.as_str(), "Linear" | "Dense") && self.path.ends_with("weight")
    }
}

#[derive(Default)]
struct PathTracker {
    names: Vec<String>,
    owners: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.owners.push(container.strip_prefix("Struct:").unwrap_or(container).to_string());
    }
    fn exit(&mut self) {
        self.names.pop();
        self.owners.pop();
    }
    fn path(&self) -> String {
        self.names.join(".")
    }
    fn owner(&self) -> String {
        self.owners.last().cloned().unwrap_or_default()
    }
    /// The info of `param`, found at the current path. Reading `trainable` initializes a lazy
    /// parameter (burn runs its initializer on first access).
    fn info<const D: usize>(&self, param: &Param<Tensor<D>>) -> ParamInfo {
        ParamInfo { trainable: param.is_require_grad(), ..self.peek(param) }
    }

    /// The info of `param` without initializing it when it is lazy (then `trainable` is false).
    /// Trainability hooks read this, so that a layer attached before training (a LoRA adapter's
    /// random `A`) still draws its initial values at its first use, from the generator state the
    /// trainer seeded for that step: a run is reproducible whatever inspects the model first.
    fn peek<const D: usize>(&self, param: &Param<Tensor<D>>) -> ParamInfo {
        ParamInfo {
            path: self.path(),
            owner: self.owner(),
            owners: self.owners.clone(),
            shape: param.lazy_shape().to_vec(),
            trainable: param.is_initialized() && param.is_require_grad(),
        }
    }
}

/// List every float parameter of `module` with its path, owner, shape and trainability.
pub fn list_params<M: Module>(module: &M) -> Vec<ParamInfo> {
    struct Lister {
        at: PathTracker,
        out: Vec<ParamInfo>,
    }
    impl ModuleVisitor for Lister {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.at.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push(self.at.info(param));
        }
    }
    let mut v = Lister { at: PathTracker::default(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// Every float parameter's path, owner and shape, without initializing lazy parameters (their
/// `trainable` reads false): the structure trainability is decided from.
pub fn list_params_lazy<M: Module>(module: &M) -> Vec<ParamInfo> {
    struct Lister {
        at: PathTracker,
        out: Vec<ParamInfo>,
    }
    impl ModuleVisitor for Lister {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.at.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push(self.at.peek(param));
        }
    }
    let mut v = Lister { at: PathTracker::default(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// Copy the float parameters selected by `keep` to host memory, in burn's layout.
pub fn export_params<M: Module>(module: &M, keep: impl Fn(&ParamInfo) -> bool) -> Vec<(ParamInfo, HostTensor)> {
    struct Exporter<F> {
        at: PathTracker,
        keep: F,
        out: Vec<(ParamInfo, HostTensor)>,
    }
    impl<F: Fn(&ParamInfo) -> bool> ModuleVisitor for Exporter<F> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.at.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let info = self.at.info(param);
            if (self.keep)(&info) {
                let data = param.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("float tensor");
                let t = HostTensor::new(info.shape.clone(), data);
                self.out.push((info, t));
            }
        }
    }
    let mut v = Exporter { at: PathTracker::default(), keep, out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// Replace parameter values with tensors from `source`, which receives each parameter's info and
/// returns `Ok(Some(t))` to load `t` (burn layout), `Ok(None)` to keep the current value.
/// Shape mismatches are errors naming the parameter. Trainability and ids are preserved.
pub fn import_params<M: Module>(
    module: M,
    mut source: impl FnMut(&ParamInfo) -> Result<Option<HostTensor>>,
) -> Result<M> {
    struct Importer<'a> {
        at: PathTracker,
        source: &'a mut dyn FnMut(&ParamInfo) -> Result<Option<HostTensor>>,
        error: Option<anyhow::Error>,
    }
    impl ModuleMapper for Importer<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.at.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.error.is_some() {
                return param;
            }
            // A parameter still lazy was made by a layer's initializer, which requests gradients
            // (burn's `Initializer::init`); asking the parameter itself would first run the random
            // initialisation of the value we are about to replace (measured: a fifth of loading
            // Whisper tiny.en, 0.4 s, went to drawing random weights).
            let info = if param.is_initialized() {
                self.at.info(&param)
            } else {
                ParamInfo { trainable: true, ..self.at.peek(&param) }
            };
            match (self.source)(&info) {
                Ok(None) => param,
                Ok(Some(t)) if t.shape != info.shape => {
                    self.error = Some(anyhow::anyhow!(
                        "shape mismatch for parameter '{}': checkpoint has {:?}, model expects {:?}",
                        info.path,
                        t.shape,
                        info.shape
                    ));
                    param
                }
                Ok(Some(t)) => {
                    // Build the value directly instead of `param.map`, which would first run the
                    // (lazy) random initialisation of a tensor we are about to overwrite.
                    let device = param.lazy_device();
                    let fresh = Tensor::<D>::from_data(TensorData::new(t.data, t.shape), &device);
                    let fresh = if info.trainable && device.is_autodiff() { fresh.require_grad() } else { fresh };
                    Param::initialized(param.id, fresh)
                }
                Err(e) => {
                    self.error = Some(e);
                    param
                }
            }
        }
    }
    let mut m = Importer { at: PathTracker::default(), source: &mut source, error: None };
    let module = module.map(&mut m);
    match m.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Set which parameters train: `trainable(info)` decides for each float parameter.
pub fn set_trainable<M: Module>(module: M, trainable: impl Fn(&ParamInfo) -> bool) -> M {
    struct Setter<F> {
        at: PathTracker,
        trainable: F,
    }
    impl<F: Fn(&ParamInfo) -> bool> ModuleMapper for Setter<F> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.at.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let info = self.at.peek(&param);
            param.set_require_grad((self.trainable)(&info))
        }
    }
    module.map(&mut Setter { at: PathTracker::default(), trainable })
}

/// Fail with one message listing every checkpoint key the model needs but the file lacks.
pub fn require_all_present(file: &str, missing: &[String]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
    bail!("{file}: {} weight(s) the model needs are missing, e.g. {}", missing.len(), shown.join(", "))
}
