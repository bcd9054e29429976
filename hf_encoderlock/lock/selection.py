"""Domain-aware weight selection for EncoderLock.

Pipeline (one selection round)::

    candidates = select_candidate_parameters(encoder)
    stats_p = accumulate_gradient_stats(candidates, prohibited_loss_closures)
    stats_a = accumulate_gradient_stats(candidates, authorized_loss_closures)
    stats_p, stats_a = sync_gradient_stats(stats_p), sync_gradient_stats(stats_a)  # multi-process only
    scores = compute_scores(candidates, stats_p, stats_a, "gradient_ratio")
    new = select_top_weights(scores, num_layers=M, num_weights=N, existing_mask=mask)
    mask = sync_mask_across_processes(merge_masks(mask, new))

A *mask* is a ``dict`` mapping qualified parameter names (as in ``model.named_parameters()``) to boolean tensors
of the parameter's shape; ``True`` marks a selected (trainable) entry. Parameters absent from a mask have no
selected entry.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

Mask = dict[str, torch.Tensor]

__all__ = [
    "DEFAULT_EXCLUDE_PATTERNS",
    "PATCH_EMBEDDING_BLOCK",
    "ScoreFunction",
    "GradMoments",
    "GradientStats",
    "Mask",
    "SCORE_FUNCTIONS",
    "accumulate_gradient_stats",
    "block_index",
    "compute_scores",
    "fisher_ratio",
    "gradient_ratio",
    "load_mask",
    "magnitude_gate_mask",
    "prohibited_gradient",
    "reachable_scores",
    "mask_stats",
    "merge_masks",
    "save_mask",
    "select_candidate_parameters",
    "select_top_weights",
    "sum_across_processes",
    "sync_gradient_stats",
    "sync_mask_across_processes",
    "sync_scores",
    "taylor",
]

# --------------------------------------------------------------------------------------------------------------
# Candidate parameters
# --------------------------------------------------------------------------------------------------------------

#: Classifier / pooling heads that are not part of the feature extractor (regexes searched in the parameter name).
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (
    r"(?:^|\.)(?:classifier|head|heads|lm_head|pooler|fc_norm)(?:\.|$)",
    r"^fc\.",  # torchvision-style top-level classifier
)

# The first integer that follows a block-container segment: ``layers.3``, ``layer.3``, ``blocks.3``,
# ``stages.3``, ``resblocks.3``, ``layer3`` (torchvision ResNet), ``encoder_layer_3`` (torchvision ViT).
_BLOCK_RE = re.compile(r"(?:^|[._])(?:layers?|blocks?|stages?|resblocks)[._]?(\d+)(?=\.|$)")
_EMBED_PREFIXES = ("embed", "patch_embed", "stem", "conv_stem")
PATCH_EMBEDDING_BLOCK = -1


def block_index(name: str, block_pattern: str | re.Pattern[str] | None = None) -> int | None:
    """Block index of a qualified parameter name, or ``None`` when it belongs to no block.

    The index is the integer after the *outermost* block container (``layers.``, ``layer.``, ``blocks.``,
    ``stages.``, ``resblocks.``, ``layerK``); for hierarchical models (Swin, ConvNeXt, ResNet) it is the stage.
    Parameters outside any block whose name has a segment starting with ``embed``/``patch_embed``/``stem``
    (the patch embedding or convolutional stem) get block ``-1``. ``block_pattern`` (a regex with one group
    capturing the integer) replaces the built-in rule.
    """
    regex = _BLOCK_RE if block_pattern is None else re.compile(block_pattern)
    found = regex.search(name)
    if found is not None:
        return int(found.group(1))
    segments = name.split(".")[:-1]
    if any(seg.startswith(_EMBED_PREFIXES) for seg in segments):
        return PATCH_EMBEDDING_BLOCK
    return None


def _type_matches(module: nn.Module, module_types: Sequence[str | type]) -> bool:
    names = {t for t in module_types if isinstance(t, str)}
    classes = tuple(t for t in module_types if isinstance(t, type))
    if classes and isinstance(module, classes):
        return True
    return any(cls.__name__ in names for cls in type(module).__mro__)


def select_candidate_parameters(
    model: nn.Module,
    module_types: Sequence[str | type] = ("Linear", "Conv2d"),
    name_patterns: Sequence[str] | None = None,
    block_indices: Sequence[int] | None = None,
    include_patch_embedding: bool = True,
    exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE_PATTERNS,
    block_pattern: str | None = None,
) -> dict[str, nn.Parameter]:
    """Weight matrices / kernels that may be locked, keyed by qualified parameter name.

    Only the ``weight`` of modules whose type (or a base class) is named in ``module_types`` (strings or classes)
    is taken: never biases, norms, cls tokens or position-embedding tables. ``name_patterns`` (regexes, any
    match via ``re.search``) narrows the choice; names matching ``exclude_patterns`` (classifier / pooler heads by
    default) are dropped. ``block_indices`` keeps only the given blocks (see :func:`block_index`; the patch
    embedding / stem counts as block ``-1``, parameters outside any block are dropped when it is given).
    ``include_patch_embedding=False`` drops block ``-1``. Raises ``ValueError`` when nothing matches.
    """
    includes = [re.compile(p) for p in name_patterns] if name_patterns else None
    excludes = [re.compile(p) for p in exclude_patterns]
    wanted_blocks = None if block_indices is None else {int(b) for b in block_indices}
    seen: set[int] = set()
    out: dict[str, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not _type_matches(module, module_types):
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        if id(weight) in seen:  # tied weights: keep the first name only
            continue
        if includes is not None and not any(p.search(name) for p in includes):
            continue
        if any(p.search(name) for p in excludes):
            continue
        block = block_index(name, block_pattern)
        if block == PATCH_EMBEDDING_BLOCK and not include_patch_embedding:
            continue
        if wanted_blocks is not None and block not in wanted_blocks:
            continue
        seen.add(id(weight))
        out[name] = weight
    if not out:
        raise ValueError(
            f"No candidate parameters in {type(model).__name__} for module_types={list(module_types)}, "
            f"name_patterns={name_patterns}, block_indices={block_indices}, "
            f"include_patch_embedding={include_patch_embedding}, exclude_patterns={list(exclude_patterns)}."
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# Gradient statistics
# --------------------------------------------------------------------------------------------------------------


class GradMoments(NamedTuple):
    """Per-entry gradient moments of one parameter over the scoring batches (float32)."""

    mean: torch.Tensor  #: mean over batches of the batch gradient (= gradient of the mean scoring loss)
    sq_mean: torch.Tensor  #: mean over batches of the squared batch gradient (empirical Fisher proxy)


@dataclass
class GradientStats:
    """Sums of per-batch gradients and squared gradients for a set of parameters (float32)."""

    grad_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    sq_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    num_batches: int = 0

    def moments(self, name: str) -> GradMoments:
        """Mean gradient and mean squared gradient of parameter ``name``."""
        if self.num_batches <= 0:
            raise ValueError("GradientStats holds no batch: accumulate some losses first.")
        return GradMoments(self.grad_sum[name] / self.num_batches, self.sq_sum[name] / self.num_batches)


def accumulate_gradient_stats(
    params: Mapping[str, torch.Tensor],
    losses: Iterable[Callable[[], torch.Tensor]],
    stats: GradientStats | None = None,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> GradientStats:
    """Accumulate per-batch gradients of ``params`` for each loss closure (each first passed through
    ``transform(name, gradient)`` when given).

    Each closure runs the forward pass and returns a scalar loss (one batch of one domain). Gradients come from
    ``torch.autograd.grad``: no ``.grad`` attribute is touched, so an optimizer's accumulated gradients are left
    alone. ``requires_grad`` is switched on for ``params`` while closures run and restored afterwards (frozen
    parameters can be scored). A parameter that the loss does not reach gets a zero gradient. The caller sets
    train/eval mode; pass the unwrapped module (not a DDP wrapper) and, when a ``MaskedParameterGuard`` is
    installed, run inside ``guard.suspended()`` so gradient hooks do not mask the scores.
    """
    stats = GradientStats() if stats is None else stats
    names = list(params)
    tensors = [params[n] for n in names]
    previous = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(True)
        for closure in losses:
            if not callable(closure):
                raise TypeError("losses must be an iterable of zero-argument callables returning a scalar loss")
            with torch.enable_grad():
                loss = closure()
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for name, tensor, grad in zip(names, tensors, grads):
                g = torch.zeros_like(tensor, dtype=torch.float32) if grad is None else grad.detach().float()
                if transform is not None:
                    g = transform(name, g)
                if name in stats.grad_sum:
                    stats.grad_sum[name].add_(g)
                    stats.sq_sum[name].add_(g * g)
                else:
                    stats.grad_sum[name] = g.clone()
                    stats.sq_sum[name] = g * g
            stats.num_batches += 1
    finally:
        for t, flag in zip(tensors, previous):
            t.requires_grad_(flag)
    return stats


# --------------------------------------------------------------------------------------------------------------
# Score functions: fn(weight, prohibited, authorized, eps) -> scores (float32, weight's shape)
# --------------------------------------------------------------------------------------------------------------

ScoreFunction = Callable[[torch.Tensor, GradMoments, GradMoments, float], torch.Tensor]


def gradient_ratio(weight: torch.Tensor, prohibited: GradMoments, authorized: GradMoments, eps: float) -> torch.Tensor:
    """Paper score ``|dL_P/dw| / (|dL_A/dw| + eps)``.

    ``dL/dw`` is the gradient of the mean loss over the scoring batches, i.e. the per-batch gradients are
    averaged *before* the absolute value (as the reference sums them before ``abs``; averaging instead of summing
    only makes the ratio independent of unequal batch counts per domain).
    """
    return prohibited.mean.abs() / (authorized.mean.abs() + eps)


def fisher_ratio(weight: torch.Tensor, prohibited: GradMoments, authorized: GradMoments, eps: float) -> torch.Tensor:
    """``E[g_P^2] / (E[g_A^2] + eps)`` with the expectation over scoring batches (per-batch empirical Fisher)."""
    return prohibited.sq_mean / (authorized.sq_mean + eps)


def taylor(weight: torch.Tensor, prohibited: GradMoments, authorized: GradMoments, eps: float) -> torch.Tensor:
    """First-order Taylor saliency ratio ``|w * g_P| / (|w * g_A| + eps)`` (mean gradients)."""
    w = weight.detach().float()
    return (w * prohibited.mean).abs() / ((w * authorized.mean).abs() + eps)


def prohibited_gradient(
    weight: torch.Tensor, prohibited: GradMoments, authorized: GradMoments, eps: float
) -> torch.Tensor:
    """``|dL_P/dw|`` alone (mean gradient): how fast the prohibited term moves per unit of the weight, whatever the
    authorized term does (a projection, when on, has already removed the part of the gradient that would move the
    authorized features)."""
    return prohibited.mean.abs()


SCORE_FUNCTIONS: dict[str, ScoreFunction] = {
    "gradient_ratio": gradient_ratio,
    "fisher_ratio": fisher_ratio,
    "taylor": taylor,
    "prohibited_gradient": prohibited_gradient,
}


def compute_scores(
    params: Mapping[str, torch.Tensor],
    prohibited: GradientStats,
    authorized: GradientStats,
    score_fn: str | ScoreFunction = "gradient_ratio",
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """Scores (float32, one tensor per parameter, same shape) from the two domains' gradient statistics."""
    if isinstance(score_fn, str):
        if score_fn not in SCORE_FUNCTIONS:
            raise KeyError(f"Unknown score function {score_fn!r}; known: {sorted(SCORE_FUNCTIONS)}")
        score_fn = SCORE_FUNCTIONS[score_fn]
    out = {}
    for name, weight in params.items():
        w = weight.detach()
        p_m, a_m = prohibited.moments(name), authorized.moments(name)
        out[name] = score_fn(w, p_m, a_m, eps).float().reshape(w.shape)
    return out


