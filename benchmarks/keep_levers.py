"""Levers for keeping the authorized domain: each setting is a full default-task lock, probed with 3 seeds.

Run by hand (a few minutes per setting on a 2-core CPU; two settings at a time with ``--jobs 2 --threads 1``):

    python benchmarks/keep_levers.py --output benchmarks/results/keep_levers
    python benchmarks/keep_levers.py --settings "tau 0.01, lr 0.1" "tau 0.02, lr 0.1" --jobs 2 --threads 1

Each setting runs ``examples/lock_vit.py`` (authorized ``mnist``, prohibited ``mnist-m``, the default lock with the
setting's flags) with probe seeds 0 1 2 at 100% of the attacker's data. Its run folder goes under ``--runs_dir``
(git-ignored by default; a run whose ``report.json`` exists is not run again, and ``--summarize`` never starts one)
and the victim's features are cached once under ``--cache_dir``. The summary gives, per setting, the advantage
removed on ``mnist-m`` and kept on ``mnist`` by the attacker's best fresh probe, on its **validation** split (200
images of the attacker's training split: what settings are chosen on) and on the **test** split (what is reported;
nothing selects on it), each the mean over the probe seeds, in ``keep_levers.json`` and ``keep_levers.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from transformers import AutoModel

from hf_encoderlock.audit import check_outliers

REPO = Path(__file__).resolve().parents[1]
AUTHORIZED, PROHIBITED, FRACTION = "mnist", "mnist-m", 1.0
PROBE_SEEDS = ("0", "1", "2")


# the lock's copies of its prohibited images under each colour transform of the adaptive suite
EVERY_COLOUR = (
    *("--prohibited_transforms", "greyscale", "match_image_stats", "match_domain_stats"),
    *("permute_channels:5", "permute_channels:3", "permute_channels:4"),
)
ALL_BLOCKS = ("--candidate_blocks", "-1", "0", "1", "2", "3", "4", "5")
UNPROJECTED = ("--authorized_projection", "none", "--learning_rate", "0.01")
# bounded at 2.5 robust std, each weight scored by how far its bounded move changes the prohibited term
BOUND_AWARE_GRADIENT = (
    *("--weight_bound", "2.5", "--bound_aware_scores", "--score_function", "prohibited_gradient", *EVERY_COLOUR),
)


def _flags(
    projection: str,
    lr: str,
    blocks: str = "-1 0",
    steps: str = "10",
    *extra: str,
    repair: str = "0",
    guard: str = "0",
    factor: str = "1",
) -> list[str]:
    """Every lever's flag spelled out, so a setting means the same lock whatever the library's defaults are (a flag in
    ``extra`` repeats one of these and wins: the last occurrence of a flag counts)."""
    return [
        *("--authorized_projection", projection, "--learning_rate", lr),
        *("--candidate_blocks", *blocks.split(), "--update_steps_per_round", steps, "--repair_steps", repair),
        *("--max_authorized_drift", guard, "--prohibited_batch_factor", factor, "--info_whitening_shrinkage", "1"),
        *extra,
    ]


def _repaired(lr: str, *extra: str, projection: str = "0.01", guard: str = "0", factor: str = "1") -> list[str]:
    """Blocks -1..1, 10 steps a round at ``lr`` projected at ``projection``, then 20 repair steps at 0.01."""
    return _flags(
        projection,
        lr,
        "-1 0 1",
        "10",
        "--repair_learning_rate",
        "0.01",
        *extra,
        repair="20",
        guard=guard,
        factor=factor,
    )


def _guarded(guard: str, *extra: str, factor: str = "1") -> list[str]:
    """The repaired lock at lr 0.3 with the drift guard at ``guard`` (0.1: the default from 2026-11-29, evening)."""
    return _repaired("0.3", *extra, guard=guard, factor=factor)


def _doubled(*extra: str) -> list[str]:
    """The guarded lock with twice as many prohibited images as authorized ones a step."""
    return _guarded("0.1", *extra, factor="2")


def _whitened(*extra: str) -> list[str]:
    """The doubled lock whose information measures see prohibited features whitened (shrinkage 0.1): the default
    since the night of 2026-11-29."""
    return _doubled("--info_whitening_shrinkage", "0.1", *extra)


#: name -> flags of ``examples/lock_vit.py`` (on top of the default lock). "tau" is ``authorized_projection``.
SETTINGS: dict[str, list[str]] = {
    "no projection, lr 0.01 (the default until 2026-11-29)": _flags("none", "0.01"),
    "tau 0, patch embedding only": _flags("0", "0.01", "-1"),
    "tau 0.01": _flags("0.01", "0.01"),
    "tau 0.01, lr 0.03": _flags("0.01", "0.03"),
    "tau 0.01, lr 0.03, 4 layers a round": _flags("0.01", "0.03", "-1 0", "10", "--layers_per_round", "4"),
    "tau 0.1, lr 0.03": _flags("0.1", "0.03"),
    "tau 0.01, lr 0.1": _flags("0.01", "0.1"),
    "tau 0.01, lr 0.1, 15 steps a round": _flags("0.01", "0.1", "-1 0", "15"),
    "tau 0.01, lr 0.3": _flags("0.01", "0.3"),
    "tau 0.003, lr 0.3": _flags("0.003", "0.3"),
    "tau 0.01, lr 0.3, preserve 3": _flags("0.01", "0.3", "-1 0", "10", "--info_preserve_weight", "3"),
    "tau 0.02, lr 0.1": _flags("0.02", "0.1"),
    "tau 0.02, lr 0.1, seed 1": _flags("0.02", "0.1", "-1 0", "10", "--seed", "1"),
    "tau 0.02, lr 0.1, preserve 3": _flags("0.02", "0.1", "-1 0", "10", "--info_preserve_weight", "3"),
    "tau 0.02, lr 0.1, 15 steps a round": _flags("0.02", "0.1", "-1 0", "15"),
    "tau 0.01, lr 0.1, blocks -1..1": _flags("0.01", "0.1", "-1 0 1"),
    "tau 0.01, lr 0.1, blocks -1..1, seed 1": _flags("0.01", "0.1", "-1 0 1", "10", "--seed", "1"),
    "tau 0.01, lr 0.1, blocks -1..1, seed 2": _flags("0.01", "0.1", "-1 0 1", "10", "--seed", "2"),
    "tau 0.01, lr 0.1, blocks -1..1, seed 3": _flags("0.01", "0.1", "-1 0 1", "10", "--seed", "3"),
    "tau 0.01, lr 0.1, blocks -1..1, seed 4": _flags("0.01", "0.1", "-1 0 1", "10", "--seed", "4"),
    "tau 0.015, lr 0.1, blocks -1..1": _flags("0.015", "0.1", "-1 0 1"),
    "tau 0.015, lr 0.1, blocks -1..1, seed 1": _flags("0.015", "0.1", "-1 0 1", "10", "--seed", "1"),
    "tau 0.015, lr 0.1, blocks -1..1, seed 2": _flags("0.015", "0.1", "-1 0 1", "10", "--seed", "2"),
    "tau 0.01, lr 0.1, blocks -1..2": _flags("0.01", "0.1", "-1 0 1 2"),
    "tau 0.02, lr 0.1, blocks -1..1": _flags("0.02", "0.1", "-1 0 1"),
    "tau 0.01, lr 0.1, blocks -1..1, 15 steps a round": _flags("0.01", "0.1", "-1 0 1", "15"),
    "tau 0.005, lr 0.1, blocks -1..1, 15 steps a round": _flags("0.005", "0.1", "-1 0 1", "15"),
    "tau 0, patch embedding only, lr 0.1": _flags("0", "0.1", "-1"),
    "tau 0, patch embedding only, lr 0.3": _flags("0", "0.3", "-1"),
    "tau 0, patch embedding only, lr 0.3, seed 1": _flags("0", "0.3", "-1", "10", "--seed", "1"),
    "tau 0, patch embedding only, lr 0.3, seed 2": _flags("0", "0.3", "-1", "10", "--seed", "2"),
    "tau 0.01, lr 0.1, blocks -1..1, score_eps 1 (no authorized side in the score)": _flags(
        "0.01", "0.1", "-1 0 1", "10", "--score_eps", "1"
    ),
    "tau 0.01, lr 0.1, blocks -1..1, score_eps 1, seed 1": _flags(
        "0.01", "0.1", "-1 0 1", "10", "--score_eps", "1", "--seed", "1"
    ),
    "tau 0.01, lr 0.2, blocks -1..1": _flags("0.01", "0.2", "-1 0 1"),
    "tau 0.01, lr 0.2, blocks -1..1, seed 1": _flags("0.01", "0.2", "-1 0 1", "10", "--seed", "1"),
    "tau 0.01, lr 0.2, blocks -1..1, seed 2": _flags("0.01", "0.2", "-1 0 1", "10", "--seed", "2"),
    "tau 0.01, lr 0.3, blocks -1..1": _flags("0.01", "0.3", "-1 0 1"),
    "tau 0.01, lr 0.1, blocks -1..1, whitening 0.1": _flags(
        "0.01", "0.1", "-1 0 1", "10", "--info_whitening_shrinkage", "0.1"
    ),
    "tau 0.01, lr 0.1, blocks -1..1, whitening 0.3": _flags(
        "0.01", "0.1", "-1 0 1", "10", "--info_whitening_shrinkage", "0.3"
    ),
    "tau 0.01, lr 0.1, blocks -1..1, 10 rounds x 1020 weights x 20 steps": _flags(
        "0.01", "0.1", "-1 0 1", "20", "--num_rounds", "10", "--weights_per_round", "1020"
    ),
    "tau 0.01, lr 0.1, blocks -1..1, 10 rounds x 1020 weights x 20 steps, seed 1": _flags(
        "0.01", "0.1", "-1 0 1", "20", "--num_rounds", "10", "--weights_per_round", "1020", "--seed", "1"
    ),
    "tau 0.01, lr 0.3, blocks -1..1, 20 repair steps at 0.01": _repaired("0.3"),
    "tau 0.01, lr 0.3, blocks -1..1, 20 repair steps at 0.01, seed 1": _repaired("0.3", "--seed", "1"),
    "tau 0.01, lr 0.3, blocks -1..1, 20 repair steps at 0.01, seed 2": _repaired("0.3", "--seed", "2"),
    "tau 0.01, lr 0.3, blocks -1..1, 20 repair steps at 0.01, 2 threads": _repaired("0.3"),
    "tau 0.01, lr 0.3 decaying linearly, blocks -1..1, 20 repair steps": _repaired(
        "0.3", "--lr_scheduler_type", "linear"
    ),
    "tau 0.01, lr 0.3 decaying linearly, blocks -1..1, 20 repair steps, seed 1": _repaired(
        "0.3", "--lr_scheduler_type", "linear", "--seed", "1"
    ),
    "drift guard 0.1 (previous default)": _guarded("0.1"),
    "drift guard 0.1 (previous default), seed 1": _guarded("0.1", "--seed", "1"),
    "drift guard 0.1 (previous default), seed 2": _guarded("0.1", "--seed", "2"),
    "drift guard 0.1 (previous default), seed 3": _guarded("0.1", "--seed", "3"),
    "drift guard 0.1 (previous default), seed 4": _guarded("0.1", "--seed", "4"),
    "drift guard 0.1 (previous default), 2 threads": _guarded("0.1"),
    "drift guard 0.1 (previous default), seed 1, 2 threads": _guarded("0.1", "--seed", "1"),
    "drift guard 0.1 (previous default), seed 2, 2 threads": _guarded("0.1", "--seed", "2"),
    "drift guard 0.1 (previous default), seed 3, 2 threads": _guarded("0.1", "--seed", "3"),
    "drift guard 0.1 (previous default), seed 4, 2 threads": _guarded("0.1", "--seed", "4"),
    "drift guard 0.2, 2 threads": _guarded("0.2"),
    "drift guard 0.05, 2 threads": _guarded("0.05"),
    "prohibited batch x2": _doubled(),
    "prohibited batch x2, seed 1": _doubled("--seed", "1"),
    "prohibited batch x2, seed 2": _doubled("--seed", "2"),
    "prohibited batch x2, seed 3": _doubled("--seed", "3"),
    "prohibited batch x2, seed 4": _doubled("--seed", "4"),
    "prohibited batch x2, 2 threads": _doubled(),
    "prohibited batch x2, seed 1, 2 threads": _doubled("--seed", "1"),
    "prohibited batch x2, seed 2, 2 threads": _doubled("--seed", "2"),
    "prohibited batch x2, seed 3, 2 threads": _doubled("--seed", "3"),
    "prohibited batch x2, seed 4, 2 threads": _doubled("--seed", "4"),
    "prohibited batch x2, whitening 0.1": _whitened(),
    "prohibited batch x2, whitening 0.1, seed 1": _whitened("--seed", "1"),
    "prohibited batch x2, whitening 0.1, seed 2": _whitened("--seed", "2"),
    "prohibited batch x2, whitening 0.1, seed 3": _whitened("--seed", "3"),
    "prohibited batch x2, whitening 0.1, seed 4": _whitened("--seed", "4"),
    "prohibited batch x2, whitening 0.1, 2 threads": _whitened(),
    "prohibited batch x2, whitening 0.1, seed 1, 2 threads": _whitened("--seed", "1"),
    "prohibited batch x2, whitening 0.1, seed 2, 2 threads": _whitened("--seed", "2"),
    "prohibited batch x2, whitening 0.1, seed 3, 2 threads": _whitened("--seed", "3"),
    "prohibited batch x2, whitening 0.1, seed 4, 2 threads": _whitened("--seed", "4"),
    # issue 25: levers against the attacker who knows the method, as main-job flags on the library's defaults of
    # 2026-12-06 (each run also gets the adaptive suite's probe-only families; the summary's worst case is theirs)
    "the default lock (no flags), 2 threads": [],
    "the default lock, seed 1, 2 threads": ["--seed", "1"],
    "the default lock, seed 2, 2 threads": ["--seed", "2"],
    "bounded 6, 2 threads": ["--weight_bound", "6"],
    "bounded 6, greyscale copies, 2 threads": ["--weight_bound", "6", "--prohibited_transforms", "greyscale"],
    "bounded 3, greyscale copies, 2 threads": ["--weight_bound", "3", "--prohibited_transforms", "greyscale"],
    "bounded 6, greyscale copies, no projection, lr 0.01, 2 threads": [
        *("--weight_bound", "6", "--prohibited_transforms", "greyscale"),
        *("--authorized_projection", "none", "--learning_rate", "0.01"),
    ],
    # bounded at 2.5 robust std, so the attacker's gentlest clip (z 2.5) leaves every changed weight as it is
    "bounded 2.5, greyscale copies, 2 threads": ["--weight_bound", "2.5", "--prohibited_transforms", "greyscale"],
    "bounded 2.5, whole rows, greyscale copies, 2 threads": [
        *("--selection_unit", "row", "--weight_bound", "2.5", "--prohibited_transforms", "greyscale"),
    ],
    "bounded 2.5, greyscale copies, 5% of the weights over blocks -1..5, 2 threads": [
        *("--weight_bound", "2.5", "--prohibited_transforms", "greyscale", "--weights_per_round", "2550"),
        *("--candidate_blocks", "-1", "0", "1", "2", "3", "4", "5"),
    ],
    "bounded 2.5, copies under every colour transform, 5% of the weights over blocks -1..5, 2 threads": [
        *("--weight_bound", "2.5", "--prohibited_transforms", "greyscale", "match_image_stats"),
        *("match_domain_stats", "permute_channels:5", "permute_channels:3", "permute_channels:4"),
        *("--weights_per_round", "2550", "--candidate_blocks", "-1", "0", "1", "2", "3", "4", "5"),
    ],
    "bounded 2.5, copies under every colour transform, 2 threads": ["--weight_bound", "2.5", *EVERY_COLOUR],
    "bounded 2.5, copies under every colour transform, seed 1, 2 threads": [
        *("--weight_bound", "2.5", *EVERY_COLOUR, "--seed", "1"),
    ],
    "bounded 2.5, copies under every colour transform, seed 2, 2 threads": [
        *("--weight_bound", "2.5", *EVERY_COLOUR, "--seed", "2"),
    ],
    # selection that knows the bound: each score times the room the bound leaves the update (bound_aware_scores)
    "bounded 2.5, bound-aware scores, copies under every colour transform, 2 threads": [
        *("--weight_bound", "2.5", "--bound_aware_scores", *EVERY_COLOUR),
    ],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, 2 threads": [
        *("--weight_bound", "2.5", "--bound_aware_scores", "--score_function", "prohibited_gradient", *EVERY_COLOUR),
    ],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, seed 1, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        "--seed",
        "1",
    ],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, seed 2, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        "--seed",
        "2",
    ],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, 5% of the weights over "
    "blocks -1..5, 2 threads": [*BOUND_AWARE_GRADIENT, "--weights_per_round", "2550", *ALL_BLOCKS],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, no projection, "
    "lr 0.01, 2 threads": [*BOUND_AWARE_GRADIENT, "--authorized_projection", "none", "--learning_rate", "0.01"],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, no projection, "
    "lr 0.01, seed 1, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--seed", "1"],
    "bounded 2.5, bound-aware prohibited-gradient scores, copies under every colour transform, no projection, "
    "lr 0.01, seed 2, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--seed", "2"],
    # examples/configs/bounded.yaml (BOUND_AWARE_GRADIENT and UNPROJECTED) with one lever changed
    "bounded.yaml, paper objective, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--objective", "paper"],
    "bounded.yaml, contrastive objective, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--objective", "contrastive"),
    ],
    "bounded.yaml, 1% of the weights over blocks -1..5, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, *ALL_BLOCKS],
    "bounded.yaml, 1% of the weights over blocks 3..5, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--candidate_blocks", "3", "4", "5"),
    ],
    "bounded.yaml, 10% of the weights over blocks -1..5, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "5100", *ALL_BLOCKS),
    ],
    "bounded.yaml, 10% of the weights over blocks -1..5, authorized weight 10, preserve weight 10, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "5100", *ALL_BLOCKS),
        *("--info_authorized_weight", "10", "--info_preserve_weight", "10"),
    ],
    "bounded.yaml, 20% of the weights over blocks -1..5, authorized weight 3, preserve weight 3, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "10200", *ALL_BLOCKS),
        *("--info_authorized_weight", "3", "--info_preserve_weight", "3"),
    ],
    "bounded.yaml, 20% of the weights over blocks -1..5, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "10200", *ALL_BLOCKS),
    ],
    "bounded.yaml, 5% of the weights over blocks -1..5, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "2550", *ALL_BLOCKS),
    ],
    "bounded.yaml, 10% of the weights over blocks -1..5, authorized weight 3, preserve weight 3, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--weights_per_round", "5100", *ALL_BLOCKS),
        *("--info_authorized_weight", "3", "--info_preserve_weight", "3"),
    ],
    "bounded.yaml, lr 0.03, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--learning_rate", "0.03"],
    "bounded.yaml, 20 steps a round, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--update_steps_per_round", "20"),
    ],
    "bounded.yaml, 6 layers a round, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--layers_per_round", "6"],
    "bounded.yaml, 6 layers a round, seed 1, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--seed", "1"),
    ],
    "bounded.yaml, 6 layers a round, seed 2, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--seed", "2"),
    ],
    "bounded.yaml, 12 layers a round, 2 threads": [*BOUND_AWARE_GRADIENT, *UNPROJECTED, "--layers_per_round", "12"],
    "bounded.yaml, 12 layers a round, seed 1, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "12", "--seed", "1"),
    ],
    "bounded.yaml, 12 layers a round, seed 2, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "12", "--seed", "2"),
    ],
    "bounded.yaml, every candidate layer each round (19), 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "19"),
    ],
    # bounded.yaml from 4e9f68f on (6 layers a round) and one lever
    "bounded.yaml (6 layers), blocks 0..2 (no patch embedding), 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--candidate_blocks", "0", "1", "2"),
    ],
    "bounded.yaml (6 layers), blocks 0..5 (no patch embedding), 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--candidate_blocks", "0", "1", "2", "3", "4", "5"),
    ],
    "bounded.yaml (6 layers), patch embedding only, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--candidate_blocks", "-1"),
    ],
    "bounded.yaml (6 layers), colour map every 5 rounds, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--layers_per_round", "6", "--colour_map_every", "5"),
    ],
    # examples/configs/bounded.yaml itself (the file pins the batch and measures it was measured with, which the
    # flag lists above leave to the current defaults) with one view of the prohibited images per batch
    **{
        f"bounded.yaml file, one view per batch{seed_name}, 2 threads": [
            *("--config", "examples/configs/bounded.yaml", "--prohibited_view_batches", "true", *seed_flags)
        ]
        for seed_name, seed_flags in (("", ()), (", seed 1", ("--seed", "1")), (", seed 2", ("--seed", "2")))
    },
    # and with the attacker's learned colour map refitted every 5 rounds (lock seed 42: the flag-list setting
    # "bounded.yaml (6 layers), colour map every 5 rounds, 2 threads" below, run when the defaults were the file's)
    **{
        f"bounded.yaml file, colour map every 5 rounds, seed {seed}, 2 threads": [
            *("--config", "examples/configs/bounded.yaml", "--colour_map_every", "5", "--seed", seed)
        ]
        for seed in ("1", "2")
    },
    # the file as it is, from main 8f8c459 on (an image and its copies in one split part; the colour map fitted on
    # the original images)
    **{
        f"bounded.yaml file{seed_name}, 2 threads": [*("--config", "examples/configs/bounded.yaml", *seed_flags)]
        for seed_name, seed_flags in (("", ()), (", seed 1", ("--seed", "1")), (", seed 2", ("--seed", "2")))
    },
    # with each changed weight's edge drawn up to 0.1 of the bound inside it, so that the weights the bound stops do
    # not pile up on one value (measured on main 0a1b107, where this jitter was fixed at 0.1 and had no flag)
    **{
        f"bounded.yaml file, jittered edges{seed_name}, 2 threads": [
            *("--config", "examples/configs/bounded.yaml", "--bound_jitter", "0.1", *seed_flags)
        ]
        for seed_name, seed_flags in (("", ()), (", seed 1", ("--seed", "1")), (", seed 2", ("--seed", "2")))
    },
    **{
        f"bounded.yaml file, colour map every round{seed_name}, 2 threads": [
            *("--config", "examples/configs/bounded.yaml", "--colour_map_every", "1", *seed_flags)
        ]
        for seed_name, seed_flags in (("", ()), (", seed 1", ("--seed", "1")), (", seed 2", ("--seed", "2")))
    },
    "bounded.yaml, authorized weight 0.3, preserve weight 0.3, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--info_authorized_weight", "0.3", "--info_preserve_weight", "0.3"),
    ],
    "bounded.yaml, preserve weight 0, 2 threads": [
        *BOUND_AWARE_GRADIENT,
        *UNPROJECTED,
        *("--info_preserve_weight", "0"),
    ],
    "bounded 2.5, prohibited-gradient scores, copies under every colour transform, 2 threads": [
        *("--weight_bound", "2.5", "--score_function", "prohibited_gradient", *EVERY_COLOUR),
    ],
    "unsupervised, bounded 3, copies under every colour transform, 2 threads": [
        *("--variant", "unsupervised", "--weight_bound", "3", *EVERY_COLOUR),
    ],
    "zero-shot, bounded 3, copies under every colour transform, 2 threads": [
        *("--variant", "zero-shot", "--weight_bound", "3", *EVERY_COLOUR),
    ],
    "bounded 3, copies under every colour transform, 2 threads": [
        *("--weight_bound", "3", "--prohibited_transforms", "greyscale", "match_image_stats", "match_domain_stats"),
        *("permute_channels:5", "permute_channels:3", "permute_channels:4"),
    ],
    "bounded 3, copies under every colour transform, 5% of the weights over blocks -1..5, 2 threads": [
        *("--weight_bound", "3", "--prohibited_transforms", "greyscale", "match_image_stats", "match_domain_stats"),
        *("permute_channels:5", "permute_channels:3", "permute_channels:4"),
        *("--weights_per_round", "2550", "--candidate_blocks", "-1", "0", "1", "2", "3", "4", "5"),
    ],
    # the variants (docs/VARIANTS.md); prohibited = mnist-m in the summary either way
    "unsupervised, tau 0.01": _flags("0.01", "0.1", "-1 0 1", "10", "--variant", "unsupervised"),
    "unsupervised, tau 0.02": _flags("0.02", "0.1", "-1 0 1", "10", "--variant", "unsupervised"),
    "zero-shot, tau 0.01": _flags("0.01", "0.1", "-1 0 1", "10", "--variant", "zero-shot"),
    "zero-shot, tau 0.05": _flags("0.05", "0.1", "-1 0 1", "10", "--variant", "zero-shot"),
    "zero-shot, tau 0.05, seed 1": _flags("0.05", "0.1", "-1 0 1", "10", "--variant", "zero-shot", "--seed", "1"),
    "unsupervised, tau 0.02, lr 0.3, 20 repair steps": _repaired("0.3", "--variant", "unsupervised", projection="0.02"),
    "unsupervised, tau 0.01, lr 0.3, 20 repair steps": _repaired("0.3", "--variant", "unsupervised"),
    "unsupervised, tau 0.02, lr 0.1, 20 repair steps": _repaired("0.1", "--variant", "unsupervised", projection="0.02"),
    "zero-shot, tau 0.05, lr 0.3, 20 repair steps": _repaired("0.3", "--variant", "zero-shot", projection="0.05"),
    "zero-shot, no projection, lr 0.01 (previous default)": _flags(
        "none", "0.01", "-1 0", "10", "--variant", "zero-shot"
    ),
    "unsupervised, tau 0.02, drift guard 0.1 (previous default)": _repaired(
        "0.3", "--variant", "unsupervised", projection="0.02", guard="0.1"
    ),
    "zero-shot, tau 0.05, drift guard 0.1 (previous default)": _repaired(
        "0.3", "--variant", "zero-shot", projection="0.05", guard="0.1"
    ),
    "unsupervised, prohibited batch x2, whitening 0.1 (the default)": _repaired(
        "0.3",
        "--variant",
        "unsupervised",
        "--info_whitening_shrinkage",
        "0.1",
        projection="0.02",
        guard="0.1",
        factor="2",
    ),
    "zero-shot, prohibited batch x2, whitening 0.1 (the default)": _repaired(
        "0.3", "--variant", "zero-shot", "--info_whitening_shrinkage", "0.1", projection="0.05", guard="0.1", factor="2"
    ),
}
#: settings run with 2 torch threads (``accelerate launch --num_cpu_threads_per_process 2``) whatever ``--threads`` says
TWO_THREADS = {name for name in SETTINGS if name.endswith("2 threads")}


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)


def _run_folder(name: str, args: argparse.Namespace) -> Path:
    return Path(args.runs_dir) / _folder_name(name)


def run_setting(name: str, args: argparse.Namespace) -> Path:
    """Run one setting's lock experiment unless its report exists; return its run folder."""
    folder = _run_folder(name, args)
    if (folder / "report.json").is_file():
        return folder
    threads = 2 if name in TWO_THREADS else args.threads
    command = [
        *("accelerate", "launch", "--num_processes", "1", "--num_cpu_threads_per_process", str(threads)),
        str(REPO / "examples" / "lock_vit.py"),
        *("--output_dir", str(folder), "--probe_fractions", str(FRACTION), "--probe_seeds", *PROBE_SEEDS),
        *("--cache_dir", str(args.cache_dir), *SETTINGS[name]),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=environment)
    return folder


