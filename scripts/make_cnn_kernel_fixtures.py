#!/usr/bin/env python3
"""PyTorch reference for finetune's CNN kernels (`ops::conv2d`, `ops::batch_norm`, `ops::relu`):
tests/fixtures/cnn-kernels-reference.safetensors. Run from the repository root; needs torch and
safetensors.

For each case the inputs (seeded normal values), an upstream gradient `g`, and PyTorch's output and
gradients of `sum(output * g)`:
  pw.*     pointwise conv (1x1, no bias), x [3, 8, 9, 10], w [12, 8, 1, 1]
  pws.*    pointwise conv on a 2x2 map (finetune's channel-major path), x [5, 16, 2, 2], w [24, 16, 1, 1]
  dw3.*    depthwise 3x3, stride 2, padding 1, x [2, 6, 9, 11], w [6, 1, 3, 3]
  dw5.*    depthwise 5x5, stride 2, TensorFlow "SAME" (pad 1 before, 2 after), x [2, 4, 8, 8]
  bn.*     BatchNorm2d in train mode (batch statistics, eps 1e-3, momentum 0.1) + ReLU6, x [3, 5, 6, 7]:
           output, gradients of x, weight, bias, and the running mean / variance after the step
           (PyTorch updates the variance with the unbiased batch variance) from mean 0.5, var 2
  bne.*    BatchNorm2d in eval mode (running statistics) + ReLU, same shapes

Usage: python3 scripts/make_cnn_kernel_fixtures.py
"""
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(29)
out = {}


def normal(*shape, mean=0.0, std=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * std + mean).float()


def conv_case(name, x_shape, w_shape, stride, pad, groups):
    x = normal(*x_shape).requires_grad_()
    w = normal(*w_shape).requires_grad_()
    xp = F.pad(x, pad) if pad else x  # (left, right, top, bottom)
    y = F.conv2d(xp, w, stride=stride, groups=groups)
    g = normal(*y.shape)
    (y * g).sum().backward()
    out.update({f"{name}.x": x.detach(), f"{name}.w": w.detach(), f"{name}.g": g, f"{name}.y": y.detach(),
                f"{name}.dx": x.grad, f"{name}.dw": w.grad})


conv_case("pw", [3, 8, 9, 10], [12, 8, 1, 1], 1, None, 1)
conv_case("pws", [5, 16, 2, 2], [24, 16, 1, 1], 1, None, 1)
conv_case("dw3", [2, 6, 9, 11], [6, 1, 3, 3], 2, (1, 1, 1, 1), 6)
conv_case("dw5", [2, 4, 8, 8], [4, 1, 5, 5], 2, (1, 2, 1, 2), 4)


def bn_case(name, train, act):
    c = 5
    bn = torch.nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(normal(c, mean=1.0, std=0.5))
        bn.bias.copy_(normal(c, mean=0.5, std=1.0))
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
    bn.train(train)
    x = normal(3, c, 6, 7, mean=1.0, std=3.0).requires_grad_()
    out[f"{name}.x"] = x.detach().clone()
    out[f"{name}.gamma"] = bn.weight.detach().clone()
    out[f"{name}.beta"] = bn.bias.detach().clone()
    y = act(bn(x))
    g = normal(*y.shape)
    (y * g).sum().backward()
    out.update({f"{name}.g": g, f"{name}.y": y.detach(), f"{name}.dx": x.grad, f"{name}.dgamma": bn.weight.grad,
                f"{name}.dbeta": bn.bias.grad, f"{name}.running_mean": bn.running_mean.clone(),
                f"{name}.running_var": bn.running_var.clone()})


bn_case("bn", True, F.relu6)
bn_case("bne", False, F.relu)

save_file({k: v.contiguous() for k, v in out.items()}, "tests/fixtures/cnn-kernels-reference.safetensors",
          metadata={"torch": torch.__version__})
print(f"wrote {len(out)} tensors to tests/fixtures/cnn-kernels-reference.safetensors")
