"""Lock encoders that are not the built-in ViT: a ResNet built from its config and a plain ``nn.Module``.

    python examples/lock_other_models.py                   # both, offline on a CPU, built-in digits data
    python examples/lock_other_models.py --images 64 --num_rounds 1 --output_dir /tmp/other   # a quick smoke run

Both go through ``EncoderLockTrainer`` with the default (tuned) ``EncoderLockConfig``: the ResNet with its image
processor (``processing_class``), the plain module with a preprocess function. Each is saved, reloaded and probed
once with a fresh linear head on images the lock never used, next to the same probe on the unlocked model.
Randomly initialised models know little, so the point here is the path, not the figures: lock a pre-trained model
of your own the same way.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

from hf_encoderlock import (
    EncoderAdapter,
    EncoderLockConfig,
    EncoderLockTrainer,
    ProbeConfig,
    load_domain,
    run_probe_suite,
)

IMAGE_SIZE = 32


class SmallConvNet(torch.nn.Module):
    """Any torch module from pixels to features: two convolutions and a projection."""

    def __init__(self, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        self.project = torch.nn.Linear(width, dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv2(torch.relu(self.conv1(pixels))))
        return self.project(hidden.mean(dim=(2, 3)))


def to_pixels(images) -> torch.Tensor:
    """The plain module's preprocessing: RGB, IMAGE_SIZE square, 0-1 scaled, channels first."""
    arrays = [np.asarray(i.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float32) / 255 for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def resnet() -> tuple[ResNetModel, ConvNextImageProcessorPil]:
    """A small ResNet from its config (random weights: no pre-trained weights are reachable offline)."""
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    processor = ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0)
    return ResNetModel(config).eval(), processor


def halves(dataset: Dataset, images: int, seed: int) -> tuple[Dataset, Dataset]:
    """(lock part, attacker part) of a training split, stratified by label."""
    parts = dataset.shuffle(seed=seed).select(range(min(images, len(dataset))))
    split = parts.train_test_split(test_size=0.5, stratify_by_column="label", seed=seed)
    return split["train"], split["test"]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authorized", default="mnist", help="Built-in authorized domain.")
    parser.add_argument("--prohibited", default="syn-digits", help="Built-in prohibited domain.")
    parser.add_argument("--images", type=int, default=1000, help="Training images used per domain.")
    parser.add_argument("--num_rounds", type=int, default=None, help="Lock rounds (default: the tuned lock's).")
    parser.add_argument("--output_dir", type=Path, default=Path("encoderlock_other_models"))
    args = parser.parse_args(argv)

    authorized, prohibited = load_domain(args.authorized), load_domain(args.prohibited)
    lock_a, probe_a = halves(authorized["train"], args.images, seed=0)
    lock_p, probe_p = halves(prohibited["train"], args.images, seed=0)
    attacker = {
        args.authorized: {"train": probe_a, "test": authorized["test"].select(range(min(300, args.images)))},
        args.prohibited: {"train": probe_p, "test": prohibited["test"].select(range(min(300, args.images)))},
    }
    overrides = {} if args.num_rounds is None else {"num_rounds": args.num_rounds}
    probe = ProbeConfig(fractions=(1.0,), seeds=(0,), heads=("linear",), progress=False)
    torch.manual_seed(0)
    backbone, processor = resnet()
    models = {"resnet": (backbone, processor), "plain-module": (SmallConvNet(), to_pixels)}
    results: dict[str, dict[str, float]] = {}
    for name, (model, processing) in models.items():
        unlocked = copy.deepcopy(model)
        config = EncoderLockConfig(output_dir=str(args.output_dir / name), report_to="none", **overrides)
        trainer = EncoderLockTrainer(model, config, lock_a, lock_p, args.authorized, args.prohibited,
                                     processing_class=processing)  # fmt: skip
        trainer.train()
        trainer.save_model()
        if name == "plain-module":
            reloaded = EncoderAdapter.from_pretrained(config.output_dir, model=SmallConvNet(), preprocess_fn=to_pixels)
        else:
            reloaded = EncoderAdapter.from_pretrained(config.output_dir)
        before = run_probe_suite(EncoderAdapter(unlocked, image_processor=trainer.encoder.image_processor,
                                                preprocess_fn=trainer.encoder.preprocess_fn), attacker, probe,
                                 random_twin=False)  # fmt: skip
        after = run_probe_suite(reloaded, attacker, probe, random_twin=False)
        results[name] = {
            f"{domain} {when}": report.best_scores("encoder")[index].mean
            for when, report in (("before", before), ("after", after))
            for index, domain in enumerate(attacker)
        }
        print(name, {key: round(value, 3) for key, value in results[name].items()})
    return results


if __name__ == "__main__":
    main()