def _best(probe: dict[str, Any], role: str, domain: str) -> dict[str, Any]:
    return next(b for b in probe["best"][role] if b["domain"] == domain and abs(b["fraction"] - FRACTION) < 1e-9)


def summarize_run(folder: Path, adaptive_report: Path | None = None) -> dict[str, Any]:
    """Removed / kept on the validation and test splits (means over probe seeds) from a run's ``report.json``; the
    worst case from ``adaptive_report`` (a later ``adaptive_report.json`` on the same lock) when given."""
    report = json.loads((folder / "report.json").read_text())
    if adaptive_report is not None:
        report["adaptive"] = json.loads(adaptive_report.read_text())
    before, after = report["probe_before"], report["probe_after"]
    out: dict[str, Any] = {"total_s": report["timings"]["total_s"]}
    for split in ("validation", "test"):
        key = f"{split}_accuracy"
        for domain, measure in ((AUTHORIZED, "kept"), (PROHIBITED, "removed")):
            victim = statistics.mean(_best(before, "encoder", domain)[key])
            twin = statistics.mean(_best(before, "random_twin", domain)[key])
            locked = statistics.mean(_best(after, "encoder", domain)[key])
            share = (locked - twin) if measure == "kept" else (victim - locked)
            out[f"{split}_{domain}_locked"] = locked
            out[f"{split}_{measure}"] = share / (victim - twin)
        if report.get("adaptive"):
            # the attacker's best chosen attack on this split: the highest accuracy over the adaptive families
            families = report["adaptive"]["families"][PROHIBITED]
            worst = max(families, key=lambda family: _mean(family[key]))
            victim = statistics.mean(_best(before, "encoder", PROHIBITED)[key])
            twin = statistics.mean(_best(before, "random_twin", PROHIBITED)[key])
            out[f"{split}_worst_removed"] = (victim - _mean(worst[key])) / (victim - twin)
            out[f"{split}_worst_attack"] = f"{worst['family']}: {worst['attack']} {worst['strength'] or ''}".strip()
    if (folder / "locked").is_dir() and (folder / "victim").is_dir():
        summary, _ = check_outliers(
            AutoModel.from_pretrained(folder / "locked"), AutoModel.from_pretrained(folder / "victim")
        )
        out["outliers_beyond_6"] = {"locked": summary["locked"], "victim": summary["original"]}
        out["tensors_over_twice_the_victims_outliers"] = len(summary["flagged"])
        piled = summary["piled_up"]
        out["piled_up"] = {"locked": piled["locked"], "victim": piled["original"]}
        out["tensors_over_twice_the_victims_piled_up"] = len(piled["flagged"])
    return out


