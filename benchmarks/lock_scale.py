"""Peak memory and time of a lock against the number of images per domain, at 224 px (run by hand).

    python benchmarks/lock_scale.py [--sizes 500 2000] [--out benchmarks/results/lock_scale]

Each size runs in a fresh process (so peak RSS is that run's own): synthetic 224-px images (a class-dependent bright
band on noise, two styles for the two domains), a narrow ViT at 224 px (patch 32, width 32, 2 blocks, random init),
one round of 2 masked updates at batch 16. Reports peak RSS, the trainer's construction (decoding and preprocessing
the lock data) and the lock itself; results as JSON next to a Markdown table. The lock keeps every preprocessed
image of both domains in memory, so peak RSS grows with the data (what streaming lock data would remove).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, tempfile, time
import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image
from transformers import ViTConfig, ViTModel
from hf_encoderlock import EncoderLockConfig, EncoderLockTrainer
from hf_encoderlock.encoders import vit_image_processor

n, size = int(sys.argv[1]), 224
torch.set_num_threads(2)

def domain(seed, style):
    rng = np.random.default_rng(seed)
    def rows():
        for i in range(n):
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            band = size // 3
            pixels[(i % 3) * band:(i % 3 + 1) * band, :, 0 if style == "red" else 1] = 240
            yield {"image": Image.fromarray(pixels), "label": i % 3}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    return Dataset.from_generator(rows, features=features)

authorized, prohibited = domain(0, "red"), domain(1, "green")
torch.manual_seed(0)
model = ViTModel(ViTConfig(image_size=size, patch_size=32, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64))
with tempfile.TemporaryDirectory() as out:
    args = EncoderLockConfig(output_dir=out, num_rounds=1, update_steps_per_round=2, weights_per_round=50,
                             per_device_train_batch_size=16, use_cpu=True, disable_tqdm=True, report_to="none")
    started = time.perf_counter()
    trainer = EncoderLockTrainer(model, args, authorized, prohibited, processing_class=vit_image_processor(size))
    construct = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train()
    lock = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images_per_domain": n, "peak_rss_mb": peak_mb, "construct_s": construct, "lock_s": lock,
                  "phases_s": trainer.phase_times()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000], help="Images per domain.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lock_scale")
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        done = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lock_scale.json").write_text(json.dumps(results, indent=2))
    lines = ["| Images per domain | Peak RSS (MB) | Construct (s) | Lock (s) |", "|---|---|---|---|"]
    lines += [
        f"| {r['images_per_domain']} | {r['peak_rss_mb']:.0f} | {r['construct_s']:.1f} | {r['lock_s']:.1f} |"
        for r in results
    ]
    (args.out / "lock_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