def reachable_scores(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    prohibited: GradientStats,
    ranges: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    lowers_prohibited: bool = True,
) -> dict[str, torch.Tensor]:
    """Each score times its weight's room: how far its bounded range (``ranges[name]`` = per-entry low, high) lets
    it move in the direction the update takes it on the prohibited term: against the mean prohibited gradient when
    the update lowers that term (``lowers_prohibited``), along it when the update raises it.

    Under a bound, a weight's first-order effect on the prohibited term is its gradient times that room, not its
    gradient alone: a weight with a steep gradient but already at its bound can change nothing, and an unbounded
    lock's favourite (a tiny gradient, moved very far) is worth little once the move is capped."""
    out = {}
    for name, score in scores.items():
        w = weights[name].detach().float()
        low, high = (bound.to(w.device).float() for bound in ranges[name])
        moves_down = (prohibited.moments(name).mean.to(w.device) > 0) == lowers_prohibited
        room = torch.where(moves_down, w - low, high - w).clamp(min=0.0)
        out[name] = score.float() * room.reshape(score.shape)
    return out


def row_scores(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every entry of a weight matrix or kernel scored by its output row's mean score (non-finite entries count as
    0), so that :func:`select_top_weights` takes whole rows (ties go to the lower flat index, i.e. row by row).
    One-dimensional tensors keep their scores."""
    out = {}
    for name, score in scores.items():
        if score.dim() < 2:
            out[name] = score
            continue
        finite = torch.nan_to_num(score.float(), nan=0.0, posinf=0.0, neginf=0.0)
        out[name] = finite.flatten(1).mean(1).view(-1, *([1] * (score.dim() - 1))).expand_as(score).contiguous()
    return out


# --------------------------------------------------------------------------------------------------------------
# Top-M layers, then top-N weights
# --------------------------------------------------------------------------------------------------------------


def magnitude_gate_mask(weights: Mapping[str, torch.Tensor], min_abs: float) -> Mask:
    """Eligibility masks ``|w| >= min_abs`` (``True`` = may be selected)."""
    return {name: w.detach().abs() >= min_abs for name, w in weights.items()}


def _eligible_scores(
    name: str,
    score: torch.Tensor,
    existing_mask: Mapping[str, torch.Tensor] | None,
    gate: Mapping[str, torch.Tensor] | None,
    exclude_selected: bool,
) -> torch.Tensor:
    """Flat float scores with ineligible entries (NaN, gated out, already selected) set to ``-inf``."""
    flat = score.detach().reshape(-1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    flat = flat.masked_fill(torch.isnan(flat), -math.inf)
    if gate is not None:
        if name not in gate:
            raise KeyError(f"magnitude_gate has no entry for {name!r}")
        g = gate[name].to(device=flat.device, dtype=torch.bool)
        if g.numel() != flat.numel():
            raise ValueError(f"magnitude_gate[{name!r}] has {g.numel()} entries, scores have {flat.numel()}")
        flat = flat.masked_fill(~g.reshape(-1), -math.inf)
    if exclude_selected and existing_mask is not None and name in existing_mask:
        m = existing_mask[name].to(device=flat.device, dtype=torch.bool)
        if m.numel() != flat.numel():
            raise ValueError(f"existing_mask[{name!r}] has {m.numel()} entries, scores have {flat.numel()}")
        flat = flat.masked_fill(m.reshape(-1), -math.inf)
    return flat


def select_top_weights(
    scores: Mapping[str, torch.Tensor],
    num_layers: int,
    num_weights: int,
    existing_mask: Mapping[str, torch.Tensor] | None = None,
    magnitude_gate: Mapping[str, torch.Tensor] | float | None = None,
    exclude_selected: bool = True,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> Mask:
    """Select ``num_weights`` new entries inside the ``num_layers`` best layers; returns this round's mask only.

    An entry is *eligible* when its score is not NaN / ``-inf``, it passes the magnitude gate (a dict of
    eligibility masks, or a float ``min_abs`` applied to ``|weights|``, which must then be given) and, with
    ``exclude_selected`` (default), it is not already in ``existing_mask`` (so each round adds ``num_weights``
    new entries; OR the result into the running mask with :func:`merge_masks`). Layers are ranked by their largest
    eligible score; the top ``num_layers`` are kept. Their flat eligible scores are concatenated (ineligible
    entries at ``-inf``), the top ``num_weights`` are taken and mapped back to (layer, index) through the layer
    offsets. With fewer eligible entries than asked, all eligible entries are taken. Ties are broken
    deterministically: layers and entries earlier in ``scores``' order (then lower flat index) win.
    The result maps each layer holding a selected entry to a bool tensor of its shape, on the score's device.
    """
    if num_layers < 0 or num_weights < 0:
        raise ValueError("num_layers and num_weights must be >= 0")
    if isinstance(magnitude_gate, (int, float)) and not isinstance(magnitude_gate, bool):
        if weights is None:
            raise ValueError("A float magnitude_gate needs `weights` to compare |w| with.")
        gate: Mapping[str, torch.Tensor] | None = magnitude_gate_mask(
            {n: weights[n] for n in scores}, float(magnitude_gate)
        )
    else:
        gate = magnitude_gate  # type: ignore[assignment]
    if num_layers == 0 or num_weights == 0 or not scores:
        return {}

    names = list(scores)

    def eligible(i: int) -> torch.Tensor:
        return _eligible_scores(names[i], scores[names[i]], existing_mask, gate, exclude_selected)

    layer_max = []
    for i in range(len(names)):  # one layer at a time: peak memory stays at one layer's copy
        flat = eligible(i)
        if flat.numel() and bool((flat > -math.inf).any()):
            layer_max.append((float(flat.max()), i))
    # Highest max first; equal maxima: earlier layer first.
    layer_max.sort(key=lambda item: (-item[0], item[1]))
    chosen = sorted(i for _, i in layer_max[:num_layers])  # concatenate in `scores` order
    if not chosen:
        return {}

    flats = {i: eligible(i) for i in chosen}
    device = flats[chosen[0]].device
    dtype = torch.float64 if any(f.dtype == torch.float64 for f in flats.values()) else torch.float32
    parts = [flats[i].to(device=device, dtype=dtype) for i in chosen]
    del flats
    flat_all = torch.cat(parts)
    sizes = torch.tensor([p.numel() for p in parts], device=device)
    ends = torch.cumsum(sizes, 0)
    starts = ends - sizes

    eligible = int((flat_all > -math.inf).sum())
    k = min(num_weights, eligible)
    if k == 0:
        return {}
    threshold = torch.topk(flat_all, k, sorted=False).values.min()
    above = torch.nonzero(flat_all > threshold).reshape(-1)
    ties = torch.nonzero(flat_all == threshold).reshape(-1)[: k - above.numel()]
    picked = torch.cat([above, ties])

    layer_of = torch.searchsorted(ends, picked, right=True)
    local = picked - starts[layer_of]
    out: Mask = {}
    for j, i in enumerate(chosen):
        idx = local[layer_of == j]
        if idx.numel() == 0:
            continue
        score = scores[names[i]]
        m = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        m[idx.to(score.device)] = True
        out[names[i]] = m.reshape(score.shape)
    return out


# --------------------------------------------------------------------------------------------------------------
# Mask helpers
# --------------------------------------------------------------------------------------------------------------


def merge_masks(*masks: Mapping[str, torch.Tensor] | None) -> Mask:
    """Element-wise OR of masks (``None`` skipped); returns new tensors, keys in first-seen order."""
    out: Mask = {}
    for mask in masks:
        if not mask:
            continue
        for name, m in mask.items():
            m = m.to(torch.bool)
            if name in out:
                if out[name].shape != m.shape:
                    raise ValueError(f"Mask shapes differ for {name!r}: {tuple(out[name].shape)} vs {tuple(m.shape)}")
                out[name] = out[name] | m.to(out[name].device)
            else:
                out[name] = m.clone()
    return out


def mask_stats(
    mask: Mapping[str, torch.Tensor],
    model: nn.Module,
    candidates: Mapping[str, torch.Tensor] | Iterable[str] | None = None,
) -> dict:
    """Counts for a mask: ``count``, ``num_parameters`` / ``fraction_of_parameters`` (all parameters of
    ``model``), ``num_candidates`` / ``fraction_of_candidates`` (default candidates of ``model`` unless given;
    ``None`` when the model has none), ``num_layers`` and ``per_layer`` (name -> selected count, non-zero only)."""
    params = dict(model.named_parameters())
    unknown = [n for n in mask if n not in params]
    if unknown:
        raise KeyError(f"Mask names not in the model: {unknown[:5]}")
    per_layer = {n: int(m.sum()) for n, m in mask.items() if int(m.sum())}
    count = sum(per_layer.values())
    total = sum(p.numel() for p in model.parameters())
    if candidates is None:
        try:
            candidates = select_candidate_parameters(model)
        except ValueError:
            candidates = None
    if candidates is not None:
        names = list(candidates)
        num_candidates = sum(params[n].numel() for n in names if n in params)
    else:
        num_candidates = None
    return {
        "count": count,
        "num_parameters": total,
        "fraction_of_parameters": count / total if total else 0.0,
        "num_candidates": num_candidates,
        "fraction_of_candidates": (count / num_candidates) if num_candidates else None,
        "num_layers": len(per_layer),
        "per_layer": per_layer,
    }


def save_mask(mask: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a mask as safetensors (bool stored as uint8)."""
    from safetensors.torch import save_file

    tensors = {n: m.detach().to(device="cpu", dtype=torch.uint8).contiguous() for n, m in mask.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "content": "encoderlock-mask", "dtype": "bool"})


