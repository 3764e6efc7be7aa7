//! Gradient checkpointing of one block: its forward pass keeps only its input, and the backward
//! pass computes the block again (with autodiff) to get the gradients of its input and its
//! trainable parameters.
//!
//! Why: a training step of a decoder keeps every intermediate of every layer for the backward
//! pass. SmolLM2-135M at batch 8 × 256 (LoRA on all projections) peaked at 6.9 GB, of which
//! 0.54 GB are weights: the rest is ~190 MB of activations per layer × 30 layers. With each
//! decoder layer checkpointed a step keeps one `[batch, len, hidden]` input per layer (4.7 MB
//! there) and the intermediates of one layer at a time (docs/BENCHMARKS.md "LLM memory"). The
//! price is one more forward pass of the layers in backward (transformers'
//! `gradient_checkpointing_enable()` does the same, `torch.utils.checkpoint`).
//!
//! How, with burn's autodiff: the forward pass runs the block on untracked copies of its input
//! and parameters (same buffers; burn records nothing and keeps nothing), and one node is
//! recorded whose parents are the input and, when the input is untracked (frozen embeddings
//! under LoRA), one trainable parameter of the block, so the node is reached by backward. Its
//! backward runs the block again on fresh leaves (the saved input, the same parameter buffers),
//! runs an inner backward of `sum(y · dy)` on that separate graph (burn's graph client allows a
//! backward inside a backward step on another graph), and registers the input's gradient with the
//! parent and each parameter's gradient under the parameter's own node: to the trainer they look
//! like the gradients of an ordinary pass. The dropout generator is put back to where it stood
//! before the forward pass, so the recomputation draws the same masks (the math does not change:
//! `checkpointing_changes_nothing` compares loss and every gradient with an unchecked pass).
//!
//! Fallback: on a GPU device (the node holds CPU buffers) or outside autodiff, the block simply
//! runs forward.

use crate::ops::context::{DropoutState, dropout_state, restore_dropout};
use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor, is_host};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn_flex::FlexTensor;
use std::sync::Arc;

/// A block's forward pass given the block and its input (what is recomputed).
pub type BlockFn<M> = Arc<dyn Fn(&M, Tensor<3>) -> Tensor<3> + Send + Sync>;

/// `f(block, x)`, keeping only `x` for the backward pass (see the module header).
pub fn checkpoint<M: Module + 'static>(block: &M, x: Tensor<3>, f: BlockFn<M>) -> Tensor<3> {
    let device = x.device();
    if !device.is_autodiff() || !is_host(&device) {
        return f(block, x);
    }
    let dropout = dropout_state();
    let untracked = block.clone().map(&mut Untracked);
    let y = f(&untracked, Tensor::from_inner(x.clone().inner()));
    let y = host_tensor(y.inner());
    let x = host_autodiff_tensor(x);
    let anchor = first_trainable(block);
    let prep = BlockCheckpoint::<M>::default()
        .prepare::<NoCheckpointing>([x.node(), anchor.as_ref().unwrap_or(&x).node()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let state = State { block: block.clone(), f, x: x.into_primitive(), dropout };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive::<Autodiff<Flex>>(out)
}

/// Every float parameter as an untracked tensor on the same buffer.
struct Untracked;

impl ModuleMapper for Untracked {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| Tensor::from_inner(t.inner()))
    }
}

/// The first parameter that trains, if any (its own node, a leaf).
fn first_trainable<M: Module>(block: &M) -> Option<HostAutodiffTensor> {
    struct First(Option<HostAutodiffTensor>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() && param.is_require_grad() {
                self.0 = Some(host_autodiff_tensor(param.val()));
            }
        }
    }
    let mut first = First(None);
    block.visit(&mut first);
    first.0
}

/// Trainable parameters replaced by fresh leaves (same buffers, new nodes), each remembered with
/// the node of the parameter it stands for.
struct Fresh {
    leaves: Vec<(NodeId, ReadGrad)>,
}

/// A fresh leaf's gradient out of the inner backward pass.
type ReadGrad = Box<dyn Fn(&burn::tensor::Gradients) -> Option<FlexTensor>>;

impl ModuleMapper for Fresh {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            if !t.is_require_grad() {
                return Tensor::from_inner(t.inner());
            }
            let id = host_autodiff_tensor(t.clone()).id();
            let leaf = Tensor::<D>::from_inner(t.inner()).require_grad();
            let read = leaf.clone();
            self.leaves.push((id, Box::new(move |g| read.grad(g).map(host_tensor))));
            leaf
        })
    }
}

/// What the backward pass needs: the block (its parameters are shared buffers), its forward
/// function, its input and the dropout generator as the forward pass found it.
struct State<M> {
    block: M,
    f: BlockFn<M>,
    x: FlexTensor,
    dropout: DropoutState,
}

