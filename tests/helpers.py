"""Plain helpers shared by the tests (not a test module): toy image domains, the tiny lock's settings, fresh
probes around a lock, and hand-written lock artefacts (config, report, audit folders).

Fixtures built on these live in ``conftest.py``; code that runs where fixtures cannot reach (a rank worker process,
a module-level table of cases) imports from here directly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from huggingface_hub import ModelCard
from PIL import Image

from hf_encoderlock.audit import MASK_FILE
from hf_encoderlock.data.lock_tensors import preprocess_domain
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.lock_data import DatasetReader, LockData
from hf_encoderlock.lock.selection import save_mask
from hf_encoderlock.probing.heads import HeadTrainingConfig, best_head, train_heads

# ------------------------------------------------------------------------------------------------ toy domains


def toy_domain(num_images: int, seed: int, style: str, size: int = 16, num_classes: int = 3) -> Dataset:
    """Class ``y`` is a bright horizontal band at row block ``y``; ``style`` changes colour and background."""
    rng = np.random.default_rng(seed)
    band = size // num_classes
    images, labels = [], []
    for index in range(num_images):
        label = index % num_classes
        pixels = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
        if style == "red":
            pixels[label * band : (label + 1) * band, :, 0] = 250
        else:
            pixels[:, :, 2] = 120
            pixels[label * band : (label + 1) * band, :, 1] = 230
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[f"c{i}" for i in range(num_classes)])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def unlabelled(dataset: Dataset) -> Dataset:
    return dataset.remove_columns("label")


# ------------------------------------------------------------------------------------------------- tiny locks

#: The settings the tiny locks were written against (EncoderLockConfig's defaults before it became the tuned lock),
#: pinned so that a change of the library's defaults does not change what these tests check.
PINNED_DEFAULTS: dict[str, Any] = dict(
    objective="paper",
    prohibited_poolings=None,
    candidate_blocks=None,
    authorized_projection=None,
    learning_rate=1e-2,
    info_knn_weight=0.0,
    info_preserve_weight=0.0,
    info_whitening_shrinkage=1.0,
    repair_steps=0,
    max_authorized_drift=0.0,
    prohibited_batch_factor=1,
    num_rounds=10,
    weights_per_round=100,
    layers_per_round=1,
    update_steps_per_round=20,
    per_device_train_batch_size=64,
    score_batches=4,
    challenge_every=5,
)

#: What every tiny test lock shares: CPU only, no reporting, no progress bars, one seed of a linear adversary.
TINY_RUNTIME: dict[str, Any] = dict(
    PINNED_DEFAULTS, use_cpu=True, report_to="none", disable_tqdm=True, adversary_seeds=1, adversary_kinds=["linear"]
)

#: The tiny lock: 2 rounds x 3 update steps, 15 weights from 2 layers a round, batch 12, challenge every round.
TINY_LOCK: dict[str, Any] = dict(
    num_rounds=2,
    update_steps_per_round=3,
    weights_per_round=15,
    layers_per_round=2,
    per_device_train_batch_size=12,
    score_batches=2,
    challenge_every=1,
    adversary_epochs=3,
    adversary_learning_rates=[1e-2],
    logging_steps=1,
    seed=3,
)

#: The unsupervised and zero-shot variants' tiny lock: 2 rounds x 2 steps, 20 weights a round, 3 pseudo-classes.
VARIANT_LOCK: dict[str, Any] = dict(
    TINY_LOCK,
    update_steps_per_round=2,
    weights_per_round=20,
    per_device_train_batch_size=16,
    score_batches=1,
    adversary_epochs=5,
    logging_steps=100,
    seed=0,
    num_pseudo_classes=3,
)

#: A lock strong enough for a fresh probe to notice: 6 rounds x 10 steps, 300 weights from 3 layers a round.
FRESH_PROBE_LOCK: dict[str, Any] = dict(
    num_rounds=6,
    update_steps_per_round=10,
    weights_per_round=300,
    layers_per_round=3,
    per_device_train_batch_size=64,
    score_batches=1,
    challenge_every=0,
    adversary_epochs=20,
    best_model_criterion="last",
    seed=0,
    logging_steps=100,
)

#: A lock that is only built, never trained (its construction is where inputs are checked): 1 round x 1 step.
CHECK_ONLY_LOCK: dict[str, Any] = dict(
    num_rounds=1,
    update_steps_per_round=1,
    weights_per_round=5,
    per_device_train_batch_size=8,
    score_batches=1,
    adversary_epochs=1,
    adversary_learning_rates=[1e-2],
)


def make_lock_config(output_dir: str | Path, preset: dict[str, Any] = TINY_LOCK, **overrides: Any) -> EncoderLockConfig:
    """``EncoderLockConfig`` writing to ``output_dir``: the tiny runtime settings, then ``preset``, then overrides."""
    return EncoderLockConfig(output_dir=str(output_dir), **{**TINY_RUNTIME, **preset, **overrides})


# ----------------------------------------------------------------------------------------- fresh probes


def fresh_probe_sets(encoder) -> dict[str, Any]:
    """60-image red (authorized) and green (prohibited) train / test sets, preprocessed for ``encoder``."""
    return {
        key: preprocess_domain(encoder, toy_domain(60, seed, style), key)
        for key, seed, style in (
            ("a_train", 10, "red"),
            ("a_test", 11, "red"),
            ("p_train", 12, "green"),
            ("p_test", 13, "green"),
        )
    }


def _fresh_probe_accuracy(trainer, train, test) -> float:
    features_train, features_test = trainer.encode(train), trainer.encode(test)
    heads = train_heads(
        features_train,
        train.labels,
        features_test,
        test.labels,
        kind="linear",
        lrs=(3e-2,),
        weight_decays=(0.0,),
        seeds=(0,),
        hidden=(32,),
        num_classes=train.num_classes,
        config=HeadTrainingConfig(epochs=150),
    )
    return best_head(heads).val_accuracy


def lock_between_fresh_probes(trainer, probe_sets) -> tuple[float, float, float, float]:
    """Fresh-probe accuracy (prohibited, authorized) before the lock, train the lock, then the same after it."""

    def probe() -> tuple[float, float]:
        return (
            _fresh_probe_accuracy(trainer, probe_sets["p_train"], probe_sets["p_test"]),
            _fresh_probe_accuracy(trainer, probe_sets["a_train"], probe_sets["a_test"]),
        )

    before = probe()
    trainer.train()
    return (*before, *probe())


# --------------------------------------------------------------------------- hand-written lock artefacts

MASK = {"count": 20, "fraction": 0.001, "fraction_of_candidates": 0.0012, "num_parameters": 20000,
        "per_layer": {"layers.0.mlp.fc1.weight": 20}}  # fmt: skip


def lock_config() -> dict:
    """A lock config as ``EncoderLockTrainer.save_model`` writes it (red authorized, green prohibited, seed 7)."""
    return {
        "format": "encoderlock/v1",
        "variant": "supervised",
        "objective": "paper",
        "authorized": [{"name": "/data/somewhere/red", "config": None}],
        "prohibited": ["green"],
        "hyperparameters": {"alpha": 1000.0, "num_rounds": 2, "weights_per_round": 10},
        "mask": MASK,
        "rounds_completed": 2,
        "best_round": 2,
        "seed": 7,
        "versions": {"hf_encoderlock": "0.1.0.dev0", "transformers": "5.24.0"},
    }


def card_report() -> dict:
    """An experiment report matching :func:`lock_config` (same mask and seed), as the model card reads it."""

    def score(domain, head, pooling, mean, validation):
        return {"role": "encoder", "domain": domain, "head": head, "pooling": pooling, "fraction": 1.0,
                "mean": mean, "validation_accuracy": [validation], "test_accuracy": [mean]}  # fmt: skip

    return {
        "authorized": ["red"],
        "prohibited": ["green"],
        "fraction": 1.0,
        "table": [
            {
                "domain": "red",
                "role": "authorized",
                "random_twin": 0.4,
                "victim": 0.95,
                "locked": 0.94,
                "lock_own_head": 0.97,
                "advantage_kept": 0.98,
                "attacker_choice_locked": "mlp/cls",
            },
            {
                "domain": "green",
                "role": "prohibited",
                "random_twin": 0.35,
                "victim": 0.9,
                "locked": 0.36,
                "lock_own_head": 0.1,
                "advantage_removed": float("nan"),
                "attacker_choice_locked": "linear/mean",
            },
        ],  # fmt: skip
        "verdict": {"green": "lock holds: 98% of the victim's advantage removed"},
        "lock": {"mask": MASK, "seed": 7},
        "experiment": {"model": "google/vit-base-patch16-224"},
        "probe_after": {
            "scores": [
                score("red", "linear", "cls", 0.93, 0.9),
                score("red", "linear", "mean", 0.5, 0.4),  # worse on validation: not the attacker's choice
                score("red", "mlp", "cls", 0.94, 0.95),
                score("green", "linear", "mean", 0.36, 0.4),
                score("green", "knn", "cls", 0.34, 0.3),
            ]
        },
    }


def front_matter(path: Path) -> dict:
    return ModelCard.load(path).data.to_dict()


#: The entries ``build_audit_folders`` edits in the locked copy.
EDITED = {"layers.0.attention.q_proj.weight": [(0, 0), (1, 2), (3, 4)], "layers.1.mlp.fc1.weight": [(5, 6), (7, 8)]}


def build_audit_folders(root: Path, domain_paths: dict | None = None) -> tuple[Path, Path]:
    """``orig/`` (a saved tiny encoder) and ``locked/``: 5 entries edited, a 7-entry mask, config and card."""
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    encoder.save_pretrained(root / "orig")
    locked = copy.deepcopy(encoder)
    params = dict(locked.backbone.named_parameters())
    mask = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items() if name in EDITED}
    with torch.no_grad():
        for name, entries in EDITED.items():
            for i, j in entries:
                params[name][i, j] += 0.5
                mask[name][i, j] = True
        mask["layers.1.mlp.fc1.weight"][0, 0] = mask["layers.1.mlp.fc1.weight"][0, 1] = True  # selected, unchanged
    locked.save_pretrained(root / "locked")
    save_mask(mask, root / "locked" / MASK_FILE)
    paths = domain_paths or {"authorized": ["red"], "prohibited": ["green"]}
    config = {
        "format": "encoderlock/v1",
        "variant": "supervised",
        "objective": "paper",
        **paths,
        "mask": {"count": 7, "per_layer": {n: int(m.sum()) for n, m in mask.items()}},
        # what a real lock declares: its budget (1 round x 7 weights) and the blocks it may change
        "hyperparameters": {"num_rounds": 1, "weights_per_round": 7, "candidate_blocks": [0, 1]},
        "rounds_completed": 1,
    }
    (root / "locked" / "encoderlock_config.json").write_text(json.dumps(config))
    write_model_card(root / "locked", report=None)
    return root / "orig", root / "locked"


def toy_main_job_inputs(root: Path) -> tuple[Path, list[str]]:
    """A saved tiny ViT and two saved toy domains under ``root``: ``(model folder, the main job's flags naming
    them)``; callers add the lock's size and ``--output_dir``."""
    model_dir = root / "tiny"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(model_dir)
    for name, style, seed in (("red", "red", 0), ("green", "green", 1)):
        splits = {"train": toy_domain(60, seed, style), "test": toy_domain(20, seed + 10, style)}
        DatasetDict(splits).save_to_disk(root / name)
    return model_dir, [
        "--model",
        str(model_dir),
        "--authorized",
        str(root / "red"),
        "--prohibited",
        str(root / "green"),
    ]


def tiny_lock_data(args: EncoderLockConfig, authorized: Dataset, prohibited: Dataset | None):
    """``(encoder, LockData)``: a fresh seed-0 tiny ViT and the lock data of ``authorized`` (red) and ``prohibited``
    (green) read and split as a lock does, without a trainer."""
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    reader = DatasetReader()
    prohibited = None if prohibited is None else reader.read(prohibited, "green")
    return encoder, LockData.load(encoder, args, reader.read(authorized, "red"), prohibited, "red", "green")
