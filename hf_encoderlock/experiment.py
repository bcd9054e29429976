"""The main job: probe an encoder, lock it, probe it again, and report honestly.

``run_lock_experiment`` is what ``examples/lock_vit.py`` runs. Each lock domain's training split is divided in
two: the part the lock may use (``lock_share``, capped at ``max_lock_images``) and the part the attacker's probes
train on, so a lock that only scrambles the images it saw does not pass. Probes are scored on each domain's test
split, which neither the lock nor any selection ever sees. Everything is written to a staging folder that is
renamed into place at the end, so an interrupted run never leaves an output folder that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch
from datasets import DatasetDict
from transformers.integrations import get_reporting_integration_callbacks

from ._files import CHECKPOINTS_SUBDIR, LOCKED_SUBDIR, REPORT_JSON, REPORT_MD, REPORT_PNG, VICTIM_SUBDIR
from ._utils import (
    atomic_folder,
    check_output_folder,
    exclusive_output_folder,
    optional_import,
    remove_package_outputs,
    remove_stale_staging,
)
from .data.domains import BUILTIN_DOMAINS, DomainSpec, load_domain, train_validation_split
from .data.errors import DomainError
from .data.lock_tensors import combine_labelled_domains
from .encoders import EncoderAdapter, load_encoder
from .hub.card import write_model_card
from .lock.config import EncoderLockConfig, check_supported_settings
from .lock.state import checkpoint_problem, checkpoint_to_resume
from .lock.trainer import EncoderLockTrainer
from .probing.adaptive import AdaptiveConfig, run_adaptive_suite
from .probing.lock_report import build_lock_report, lock_report_markdown, plot_lock_report
from .probing.probe_report import TWIN_ROLE
from .probing.sanitize import count_outliers, count_piled_up
from .probing.suite import ProbeConfig, run_probe_suite
from .victim import load_victim

logger = logging.getLogger(__name__)


def _public_path(source: str | None) -> str | None:
    """A folder or Hub id as published: a local folder by its last component only (the card's privacy rule)."""
    if source is not None and Path(source).expanduser().exists():
        return Path(source).expanduser().resolve().name
    return source


@dataclass
class LockExperimentArguments:
    """What to lock, against what, and how the result is measured."""

    model: str | None = field(
        default=None,
        metadata={"help": "Encoder to lock: a Hub id or a folder (default: the built-in offline victim ViT)."},
    )
    image_processor: str | None = field(
        default=None,
        metadata={
            "help": "For a --model saved without an image processor: a folder or Hub id whose saved processor "
            "prepares the images (the base model's, say); it is saved with the victim and locked folders. None: the "
            "model's own."
        },
    )
    pooling: str = field(default="auto", metadata={"help": "Feature pooling: auto, cls, mean, pooler, spatial_mean."})
    authorized: str = field(
        default="mnist",
        metadata={
            "help": "Authorized domain(s): built-in name, folder or Hub id; several separated by commas "
            "(each is preserved by the lock's authorized loss)."
        },
    )
    prohibited: str = field(default="mnist-m", metadata={"help": "Prohibited domain: built-in name, folder or Hub id."})
    report_domains: list[str] | None = field(
        default=None,
        metadata={
            "help": "Further domains probed before and after (default: every other built-in domain with the built-in "
            "victim; none with --model)."
        },
    )
    image_column: str = field(default="image", metadata={"help": "Image column of Hub / folder domains."})
    label_column: str = field(default="label", metadata={"help": "Label column of Hub / folder domains."})
    lock_share: float = field(
        default=0.5, metadata={"help": "Share of each lock domain's training split the lock may use."}
    )
    max_lock_images: int = field(default=1500, metadata={"help": "Cap on images per domain used by the lock."})
    domain_seed: int = field(default=0, metadata={"help": "Seed of built-in domains and of the lock/probe split."})
    probe_fractions: list[float] = field(
        default_factory=lambda: [0.01, 0.1, 1.0], metadata={"help": "Training fractions the probes use."}
    )
    probe_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "Probe seeds (each carves its own validation split)."}
    )
    probe_batch_size: int = field(default=256, metadata={"help": "Images per forward pass during extraction."})
    adaptive_attacks: bool = field(
        default=True,
        metadata={
            "help": "After the lock, attack each prohibited domain as an attacker who knows the method would "
            "(weight sanitisation, input transformations, both; probe-only) and report the worst case."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Cache for built-in domains and features (default: built-in domains in $HF_ENCODERLOCK_CACHE or "
            "~/.cache/hf_encoderlock; features in memory only)."
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.lock_share < 1.0:
            raise ValueError(f"lock_share must be in (0, 1), got {self.lock_share}")
        if self.max_lock_images < 16:
            raise ValueError(f"max_lock_images must be >= 16, got {self.max_lock_images}")
        if self.image_processor is not None and self.model is None:
            raise ValueError("image_processor is for a --model of yours; the built-in victim has its own")

    def spec(self, name: str) -> DomainSpec:
        return DomainSpec(name=name, image_column=self.image_column, label_column=self.label_column)

    def public_spec(self, name: str) -> dict[str, Any]:
        """The domain spec as recorded in published files: local paths are reduced to their display name."""
        spec = asdict(self.spec(name))
        if Path(name).expanduser().exists():
            spec["name"] = self.spec(name).display_name
        return spec

    def public_record(self) -> dict[str, Any]:
        """These arguments as recorded in the report, under the card's privacy rule: a local domain or model folder
        is named by its last component only, and the cache folder is left out."""
        record = asdict(self)
        record["authorized"] = ",".join(self.public_spec(name)["name"] for name in self.authorized_domains())
        record["prohibited"] = self.public_spec(self.prohibited)["name"]
        if self.report_domains is not None:
            record["report_domains"] = [self.public_spec(name)["name"] for name in self.report_domains]
        record["model"] = self.public_model()
        record["image_processor"] = _public_path(self.image_processor)
        record.pop("cache_dir")
        return record

    def public_model(self) -> str | None:
        """``model`` as published: a local folder by its last component only."""
        return _public_path(self.model)

    def authorized_domains(self) -> list[str]:
        """The authorized domain names (``authorized`` split at commas)."""
        return [name.strip() for name in self.authorized.split(",") if name.strip()]

    def other_domains(self) -> list[str]:
        lock_domains = (*self.authorized_domains(), self.prohibited)
        if self.report_domains is not None:
            return [d for d in self.report_domains if d not in lock_domains]
        if self.model is None:
            return [d for d in BUILTIN_DOMAINS if d not in lock_domains]
        return []


def split_for_lock(dataset: DatasetDict, share: float, cap: int, seed: int):
    """(lock part of train, DatasetDict of the attacker's part of train + the untouched test split)."""
    probe_part, lock_part = train_validation_split(dataset["train"], share, seed)
    if len(lock_part) > cap:
        lock_part = lock_part.select(range(cap))
    return lock_part, DatasetDict({"train": probe_part, "test": dataset["test"]})


def _load_domains(args: LockExperimentArguments, variant: str = "supervised") -> dict[str, DatasetDict]:
    names = [*args.authorized_domains(), args.prohibited, *args.other_domains()]
    domains = {}
    for name in names:
        try:
            domains[args.spec(name).display_name] = load_domain(
                args.spec(name), seed=args.domain_seed, cache_dir=args.cache_dir
            )
        except DomainError as error:
            if variant == "unsupervised" and name == args.prohibited:  # found on the user's path
                raise DomainError(
                    f"{error}. The main job measures the lock with probes on the prohibited domain, so it needs its "
                    "labels (class sub-folders) even with variant 'unsupervised', whose lock never reads them; to "
                    "lock with unlabelled images only, use EncoderLockTrainer from Python (docs/VARIANTS.md)"
                ) from error
            raise
    return domains


def _probe_config(args: LockExperimentArguments) -> ProbeConfig:
    return ProbeConfig(
        fractions=tuple(args.probe_fractions),
        seeds=tuple(args.probe_seeds),
        batch_size=args.probe_batch_size,
        domain_seed=args.domain_seed,
    )


class _MainProcessGate:
    """Under several processes, where the others wait while the main process works alone (domain caches, probes,
    the output folder). A gloo barrier of its own, with a timeout of days: the probes can outlast the process
    group's own timeout (``ddp_timeout``), and a main process that fails takes the others down with it (torchrun
    stops every worker when one fails). Nothing to wait for with one process."""

    def __init__(self, lock_config: EncoderLockConfig) -> None:
        self.main = lock_config.process_index == 0  # (sets the process group up, as the Trainer would)
        distributed = lock_config.world_size > 1 and torch.distributed.is_initialized()
        self.group = torch.distributed.new_group(backend="gloo", timeout=timedelta(days=7)) if distributed else None

    def wait(self) -> None:
        """Every process meets here."""
        if self.group is not None:
            torch.distributed.barrier(group=self.group)


def run_lock_experiment(args: LockExperimentArguments, lock_config: EncoderLockConfig) -> dict[str, Any]:
    """Victim -> probes -> lock -> probes -> ``report.json``/``report.md``/``probe.png`` under ``output_dir``.

    Under several processes (DDP) every process takes part in the lock; only the main process probes and writes, and
    the others wait for it, then return the report it wrote.
    """
    started = time.perf_counter()
    optional_import("matplotlib", "plots", "the main job's probe.png")  # fail before any long work, not at the end
    check_supported_settings(lock_config)  # not after the "before" probes
    target = Path(lock_config.output_dir)
    gate = _MainProcessGate(lock_config)
    if not gate.main:  # the others never touch the output folder
        return _run_lock_experiment(args, lock_config, target, gate, started)
    resuming = bool(lock_config.resume_from_checkpoint)
    check_output_folder(
        target, REPORT_JSON, lock_config.overwrite_output_dir or resuming, "the main job", sources=[args.model]
    )
    with exclusive_output_folder(target, "the main job"):  # after the checks, which name the problem exactly
        return _run_lock_experiment(args, lock_config, target, gate, started)


def _run_lock_experiment(
    args: LockExperimentArguments,
    lock_config: EncoderLockConfig,
    target: Path,
    gate: _MainProcessGate,
    started: float,
) -> dict[str, Any]:
    """``run_lock_experiment``'s work, with the output folder checked and held by the main process."""
    if gate.main:
        for stale in remove_stale_staging(target):
            logger.warning("removed %s, left by an interrupted run", stale)
        _remove_empty_checkpoints(target)  # a killed run's, with nothing in it to resume from
    resume = lock_config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "yes", "1"):
        resume = True  # the flag's text form: the last complete checkpoint under output_dir/checkpoints
    _check_before_long_work(lock_config, target, resume)
    if not gate.main:
        gate.wait()  # the main process fills the domain and victim caches first; the others then read them
    domains = _load_domains(args, lock_config.variant)  # every domain is checked before any long work
    authorized_names = [args.spec(name).display_name for name in args.authorized_domains()]
    prohibited_name = args.spec(args.prohibited).display_name
    if prohibited_name in authorized_names or len(set(authorized_names)) != len(authorized_names):
        raise ValueError(
            f"a domain is listed twice among authorized {authorized_names} and prohibited {prohibited_name!r}"
        )
    probe_domains = dict(domains)
    lock_parts, test_parts = {}, {}
    for name in authorized_names:
        lock_parts[name], probe_domains[name] = split_for_lock(
            domains[name], args.lock_share, args.max_lock_images, args.domain_seed
        )
        test_parts[name] = domains[name]["test"]
    lock_a, authorized_test = combine_labelled_domains(lock_parts), combine_labelled_domains(test_parts)
    authorized_name = "+".join(authorized_names)
    if lock_config.variant == "zero-shot":  # no prohibited data: every other domain is an unseen target
        lock_p, prohibited_names = None, [name for name in domains if name not in authorized_names]
    else:
        lock_p, probe_p = split_for_lock(
            domains[prohibited_name], args.lock_share, args.max_lock_images, args.domain_seed
        )
        probe_domains[prohibited_name], prohibited_names = probe_p, [prohibited_name]
        if lock_config.variant == "unsupervised":
            lock_p = lock_p.select_columns(["image"])  # the lock gets the prohibited images, never their labels

    encoder: EncoderAdapter = (
        load_victim(args.cache_dir)
        if args.model is None
        else load_encoder(args.model, args.pooling, image_processor=args.image_processor)
    )
    if args.model is not None:
        encoder.name = args.public_model()  # the reports name it; feature caches key on its weights, not its name
    if gate.main:
        gate.wait()
    lock = dict(
        lock_a=lock_a,
        lock_p=lock_p,
        authorized_name=authorized_name,
        prohibited_name=prohibited_name if lock_p is not None else "synthetic",
        domain_specs={
            "authorized": [args.public_spec(name) for name in args.authorized_domains()],
            "prohibited": args.public_spec(args.prohibited),
        },
    )
    if not gate.main:
        gate.wait()  # the main process's "before" probes
        _train_lock(encoder, lock_config, target, resume, **lock)
        gate.wait()  # the main process's probes and output folder
        lock_config.output_dir = str(target)
        if not (target / REPORT_JSON).is_file():
            raise RuntimeError(f"the main process finished without writing {target / REPORT_JSON}")
        return json.loads((target / REPORT_JSON).read_text(encoding="utf-8"))
    with atomic_folder(target) as staging:  # nothing appears at output_dir until the report is written
        encoder.save_pretrained(staging / VICTIM_SUBDIR)
        probe_config = _probe_config(args)
        timings: dict[str, float] = {}
        tick = time.perf_counter()
        before = run_probe_suite(encoder, probe_domains, probe_config, random_twin=True, cache_dir=args.cache_dir)
        timings["probe_before_s"] = time.perf_counter() - tick
        gate.wait()  # the other processes join the lock

        # the lock changes the encoder in place
        victim_outliers, victim_piled_up = count_outliers(encoder.backbone), count_piled_up(encoder.backbone)
        tick = time.perf_counter()
        try:
            trainer = _train_lock(encoder, lock_config, target, resume, **lock)
        except BaseException:  # Ctrl-C or an error: an empty checkpoints/ would only suggest a run to resume
            _remove_empty_checkpoints(target)
            raise
        timings["lock_s"] = time.perf_counter() - tick
        trainer.save_model(str(staging / LOCKED_SUBDIR))
        own_head_sets = {"authorized": authorized_test}
        if lock_config.variant == "supervised":  # other variants' adversaries predict pseudo- or synthetic classes
            own_head_sets["prohibited"] = domains[prohibited_name]["test"]
        own_heads = trainer.evaluate(own_head_sets)
        own_head_accuracy = {name: own_heads["eval_authorized_head_accuracy"] for name in authorized_names}
        if "eval_prohibited_head_accuracy" in own_heads:
            own_head_accuracy[prohibited_name] = own_heads["eval_prohibited_head_accuracy"]

        tick = time.perf_counter()
        after = run_probe_suite(encoder, probe_domains, probe_config, random_twin=False, cache_dir=args.cache_dir)
        timings["probe_after_s"] = time.perf_counter() - tick
        adaptive = None
        if args.adaptive_attacks:
            tick = time.perf_counter()
            full = max(before.fractions)
            adaptive = run_adaptive_suite(
                encoder,
                {name: probe_domains[name] for name in prohibited_names},
                AdaptiveConfig(fraction=full, seeds=tuple(args.probe_seeds), batch_size=args.probe_batch_size),
                # the attacker's own authorized images (the lock never used them) give the matching transforms'
                # target statistics
                authorized=probe_domains[authorized_names[0]]["train"],
                baselines={
                    name: {
                        "victim": before.best(name, full).mean,
                        "random_twin": before.best(name, full, TWIN_ROLE).mean,
                    }
                    for name in prohibited_names
                },
                fresh_probes=after,  # the fresh-probe family is the "after" probes: not run twice
                victim_outliers=victim_outliers,
                victim_piled_up=victim_piled_up,
            )
            timings["adaptive_s"] = time.perf_counter() - tick
        timings.update({f"lock_{k}_s": v for k, v in trainer.phase_times().items()})
        timings["total_s"] = time.perf_counter() - started

        report = build_lock_report(
            before=before,
            after=after,
            authorized=authorized_names,
            prohibited=prohibited_names,
            own_head_accuracy=own_head_accuracy,
            lock_summary=trainer.lock_summary(),
            history=trainer.history,
            timings=timings,
            experiment=args.public_record(),
            adaptive=adaptive,
        )
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str))
        write_model_card(staging / LOCKED_SUBDIR, report)
        (staging / REPORT_MD).write_text(lock_report_markdown(report))
        plot_lock_report(report, staging / REPORT_PNG)
    remove_package_outputs(target / CHECKPOINTS_SUBDIR)  # the run finished: its checkpoints (only) are done with
    lock_config.output_dir = str(target)
    gate.wait()  # the report is in place: the other processes may read it
    return report


