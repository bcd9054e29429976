"""Class information left in an encoder's prohibited features, as the objective sees it and as a whitening probe does.

Run by hand (seconds on a CPU):

    python benchmarks/residual_information.py hf_encoderlock/assets/victim outputs/keep_levers/runs/<run>/locked

For each encoder and pooling (CLS, mean) it embeds 2,048 ``mnist-m`` training images (built-in, domain seed 0) and
reports, on standardised and on whitened features (correlation shrunk 0.1 and 0.01 towards the identity):

* the information objective's class MMD and soft-kNN excess on the first 256 images (one lock batch),
* a 2-fold 10-nearest-neighbour accuracy over all 2,048 (fit on one half, scored on the other).

The objective drives the standardised measures down; the attacker's probes whiten features first, so class
information in low-variance directions shows only in the whitened columns.

A second table shows the measures as the lock sees them (CLS and mean features concatenated; standardised, as the
lock did until 2026-11-29, and whitened with shrinkage 0.1, as the default lock does since), each
averaged over the 2,048 images cut into lock batches of ``--lock_batches`` sizes (default 256 and 512), next to
the same measure with the labels shuffled within the batch: the floor a measure reaches on a batch of that size
when no class information is left. A measure at its floor gives the lock no signal, whatever a fresh probe still
finds. ``--random_twin`` adds the first encoder's architecture at random initialisation. JSON + Markdown go to
``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_encoderlock.data.builtin import builtin_arrays
from hf_encoderlock.encoders import load_encoder
from hf_encoderlock.lock.objectives.information import (
    InformationObjective,
    InformationTermsConfig,
    class_mmd,
    soft_knn_excess,
    whiten,
)

REPO = Path(__file__).resolve().parents[1]
VIEWS = {"standardised": 1.0, "whitened 0.1": 0.1, "whitened 0.01": 0.01}


def two_fold_knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Majority vote of the ``k`` nearest first-half points, scored on the second half."""
    half = len(features) // 2
    neighbours = torch.cdist(features[half:], features[:half]).topk(k, largest=False).indices
    predicted = torch.mode(labels[:half][neighbours], dim=1).values
    return float((predicted == labels[half:]).float().mean())


def objective_floors(
    name: str, concatenated: torch.Tensor, labels: torch.Tensor, batch: int, shrinkage: float = 1.0
) -> dict:
    """The information objective's raw measures (on features whitened with ``shrinkage``; 1: standardised) averaged
    over the lock batches of ``batch`` images, with true and with shuffled labels (one permutation per batch,
    seeded)."""
    objective = InformationObjective(InformationTermsConfig(whitening_shrinkage=shrinkage))
    generator = torch.Generator().manual_seed(0)
    true, shuffled = [], []
    for start in range(0, len(labels) - batch + 1, batch):
        features, targets = concatenated[start : start + batch], labels[start : start + batch]
        true.append(objective.measures(features, targets))
        shuffled.append(objective.measures(features, targets[torch.randperm(batch, generator=generator)]))
    row = {"encoder": name, "batch": batch, "shrinkage": shrinkage, "batches": len(true)}
    for term in true[0]:
        row[term] = float(torch.stack([m[term] for m in true]).mean())
        row[f"{term}_shuffled"] = float(torch.stack([m[term] for m in shuffled]).mean())
    return row


def measure(
    path: str, images: list[Image.Image], labels: torch.Tensor, batch: int, lock_batches: list[int], twin: bool = False
) -> tuple[list[dict], list[dict]]:
    encoder = load_encoder(path).eval()
    if twin:
        encoder, path = encoder.random_init_twin(seed=0).eval(), f"{path} (random init)"
    with torch.no_grad():
        pooled = encoder.pooled_features(encoder.preprocess(images), ["cls", "mean"])
    rows = []
    for pooling, features in pooled.items():
        for view, shrinkage in VIEWS.items():
            z = whiten(features, shrinkage)
            rows.append(
                {
                    "encoder": path,
                    "pooling": pooling,
                    "view": view,
                    "class_mmd": float(class_mmd(z[:batch], labels[:batch], (0.5, 1.0, 2.0))),
                    "soft_knn_excess": float(soft_knn_excess(z[:batch], labels[:batch], 0.1)),
                    "knn_accuracy": two_fold_knn_accuracy(z, labels),
                }
            )
    concatenated = torch.cat([pooled["cls"], pooled["mean"]], dim=1)
    return rows, [
        objective_floors(path, concatenated, labels, size, shrinkage)
        for size in lock_batches
        for shrinkage in (1.0, 0.1)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("encoders", nargs="+", help="Encoder folders (the victim, locked encoders).")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256, help="Images the objective's measures see (a lock batch).")
    parser.add_argument("--lock_batches", type=int, nargs="+", default=[256, 512], help="Batch sizes of the floors.")
    parser.add_argument("--random_twin", action="store_true", help="Add the first encoder at random init.")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "residual_information"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pixels, labels, _ = builtin_arrays("mnist-m", 0)
    order = np.random.default_rng(0).permutation(len(pixels))[: args.images]
    images = [Image.fromarray(a) for a in pixels[order]]
    targets = torch.as_tensor(labels[order])
    runs = [(path, False) for path in args.encoders] + [(args.encoders[0], True)] * args.random_twin
    measured = [measure(path, images, targets, args.batch, args.lock_batches, twin) for path, twin in runs]
    rows = [row for probe_rows, _ in measured for row in probe_rows]
    floors = [row for _, floor_rows in measured for row in floor_rows]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "residual_information.json").write_text(
        json.dumps({"argv": sys.argv[1:], "rows": rows, "lock_floors": floors}, indent=2)
    )
    lines = [
        "| Encoder | Pooling | Features | class MMD | soft-kNN excess | 2-fold 10-NN accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['pooling']} | {r['view']} | {r['class_mmd']:.4f} | {r['soft_knn_excess']:.4f} "
            f"| {100 * r['knn_accuracy']:.1f}% |"
        )
    lines += [
        "",
        "As the lock sees them (CLS + mean; shrinkage 1 = standardised), mean over lock batches; in brackets: labels "
        "shuffled.",
        "",
        "| Encoder | Batch | Shrinkage | R^2 | class MMD | soft-kNN excess |",
        "|---|---|---|---|---|---|",
    ]
    for r in floors:
        cells = " | ".join(f"{r[t]:.4f} ({r[t + '_shuffled']:.4f})" for t in ("r2", "mmd", "knn"))
        lines.append(f"| {r['encoder']} | {r['batch']} | {r['shrinkage']:g} | {cells} |")
    (output / "residual_information.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
