"""Stratified, seeded splitting: the one implementation behind every held-out part the package carves.

Used for a domain's test split carved from train, the attacker's validation split, and the lock's validation part.
"""

from __future__ import annotations

import numpy as np


def stratified_indices(labels: np.ndarray | None, fraction: float, seed: int, size: int | None = None):
    """``(kept, held)`` row indices: ``held`` takes ``fraction`` of the rows, stratified by ``labels``.

    Per class, ``round(fraction * n_class)`` rows are held out, the totals fixed by largest remainder (ties by class
    order), and each class keeps at least one row. Without labels (``labels=None``, ``size`` rows) the rows are split
    at random, with at least one row held. Deterministic for ``seed``; both parts come out shuffled.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(int(size))
        cut = max(1, int(round(fraction * order.size)))
        return order[cut:], order[:cut]
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * fraction
    take = np.floor(exact).astype(int)
    spare = int(round(fraction * labels.size)) - int(take.sum())
    order = np.lexsort((np.arange(classes.size), -(exact - take)))  # largest remainder first, ties by class
    for k in order[: max(spare, 0)]:
        take[k] += 1
    take = np.minimum(take, counts - 1)
    kept_parts, held_parts = [], []
    for k in range(classes.size):
        members = rng.permutation(np.flatnonzero(inverse == k))
        held_parts.append(members[: take[k]])
        kept_parts.append(members[take[k] :])
    return rng.permutation(np.concatenate(kept_parts)), rng.permutation(np.concatenate(held_parts))