def _remove_empty_checkpoints(target: Path) -> None:
    """Remove ``target/checkpoints`` if it is empty: the Trainer makes it before the lock starts, and without a
    save_strategy an interrupted run leaves it with nothing inside. A folder with anything in it stays."""
    with contextlib.suppress(OSError):  # absent, or not empty
        (target / CHECKPOINTS_SUBDIR).rmdir()


def _check_before_long_work(lock_config: EncoderLockConfig, target: Path, resume: Any) -> None:
    """What the trainer would refuse only after the "before" probes (found on the user's path, 20-40 s in): a resume
    without a checkpoint to resume from, a logging integration that is not installed, a push in offline mode."""
    if resume is True:
        checkpoint_to_resume(target / CHECKPOINTS_SUBDIR)
    elif resume:
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise ValueError(f"resume_from_checkpoint={resume}: {problem}")
    for callback in get_reporting_integration_callbacks(lock_config.report_to):
        try:
            callback()  # the Trainer builds them too; each checks that its package is installed
        except (RuntimeError, ImportError) as error:
            raise ValueError(f"report_to={lock_config.report_to}: {error}") from None
    if lock_config.push_to_hub and huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError(
            "push_to_hub=True needs the Hub, but offline mode is on (HF_HUB_OFFLINE); run without it and publish "
            "later with `encoderlock push`"
        )


def _train_lock(
    encoder: EncoderAdapter,
    lock_config: EncoderLockConfig,
    target: Path,
    resume: Any,
    lock_a: Any,
    lock_p: Any,
    **names,
) -> EncoderLockTrainer:
    """The lock, trained (every process of a DDP run calls this together)."""
    # Checkpoints live outside the staging folder, under output_dir, so an interrupted run can resume from them.
    lock_config.output_dir = str(target / CHECKPOINTS_SUBDIR)
    trainer = EncoderLockTrainer(encoder, lock_config, lock_a, lock_p, **names)
    trainer.train(resume_from_checkpoint=resume)
    return trainer
