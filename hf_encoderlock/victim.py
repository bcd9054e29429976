"""The default victim: a small ViT pre-trained on a mixture of built-in domains.

No pre-trained vision weights are reachable offline, so the project trains its own stand-in for an
ImageNet-pretrained encoder: a ViT (about 1M parameters, 32x32 input) trained with one linear head per domain on
the *training* splits of several built-in domains. One built-in domain (``digits``) is left out of pre-training so
that reports show how the encoder transfers to a domain it never saw. The weights ship inside the package
(``hf_encoderlock/assets/victim``), built by ``examples/pretrain_victim.py``; when they are missing they are built
on first use and cached.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ._files import MODEL_WEIGHTS_FILE, VICTIM_CACHE_NAME, VICTIM_RECIPE_FILE
from ._utils import atomic_folder
from .data.domains import default_cache_dir, load_domain
from .encoders import EncoderAdapter, vit_image_processor

# ViTConfig is imported where the victim's architecture is built, as encoders.py does with transformers' model classes
# (an import that costs seconds, which reading the victim's recipe does not need).

VICTIM_ASSET_DIR = Path(__file__).parent / "assets" / "victim"


@dataclass
class VictimConfig:
    """Architecture and pre-training recipe of the default victim encoder."""

    image_size: int = field(default=32, metadata={"help": "Input resolution (pixels)."})
    patch_size: int = field(default=8, metadata={"help": "ViT patch size."})
    hidden_size: int = field(default=128, metadata={"help": "Token width."})
    num_hidden_layers: int = field(default=6, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads per block."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width inside each block."})
    domains: list[str] = field(
        default_factory=lambda: ["mnist", "mnist-m", "syn-digits", "letters"],
        metadata={"help": "Built-in domains whose training splits pre-train the victim (one head each)."},
    )
    epochs: int = field(default=20, metadata={"help": "Passes over the pooled training images."})
    batch_size: int = field(default=64, metadata={"help": "Images per step (mixed across domains)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_fraction: float = field(default=0.05, metadata={"help": "Fraction of steps with linear warm-up."})
    max_shift: int = field(default=2, metadata={"help": "Random translation (pixels) used as augmentation."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, augmentation and initialisation."})
    domain_seed: int = field(default=0, metadata={"help": "Seed of the built-in domains used."})

    def vit_config(self):
        from transformers import ViTConfig

        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_channels=3,
        )


def build_victim_architecture(config: VictimConfig, seed: int | None = None) -> EncoderAdapter:
    """The victim's architecture, randomly initialised (the victim's random-init twin uses this too)."""
    from transformers import ViTModel

    torch.manual_seed(config.seed if seed is None else seed)
    backbone = ViTModel(config.vit_config())
    return EncoderAdapter(
        backbone.eval(), pooling="cls", image_processor=vit_image_processor(config.image_size), name="victim-vit"
    )


def _random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with the normalised value of black."""
    if max_shift <= 0:
        return pixels
    batch, _, height, width = pixels.shape
    padded = F.pad(pixels, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
    rows = (torch.arange(height).unsqueeze(0) + offsets[:, :1]).unsqueeze(-1)  # (batch, height, 1)
    cols = (torch.arange(width).unsqueeze(0) + offsets[:, 1:]).unsqueeze(1)  # (batch, 1, width)
    index = torch.arange(batch).view(batch, 1, 1)
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def _encode_split(encoder: EncoderAdapter, dataset, chunk: int = 512) -> torch.Tensor:
    parts = []
    for start in range(0, len(dataset), chunk):
        images = dataset[start : start + chunk]["image"]
        parts.append(encoder.preprocess(images))
    return torch.cat(parts)


def pretrain_victim(
    config: VictimConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> EncoderAdapter:
    """Pre-train the victim on the configured built-in domains; save it to ``output_dir`` if given."""
    config = config or VictimConfig()
    torch.manual_seed(config.seed)
    encoder = build_victim_architecture(config)
    pixels, labels, domain_ids, heads = [], [], [], nn.ModuleList()
    for index, name in enumerate(config.domains):
        domain = load_domain(name, seed=config.domain_seed)["train"]
        pixels.append(_encode_split(encoder, domain))
        labels.append(torch.tensor(domain["label"]))
        domain_ids.append(torch.full((len(domain),), index))
        heads.append(nn.Linear(config.hidden_size, domain.features["label"].num_classes))
    pixels, labels, domain_ids = torch.cat(pixels), torch.cat(labels), torch.cat(domain_ids)
    log(f"pre-training the victim on {len(pixels)} images from {', '.join(config.domains)}")

    model = nn.ModuleDict({"encoder": encoder, "heads": heads}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(pixels) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step, total) / total))),
    )
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    bar = tqdm(total=total, desc="pre-train victim")
    for epoch in range(config.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        correct = seen = 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            x = _random_shift(pixels[batch], config.max_shift, generator)
            features = encoder(x)
            loss = torch.zeros(())
            for index, head in enumerate(heads):
                rows = domain_ids[batch] == index
                if rows.any():
                    logits = head(features[rows])
                    loss = loss + F.cross_entropy(logits, labels[batch][rows], reduction="sum")
                    correct += int((logits.argmax(-1) == labels[batch][rows]).sum())
            seen += len(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(batch)).backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
        log(f"epoch {epoch + 1}/{config.epochs}: train accuracy {correct / seen:.3f}")
    bar.close()
    encoder.eval()
    log(f"pre-training took {time.perf_counter() - started:.0f} s")
    if output_dir is not None:
        save_victim(encoder, config, output_dir)
    return encoder


def save_victim(encoder: EncoderAdapter, config: VictimConfig, output_dir: str | os.PathLike) -> None:
    """Save the victim folder atomically (written aside, then renamed into place)."""
    with atomic_folder(output_dir) as staging:
        encoder.save_pretrained(staging)
        (staging / VICTIM_RECIPE_FILE).write_text(json.dumps(asdict(config), indent=2))


def victim_path(cache_dir: str | os.PathLike | None = None, build: bool = True) -> Path:
    """Folder of the default victim: the shipped asset, else a cached build (built now if ``build``)."""
    if (VICTIM_ASSET_DIR / MODEL_WEIGHTS_FILE).is_file():
        return VICTIM_ASSET_DIR

    cached = Path(cache_dir or default_cache_dir()) / VICTIM_CACHE_NAME
    if not (cached / MODEL_WEIGHTS_FILE).is_file():
        if not build:
            raise FileNotFoundError(f"no shipped victim and no cached build at {cached}")
        pretrain_victim(VictimConfig(), output_dir=cached)
    return cached


def load_victim(cache_dir: str | os.PathLike | None = None) -> EncoderAdapter:
    """The default victim encoder (CLS pooling), loaded from the package or built on first use."""
    folder = victim_path(cache_dir)
    encoder = EncoderAdapter.from_pretrained(folder, pooling="cls")
    encoder.name = "victim-vit"
    return encoder
