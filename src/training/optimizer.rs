//! AdamW with PyTorch's semantics, gradient accumulation and clipping by global norm.
//!
//! Written here rather than taken from burn-optim because the trainer needs three things that
//! are awkward there: a per-parameter learning-rate multiplier (layer-wise decay), no weight
//! decay on biases and LayerNorm (the Hugging Face convention), and optimizer state keyed by
//! parameter *path* so a checkpoint can be resumed into a freshly built model.
//! Only parameters that require a gradient are visited: frozen ones get no state at all.

use crate::io::safetensors::HostTensor;
use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use std::collections::BTreeMap;

/// Gradients of the trainable parameters, flattened and keyed by parameter path.
#[derive(Default)]
pub struct GradStore {
    grads: BTreeMap<String, Tensor<1>>,
}

struct PathStack(Vec<String>);

impl PathStack {
    fn path(&self) -> String {
        self.0.join(".")
    }
}

impl GradStore {
    /// Take the gradients of `module`'s trainable parameters out of `grads` and add them to
    /// what is already accumulated.
    pub fn accumulate<M: Module>(&mut self, module: &M, mut grads: Gradients) {
        struct Collect<'a> {
            at: PathStack,
            grads: &'a mut Gradients,
            store: &'a mut BTreeMap<String, Tensor<1>>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.at.0.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.at.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if !param.is_require_grad() {
                    return;
                }
                let Some(grad) = param.val().grad_remove(self.grads) else {
                    return;
                };
                let n = grad.shape().num_elements();
                let flat = grad.reshape([n]);
                let path = self.at.path();
                let sum = match self.store.remove(&path) {
                    Some(prev) => prev + flat,
                    None => flat,
                };
                self.store.insert(path, sum);
            }
        }
        module.visit(&mut Collect { at: PathStack(Vec::new()), grads: &mut grads, store: &mut self.grads });
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.grads.keys().map(String::as_str)
    }

    /// Global L2 norm over all gradients.
    pub fn global_norm(&self) -> f64 {
        let squares: Vec<Tensor<1>> = self.grads.values().map(|g| g.clone().square().sum()).collect();
        if squares.is_empty() {
            return 0.0;
        }
        let total: f64 = Tensor::cat(squares, 0).sum().into_scalar::<f32>() as f64;
        total.sqrt()
    }

    /// Scale every gradient (accumulation averaging, clipping).
    pub fn scale(&mut self, factor: f64) {
        for g in self.grads.values_mut() {
            *g = g.clone().mul_scalar(factor);
        }
    }

    /// Clip to `max_norm` like `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        if max_norm > 0.0 && norm.is_finite() {
            let factor = max_norm / (norm + 1e-6);
            if factor < 1.0 {
                self.scale(factor);
            }
        }
        norm
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter, flattened, and its own step count (a parameter
/// unfrozen later starts its bias correction at its first update, as in PyTorch).
#[derive(Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
    steps: u64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    state: BTreeMap<String, Moments>,
}

/// No weight decay on biases and normalisation weights (as the Hugging Face Trainer does).
pub fn decays(path: &str, owner: &str) -> bool {
    !(path.ends_with("bias") || path.ends_with(".beta") || owner.contains("Norm"))
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self { cfg, state: BTreeMap::new() }
    }

    /// Parameters that have optimizer state (i.e. have been updated at least once).
    pub fn num_states(&self) -> usize {
        self.state.len()
    }

    /// One update of every parameter that has a gradient in `grads`.
    /// `lr_of(path)` is the learning rate for that parameter (schedule × layer multiplier).
    pub fn step<M: Module>(&mut self, module: M, grads: &GradStore, lr_of: &dyn Fn(&str) -> f64) -> M {
        struct Update<'a> {
            at: PathStack,
            owners: Vec<String>,
            opt: &'a mut AdamW,
            grads: &'a GradStore,
            lr_of: &'a dyn Fn(&str) -> f64,
        }
        impl ModuleMapper for Update<'_> {
            fn enter_module(&mut self, name: &str, container: &str) {
                self.at.0.push(name.to_string());
                self.owners.push(container.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.at.0.pop();
                self.owners.pop();
            }
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let path = self.at.path();
                let Some(grad) = self.grads.grads.get(&path) else {
                    return param;
                };
                let owner = self.owners.last().cloned().unwrap_or_default();
                let lr = (self.lr_of)(&path);
                let decay = decays(&path, &owner);
                let opt = &mut *self.opt;
                param.map(|tensor| {
                    let shape = tensor.shape();
                    let n = shape.num_elements();
                    let flat = tensor.inner().reshape([n]);
                    let updated = opt.update(&path, flat, grad.clone().inner(), lr, decay);
                    Tensor::from_inner(updated.reshape(shape)).require_grad()
                })
            }
        }
        module.map(&mut Update { at: PathStack(Vec::new()), owners: Vec::new(), opt: self, grads, lr_of })
    }

    fn update(&mut self, path: &str, p: Tensor<1>, g: Tensor<1>, lr: f64, decay: bool) -> Tensor<1> {
        let c = self.cfg;
        let entry = self.state.remove(path);
        let (m, v, steps) = match entry {
            Some(s) => (
                s.m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                s.v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
                s.steps + 1,
            ),
            None => (g.clone().mul_scalar(1.0 - c.beta1), g.square().mul_scalar(1.0 - c.beta2), 1),
        };
        let p = if decay && c.weight_decay > 0.0 { p.mul_scalar(1.0 - lr * c.weight_decay) } else { p };
        let bias1 = 1.0 - c.beta1.powi(steps as i32);
        let bias2 = 1.0 - c.beta2.powi(steps as i32);
        // p -= lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps), exactly as torch.optim.AdamW.
        let denom = v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(c.epsilon);
        let p = p - m.clone().div(denom).mul_scalar(lr / bias1);
        self.state.insert(path.to_string(), Moments { m, v, steps });
        p
    }

    /// The state as host tensors (`PATH.exp_avg`, `PATH.exp_avg_sq`) plus step counts, for
    /// checkpoints.
    pub fn export_state(&self) -> (Vec<(String, HostTensor)>, BTreeMap<String, u64>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (path, s) in &self.state {
            for (suffix, t) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let data = t.clone().into_data().try_into_vec::<f32>().expect("f32 state");
                tensors.push((format!("{path}.{suffix}"), HostTensor::new(vec![data.len()], data)));
            }
            steps.insert(path.clone(), s.steps);
        }
        (tensors, steps)
    }

    /// Restore state written by [`AdamW::export_state`].
    pub fn import_state(
        &mut self,
        tensors: &crate::io::safetensors::SafetensorsFile,
        steps: &BTreeMap<String, u64>,
        device: &Device,
    ) -> Result<()> {
        self.state.clear();
        for (path, &n) in steps {
            let load = |suffix: &str| -> Result<Tensor<1>> {
                let t = tensors.tensor(&format!("{path}.{suffix}"))?;
                if t.shape.len() != 1 {
                    bail!("{}: optimizer state '{path}.{suffix}' is not flat", tensors.path().display());
                }
                let len = t.shape[0];
                Ok(Tensor::<1>::from_data(TensorData::new(t.data, [len]), device).inner())
            };
            self.state.insert(path.clone(), Moments { m: load("exp_avg")?, v: load("exp_avg_sq")?, steps: n });
        }
        Ok(())
    }
}
