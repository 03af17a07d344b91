"""Fold eval-mode batch norms into the Linear/Conv layer before them (torch models)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..fold import batchnorm_scale_shift


def _foldable(layer, bn) -> bool:
    """A Linear or (non-transposed) ConvNd whose outputs are exactly bn's channels, bn with running stats."""
    if not isinstance(bn, _BatchNorm) or bn.running_mean is None:
        return False
    if isinstance(layer, torch.nn.Linear):
        return layer.out_features == bn.num_features
    if isinstance(layer, _ConvNd) and not layer.transposed:
        return layer.out_channels == bn.num_features
    return False


@torch.no_grad()
def _fold_into(layer, bn) -> None:
    """layer(x) := bn(layer(x)) in eval mode; weight rows (output channels) scaled, bias shifted."""
    scale, shift = batchnorm_scale_shift(
        None if bn.weight is None else bn.weight.double().numpy(),
        None if bn.bias is None else bn.bias.double().numpy(),
        bn.running_mean.double().numpy(), bn.running_var.double().numpy(), bn.eps)
    scale_t = torch.from_numpy(scale)
    weight = layer.weight.double() * scale_t.view(-1, *([1] * (layer.weight.dim() - 1)))
    bias = torch.zeros(layer.weight.shape[0], dtype=torch.float64) if layer.bias is None else layer.bias.double()
    new_bias = bias * scale_t + torch.from_numpy(np.asarray(shift))
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = torch.nn.Parameter(new_bias.to(layer.weight.dtype))
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _fold_sequential(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Sequential):
        names = list(module._modules)
        for prev, name in zip(names, names[1:]):
            layer, bn = module._modules[prev], module._modules[name]
            if _foldable(layer, bn):
                _fold_into(layer, bn)
                module._modules[name] = torch.nn.Identity()
    for child in module.children():
        _fold_sequential(child)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with each batch norm folded into the layer before it.

    Folds torch.nn.BatchNorm1d/2d/3d and normlab.torch.BatchNorm (with running
    statistics) that directly follow a Linear or Conv1d/2d/3d in an
    nn.Sequential, at any depth; each folded norm becomes nn.Identity. Others
    are kept. The copy computes what ``model.eval()`` computes; ``model`` is
    left unchanged.
    """
    folded = copy.deepcopy(model).eval()
    _fold_sequential(folded)
    return folded
