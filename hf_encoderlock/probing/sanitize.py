"""Data-free weight sanitisation: what an attacker does to a released encoder with nothing but its weights.

An attacker who knows the method knows that a lock changes a few weight entries, and that large changes tend to
stand out of their tensor's distribution. Each sanitiser below takes a copy of the encoder and edits every weight
matrix or kernel (parameters named ``*weight`` with two or more dimensions: what a lock may select) per tensor, using
only that tensor's own statistics: no victim, no mask, no data. The attacker then probes the sanitised copy; the
strength of each sanitiser is chosen on the attacker's validation split (:mod:`hf_encoderlock.probing.adaptive`).

Robust statistics are per tensor: the median and the median absolute deviation scaled by 1.4826 (so that it equals
the standard deviation of a normal distribution). A tensor whose MAD is zero is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

MAD_TO_STD = 1.4826  # the MAD of a normal distribution times this is its standard deviation
# Down to 2.5: an attacker who knows a lock's weight bound (EncoderLockConfig.weight_bound) looks just inside it.
# Every grid lists the gentlest edit first: when validation cannot tell strengths apart, the attacker keeps the first.
DEFAULT_Z_THRESHOLDS = (6.0, 4.0, 2.5)
# A value held by this many times as many entries as its tensor's typical value is a pile-up: what clamping updates to
# a bound leaves (float32 weights trained from random values share no value; a half-precision tensor's common values
# near its median repeat a handful of times, which the multiple absorbs).
PILED_UP_FACTOR = 4.0


class SanitizeError(ValueError):
    """A sanitiser asked for with an unknown name or an unusable strength."""


def sanitizable_weights(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every floating-point weight matrix or kernel: the entries a lock may have changed."""
    for name, param in module.named_parameters():
        if name.rsplit(".", 1)[-1].endswith("weight") and param.dim() >= 2 and param.is_floating_point():
            yield name, param


