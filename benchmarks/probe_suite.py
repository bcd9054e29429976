"""Benchmark (run by hand): the probe suite against one feature-extraction pass.

    python benchmarks/probe_suite.py                      # default victim, mnist + digits
    python benchmarks/probe_suite.py --tiny --threads 1   # tiny random ViT (no victim needed)

Times (1) one extraction pass (every domain's train and test split, every pooling, no cache) and (2) the whole
probe suite from scratch (extraction included, no cache) with the default ProbeConfig, and prints their ratio.
Goal: suite <= 1.5x one extraction pass. With the random twin the suite extracts twice (encoder and twin), so the
ratio is also given per encoder probed.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from hf_encoderlock.data.domains import load_domain  # noqa: E402
from hf_encoderlock.probing.features import extract_features, resolve_poolings  # noqa: E402
from hf_encoderlock.probing.suite import ProbeConfig, run_probe_suite  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Use a tiny random ViT instead of the default victim.")
    parser.add_argument("--domains", nargs="+", default=["mnist", "digits"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for extraction (default: as is).")
    parser.add_argument("--no-random-twin", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--fractions", type=float, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from hf_encoderlock.encoders import tiny_vit_encoder

        encoder = tiny_vit_encoder(seed=1)
    else:
        from hf_encoderlock.victim import load_victim

        encoder = load_victim()
    domains = {name: load_domain(name) for name in args.domains}
    overrides = {k: tuple(v) for k, v in (("seeds", args.seeds), ("fractions", args.fractions)) if v}
    config = ProbeConfig(batch_size=args.batch_size, progress=False, **overrides)
    poolings = resolve_poolings(encoder, config.poolings)
    images = sum(d[s].num_rows for d in domains.values() for s in ("train", "test"))
    print(
        f"encoder {encoder.name}: poolings {poolings}; {images} images in {list(domains)}; "
        f"torch threads {torch.get_num_threads()}"
    )

    tick = time.perf_counter()
    for dataset in domains.values():
        for split in ("train", "test"):
            extract_features(encoder, dataset[split], poolings, batch_size=args.batch_size, progress=False)
    one_pass = time.perf_counter() - tick
    print(f"one extraction pass: {one_pass:.2f} s ({images / one_pass:.0f} img/s)")

    report = run_probe_suite(encoder, domains, config, random_twin=not args.no_random_twin)
    suite = report.timings["total"]
    extraction = sum(v for k, v in report.timings.items() if k.startswith("extract/"))
    heads = sum(v for k, v in report.timings.items() if k.startswith("heads/"))
    encoders = len(report.roles)
    cells = len(report.scores)
    print(
        f"probe suite: {suite:.2f} s total = {extraction:.2f} s extraction + {heads:.2f} s heads "
        f"({cells} (domain, pooling, fraction, head) cells x {len(config.seeds)} seeds, {encoders} encoder(s))"
    )
    print(f"ratio suite / one extraction pass: {suite / one_pass:.2f}")
    print(f"ratio per encoder probed: {suite / encoders / one_pass:.2f}  (goal <= 1.5)")
    for best in report.best_scores():
        print(
            f"  best {best.domain} @ {best.fraction:g}: {100 * best.mean:.1f} ± {100 * best.std:.1f} "
            f"({best.usual_choice})"
        )


if __name__ == "__main__":
    main()
