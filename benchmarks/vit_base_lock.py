"""A real-size lock on this machine: ViT-B/16 at 224 px, 2 rounds, 2,000 images per domain (run by hand).

    python benchmarks/vit_base_lock.py [--images 2000] [--out benchmarks/results/vit_base_lock]

The model is ``ViTModel(ViTConfig())`` (ViT-B/16: 12 blocks, width 768, 86M parameters, 224 px) at random init: no
pretrained weights are reachable offline, and time and memory do not depend on the weights. The data: the first
``--images`` training images of the built-in ``mnist`` (authorized) and ``mnist-m`` (prohibited), resized to 224 px by
the processor. The lock: the default objective and selection (20 x 510 weights a round in the patch embedding and
block 0 budgeted, of which 2 rounds run), 5 masked updates a round at batch 16 + 16, challenges on 128 images of each
split, lock data streamed (``lock_cache_bytes=0``). Then plain fine-tuning of the same encoder (every weight, a linear
head, AdamW) on the same batches, for images per second side by side. Peak RSS is sampled from ``/proc``.

Writes ``vit_base_lock.json`` and ``vit_base_lock.md`` under ``--out``; docs/LARGE_DATASETS.md quotes them,
with an estimate of a full default-budget lock of this model on one GPU derived from the measured ratio (stated as an
estimate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from hf_encoderlock import EncoderLockConfig, EncoderLockTrainer
from hf_encoderlock.data.domains import load_domain
from hf_encoderlock.encoders import vit_image_processor

IMAGE_SIZE = 224
PEAKS_KB = {"rss": 0}


def _sample_memory() -> None:
    """Peak resident memory of this process, sampled every 50 ms (ru_maxrss would include the dataset build)."""
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    PEAKS_KB["rss"] = max(PEAKS_KB["rss"], int(line.split()[1]))
        time.sleep(0.05)


def plain_finetune_images_per_second(encoder, pixels: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Full fine-tuning (every encoder weight + a linear head, AdamW) on batches of ``pixels``: images per second,
    the first step (allocation) not counted."""
    head = nn.Linear(encoder.feature_dim, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-4)
    encoder.train().requires_grad_(True)
    batch = len(pixels) // (steps + 1)
    started = None
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        rows = slice(step * batch, (step + 1) * batch)
        loss = nn.functional.cross_entropy(head(encoder(pixels[rows])), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="Images per domain.")
    parser.add_argument("--steps", type=int, default=5, help="Masked updates per round.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vit_base_lock")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
    threading.Thread(target=_sample_memory, daemon=True).start()

    authorized = load_domain("mnist")["train"].select(range(args.images))
    prohibited = load_domain("mnist-m")["train"].select(range(args.images))
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=IMAGE_SIZE), add_pooling_layer=False)
    batch = 16
    with tempfile.TemporaryDirectory() as out:
        config = EncoderLockConfig(
            output_dir=out,
            num_rounds=2,
            update_steps_per_round=args.steps,
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=32,
            challenge_max_images=128,
            lock_cache_bytes=0,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        started = time.perf_counter()
        trainer = EncoderLockTrainer(
            model, config, authorized, prohibited, "mnist", "mnist-m", processing_class=vit_image_processor(224)
        )
        construct = time.perf_counter() - started
        started = time.perf_counter()
        trainer.train()
        lock = time.perf_counter() - started
        phases = trainer.phase_times()
        lock_peak_mb = PEAKS_KB["rss"] / 1024
        pixels = trainer.lock_authorized.take(torch.arange(4 * 2 * batch))
        challenges = [h for h in trainer.history if "time_challenge_s" in h]
    masked_ips = config.max_steps * 2 * batch / phases["update"]
    plain_ips = plain_finetune_images_per_second(trainer.encoder, pixels.pixel_values, pixels.labels, steps=3)
    result = {
        "model": "ViTModel(ViTConfig()) (ViT-B/16, 224 px, random init)",
        "parameters": sum(p.numel() for p in trainer.encoder.parameters()),
        "images_per_domain": args.images,
        "rounds": config.num_rounds,
        "updates": config.max_steps,
        "batch_per_domain": batch,
        "mask_size": int(sum(int(m.sum()) for m in trainer.mask.values())),
        "construct_s": construct,
        "lock_s": lock,
        "phases_s": phases,
        "masked_update_images_per_s": masked_ips,
        "plain_finetune_images_per_s": plain_ips,
        "lock_peak_rss_mb": lock_peak_mb,
        "last_update_logs": trainer.lock_state.last_logs,  # the objective's terms at the last update: finite, sane
        "challenges": challenges,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vit_base_lock.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        (f"Construct (decode + hash check, 2 x {args.images} images)", f"{construct:.0f} s"),
        (f"Challenges ({len(challenges)}, 4 x 128 images each)", f"{phases['challenge']:.0f} s"),
        (f"Selection ({config.num_rounds} rounds)", f"{phases['selection']:.0f} s"),
        (f"Masked updates ({config.max_steps} x {batch} + {batch} images)", f"{phases['update']:.0f} s"),
        ("Lock, end to end", f"{lock:.0f} s"),
        ("Masked updates, images / s", f"{masked_ips:.1f}"),
        ("Plain full fine-tuning, images / s", f"{plain_ips:.1f}"),
        ("Peak RSS during the lock", f"{lock_peak_mb:,.0f} MB"),
    ]
    table = "| ViT-B/16, 224 px, CPU | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    (args.out / "vit_base_lock.md").write_text(table)
    print(table)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