def robust_scale(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(median, robust std)`` of a tensor's entries (the robust std is 1.4826 x MAD)."""
    flat = tensor.detach().float().reshape(-1)
    median = flat.median()
    return median, MAD_TO_STD * (flat - median).abs().median()


def robust_z(tensor: torch.Tensor) -> torch.Tensor:
    """Every entry's distance from its tensor's median in robust standard deviations (zeros when the MAD is 0)."""
    median, scale = robust_scale(tensor)
    if float(scale) == 0.0:
        return torch.zeros_like(tensor, dtype=torch.float32)
    return (tensor.detach().float() - median) / scale


def count_outliers(module: nn.Module, threshold: float = 6.0) -> dict[str, int]:
    """Per weight tensor, how many entries lie more than ``threshold`` robust standard deviations from its median."""
    return {name: int((robust_z(param).abs() > threshold).sum()) for name, param in sanitizable_weights(module)}


def count_piled_up(module: nn.Module, factor: float | None = None) -> dict[str, int]:
    """Per weight tensor, how many entries sit on a value repeated ``factor`` (default: the ``reset_piled_up``
    sanitiser's) times as often as the tensor's typical value (:func:`piled_up`)."""
    factor = PILED_UP_FACTOR if factor is None else factor
    return {name: int(piled_up(param, factor).sum()) for name, param in sanitizable_weights(module)}


def telltale(counts: dict[str, int], original: dict[str, int] | None) -> list[str]:
    """The tensors of ``counts`` (per-tensor counts of outliers or of piled-up entries in a locked encoder) holding
    more than twice the original's count: the "no tell-tale weights" rule of the audit and the adaptive report. With
    the original's counts unknown (None), every tensor holding any."""
    return [name for name, n in counts.items() if n > (2 * original.get(name, 0) if original is not None else 0)]


# ------------------------------------------------------------------------------------------- the sanitisers
def reset_outliers(tensor: torch.Tensor, z: float, generator: torch.Generator) -> torch.Tensor:
    """Entries beyond ``z`` robust standard deviations set to the tensor's median."""
    median, _ = robust_scale(tensor)
    return torch.where(robust_z(tensor).abs() > z, median.to(tensor.dtype), tensor)


def clip_outliers(tensor: torch.Tensor, z: float, generator: torch.Generator) -> torch.Tensor:
    """Entries clipped to the median plus or minus ``z`` robust standard deviations."""
    median, scale = robust_scale(tensor)
    if float(scale) == 0.0:
        return tensor.clone()
    return tensor.clamp(float(median - z * scale), float(median + z * scale))


def prune_largest(tensor: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """The ``share`` of entries with the largest magnitude set to zero (at least one entry)."""
    flat = tensor.reshape(-1)
    count = max(1, int(round(share * flat.numel())))
    pruned = flat.clone()
    pruned[flat.abs().topk(count).indices] = 0
    return pruned.reshape(tensor.shape)


def add_noise(tensor: torch.Tensor, relative_std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with ``relative_std`` times the tensor's robust standard deviation."""
    _, scale = robust_scale(tensor)
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
    return tensor + noise * float(relative_std * scale)


def requantize_int8(tensor: torch.Tensor, percentile: float, generator: torch.Generator) -> torch.Tensor:
    """Symmetric per-tensor int8 round trip, the scale set by the ``percentile`` of the magnitudes (100: absmax)."""
    magnitudes = tensor.detach().float().abs().reshape(-1)
    limit = float(torch.quantile(magnitudes, percentile / 100.0)) if percentile < 100 else float(magnitudes.max())
    if limit == 0.0:
        return tensor.clone()
    step = limit / 127.0
    return (torch.round(tensor.float() / step).clamp(-127, 127) * step).to(tensor.dtype)


def piled_up(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """Where ``tensor``'s entries sit on a value that repeats at least ``factor`` times as often as its values
    typically do (the median multiplicity of its distinct values, 1 for float32 weights trained from noise), zero
    excepted: a clamp or a projection onto a bound leaves many entries on the very same value, training does not."""
    flat = tensor.detach().reshape(-1)
    _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    typical = float(counts.float().median())
    return ((counts[inverse] >= factor * typical) & (flat != 0)).reshape(tensor.shape)


def reset_piled_up(tensor: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Entries on a value repeated ``factor`` times as often as the tensor's typical value set to its median."""
    median, _ = robust_scale(tensor)
    return torch.where(piled_up(tensor, factor), median.to(tensor.dtype), tensor)


@dataclass(frozen=True)
class Sanitizer:
    """A named data-free weight edit and the strengths the attacker tries."""

    name: str
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
    strengths: tuple[float, ...]
    strength_name: str
    description: str


SANITIZERS: dict[str, Sanitizer] = {
    s.name: s
    for s in (
        Sanitizer(
            "reset_outliers",
            reset_outliers,
            DEFAULT_Z_THRESHOLDS,
            "z",
            "entries beyond z robust std of their tensor's median reset to the median",
        ),
        Sanitizer(
            "clip_outliers",
            clip_outliers,
            DEFAULT_Z_THRESHOLDS,
            "z",
            "entries clipped to median +/- z robust std",
        ),
        Sanitizer(
            "reset_piled_up",
            reset_piled_up,
            (PILED_UP_FACTOR,),
            "factor",
            "entries on a value repeated this many times as often as the tensor's typical value (a bound's clamp) "
            "reset to the median",
        ),
        Sanitizer(
            "prune_largest",
            prune_largest,
            (1e-3, 1e-2),
            "share",
            "each tensor's largest-magnitude entries (this share) set to zero",
        ),
        Sanitizer(
            "gaussian_noise",
            add_noise,
            (0.05,),
            "relative_std",
            "Gaussian noise of this many robust std added to every entry",
        ),
        Sanitizer(
            "int8_requantize",
            requantize_int8,
            (100.0,),
            "percentile",
            "per-tensor symmetric int8 round trip, scale from this percentile of |w| (100: absmax)",
        ),
    )
}


def sanitize_module(module: nn.Module, sanitizer: str, strength: float, seed: int = 0) -> nn.Module:
    """A deep copy of ``module`` with ``sanitizer`` applied at ``strength`` to every weight matrix or kernel.

    The input is never modified. ``seed`` fixes the noise of ``gaussian_noise`` (the others are deterministic).
    """
    if sanitizer not in SANITIZERS:
        raise SanitizeError(f"unknown sanitiser {sanitizer!r}; choose one of {sorted(SANITIZERS)}")
    if not strength > 0:
        raise SanitizeError(f"sanitiser {sanitizer!r} needs a positive strength, got {strength}")
    edit = SANITIZERS[sanitizer].apply
    copied = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sanitizable_weights(copied):
            param.copy_(edit(param.detach(), float(strength), generator))
    if hasattr(copied, "name"):
        copied.name = f"{module.name} [{sanitizer} {strength:g}]"
    return copied
