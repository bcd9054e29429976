"""Pseudo-labels for unlabelled prohibited data: k-means clusters of the unlocked encoder's features.

The unsupervised and zero-shot variants never read prohibited labels. The clusters of the *unlocked* encoder's
features stand in for them: the information objective removes the structure that separates these clusters, the
self-challenge fits adversaries that predict them, and the best encoder is kept by the gap between a fresh
authorized head and a fresh cluster-predicting head on held-out lock data (a label-free criterion).
"""

from __future__ import annotations

import torch

from ..objectives.information import standardize


def cluster_pseudo_labels(features: torch.Tensor, num_classes: int, seed: int, restarts: int) -> torch.Tensor:
    """k-means (scikit-learn, ``restarts`` initialisations, seeded) on per-dimension standardised features."""
    from sklearn.cluster import KMeans

    if len(features) < 2 * num_classes:
        raise ValueError(
            f"{len(features)} unlabelled images are too few for {num_classes} pseudo-classes "
            f"(need >= {2 * num_classes}); "
            "lower num_pseudo_classes or add images"
        )
    z = standardize(features.float()).numpy()
    km = KMeans(n_clusters=num_classes, n_init=restarts, random_state=seed).fit(z)
    return torch.as_tensor(km.labels_, dtype=torch.long)