impl<M: Clone> Clone for State<M> {
    fn clone(&self) -> Self {
        Self { block: self.block.clone(), f: self.f.clone(), x: self.x.clone(), dropout: self.dropout.clone() }
    }
}

impl<M> std::fmt::Debug for State<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointState").field("x", &self.x.layout().shape()).finish()
    }
}

struct BlockCheckpoint<M>(std::marker::PhantomData<fn() -> M>);

impl<M> Default for BlockCheckpoint<M> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<M> std::fmt::Debug for BlockCheckpoint<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCheckpoint")
    }
}

impl<M: Module + 'static> Backward<Flex, 2> for BlockCheckpoint<M> {
    type State = State<M>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, _] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let State { block, f, x, dropout } = ops.state;
        let mut fresh = Fresh { leaves: Vec::new() };
        let block = block.map(&mut fresh);
        let x = Tensor::<3>::from_inner(Tensor::from_primitive::<Flex>(x));
        let x = if x_node.is_some() { x.require_grad() } else { x };
        let outer = restore_dropout(dropout);
        let y = f(&block, x.clone());
        restore_dropout(outer);
        let dy = Tensor::<3>::from_inner(Tensor::from_primitive::<Flex>(dy));
        let inner = (y * dy).sum().backward();
        if let Some(node) = x_node
            && let Some(dx) = x.grad(&inner)
        {
            grads.register::<Flex>(node.id, host_tensor(dx));
        }
        for (id, read) in fresh.leaves {
            if let Some(d) = read(&inner) {
                grads.register::<Flex>(id, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::context::seed_dropout;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Distribution;

    #[derive(Module, Debug)]
    struct Block {
        up: Linear,
        down: Linear,
        frozen: Linear,
    }

    impl Block {
        fn forward(&self, x: Tensor<3>) -> Tensor<3> {
            let h = self.up.forward(x.clone()).tanh();
            // Dropout drawn from the run's generator, as `nn::dropout` does on the CPU.
            let mask = crate::ops::dropout_mask::mask(h.shape().num_elements(), 0.3);
            let h = h.clone() * Tensor::<3>::from_data(TensorData::new(mask, h.shape()), &h.device()).inner();
            x.clone() + self.down.forward(h) + self.frozen.forward(x).mul_scalar(0.5)
        }
    }

    fn block(device: &Device) -> Block {
        let mut b = Block {
            up: LinearConfig::new(8, 16).init(device),
            down: LinearConfig::new(16, 8).init(device),
            frozen: LinearConfig::new(8, 8).init(device),
        };
        b.frozen = b.frozen.no_grad();
        b
    }

    fn grads_of(b: &Block, g: &burn::tensor::Gradients) -> Vec<Tensor<2>> {
        vec![b.up.weight.val().grad(g).unwrap(), b.down.weight.val().grad(g).unwrap()]
    }

    /// Two checkpointed blocks in a row against the same blocks run plainly: the loss, the
    /// input's gradient and every trainable parameter's gradient agree (dropout on, so the
    /// recomputation must draw the same masks), and the frozen layer gets none; with an
    /// untracked input (frozen embeddings) the parameters still get theirs.
    #[test]
    fn checkpointing_changes_nothing() {
        let device = Device::flex().autodiff();
        let (b1, b2) = (block(&device), block(&device));
        let f: BlockFn<Block> = Arc::new(|b: &Block, x| b.forward(x));
        for input_tracked in [true, false] {
            let x0 = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
            let x0 = if input_tracked { x0.require_grad() } else { x0 };
            let run = |checkpointed: bool| {
                seed_dropout(11);
                let x = if checkpointed { checkpoint(&b1, x0.clone(), f.clone()) } else { b1.forward(x0.clone()) };
                seed_dropout(12);
                let x = if checkpointed { checkpoint(&b2, x, f.clone()) } else { b2.forward(x) };
                let loss = x.powi_scalar(2).mean();
                let value: f32 = loss.clone().into_scalar();
                (value, loss.backward())
            };
            let (l1, g1) = run(false);
            let (l2, g2) = run(true);
            assert!((l1 - l2).abs() < 1e-6, "loss {l1} vs {l2}");
            let close = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>() < 1e-5;
            for (a, b) in grads_of(&b1, &g1).into_iter().zip(grads_of(&b1, &g2)) {
                assert!(close(a, b), "first block's parameter gradient");
            }
            for (a, b) in grads_of(&b2, &g1).into_iter().zip(grads_of(&b2, &g2)) {
                assert!(close(a, b), "second block's parameter gradient");
            }
            assert!(b1.frozen.weight.val().grad(&g2).is_none(), "a frozen weight gets no gradient");
            if input_tracked {
                let (a, b) = (x0.grad(&g1).unwrap(), x0.grad(&g2).unwrap());
                assert!((a - b).abs().max().into_scalar::<f32>() < 1e-5, "input gradient");
            }
        }
    }
}
