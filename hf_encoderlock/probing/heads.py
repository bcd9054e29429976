"""Fresh probe heads trained on frozen (cached) features: linear, MLP and kNN.

A whole hyper-parameter grid (learning rates x weight decays x seeds) is trained as ONE batched model: the weights
of every grid point are stacked and applied with ``bmm``, so a grid costs a few large matrix products per step
instead of a Python loop of tiny fits (Adam with per-grid-point learning rates and L2 penalties, cosine schedule,
mini-batches sliced from the cached feature tensor). Several independent datasets of equal shape (e.g. one training
subsample per seed) can be trained in the same batch with :func:`train_head_groups`.

Every head normalises its input with statistics of *its own* training data, as an attacker would: by default
linear and MLP heads whiten it (standardise, then ZCA-whiten with a Ledoit-Wolf-shrunk correlation matrix; encoder
features are often so badly conditioned that first-order training of a merely standardised probe stops far from the
optimum and overstates a lock), kNN standardises it. The statistics are buffers of the head, so
:attr:`TrainedHead.module` is callable on raw features. Each grid point keeps the weights of
its best validation epoch; callers pick a grid point by validation accuracy (:func:`best_head`), never by test
accuracy. Everything is deterministic for a seed.

The lock trainer's self-challenge reuses :func:`train_heads` to train adversary heads on the current encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

HEAD_KINDS = ("linear", "mlp", "knn")
GRADIENT_KINDS = ("linear", "mlp")
SCHEDULES = ("cosine", "constant")
NORMALIZATIONS = ("whiten", "standardize")


@dataclass
class HeadTrainingConfig:
    """Optimisation settings shared by the gradient-trained heads (linear and MLP)."""

    epochs: int = field(default=30, metadata={"help": "Maximum passes over the training data."})
    batch_size: int | None = field(
        default=256, metadata={"help": "Rows per optimiser step, sliced from the cached tensor; None = full batch."}
    )
    schedule: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule over the planned steps: 'cosine' or 'constant'."}
    )
    eval_every: int = field(default=1, metadata={"help": "Evaluate on the validation split every this many epochs."})
    patience: int | None = field(
        default=5,
        metadata={"help": "Stop once no grid point improved its validation accuracy for this many evaluations."},
    )
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam moment decay rates."})
    eps: float = field(default=1e-8, metadata={"help": "Adam denominator epsilon."})
    normalization: str = field(
        default="whiten",
        metadata={
            "help": "Input normalisation fit on each head's own training data: 'standardize' (per-feature mean/std) "
            "or 'whiten' (ZCA whitening with shrinkage; encoder features are often badly conditioned, and a "
            "first-order optimiser then under-fits: whitening lets a few epochs get close to the converged optimum)."
        },
    )
    knn_normalization: str = field(
        default="standardize",
        metadata={"help": "Normalisation before kNN's cosine similarity (whitening tends to hurt nearest neighbours)."},
    )
    whiten_shrinkage: float | None = field(
        default=None,
        metadata={
            "help": "Shrinkage of the correlation matrix towards the identity before whitening (0: full whitening, "
            "1: plain standardisation); None: the Ledoit-Wolf intensity, large for few samples, small for many."
        },
    )
    whiten_rank_tolerance: float = field(
        default=1e-9,
        metadata={"help": "Covariance directions with eigenvalue below this fraction of the largest are dropped."},
    )
    std_floor: float = field(
        default=1e-6, metadata={"help": "Features whose training std is below this are centred but not scaled."}
    )
    num_threads: int | None = field(
        default=1,
        metadata={
            "help": "torch intra-op threads while fitting (restored afterwards). Head tensors are small: extra threads "
            "mostly add synchronisation, and on a busy machine they slow fits down many times. None: leave as is."
        },
    )


@dataclass
class TrainedHead:
    """One trained grid point.

    Attributes:
        module: ``nn.Module`` mapping raw features ``(n, dim)`` to class scores ``(n, num_classes)``
            (input normalisation included as buffers).
        kind: ``"linear"``, ``"mlp"`` or ``"knn"``.
        val_accuracy: accuracy on the validation split at the kept epoch (or chosen ``k``).
        hyperparameters: e.g. ``lr``, ``weight_decay``, ``seed``, ``epoch``, ``hidden`` or ``k``.
    """

    module: nn.Module
    kind: str
    val_accuracy: float
    hyperparameters: dict[str, Any]

    def predict(self, features: Tensor) -> Tensor:
        """Predicted class ids."""
        return predict(self.module, features)


@dataclass
class HeadGroup:
    """One dataset a grid is trained on (features ``(n, dim)``, integer labels ``(n,)``) and its init seeds."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    seeds: tuple[int, ...] = (0,)


