"""Masked updates projected off the directions the authorized inputs use, one weight row at a time.

A weight row ``w`` of a linear map (or a convolution's output channel, over its unfolded patch) changes the layer's
output on an input ``x`` by ``delta . x``. If ``delta`` is orthogonal to every input the authorized images give the
layer, their outputs do not move at all, whatever ``delta`` does to other domains (gradient projection, as in
continual learning: GPM, Saha et al. 2021). A lock's update is sparse, so the projection is taken within each row's
selected entries ``S``: with ``C`` the unlocked encoder's second moment of the layer's authorized inputs, the row's
change is projected off the eigenvectors of ``C[S, S]`` whose eigenvalue is above ``threshold`` times the mean
per-coordinate energy ``trace(C) / d``. Grey authorized images, for instance, give a patch embedding no energy along
colour differences, so a row with two colour channels of one pixel selected may move freely along their difference.

Hand-written torch on purpose: the per-row projectors are one batched ``eigh`` per weight per round, and each update
is a gather, a batched matrix product and a scatter on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AuthorizedProjection", "layer_input_moments", "supports_projection"]

# Input rows are cast to float64 and multiplied about this many elements at a time (bounds the hook's memory)
_SLICE_ELEMENTS = 2**24
# Padding coordinates of a row's selected set get this many times the mean energy, so their eigenvectors are always
# projected off (they are decoupled from the real coordinates: zero off-diagonal).
_PAD_ENERGY = 1e12


def _mean_energy(moment: torch.Tensor) -> torch.Tensor:
    """A layer's mean per-coordinate input energy ``trace(C) / d``: the unit of the projection's threshold."""
    return moment.diagonal().mean().clamp_min(1e-30)


def _module_of(model: nn.Module, parameter_name: str) -> nn.Module:
    return model.get_submodule(parameter_name.rpartition(".")[0])


def supports_projection(model: nn.Module, parameter_name: str) -> bool:
    """Whether a weight's updates can be projected: ``nn.Linear`` weights, and ``nn.Conv2d`` weights of ungrouped
    convolutions with zero padding (whose inputs unfold into rows matching the flattened weight)."""
    module = _module_of(model, parameter_name)
    if not parameter_name.endswith("weight"):
        return False
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, nn.Linear)


def _second_moment_sum(module: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``sum x x^T`` (float64) over the layer's input rows, and their count. Rows are cast and multiplied a slice at a
    time (a convolution's patches unfolded a few images at a time), so the float64 copy stays small on large inputs
    (a ViT-B MLP input of 512 images at 224 px would be 2.5 GB at once)."""
    if isinstance(module, nn.Conv2d):
        positions = 1
        for size, kernel, stride, padding, dilation in zip(
            inputs.shape[-2:], module.kernel_size, module.stride, module.padding, module.dilation
        ):
            positions *= max(1, (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
        chunk = max(1, _SLICE_ELEMENTS // (module.weight[0].numel() * positions))
        slices = (
            F.unfold(inputs[i : i + chunk], module.kernel_size, module.dilation, module.padding, module.stride)
            .transpose(1, 2)
            .reshape(-1, module.weight[0].numel())
            for i in range(0, len(inputs), chunk)
        )
    else:
        rows = inputs.reshape(-1, inputs.shape[-1])
        chunk = max(1, _SLICE_ELEMENTS // rows.shape[1])
        slices = (rows[i : i + chunk] for i in range(0, len(rows), chunk))
    total, count = 0, 0
    for part in slices:
        part = part.double()
        total, count = total + part.T @ part, count + len(part)
    return total, count


@torch.no_grad()
def layer_input_moments(
    model: nn.Module, parameter_names: Iterable[str], batches: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Uncentred second moment ``E[x x^T]`` of the inputs of each named weight's layer over ``batches`` of pixels.

    Only weights that :func:`supports_projection` are accepted; others raise ``TypeError``.
    """
    names = list(parameter_names)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    handles = []
    for name in names:
        if not supports_projection(model, name):
            raise TypeError(
                f"authorized projection supports Linear and ungrouped, zero-padded Conv2d weights, not {name!r}"
            )
        module = _module_of(model, name)

        def hook(module, args, output, name=name):
            moment_sum, count = _second_moment_sum(module, args[0].detach())
            sums[name] = sums.get(name, 0) + moment_sum
            counts[name] += count

        handles.append(module.register_forward_hook(hook))
    try:
        for pixels in batches:
            model(pixels)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if counts[name] == 0]
    if missing:
        raise RuntimeError(f"no inputs reached these layers in the forward pass: {missing[:5]}")
    return {name: (sums[name] / counts[name]).float() for name in names}


class AuthorizedProjection:
    """Project masked weight updates off the authorized inputs' high-energy directions (see the module docstring).

    ``moments``: :func:`layer_input_moments` of the unlocked encoder on authorized images. Call :meth:`prepare`
    whenever the mask changes, then :meth:`project` after each optimiser step with the weights from before it.
    """

    def __init__(self, moments: Mapping[str, torch.Tensor], threshold: float) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.moments = dict(moments)
        self.threshold = threshold
        # parameter name -> projector onto the layer's free directions (eigenvalue <= threshold x mean energy)
        self.free: dict[str, torch.Tensor] = {}
        for name, moment in self.moments.items():
            values, vectors = torch.linalg.eigh(moment.double())
            keep = (values <= threshold * float(_mean_energy(moment))).to(vectors.dtype)
            self.free[name] = ((vectors * keep) @ vectors.T).to(moment.dtype)
        # parameter name -> (partly selected rows, column index (R x k), valid (R x k), projector (R x k x k))
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # parameter name -> its fully selected rows (projected with ``self.free[name]``)
        self._full_rows: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def free_gradient(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """``gradient`` (the weight's shape) with every row projected onto the layer's free directions: what selection
        scores, since an entry can only move along them (weights of other layers are returned unchanged)."""
        if name not in self.free:
            return gradient
        flat = gradient.reshape(gradient.shape[0], -1)
        return (flat @ self.free[name].to(flat.device, flat.dtype)).reshape(gradient.shape)

    @torch.no_grad()
    def prepare(self, mask: Mapping[str, torch.Tensor]) -> None:
        """Build each masked row's projector from the installed mask. Fully selected rows share the layer's free
        projector (the same projection, without a ``d x d`` matrix per row)."""
        self._rows.clear()
        self._full_rows.clear()
        for name, selected in mask.items():
            if name not in self.moments or not bool(selected.any()):
                continue
            moment = self.moments[name].to(selected.device)
            flat = selected.reshape(selected.shape[0], -1)
            if flat.shape[1] != moment.shape[0]:
                raise ValueError(f"{name}: weight rows have {flat.shape[1]} entries, its inputs {moment.shape[0]}")
            counts = flat.sum(dim=1)
            self._full_rows[name] = torch.nonzero(counts == flat.shape[1]).flatten()
            rows = torch.nonzero((counts > 0) & (counts < flat.shape[1])).flatten()
            if len(rows) == 0:
                continue
            width = int(counts[rows].max())
            # each row's selected columns first (in column order), padded with column 0
            order = torch.sort(flat[rows].to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
            valid = torch.arange(width, device=flat.device)[None, :] < counts[rows][:, None]
            index = torch.where(valid, order, torch.zeros_like(order))
            mean_energy = _mean_energy(moment)
            block = moment[index[:, :, None], index[:, None, :]]
            pair_valid = valid[:, :, None] & valid[:, None, :]
            block = torch.where(pair_valid, block, torch.zeros_like(block))
            pad = torch.diag_embed((~valid).to(block.dtype)) * (_PAD_ENERGY * mean_energy)
            values, vectors = torch.linalg.eigh((block + pad).double())
            keep = (values <= self.threshold * float(mean_energy)).to(vectors.dtype)
            projector = (vectors * keep[:, None, :]) @ vectors.transpose(1, 2)
            self._rows[name] = (rows, index, valid, projector.to(moment.dtype))

    @torch.no_grad()
    def project(self, params: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor]) -> None:
        """Replace each prepared weight by ``before + P(weight - before)``, in place, row by row."""
        for name in self.names:
            param = params[name]
            start = before[name].reshape(param.shape[0], -1)
            change = param.detach().reshape(param.shape[0], -1) - start
            new_change = torch.zeros_like(change)
            if name in self._rows:
                rows, index, valid, projector = self._rows[name]
                picked = change[rows[:, None], index] * valid
                projected = (projector.to(change.dtype) @ picked.unsqueeze(-1)).squeeze(-1)
                new_change[rows[:, None].expand_as(index)[valid], index[valid]] = projected[valid]
            full = self._full_rows.get(name)
            if full is not None and len(full):
                new_change[full] = change[full] @ self.free[name].to(change.device, change.dtype)
            param.copy_((start + new_change).reshape(param.shape))

    @property
    def names(self) -> list[str]:
        """The prepared weights (those with a selected entry)."""
        return [name for name in self._full_rows if name in self._rows or len(self._full_rows[name])]

    def kept_dimensions(self) -> dict[str, float]:
        """Share of each prepared weight's selected entries whose directions the projection leaves free."""
        out = {}
        for name in self.names:
            free, selected = 0.0, 0
            if name in self._rows:
                _, _, valid, projector = self._rows[name]
                free, selected = float(projector.diagonal(dim1=1, dim2=2).sum()), int(valid.sum())
            full = len(self._full_rows[name])
            free += full * float(self.free[name].diagonal().sum())
            selected += full * self.free[name].shape[0]
            out[name] = free / max(selected, 1)
        return out
