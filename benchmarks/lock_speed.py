"""Wall time of the default lock against one plain fine-tuning epoch, measured side by side in one run.

    python benchmarks/lock_speed.py [--rounds 10] [--threads 2]

Both runs use the default victim, the same authorized lock data (mnist) and the same batch size; plain
fine-tuning trains the whole encoder plus a linear head with AdamW for one epoch over the authorized lock data.
Prints the lock's time per phase (selection, masked update, challenge) and the ratio lock / fine-tuning epoch
(goal: at most 3x).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.nn import functional as F

from hf_encoderlock.data.domains import load_domain
from hf_encoderlock.data.lock_tensors import preprocess_domain
from hf_encoderlock.experiment import split_for_lock
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from hf_encoderlock.victim import load_victim


def plain_finetune_epoch(pixels: torch.Tensor, labels: torch.Tensor, batch_size: int, num_classes: int) -> float:
    """Seconds for one epoch of full fine-tuning (encoder + linear head, AdamW)."""
    encoder = load_victim()
    encoder.train()
    head = torch.nn.Linear(encoder.feature_dim, num_classes)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=1e-4)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        loss = F.cross_entropy(head(encoder(pixels[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="Lock rounds (default: EncoderLockConfig's).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--authorized", default="mnist")
    parser.add_argument("--prohibited", default="mnist-m")
    parser.add_argument(
        "--lock_cache_bytes", type=int, default=None, help="0: stream the lock data (default: the config's budget)."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lock_a, _ = split_for_lock(load_domain(args.authorized), 0.5, 1500, 0)
    lock_p, _ = split_for_lock(load_domain(args.prohibited), 0.5, 1500, 0)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"num_rounds": args.rounds} if args.rounds else {}
        if args.lock_cache_bytes is not None:
            overrides["lock_cache_bytes"] = args.lock_cache_bytes
        config = EncoderLockConfig(output_dir=tmp, use_cpu=True, disable_tqdm=True, report_to="none", **overrides)
        encoder = load_victim()
        started = time.perf_counter()
        trainer = EncoderLockTrainer(encoder, config, lock_a, lock_p, args.authorized, args.prohibited)
        setup = time.perf_counter() - started
        started = time.perf_counter()
        trainer.train()
        lock_time = time.perf_counter() - started
        phases = trainer.phase_times()

    authorized = preprocess_domain(load_victim(), lock_a, args.authorized)
    finetune = plain_finetune_epoch(
        authorized.pixel_values, authorized.labels, config.per_device_train_batch_size, authorized.num_classes
    )
    result = {
        "lock_s": lock_time,
        "lock_setup_s": setup,
        "lock_phases_s": phases,
        "lock_rounds": config.num_rounds,
        "lock_update_steps": config.max_steps,
        "plain_finetune_epoch_s": finetune,
        "finetune_images": len(authorized),
        "ratio_lock_over_finetune_epoch": lock_time / finetune,
        "threads": args.threads,
        "lock_data": type(trainer.lock_authorized).__name__,
    }
    print(json.dumps(result, indent=2))
    print(
        f"lock {lock_time:.1f} s (selection {phases['selection']:.1f}, update {phases['update']:.1f}, "
        f"challenge {phases['challenge']:.1f}) vs one fine-tuning epoch {finetune:.1f} s: "
        f"ratio {lock_time / finetune:.2f}x (goal <= 3x)"
    )


if __name__ == "__main__":
    main()