# ----------------------------------------------------------------------------------------------------- modules
class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics stored as buffers."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


class Whiten(nn.Module):
    """``(x - mean) @ matrix`` (standardisation and whitening in one matrix) with statistics stored as buffers."""

    def __init__(self, mean: Tensor, matrix: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("matrix", matrix.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) @ self.matrix


class KNNClassifier(nn.Module):
    """Cosine k-nearest-neighbour vote on standardised features; returns vote counts per class."""

    def __init__(self, train_x: Tensor, train_y: Tensor, k: int, num_classes: int, chunk_size: int = 4096) -> None:
        super().__init__()
        self.register_buffer("train_x", F.normalize(train_x.float(), dim=-1))
        self.register_buffer("train_y", train_y.long())
        self.k = int(k)
        self.num_classes = int(num_classes)
        self.chunk_size = chunk_size

    def forward(self, x: Tensor) -> Tensor:
        query = F.normalize(x.float(), dim=-1)
        k = min(self.k, self.train_x.shape[0])
        scores = []
        for chunk in query.split(self.chunk_size):
            sims, idx = (chunk @ self.train_x.T).topk(k, dim=-1)
            scores.append(_knn_votes(sims, self.train_y[idx], self.num_classes))
        return torch.cat(scores)


def _knn_votes(sims: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Vote counts (``..., num_classes``); ties broken by summed similarity (a tiny fractional bonus)."""
    one_hot = F.one_hot(labels, num_classes).float()
    votes = one_hot.sum(-2)
    bonus = (one_hot * (sims.unsqueeze(-1) + 1.0)).sum(-2) / (2.0 * labels.shape[-1] + 1.0)
    return votes + bonus


def _mlp_module(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def head_layout(module: nn.Module) -> list[str]:
    """The layer kinds of a linear or MLP head (an ``nn.Sequential`` of a normaliser, ``Linear`` and ``ReLU``), which
    with its ``state_dict`` is all :func:`head_from_layout` needs to rebuild it (checkpoints store no pickles)."""
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    kinds = [type(layer).__name__ for layer in layers]
    unknown = sorted(set(kinds) - set(_LAYOUT_BUILDERS))
    if unknown:
        raise ValueError(f"cannot describe a head with {unknown} layers; known: {sorted(_LAYOUT_BUILDERS)}")
    return kinds


def head_from_layout(layout: Sequence[str], state: dict[str, Tensor]) -> nn.Sequential:
    """The head described by :func:`head_layout` with the weights ``state`` (in eval mode, bit-identical outputs)."""
    layers = [_LAYOUT_BUILDERS[kind](state, f"{i}.") for i, kind in enumerate(layout)]
    module = nn.Sequential(*layers)
    module.load_state_dict(state, strict=True)
    return module.eval()


def _linear_like(state: dict[str, Tensor], prefix: str) -> nn.Linear:
    fan_out, fan_in = state[f"{prefix}weight"].shape
    return nn.utils.skip_init(nn.Linear, fan_in, fan_out)  # no random init: the global RNG stays untouched


_LAYOUT_BUILDERS = {
    "Standardize": lambda state, p: Standardize(state[f"{p}mean"], state[f"{p}std"]),
    "Whiten": lambda state, p: Whiten(state[f"{p}mean"], state[f"{p}matrix"]),
    "Linear": _linear_like,
    "ReLU": lambda state, p: nn.ReLU(),
}


# ---------------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def predict(module: nn.Module, features: Tensor, chunk_size: int = 8192) -> Tensor:
    """Class ids predicted by ``module`` (in eval mode, under ``no_grad``)."""
    was_training = module.training
    module.eval()
    try:
        return torch.cat([module(chunk).argmax(-1) for chunk in features.split(chunk_size)])
    finally:
        module.train(was_training)


def accuracy(predictions: Any, references: Any) -> float:
    """Fraction of ``predictions`` equal to ``references`` (class ids, arrays or CPU tensors); NaN when empty.

    The package's one accuracy: probes, attacks, the lock's own heads and ``make_compute_metrics`` all score with it.
    """
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions ({predictions.shape}) and references ({references.shape}) differ in length")
    if predictions.size == 0:
        return float("nan")
    return float((predictions == references).mean())


def head_accuracy(module: nn.Module, features: Tensor, labels: Tensor) -> float:
    """:func:`accuracy` of ``module`` on ``(features, labels)``, in float32: the head grid scores
    ``val_accuracy`` in float32 and the lock compares the two, so an equal count must give an equal number."""
    return float(np.float32(accuracy(predict(module, features).cpu(), labels.cpu())))


def best_head(heads: Sequence[TrainedHead]) -> TrainedHead:
    """The head with the highest validation accuracy (the first on ties)."""
    if not heads:
        raise ValueError("no heads to choose from")
    return max(heads, key=lambda head: head.val_accuracy)


@dataclass
class _Normalizer:
    """Per-group input normalisation: ``mean`` ``(G, 1, D)`` and either ``scale`` ``(G, 1, D)`` or ``matrix``
    ``(G, D, D)``."""

    mean: Tensor
    scale: Tensor | None = None
    matrix: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        centred = x - self.mean
        return torch.bmm(centred, self.matrix) if self.matrix is not None else centred * self.scale

    def module(self, group: int) -> nn.Module:
        if self.matrix is not None:
            return Whiten(self.mean[group, 0], self.matrix[group])
        return Standardize(self.mean[group, 0], 1.0 / self.scale[group, 0])


def _ledoit_wolf_shrinkage(z: Tensor) -> Tensor:
    """Ledoit-Wolf shrinkage intensity ``(G,)`` towards ``mu * I`` for centred data ``z`` ``(G, n, D)``."""
    n, dim = z.shape[1], z.shape[2]
    squared = z * z
    trace_terms = squared.sum(1) / n  # (G, D): diagonal of the sample covariance
    mu = trace_terms.sum(-1) / dim
    beta_sum = (squared.transpose(1, 2) @ squared).sum((1, 2))
    delta_sum = ((z.transpose(1, 2) @ z) ** 2).sum((1, 2)) / n**2
    beta = (beta_sum / n - delta_sum) / (dim * n)
    delta = (delta_sum - 2.0 * mu * trace_terms.sum(-1) + dim * mu**2) / dim
    beta = torch.minimum(beta, delta)
    return torch.where(delta > 0, beta / delta.clamp_min(1e-300), torch.zeros_like(delta))


def _fit_normalizer(x: Tensor, config: HeadTrainingConfig) -> _Normalizer:
    """Statistics of ``x`` (``(G, n, D)``) for ``config.normalization``.

    ``whiten``: standardise, then ZCA-whiten with the correlation matrix shrunk towards the identity (Ledoit-Wolf
    intensity unless ``whiten_shrinkage`` fixes it), so few samples fall back smoothly to plain standardisation.
    """
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {config.normalization!r}; choose one of {NORMALIZATIONS}")
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True, unbiased=False)
    std = torch.where(std < config.std_floor, torch.ones_like(std), std)
    if config.normalization == "standardize":
        return _Normalizer(mean, scale=1.0 / std)
    z = ((x - mean) / std).double()
    correlation = z.transpose(1, 2) @ z / x.shape[1]
    if config.whiten_shrinkage is None:
        alpha = _ledoit_wolf_shrinkage(z)
    else:
        alpha = torch.full((x.shape[0],), float(config.whiten_shrinkage), dtype=torch.float64)
    mu = torch.diagonal(correlation, dim1=1, dim2=2).mean(-1)
    eye = torch.eye(x.shape[2], dtype=torch.float64)
    shrunk = (1 - alpha).view(-1, 1, 1) * correlation + (alpha * mu).view(-1, 1, 1) * eye
    eigenvalues, vectors = torch.linalg.eigh(shrunk)
    eigenvalues = eigenvalues.clamp_min(0.0)
    keep = eigenvalues > config.whiten_rank_tolerance * eigenvalues.max(dim=-1, keepdim=True).values
    inverse_sqrt = torch.where(keep, eigenvalues.clamp_min(1e-300).rsqrt(), torch.zeros_like(eigenvalues))
    whitening = (vectors * inverse_sqrt.unsqueeze(1)) @ vectors.transpose(1, 2)
    matrix = whitening / std.double().transpose(1, 2)  # (x - mean) / std @ W == (x - mean) @ (diag(1/std) W)
    return _Normalizer(mean, matrix=matrix.float())


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` torch threads (``None``/0: unchanged), restoring the count afterwards."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _stack_groups(groups: Sequence[HeadGroup]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack equally shaped groups into ``(G, n, dim)`` / ``(G, n)`` tensors."""
    if not groups:
        raise ValueError("no groups to train on")
    shapes = {(tuple(g.train_x.shape), tuple(g.val_x.shape)) for g in groups}
    if len(shapes) != 1:
        raise ValueError(f"all groups must have equally shaped train and validation features, got {sorted(shapes)}")
    for group in groups:
        if group.train_x.dim() != 2 or group.train_x.shape[0] != group.train_y.shape[0]:
            raise ValueError("train_x must be (n, dim) with one label per row")
        if group.val_x.shape[0] != group.val_y.shape[0]:
            raise ValueError("val_x must have one label per row")
        if group.train_x.shape[0] == 0 or group.val_x.shape[0] == 0:
            raise ValueError("train and validation splits must be non-empty")
        if group.val_x.shape[1] != group.train_x.shape[1]:
            raise ValueError("train and validation features differ in dimension")
    train_x = torch.stack([g.train_x.float() for g in groups])
    train_y = torch.stack([g.train_y.long() for g in groups])
    val_x = torch.stack([g.val_x.float() for g in groups])
    val_y = torch.stack([g.val_y.long() for g in groups])
    return train_x, train_y, val_x, val_y


def _num_classes(groups: Sequence[HeadGroup], num_classes: int | None) -> int:
    seen = max(int(torch.cat([g.train_y, g.val_y]).max()) for g in groups) + 1
    if num_classes is None:
        return seen
    if num_classes < seen:
        raise ValueError(f"num_classes={num_classes} but labels go up to {seen - 1}")
    return num_classes


# ----------------------------------------------------------------------------------------- batched grid training
def _init_layers(sizes: Sequence[int], group_seeds: Sequence[Sequence[int]], per_seed: int) -> list[list[Tensor]]:
    """Stacked ``[weight (G, K, fan_in, fan_out), bias (G, K, 1, fan_out)]`` per layer, nn.Linear-style init.

    Grid points with the same seed share their initial weights (so the grid compares hyper-parameters, not luck).
    """
    cache: dict[int, list[tuple[Tensor, Tensor]]] = {}
    for seed in {int(s) for seeds in group_seeds for s in seeds}:
        generator = torch.Generator().manual_seed(seed)
        cache[seed] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            weight = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
            bias = (torch.rand(1, fan_out, generator=generator) * 2 - 1) * bound
            cache[seed].append((weight, bias))
    stacked = []
    for i in range(len(sizes) - 1):
        weights = torch.stack([torch.stack([cache[int(s)][i][0] for s in seeds]) for seeds in group_seeds])
        biases = torch.stack([torch.stack([cache[int(s)][i][1] for s in seeds]) for seeds in group_seeds])
        stacked.append(
            [
                weights.repeat_interleave(per_seed, dim=1).contiguous(),
                biases.repeat_interleave(per_seed, dim=1).contiguous(),
            ]
        )
    return stacked


def _grid_forward(x: Tensor, layers: Sequence[Sequence[Tensor]]) -> Tensor:
    """Scores ``(G, K, n, C)`` of every grid point on features ``x`` (``(G, n, dim)``, shared by the grid).

    The first layer of all K grid points is one ``bmm`` against their concatenated weights; later layers are a
    ``bmm`` over the flattened (group, grid point) axis.
    """
    groups, n, dim = x.shape
    weight, bias = layers[0]
    width = weight.shape[-1]
    per_group = weight.shape[1]
    stacked = weight.permute(0, 2, 1, 3).reshape(groups, dim, per_group * width)
    hidden = torch.bmm(x, stacked).view(groups, n, per_group, width).permute(0, 2, 1, 3) + bias
    for weight, bias in layers[1:]:
        flat = torch.relu(hidden).reshape(groups * per_group, n, hidden.shape[-1])
        out = torch.baddbmm(
            bias.reshape(groups * per_group, 1, -1), flat, weight.reshape(groups * per_group, *weight.shape[2:])
        )
        hidden = out.view(groups, per_group, n, -1)
    return hidden


def _grid_accuracy(x: Tensor, y: Tensor, layers: Sequence[Sequence[Tensor]]) -> Tensor:
    """Accuracy ``(G, K)`` of every grid point."""
    return (_grid_forward(x, layers).argmax(-1) == y.unsqueeze(1)).float().mean(-1)


def _epoch_batches(x: Tensor, y: Tensor, batch_size: int | None, generators: Sequence[torch.Generator]):
    """Shuffled ``(features, labels)`` mini-batches along the row axis, each group in its own seeded order (the
    whole set, unshuffled, when ``batch_size`` is None)."""
    n = x.shape[1]
    if batch_size is None or batch_size >= n:
        yield x, y
        return
    order = torch.stack([torch.randperm(n, generator=g) for g in generators])
    flat = (order + torch.arange(len(generators)).unsqueeze(1) * n).reshape(-1)  # index_select beats gather on CPU
    x = x.reshape(-1, x.shape[-1]).index_select(0, flat).view(x.shape)
    y = y.reshape(-1).index_select(0, flat).view(y.shape)
    for start in range(0, n, batch_size):
        yield x[:, start : start + batch_size], y[:, start : start + batch_size]


def _fit_grid(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    sizes: Sequence[int],
    group_seeds: Sequence[Sequence[int]],
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    config: HeadTrainingConfig,
) -> tuple[list[list[Tensor]], Tensor, Tensor]:
    """Adam with an L2 penalty on every (seed, lr, weight decay) grid point at once.

    Returns the best-validation-epoch layers, their validation accuracy ``(G, K)`` and the epoch they come from.
    """
    per_seed = len(lrs) * len(weight_decays)
    num_seeds = len(group_seeds[0])
    lr = torch.tensor([rate for rate in lrs for _ in weight_decays] * num_seeds).view(1, -1, 1, 1)
    wd = torch.tensor([w for _ in lrs for w in weight_decays] * num_seeds).view(1, -1, 1, 1)
    layers = _init_layers(sizes, group_seeds, per_seed)
    params = [p for layer in layers for p in layer]
    decays = [wd if i % 2 == 0 else torch.zeros_like(wd) for i in range(len(params))]  # no decay on biases
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    beta1, beta2 = config.betas

    best_layers = [[w.clone(), b.clone()] for w, b in layers]
    best_acc = _grid_accuracy(val_x, val_y, layers)
    best_epoch = torch.zeros_like(best_acc, dtype=torch.long)
    generators = [torch.Generator().manual_seed(int(seeds[0])) for seeds in group_seeds]
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {SCHEDULES}")
    batch = config.batch_size or train_x.shape[1]
    planned = config.epochs * math.ceil(train_x.shape[1] / batch)
    stale, step = 0, 0
    for epoch in range(1, config.epochs + 1):
        for batch_x, batch_y in _epoch_batches(train_x, train_y, config.batch_size, generators):
            for p in params:
                p.requires_grad_(True)
            scores = _grid_forward(batch_x, layers)
            labels = batch_y.unsqueeze(1).expand(scores.shape[:-1])
            # Sum over grid points of each point's mean loss: the points' gradients stay independent.
            loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1), reduction="sum")
            grads = torch.autograd.grad(loss / batch_x.shape[1], params)
            step += 1
            scale = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / planned)) if config.schedule == "cosine" else 1.0
            with torch.no_grad():
                for p, g, m, v, decay in zip(params, grads, exp_avg, exp_avg_sq, decays):
                    p.requires_grad_(False)
                    g = g + decay * p  # L2 penalty (weight_decay / 2) * ||W||^2 on weights, per grid point
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + config.eps)
                    p.sub_((lr * scale) * update)
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        with torch.no_grad():
            acc = _grid_accuracy(val_x, val_y, layers)
            improved = acc > best_acc
            if bool(improved.any()):
                stale = 0
                best_acc = torch.where(improved, acc, best_acc)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
                mask = improved.view(*improved.shape, 1, 1)
                for best, current in zip(best_layers, layers):
                    best[0] = torch.where(mask, current[0], best[0])
                    best[1] = torch.where(mask, current[1], best[1])
            else:
                stale += 1
                if config.patience is not None and stale >= config.patience:
                    break
    return best_layers, best_acc, best_epoch


