"""Implementation choices of the main job, each timed side by side in one run on the built-in victim.

    python benchmarks/main_job_speed.py --output benchmarks/results/main_job_speed [--threads 2] [--repeats 7]

1. Attention: a short default lock (``--rounds`` rounds, no repair steps) under ``sdpa`` (the fused kernels
   transformers picks by default) and ``eager`` (plain matrix products and a softmax), alternated so that both see
   the same machine state.
2. Prohibited batch: the same short lock with ``prohibited_batch_factor`` 2 and 1, alternated.
3. Probe heads: the probe suite's fits (linear, MLP, kNN; CLS and mean pooling; 3 seeds; fractions 1%, 10%, 100%)
   on the victim's features of ``mnist`` and ``mnist-m``, with 1 and 2 torch threads for the head fits, alternated;
   reports whether both thread counts gave the same test accuracies.

Each figure is the median over ``--repeats`` runs (the first of each setting is a warm-up and is dropped). Writes
``main_job_speed.json`` and ``main_job_speed.md`` under ``--output``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_encoderlock.data.domains import load_domain
from hf_encoderlock.experiment import split_for_lock
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from hf_encoderlock.probing.suite import ProbeConfig, run_probe_suite
from hf_encoderlock.victim import load_victim

# the short-lock comparisons: each names its settings, the first being the one the others are compared with
LOCK_COMPARISONS: dict[str, dict[str, dict]] = {
    "attention": {"sdpa": {"attention": "sdpa"}, "eager": {"attention": "eager"}},
    "prohibited_batch": {
        "prohibited_batch_factor 2": {"prohibited_batch_factor": 2},
        "prohibited_batch_factor 1": {"prohibited_batch_factor": 1},
    },
}
HEAD_THREADS = (1, 2)


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def time_short_locks(settings: dict[str, dict], rounds: int, repeats: int, cache_dir: str) -> dict:
    """Seconds of a ``rounds``-round default lock (no repair steps) per setting, alternated so that every setting
    sees the same machine state, with each setting's last phase times. A setting is a dict of
    ``EncoderLockConfig`` fields, plus ``attention`` for the victim's attention implementation."""
    lock_a, _ = split_for_lock(load_domain("mnist", cache_dir=cache_dir), 0.5, 1500, 0)
    lock_p, _ = split_for_lock(load_domain("mnist-m", cache_dir=cache_dir), 0.5, 1500, 0)
    times: dict[str, list[float]] = {name: [] for name in settings}
    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats + 1):
            for name, setting in settings.items():
                fields = dict(setting)
                encoder = load_victim(cache_dir)
                encoder.backbone.set_attn_implementation(fields.pop("attention", "sdpa"))
                config = EncoderLockConfig(
                    output_dir=tmp, num_rounds=rounds, repair_steps=0, report_to="none", disable_tqdm=True, **fields
                )
                trainer = EncoderLockTrainer(encoder, config, lock_a, lock_p, "mnist", "mnist-m")
                started = time.perf_counter()
                trainer.train()
                times[name].append(time.perf_counter() - started)
                phases[name] = trainer.phase_times()
    return {
        "rounds": rounds,
        "settings": settings,
        "seconds": {name: _median_after_warmup(t) for name, t in times.items()},
        "all_seconds": times,
        "last_phase_seconds": phases,
    }


def time_heads(repeats: int, cache_dir: str) -> dict:
    """Seconds of the probe suite's head fits on cached victim features, per head thread count."""
    encoder = load_victim(cache_dir)
    domains = {name: load_domain(name, cache_dir=cache_dir) for name in ("mnist", "mnist-m")}
    times: dict[int, list[float]] = {n: [] for n in HEAD_THREADS}
    accuracies: dict[int, list] = {}
    for _ in range(repeats + 1):
        for threads in HEAD_THREADS:
            config = ProbeConfig(head_num_threads=threads, progress=False)
            started = time.perf_counter()
            # the warm-up run caches the features under cache_dir: the timed runs load them and fit the heads
            report = run_probe_suite(encoder, domains, config, random_twin=False, cache_dir=cache_dir)
            times[threads].append(time.perf_counter() - started)
            accuracies[threads] = [s.test_accuracy for s in report.scores]
    return {
        "seconds": {str(n): _median_after_warmup(t) for n, t in times.items()},
        "all_seconds": {str(n): t for n, t in times.items()},
        "same_test_accuracies": accuracies[1] == accuracies[2],
    }


def _flag(name: str, value) -> str:
    return f"--{name} {' '.join(value) if isinstance(value, (list, tuple)) else value}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="Folder for main_job_speed.json / .md.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the process.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed runs per setting (after one warm-up).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each timed lock.")
    parser.add_argument("--cache_dir", required=True, help="Cache folder for domains and the victim's features.")
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=(*LOCK_COMPARISONS, "heads"),
        default=(*LOCK_COMPARISONS, "heads"),
        help="The comparisons to run (default: all).",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    result = {
        "command": "python benchmarks/main_job_speed.py " + " ".join(_flag(k, v) for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    for name in args.compare:
        if name in LOCK_COMPARISONS:
            result[name] = time_short_locks(LOCK_COMPARISONS[name], args.rounds, args.repeats, args.cache_dir)
    if "heads" in args.compare:
        result["heads"] = time_heads(args.repeats, args.cache_dir)
    (output / "main_job_speed.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Implementation choices of the main job, timed side by side",
        "",
        f"`{result['command']}` ({result['machine']}, torch {result['torch']}); medians over {args.repeats} runs.",
        "",
        "| Choice | Setting | Seconds | Ratio to the first |",
        "|---|---|---|---|",
    ]
    for name in LOCK_COMPARISONS:
        if name not in result:
            continue
        seconds = result[name]["seconds"]
        first = next(iter(seconds.values()))
        for setting, value in seconds.items():
            label = f"{name.replace('_', ' ')}, a {args.rounds}-round lock"
            lines.append(f"| {label} | {setting} | {value:.1f} | {value / first:.2f} |")
    if "heads" in result:
        heads = result["heads"]
        first = heads["seconds"][str(HEAD_THREADS[0])]
        for threads in HEAD_THREADS:
            seconds = heads["seconds"][str(threads)]
            lines.append(
                f"| probe heads, mnist + mnist-m | {threads} thread(s) | {seconds:.2f} | {seconds / first:.2f} |"
            )
        lines += ["", f"Same test accuracies with 1 and 2 head threads: {heads['same_test_accuracies']}."]
    (output / "main_job_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
