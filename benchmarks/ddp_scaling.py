"""Throughput of a lock on 1 vs 2 processes (gloo on CPU, NCCL on GPUs) and of a ViT-B lock vs plain fine-tuning.

    python benchmarks/ddp_scaling.py [--steps 6] [--vitb-steps 2] [--vitb-batch 2] [--skip-vitb]

Part 1 locks a small ViT with the same global batch on one process and on two (fork + torchrun-style environment,
one thread per process) and prints update-phase throughput (images/s, authorized + prohibited) and the ratio
2-process / 1-process. Part 2 compares, on a ViT-B-sized encoder (ViTConfig defaults: hidden 768, 12 layers,
patch 16, 224 px), the lock's masked update steps against full fine-tuning steps (encoder + linear head, AdamW)
on the same number of images per step.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from torch.nn import functional as F

from hf_encoderlock.encoders import EncoderAdapter, tiny_vit_encoder
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.trainer import EncoderLockTrainer

SMALL = dict(image_size=32, patch_size=4, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256)
VIT_B = dict(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def random_domain(num_images: int, seed: int, size: int, num_classes: int = 3) -> Dataset:
    """Random images with labels (throughput only: content does not matter)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(num_images)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict(
        {"image": images, "label": [i % num_classes for i in range(num_images)]}, features=features
    )


def lock_once(encoder: EncoderAdapter, size: int, steps: int, batch: int, output_dir: str) -> dict[str, float]:
    """One lock run of ``steps`` update steps (one round); returns update-phase figures."""
    args = EncoderLockConfig(
        output_dir=output_dir,
        num_rounds=1,
        update_steps_per_round=steps,
        per_device_train_batch_size=batch,
        weights_per_round=100,
        layers_per_round=1,
        score_batches=1,
        challenge_every=0,
        adversary_epochs=1,
        adversary_seeds=1,
        adversary_kinds=["linear"],
        adversary_learning_rates=[1e-2],
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=steps,
        disable_tqdm=True,
        best_model_criterion="last",
    )
    n = max(16, 2 * batch * torch.distributed.get_world_size() if torch.distributed.is_initialized() else 2 * batch)
    trainer = EncoderLockTrainer(encoder, args, random_domain(n, 0, size), random_domain(n, 1, size))
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    update = trainer.phase_times()["update"]
    images = 2 * steps * batch * args.world_size  # authorized + prohibited, all ranks
    return {"update_s": update, "total_s": total, "images": images, "world_size": args.world_size}


def _rank(rank: int, world: int, port: int, steps: int, batch: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        ACCELERATE_USE_CPU="true",
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    result = lock_once(tiny_vit_encoder(seed=0, **SMALL), SMALL["image_size"], steps, batch, os.path.join(out, "run"))
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def processes_throughput(world: int, steps: int, global_batch: int) -> dict[str, float]:
    """Update-phase images/s of a small-ViT lock on ``world`` processes with the same global batch."""
    from torch.multiprocessing import start_processes

    with tempfile.TemporaryDirectory() as out, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        start_processes(_rank, args=(world, port, steps, global_batch // world, out), nprocs=world, start_method="fork")
        results = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]
    update = max(r["update_s"] for r in results)
    return {
        "images_per_s": results[0]["images"] / update,
        "update_s": update,
        "total_s": max(r["total_s"] for r in results),
    }


def finetune_throughput(encoder: EncoderAdapter, steps: int, images_per_step: int, size: int) -> float:
    """Images/s of plain full fine-tuning (encoder + linear head, AdamW), one warm-up step not timed."""
    encoder.train()
    head = torch.nn.Linear(encoder.feature_dim, 3)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=1e-4)
    pixels = torch.randn(images_per_step, 3, size, size)
    labels = torch.arange(images_per_step) % 3
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        loss = F.cross_entropy(head(encoder(pixels)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed += (time.perf_counter() - started) if step else 0.0
    return steps * images_per_step / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--vitb-steps", type=int, default=2)
    parser.add_argument("--vitb-batch", type=int, default=2, help="images per domain per step")
    parser.add_argument("--skip-vitb", action="store_true")
    args = parser.parse_args()

    one = processes_throughput(1, args.steps, args.global_batch)
    two = processes_throughput(2, args.steps, args.global_batch)
    print(f"small ViT lock, global batch {args.global_batch}/domain, {args.steps} steps, 1 thread per process")
    print(
        f"  1 process : {one['images_per_s']:.1f} images/s (update {one['update_s']:.2f} s, run {one['total_s']:.1f} s)"
    )
    print(
        f"  2 processes: {two['images_per_s']:.1f} images/s "
        f"(update {two['update_s']:.2f} s, run {two['total_s']:.1f} s)"
    )
    print(f"  ratio 2-process / 1-process throughput: {two['images_per_s'] / one['images_per_s']:.2f}")
    if args.skip_vitb:
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as out:
        lock = lock_once(tiny_vit_encoder(seed=0, **VIT_B), 224, args.vitb_steps, args.vitb_batch, out)
    lock_rate = lock["images"] / lock["update_s"]
    tune_rate = finetune_throughput(tiny_vit_encoder(seed=0, **VIT_B), args.vitb_steps, 2 * args.vitb_batch, 224)
    print(f"ViT-B/16 224px, {2 * args.vitb_batch} images per step, {args.vitb_steps} steps")
    print(
        f"  lock masked updates : {lock_rate:.2f} images/s "
        f"(whole lock run incl. selection + challenges {lock['total_s']:.1f} s)"
    )
    print(f"  plain fine-tuning   : {tune_rate:.2f} images/s")
    print(f"  ratio lock / fine-tuning throughput: {lock_rate / tune_rate:.2f}")


if __name__ == "__main__":
    main()