def _gradient_heads(
    groups: Sequence[HeadGroup],
    kind: str,
    num_classes: int,
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    hidden: Sequence[int],
    config: HeadTrainingConfig,
) -> list[list[TrainedHead]]:
    group_seeds = [tuple(int(s) for s in g.seeds) for g in groups]
    if not group_seeds[0] or len({len(s) for s in group_seeds}) != 1:
        raise ValueError("all groups trained together must use the same (non-zero) number of seeds")
    train_x, train_y, val_x, val_y = _stack_groups(groups)
    normalizer = _fit_normalizer(train_x, config)
    hidden = tuple(int(h) for h in hidden) if kind == "mlp" else ()
    if kind == "mlp" and not hidden:
        raise ValueError("an MLP head needs at least one hidden layer (hidden=(width, ...))")
    sizes = (train_x.shape[-1], *hidden, num_classes)
    layers, val_acc, epochs = _fit_grid(
        normalizer(train_x), train_y, normalizer(val_x), val_y, sizes, group_seeds, lrs, weight_decays, config
    )
    heads: list[list[TrainedHead]] = []
    for g in range(len(groups)):
        grid = [(s, rate, w) for s in group_seeds[g] for rate in lrs for w in weight_decays]
        per_group = []
        for k, (seed, lr, wd) in enumerate(grid):
            net = _mlp_module(sizes)
            linears = [m for m in net if isinstance(m, nn.Linear)]
            with torch.no_grad():
                for linear, (weight, bias) in zip(linears, layers):
                    linear.weight.copy_(weight[g, k].T)
                    linear.bias.copy_(bias[g, k, 0])
            module = nn.Sequential(normalizer.module(g), *net).eval()
            hyper = {"lr": lr, "weight_decay": wd, "seed": seed, "epoch": int(epochs[g, k])}
            if kind == "mlp":
                hyper["hidden"] = list(hidden)
            per_group.append(TrainedHead(module, kind, float(val_acc[g, k]), hyper))
        heads.append(per_group)
    return heads


