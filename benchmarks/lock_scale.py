"""Peak memory and time of a lock against the number of images per domain, at 224 px (run by hand).

    python benchmarks/lock_scale.py [--sizes 500 2000 8000] [--out benchmarks/results/lock_scale]

Each (size, mode) runs in a fresh process, so its peak memory is its own. The data: synthetic 224-px images (a
class-dependent bright band on smooth noise, two styles for the two domains), written to disk as ``datasets`` Arrow
files and memory-mapped (as ``load_dataset`` gives them) before the measured process starts. The model: a narrow ViT
at 224 px (patch 32, width 32, 2 blocks, random init). The lock: one round, 8 masked updates at batch 16, the
default objective. Two modes per size:

- ``default``: ``lock_cache_bytes`` at its default (512 MiB a domain): small domains are held in memory, larger ones
  decoded per batch;
- ``streamed``: ``lock_cache_bytes=0``: always decoded per batch.

Memory is sampled from ``/proc/self/status`` every 20 ms: peak RSS (what ``ru_maxrss`` reports) and its two parts,
anonymous memory (what the process allocated: tensors, decoded images) and file-backed pages (the memory-mapped
dataset, which the kernel may drop at any time). Results: ``lock_scale.json``, ``lock_scale.md`` and
``lock_scale.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = 224
MAKE_DATA = r"""
import sys
import numpy as np
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image

