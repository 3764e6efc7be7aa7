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
use burn::tensor::{DType, Gradients};
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

    /// The accumulated gradient of the parameter at `path` (flattened).
    pub fn get(&self, path: &str) -> Option<&Tensor<1>> {
        self.grads.get(path)
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
        let steps = entry.as_ref().map_or(1, |s| s.steps + 1);
        let decay = if decay { c.weight_decay } else { 0.0 };
        let bias1 = 1.0 - c.beta1.powi(steps as i32);
        let bias2 = 1.0 - c.beta2.powi(steps as i32);
        let device = p.device();
        let (p, m, v) = if crate::ops::device::is_host(&device) && !device.is_autodiff() && p.dtype() == DType::F32 {
            let (m, v) = match entry {
                Some(s) => (s.m, s.v),
                None => (Tensor::zeros(p.shape(), &device), Tensor::zeros(p.shape(), &device)),
            };
            let k = crate::ops::adamw::AdamWScalars {
                beta1: c.beta1 as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                keep: (1.0 - lr * decay) as f32,
                decays: decay > 0.0,
                sqrt_bias2: bias2.sqrt() as f32,
                epsilon: c.epsilon as f32,
                step_size: (lr / bias1) as f32,
            };
            crate::ops::adamw::update_on_host(p, g, m, v, &k)
        } else {
            let (m, v) = match entry {
                Some(s) => (
                    s.m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                    s.v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
                ),
                None => (g.clone().mul_scalar(1.0 - c.beta1), g.square().mul_scalar(1.0 - c.beta2)),
            };
            let p = if decay > 0.0 { p.mul_scalar(1.0 - lr * decay) } else { p };
            // p -= lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps), exactly as torch.optim.AdamW.
            let denom = v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(c.epsilon);
            (p - m.clone().div(denom).mul_scalar(lr / bias1), m, v)
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three AdamW steps, with and without weight decay, against torch.optim.AdamW's update
    /// written out in f64: p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
    #[test]
    fn adamw_steps_match_torchs_formula() {
        let device = Device::flex();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weight_decay: 0.01 };
        let n = 40_000; // more than one parallel chunk
        let p0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let grads: Vec<Vec<f32>> =
            (0..3).map(|t| (0..n).map(|i| ((i * 13 + t * 7) % 29) as f32 / 10.0 - 1.4).collect()).collect();
        for decay in [true, false] {
            let mut opt = AdamW::new(cfg);
            let mut p = Tensor::<1>::from_data(TensorData::new(p0.clone(), [n]), &device);
            let (mut pr, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) =
                (p0.iter().map(|&x| x as f64).collect(), vec![0.0; n], vec![0.0; n]);
            for (t, g) in grads.iter().enumerate() {
                let lr = 1e-3 * (t + 1) as f64;
                let gt = Tensor::<1>::from_data(TensorData::new(g.clone(), [n]), &device);
                p = opt.update("w", p, gt, lr, decay);
                let wd = if decay { cfg.weight_decay } else { 0.0 };
                let (b1, b2) = (1.0 - cfg.beta1.powi(t as i32 + 1), 1.0 - cfg.beta2.powi(t as i32 + 1));
                for i in 0..n {
                    let gi = g[i] as f64;
                    pr[i] *= 1.0 - lr * wd;
                    m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * gi;
                    v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * gi * gi;
                    pr[i] -= lr / b1 * m[i] / (v[i].sqrt() / b2.sqrt() + cfg.epsilon);
                }
            }
            let got = p.into_data().try_to_vec::<f32>().unwrap();
            let worst = got.iter().zip(&pr).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst < 2e-6, "decay {decay}: max |Δp| {worst}");
            let (exp_avg, exp_avg_sq) = (&opt.state["w"].m, &opt.state["w"].v);
            let m_got = exp_avg.clone().into_data().try_to_vec::<f32>().unwrap();
            let v_got = exp_avg_sq.clone().into_data().try_to_vec::<f32>().unwrap();
            assert!(m_got.iter().zip(&m).all(|(&a, &b)| (a as f64 - b).abs() < 1e-6));
            assert!(v_got.iter().zip(&v).all(|(&a, &b)| (a as f64 - b).abs() < 1e-6));
            assert_eq!(opt.state["w"].steps, 3);
        }
    }
}