def _knn_heads(
    groups: Sequence[HeadGroup], num_classes: int, ks: Sequence[int], config: HeadTrainingConfig
) -> list[list[TrainedHead]]:
    """One kNN head per ``k`` and group; validation accuracy of all ``k`` from one similarity matrix."""
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    heads = []
    for group in groups:
        train_x, val_x = group.train_x.float().unsqueeze(0), group.val_x.float().unsqueeze(0)
        normalizer = _fit_normalizer(train_x, replace(config, normalization=config.knn_normalization))
        train_z, val_z = normalizer(train_x)[0], normalizer(val_x)[0]
        k_max = min(max(ks), train_z.shape[0])
        sims, idx = (F.normalize(val_z, dim=-1) @ F.normalize(train_z, dim=-1).T).topk(k_max, dim=-1)
        labels = group.train_y.long()[idx]
        per_group = []
        for k in ks:
            used = min(int(k), k_max)
            votes = _knn_votes(sims[:, :used], labels[:, :used], num_classes)
            val_acc = float((votes.argmax(-1) == group.val_y.long()).float().mean())
            knn = KNNClassifier(train_z, group.train_y, used, num_classes)
            module = nn.Sequential(normalizer.module(0), knn).eval()
            per_group.append(TrainedHead(module, "knn", val_acc, {"k": int(k)}))
        heads.append(per_group)
    return heads