n, size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def rows(seed, style):
    rng = np.random.default_rng(seed)
    for i in range(n):
        # noise at 1/8 of the size, upscaled: image-like (smooth) content that PNG compresses as photos do
        small = rng.integers(0, 90, (size // 8, size // 8, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR)).copy()
        band = size // 3
        pixels[(i % 3) * band:(i % 3 + 1) * band, :, 0 if style == "red" else 1] = 240
        yield {"image": Image.fromarray(pixels), "label": i % 3}

features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
for name, seed, style in (("authorized", 0, "red"), ("prohibited", 1, "green")):
    data = Dataset.from_generator(rows, gen_kwargs={"seed": seed, "style": style}, features=features,
                                  cache_dir=out + "/cache")
    data.save_to_disk(f"{out}/{name}")
"""
LOCK = r"""
import json, os, sys, tempfile, threading, time
import torch
from datasets import load_from_disk
from transformers import ViTConfig, ViTModel
from hf_encoderlock import EncoderLockConfig, EncoderLockTrainer
from hf_encoderlock.encoders import vit_image_processor

data_dir, mode, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
peaks = {"rss": 0, "anon": 0, "file": 0}

def sample():
    while True:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        kb = {key: int(fields[name].split()[0]) for key, name in (("rss", "VmRSS"), ("anon", "RssAnon"),
                                                                  ("file", "RssFile"))}
        for key, value in kb.items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
authorized, prohibited = load_from_disk(f"{data_dir}/authorized"), load_from_disk(f"{data_dir}/prohibited")
torch.manual_seed(0)
model = ViTModel(ViTConfig(image_size=size, patch_size=32, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64))
extra = {"lock_cache_bytes": 0} if mode == "streamed" else {}
with tempfile.TemporaryDirectory() as out:
    args = EncoderLockConfig(output_dir=out, num_rounds=1, update_steps_per_round=8, weights_per_round=50,
                             per_device_train_batch_size=16, per_device_eval_batch_size=64, use_cpu=True,
                             disable_tqdm=True, report_to="none", **extra)
    started = time.perf_counter()
    trainer = EncoderLockTrainer(model, args, authorized, prohibited, processing_class=vit_image_processor(size))
    construct = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train()
    lock = time.perf_counter() - started
time.sleep(0.05)
phases = trainer.phase_times()
print(json.dumps({
    "images_per_domain": len(authorized), "mode": mode,
    "held_in_memory": type(trainer.lock_authorized).__name__ == "DomainTensors",
    "peak_rss_mb": peaks["rss"] / 1024, "peak_anon_mb": peaks["anon"] / 1024, "peak_file_mb": peaks["file"] / 1024,
    "construct_s": construct, "lock_s": lock, "phases_s": phases,
    "update_step_s": phases["update"] / args.max_steps,
    "challenge_images": sum(len(v) for v in trainer.challenge_sets.values()), "threads": threads,
}))
"""
MODES = ("default", "streamed")
CGROUP = Path("/sys/fs/cgroup/memory/encoderlock_lock_scale")  # cgroup v1 memory controller (needs root)


def memory_limited(limit_mb: int):
    """A ``preexec_fn`` that puts the child in a cgroup whose memory (anonymous + page cache) is capped at
    ``limit_mb``: the kernel then reclaims the memory-mapped dataset's pages instead of keeping them resident, and
    the child is killed if the lock itself needs more. ``None`` where no cgroup v1 memory controller is writable."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1")
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
        (CGROUP / "memory.max_usage_in_bytes").write_text("0")  # reset the peak
    except OSError:
        return None

    def join() -> None:
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    return join


def run_limited(data_dir: str, n: int, threads: int, limit_mb: int) -> dict:
    """The streamed lock in a cgroup capped at ``limit_mb`` (anonymous memory + page cache): whether it completes,
    and the cgroup's peak usage."""
    join = memory_limited(limit_mb)
    if join is None:
        return {"images_per_domain": n, "mode": f"streamed, {limit_mb} MB cap", "skipped": "no writable cgroup"}
    # The dataset's pages are in the page cache, charged to whoever wrote them: drop them, so that the capped run
    # reads (and is charged for) every page it maps, and the cap binds.
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("1")
    command = [sys.executable, "-c", LOCK, data_dir, "streamed", str(SIZE), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=join)
    peak = int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 2**20
    result = {"images_per_domain": n, "mode": f"streamed, {limit_mb} MB cap", "limit_mb": limit_mb}
    result.update(completed=done.returncode == 0, returncode=done.returncode, cgroup_peak_mb=peak)
    if done.returncode == 0:
        result.update(json.loads(done.stdout.strip().splitlines()[-1]), mode=result["mode"])
    return result


def run(sizes: list[int], out: Path, threads: int, limit_mb: int | None = None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in sizes:
            data_dir = f"{scratch}/n{n}"
            subprocess.run([sys.executable, "-c", MAKE_DATA, str(n), str(SIZE), data_dir], check=True)
            for mode in MODES:
                done = subprocess.run(
                    [sys.executable, "-c", LOCK, data_dir, mode, str(SIZE), str(threads)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    raise SystemExit(f"n={n} mode={mode} failed:\n{done.stderr[-4000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
            if limit_mb is not None:
                results.append(run_limited(data_dir, n, threads, limit_mb))
                print(json.dumps(results[-1]), flush=True)
            subprocess.run(["rm", "-rf", data_dir], check=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lock_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "lock_scale.md").write_text(markdown(results))
    plot(results, out / "lock_scale.png")
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| Images per domain | Mode | Held in memory | Peak RSS (MB) | of it anonymous | of it file-backed | "
        "Construct (s) | Challenge (s) | Selection (s) | Reference features (s) | Update step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "phases_s" not in r:  # a capped run that did not complete, or could not be capped
            status = r.get("skipped") or f"killed (exit {r['returncode']}), cgroup peak {r['cgroup_peak_mb']:.0f} MB"
            lines.append(f"| {r['images_per_domain']:,} | {r['mode']} | no | {status} | | | | | | | |")
            continue
        phases = r["phases_s"]
        if "cgroup_peak_mb" in r:  # the cap is what proves the point: the kernel kept what it needed, no more
            r = {**r, "mode": f"{r['mode']} (completed; cgroup peak {r['cgroup_peak_mb']:.0f} MB)"}
        lines.append(
            f"| {r['images_per_domain']:,} | {r['mode']} | {'yes' if r['held_in_memory'] else 'no'} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['peak_file_mb']:.0f} | {r['construct_s']:.1f} | "
            f"{phases['challenge']:.1f} | {phases['selection']:.1f} | {phases.get('reference', 0.0):.1f} | "
            f"{r['update_step_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in zip(MODES, ("o-", "s--")):
        rows = [r for r in results if r["mode"] == mode]
        sizes = [r["images_per_domain"] for r in rows]
        memory.plot(sizes, [r["peak_rss_mb"] for r in rows], style, label=f"{mode}: peak RSS")
        memory.plot(sizes, [r["peak_anon_mb"] for r in rows], style, alpha=0.5, label=f"{mode}: anonymous")
        speed.plot(sizes, [r["update_step_s"] for r in rows], style, label=mode)
    capped = [r for r in results if r.get("completed")]
    if capped:
        sizes = [r["images_per_domain"] for r in capped]
        memory.plot(sizes, [r["cgroup_peak_mb"] for r in capped], "^:", label="streamed under a cap: cgroup peak")
    for axis, label in ((memory, "MB"), (speed, "seconds per masked update (batch 16 + 16)")):
        axis.set_xscale("log")
        axis.set_xlabel("images per domain (224 px)")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    figure.suptitle("Lock memory and update time against dataset size (narrow ViT, 224 px)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000], help="Images per domain.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lock_scale")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared CPU).")
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=None,
        help="Also run the streamed lock of every size in a cgroup capped at this many MB (root, cgroup v1).",
    )
    args = parser.parse_args()
    run(args.sizes, args.out, args.threads, args.memory_limit_mb)


if __name__ == "__main__":
    main()