def load_mask(path: str | os.PathLike, device: str | torch.device = "cpu") -> Mask:
    """Read a mask written by :func:`save_mask`."""
    from safetensors.torch import load_file

    return {n: t.to(device=device, dtype=torch.bool) for n, t in load_file(str(path)).items()}


# --------------------------------------------------------------------------------------------------------------
# Multi-process consistency (no-ops unless torch.distributed is initialized)
# --------------------------------------------------------------------------------------------------------------


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _comm_device() -> torch.device:
    backend = str(torch.distributed.get_backend())
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_same_layout(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise on every rank (never on some ranks only) when names or shapes differ across ranks."""
    dist = torch.distributed
    layout = [(n, tuple(t.shape)) for n, t in tensors.items()]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, layout)
    if any(g != gathered[0] for g in gathered):
        raise ValueError(f"{what} differ across processes (names/shapes): cannot reduce them.")


def _all_reduce_sum(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dist = torch.distributed
    device = _comm_device()
    out = {}
    for name, t in tensors.items():
        buf = t.detach().to(device=device, dtype=torch.float32).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        out[name] = buf.to(t.device)
    return out


def sync_scores(scores: Mapping[str, torch.Tensor], op: str = "mean") -> dict[str, torch.Tensor]:
    """All-reduce score tensors (``"mean"`` or ``"sum"``) so every rank ranks the same values.

    Prefer :func:`sync_gradient_stats` before scoring (the exact statistics of all ranks' batches); this is for
    scores computed elsewhere. Returns ``scores`` unchanged when torch.distributed is not initialized.
    """
    if op not in ("mean", "sum"):
        raise ValueError("op must be 'mean' or 'sum'")
    if not _dist_active():
        return dict(scores)
    _check_same_layout(scores, "Scores")
    out = _all_reduce_sum(scores)
    if op == "mean":
        world = torch.distributed.get_world_size()
        out = {n: t / world for n, t in out.items()}
    return out


def sync_gradient_stats(stats: GradientStats) -> GradientStats:
    """Sum gradient statistics (and batch counts) over ranks; returns ``stats`` unchanged when not distributed."""
    if not _dist_active():
        return stats
    _check_same_layout(stats.grad_sum, "Gradient statistics")
    grad_sum = _all_reduce_sum(stats.grad_sum)
    sq_sum = _all_reduce_sum(stats.sq_sum)
    count = torch.tensor([float(stats.num_batches)], device=_comm_device())
    torch.distributed.all_reduce(count)
    return GradientStats(grad_sum, sq_sum, int(count.item()))


def sum_across_processes(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks (float32 on the wire); returns them unchanged when not distributed."""
    if not _dist_active():
        return dict(values)
    return _all_reduce_sum(values)


def sync_mask_across_processes(mask: Mapping[str, torch.Tensor], src: int = 0) -> Mask:
    """Broadcast rank ``src``'s mask so every rank ends with the same mask (names, shapes and entries).

    Tensors land on the device of the local tensor of the same name, else of any local tensor, else the CPU.
    Returns ``mask`` unchanged when torch.distributed is not initialized.
    """
    if not _dist_active():
        return dict(mask)
    dist = torch.distributed
    layout = [[(n, tuple(m.shape)) for n, m in mask.items()]]
    dist.broadcast_object_list(layout, src=src)
    device = _comm_device()
    total = sum(math.prod(shape) for _, shape in layout[0])
    if dist.get_rank() == src:
        flat = (
            torch.cat([m.detach().reshape(-1).to(device=device, dtype=torch.uint8) for m in mask.values()])
            if mask
            else torch.zeros(0, dtype=torch.uint8, device=device)
        )
    else:
        flat = torch.zeros(total, dtype=torch.uint8, device=device)
    if total:
        dist.broadcast(flat, src=src)
    fallback = next((m.device for m in mask.values()), torch.device("cpu"))
    out: Mask = {}
    offset = 0
    for name, shape in layout[0]:
        n = math.prod(shape)
        target = mask[name].device if name in mask else fallback
        out[name] = flat[offset : offset + n].reshape(shape).to(device=target, dtype=torch.bool)
        offset += n
    return out
