"""Exact masked updates: only selected weight entries ever change, under any torch optimizer.

Zeroing gradients is not enough: AdamW's weight decay and carried momentum move zero-gradient entries. The
:class:`MaskedParameterGuard` combines three measures:

1. parameters with no selected entry get ``requires_grad=False`` and ``grad=None`` (torch optimizers skip
   parameters whose ``grad`` is ``None``: weight decay and moments never touch them, bit for bit);
2. gradients of partly selected parameters are masked by a tensor hook during backward (before DDP's all-reduce,
   before gradient clipping, for every gradient-accumulation micro-batch);
3. after each ``optimizer.step()``, :meth:`MaskedParameterGuard.restore_unselected` writes back the unselected
   entries of partly selected parameters from a snapshot taken when the mask was installed.

Training step order::

    loss.backward()                 # hooks mask gradients
    guard.mask_gradients()          # no-op with hooks + freezing; required with freeze_unselected=False
    clip_grad_norm_(...)
    optimizer.step()
    guard.restore_unselected()
    optimizer.zero_grad()

The guard covers only the module it is given (the encoder); heads outside it train normally. The optimizer must
hold every parameter that may become selected: build it before installing the guard (``transformers.Trainer``
only adds parameters with ``requires_grad=True``), and check with :meth:`MaskedParameterGuard.missing_from`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["MaskedParameterGuard", "changed_entries", "natural_range", "snapshot_state"]


class MaskedParameterGuard:
    """Keep every unselected entry of ``model``'s parameters bit-identical while selected entries train.

    ``freeze_unselected=True`` (default) sets ``requires_grad=False`` on parameters without a selected entry.
    Under DistributedDataParallel use ``freeze_unselected=False``: DDP's reducer waits for the gradients of every
    parameter it was built with ("Expected to have finished reduction ..." otherwise), and a parameter frozen before
    wrapping would never be all-reduced once the mask grows into it. Unselected parameters then keep their
    ``requires_grad``, receive zeroed gradients from a hook, and :meth:`mask_gradients` (call it before the
    optimizer step) sets their ``grad`` to ``None``. Snapshots are kept only for partly selected parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mapping[str, torch.Tensor] | None = None,
        freeze_unselected: bool = True,
    ) -> None:
        self.model = model
        self.freeze_unselected = freeze_unselected
        self._params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self._original_requires_grad = {n: p.requires_grad for n, p in self._params.items()}
        self._partial: dict[str, torch.Tensor] = {}  # name -> bool mask on the parameter's device
        self._snapshots: dict[str, torch.Tensor] = {}
        self._full: set[str] = set()
        self._unselected: set[str] = set()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._hooks_active = True
        self._installed = False
        if mask is not None:
            self.install(mask)

    # ---------------------------------------------------------------------------------------------- install
    def install(self, mask: Mapping[str, torch.Tensor]) -> None:
        """Install (or replace) the mask; snapshots are taken now, from the current weights.

        When a mask was already installed, its unselected entries are restored first, so a new snapshot never
        records an unwanted change.
        """
        unknown = [n for n in mask if n not in self._params]
        if unknown:
            raise KeyError(f"Mask names not among the model's parameters: {unknown[:5]}")
        for name, m in mask.items():
            if tuple(m.shape) != tuple(self._params[name].shape):
                raise ValueError(
                    f"Mask for {name!r} has shape {tuple(m.shape)}, parameter has {tuple(self._params[name].shape)}"
                )
        self._clear()

        for name, param in self._params.items():
            m = mask.get(name)
            count = 0 if m is None else int(m.sum())
            if count == 0:
                self._unselected.add(name)
                if self.freeze_unselected:
                    param.requires_grad_(False)
                    param.grad = None
                else:
                    param.requires_grad_(self._original_requires_grad[name])
                    if param.requires_grad:
                        self._hooks.append(param.register_hook(self._zero_hook))
            elif count == param.numel():
                self._full.add(name)
                param.requires_grad_(True)
            else:
                keep = m.to(device=param.device, dtype=torch.bool)
                self._partial[name] = keep
                self._snapshots[name] = param.detach().clone()
                param.requires_grad_(True)
                self._hooks.append(param.register_hook(self._mask_hook(keep)))
        self._installed = True
        self.mask_gradients()

    def _mask_hook(self, keep: torch.Tensor):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if not self._hooks_active:
                return grad
            return grad.masked_fill(~keep.to(grad.device), 0)

        return hook

    def _zero_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad) if self._hooks_active else grad

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ---------------------------------------------------------------------------------------------- per step
    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero unselected gradient entries of partly selected parameters; drop gradients of unselected ones."""
        for name in self._unselected:
            self._params[name].grad = None
        for name, keep in self._partial.items():
            grad = self._params[name].grad
            if grad is not None:
                grad.masked_fill_(~keep.to(grad.device), 0)

    @torch.no_grad()
    def restore_unselected(self) -> None:
        """Write the snapshot back into unselected entries of partly selected parameters (call after each step)."""
        for name, keep in self._partial.items():
            param = self._params[name]
            snapshot = self._snapshots[name]
            if snapshot.device != param.device:  # the model was moved after install
                keep = self._partial[name] = keep.to(param.device)
                snapshot = self._snapshots[name] = snapshot.to(param.device)
            param.copy_(torch.where(keep, param, snapshot))

    def step(self, optimizer: torch.optim.Optimizer, closure=None):
        """``mask_gradients()``, ``optimizer.step()``, ``restore_unselected()``; returns the step's result."""
        self.mask_gradients()
        result = optimizer.step() if closure is None else optimizer.step(closure)
        self.restore_unselected()
        return result

    # ---------------------------------------------------------------------------------------------- utilities
    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Gradient hooks pass gradients through unchanged inside this block (e.g. while scoring weights)."""
        previous = self._hooks_active
        self._hooks_active = False
        try:
            yield
        finally:
            self._hooks_active = previous

    def missing_from(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Names of (partly or fully) selected parameters that ``optimizer`` does not hold."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [n for n in (*self._partial, *sorted(self._full)) if id(self._params[n]) not in held]

    @property
    def partly_selected(self) -> list[str]:
        return list(self._partial)

    @property
    def fully_selected(self) -> list[str]:
        return sorted(self._full)

    def _clear(self) -> None:
        """Put back every unselected entry of an installed mask, then drop its hooks, snapshots and bookkeeping."""
        if self._installed:
            self.restore_unselected()
        self._remove_hooks()
        self._partial.clear()
        self._snapshots.clear()
        self._full.clear()
        self._unselected.clear()

    def remove(self) -> None:
        """Restore unselected entries, remove hooks and snapshots, and restore the original ``requires_grad``."""
        self._clear()
        for name, flag in self._original_requires_grad.items():
            self._params[name].requires_grad_(flag)
        self._installed = False

    def __enter__(self) -> MaskedParameterGuard:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# ---------------------------------------------------------------------------------------------------------- audit


def natural_range(tensor: torch.Tensor, bound: float) -> tuple[float, float]:
    """``median -/+ bound x robust std`` of a tensor's entries (robust std: 1.4826 x the median absolute deviation,
    which equals the standard deviation of a normal distribution): the range a bounded update keeps weights in."""
    flat = tensor.detach().float().reshape(-1)
    median = flat.median()
    scale = 1.4826 * (flat - median).abs().median()
    return float(median - bound * scale), float(median + bound * scale)


def bit_view(t: torch.Tensor) -> torch.Tensor:
    """An integer view of a tensor's bytes, so that comparisons are bitwise (NaN == NaN, -0.0 != 0.0)."""
    t = t.detach()
    int_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
    if t.is_floating_point() and int_dtype is not None:
        return t.contiguous().view(int_dtype)
    return t


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of ``model.state_dict()`` (parameters and buffers), for :func:`changed_entries`."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed_entries(
    model_before_state: Mapping[str, torch.Tensor],
    model_after: nn.Module | Mapping[str, torch.Tensor],
    include_unchanged: bool = False,
) -> dict[str, int]:
    """Number of bitwise-changed entries per tensor of ``model_before_state`` (changed ones only by default)."""
    after = model_after.state_dict() if isinstance(model_after, nn.Module) else model_after
    out: dict[str, int] = {}
    for name, before in model_before_state.items():
        if name not in after:
            raise KeyError(f"{name!r} missing from the model after")
        now = after[name]
        if before.shape != now.shape or before.dtype != now.dtype:
            raise ValueError(
                f"{name!r} changed shape or dtype: {tuple(before.shape)}/{before.dtype} -> "
                f"{tuple(now.shape)}/{now.dtype}"
            )
        count = int((bit_view(before) != bit_view(now.to(before.device))).sum())
        if count or include_unchanged:
            out[name] = count
    return out