def train_head_groups(
    groups: Sequence[HeadGroup],
    kind: str = "linear",
    lrs: Sequence[float] = (1e-2, 3e-2),
    weight_decays: Sequence[float] = (0.0, 1e-3),
    epochs: int | None = None,
    hidden: Sequence[int] = (256,),
    ks: Sequence[int] = (1, 5, 10, 20),
    num_classes: int | None = None,
    config: HeadTrainingConfig | None = None,
) -> list[list[TrainedHead]]:
    """Train a head grid on several equally shaped datasets at once; returns one list of heads per group.

    Args:
        groups: datasets (train/validation features and labels) and the init seeds used for each.
        kind: ``"linear"`` (multinomial logistic regression), ``"mlp"`` or ``"knn"``.
        lrs, weight_decays: the grid: Adam learning rates and L2 penalties ``(wd / 2) * ||W||^2`` on the weights
            (not the biases) added to the mean cross-entropy.
        epochs: overrides ``config.epochs``.
        hidden: hidden widths of the MLP (one or two layers).
        ks: neighbour counts for kNN.
        num_classes: number of classes (default: largest label + 1).
        config: optimisation settings.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {HEAD_KINDS}")
    config = config or HeadTrainingConfig()
    if epochs is not None:
        config = replace(config, epochs=int(epochs))
    classes = _num_classes(groups, num_classes)
    with torch_threads(config.num_threads):
        if kind == "knn":
            return _knn_heads(groups, classes, ks, config)
        if not lrs or not weight_decays:
            raise ValueError("lrs and weight_decays must be non-empty")
        return _gradient_heads(groups, kind, classes, lrs, weight_decays, hidden, config)


def train_heads(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    kind: str = "linear",
    lrs: Sequence[float] = (1e-2, 3e-2),
    weight_decays: Sequence[float] = (0.0, 1e-3),
    seeds: Sequence[int] = (0,),
    epochs: int | None = None,
    hidden: Sequence[int] = (256,),
    ks: Sequence[int] = (1, 5, 10, 20),
    num_classes: int | None = None,
    config: HeadTrainingConfig | None = None,
) -> list[TrainedHead]:
    """Train one head per grid point (seed x lr x weight decay; or per ``k`` for kNN) on one dataset.

    Each grid point keeps its best-validation-epoch weights; pick one with :func:`best_head`.
    """
    group = HeadGroup(train_x, train_y, val_x, val_y, tuple(int(s) for s in seeds))
    return train_head_groups([group], kind, lrs, weight_decays, epochs, hidden, ks, num_classes, config)[0]