def _mean(value: float | list[float]) -> float:
    return statistics.mean(value) if isinstance(value, list) else value


def write_summary(results: dict[str, dict[str, Any]], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    payload = {"settings": {name: SETTINGS[name] for name in results}, "results": results}
    (output / "keep_levers.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "| Setting | Flags | validation: removed / kept | test: removed / kept | test accuracy mnist-m / mnist | s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | `{' '.join(SETTINGS[name]) or '(none)'}` "
            f"| {100 * r['validation_removed']:.1f}% / {100 * r['validation_kept']:.1f}% "
            f"| {100 * r['test_removed']:.1f}% / {100 * r['test_kept']:.1f}% "
            f"| {100 * r['test_mnist-m_locked']:.1f}% / {100 * r['test_mnist_locked']:.1f}% | {r['total_s']:.0f} |"
        )
    adaptive = {name: r for name, r in results.items() if "test_worst_removed" in r}
    if adaptive:
        lines += [
            "",
            "An attacker who knows the method (adaptive suite, probe-only families): advantage removed on mnist-m by "
            "the attack that is strongest on the attacker's validation split, and by the one strongest on test; "
            "entries beyond 6 robust std (all tensors) and tensors holding more than twice the victim's; entries on "
            "piled-up values (a bound's clamp) and tensors holding more than twice the victim's.",
            "",
            "| Setting | validation: worst case removed (attack) | test: worst case removed (attack) "
            "| beyond 6 sd: locked / victim | tensors > 2x victim | piled up: locked / victim | tensors > 2x victim |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in adaptive.items():
            outliers, piled = r.get("outliers_beyond_6") or {}, r.get("piled_up") or {}
            lines.append(
                f"| {name} | {100 * r['validation_worst_removed']:.1f}% ({r['validation_worst_attack']}) "
                f"| {100 * r['test_worst_removed']:.1f}% ({r['test_worst_attack']}) "
                f"| {outliers.get('locked', '-')} / {outliers.get('victim', '-')} "
                f"| {r.get('tensors_over_twice_the_victims_outliers', '-')} "
                f"| {piled.get('locked', '-')} / {piled.get('victim', '-')} "
                f"| {r.get('tensors_over_twice_the_victims_piled_up', '-')} |"
            )
    (output / "keep_levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "keep_levers"))
    parser.add_argument("--runs_dir", default="outputs/keep_levers/runs")
    parser.add_argument("--cache_dir", default="outputs/keep_levers/cache")
    parser.add_argument("--jobs", type=int, default=1, help="Settings run at a time.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (OMP_NUM_THREADS).")
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="Only summarize finished runs: never start a lock, and refuse if a setting's report.json is missing "
        "(a run still going, or never run).",
    )
    parser.add_argument(
        "--adaptive_dir",
        default=None,
        help="With --summarize: later adaptive attacks on the runs' locks (DIR/<run folder name>/adaptive_report.json, "
        "from benchmarks/adaptive_attacks.py); where one exists, a setting's worst case is read from it.",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        unfinished = [name for name in args.settings if not (_run_folder(name, args) / "report.json").is_file()]
        if unfinished:
            # not parser.error: its usage line spells out every setting
            sys.exit(f"keep_levers.py: --summarize: no report.json yet for {', '.join(map(repr, unfinished))}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        folders = dict(zip(args.settings, pool.map(lambda name: run_setting(name, args), args.settings)))
    later = {
        name: path
        for name, folder in folders.items()
        if args.adaptive_dir and (path := Path(args.adaptive_dir) / folder.name / "adaptive_report.json").is_file()
    }
    write_summary({name: summarize_run(folder, later.get(name)) for name, folder in folders.items()}, Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
