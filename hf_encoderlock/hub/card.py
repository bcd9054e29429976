"""Model cards for locked encoders: what was locked, how well, and the machine-readable authorization block.

The card is rendered from the repository's ``model_card_template.md`` (shipped in the package, see setup.py) with
``huggingface_hub.ModelCard.from_template``. Its YAML front matter carries an ``encoderlock:`` block (authorized and
prohibited domains, variant, mask size, measured accuracies, SHA-256 of every weight file) that
:func:`hf_encoderlock.hub.load_locked` parses back into an :class:`Authorization` and checks against the files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .._files import CARD_FILE, CARD_FORMAT, LOCK_CONFIG_FILE, PRIVATE_FILES, REPORT_JSON
from .._utils import as_finite_float, percent
from ..data.domains import DomainSpec

# The top-level model_card_template.md of the repository; the package ships it through a link (see setup.py).
TEMPLATE_PATH = Path(__file__).parent / "model_card_template.md"
REPORT_FILE = REPORT_JSON
METADATA_KEY = "encoderlock"
HASH_ALGORITHM = "sha256"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
# the lock's mask and Trainer state are not part of the released model (file-name patterns)
NON_MODEL_WEIGHT_FILES = PRIVATE_FILES
PROBE_HEADS = ("linear", "mlp", "knn")
PAPER_ARXIV = "2411.12508"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ARXIV}"
CARD_TAGS = ("encoderlock", "hf_encoderlock", "locked-encoder", "image-feature-extraction")
CITATION = """@inproceedings{ding2025probemenot,
  title     = {Probe-Me-Not: Protecting Pre-trained Encoders from Malicious Probing},
  author    = {Ding, Ruyi and Zhou, Tong and Su, Lili and Ding, Aidong Adam and Xu, Xiaolin and Fei, Yunsi},
  booktitle = {Network and Distributed System Security Symposium (NDSS)},
  year      = {2025},
  eprint    = {2411.12508},
  archivePrefix = {arXiv}
}"""
GATE_HEADING = "Acknowledge the prohibited uses of this encoder"
GATE_BUTTON = "Agree and request access"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.:-]+$")  # "user/name" or "user/dataset:config"


class LockVerificationError(RuntimeError):
    """A locked encoder's card is missing, lacks the ``encoderlock:`` block, or does not match its weight files."""


# ------------------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: str | Path) -> list[str]:
    """Names of the model weight files at the top of ``folder`` (the lock's mask excluded)."""
    root = Path(folder)
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_file()
        and p.name.endswith(WEIGHT_SUFFIXES)
        and not any(fnmatch.fnmatch(p.name, pattern) for pattern in NON_MODEL_WEIGHT_FILES)
    )


def weight_hashes(folder: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` for every model weight file in ``folder``."""
    return {name: sha256_file(Path(folder) / name) for name in weight_files(folder)}


def _domain_name(entry: Any) -> str:
    """A short public name for a domain recorded as a string or a ``DomainSpec`` dict (no local paths)."""
    if isinstance(entry, dict) and "zero_shot_generators" in entry:  # zero-shot: synthetic data, no real domain
        return f"synthetic ({', '.join(map(str, entry['zero_shot_generators']))})"
    if isinstance(entry, dict) and "domain" in entry:  # unsupervised: the domain, whose labels were never read
        return _domain_name(entry["domain"])
    if isinstance(entry, dict):
        try:
            entry = DomainSpec(**entry).display_name
        except Exception:  # a spec written by another version: fall back to its name
            entry = entry.get("name", "unknown")
    text = str(entry)
    return text if _HUB_ID.match(text) or "/" not in text else Path(text).name or text


def find_report(folder: str | Path, lock: dict[str, Any]) -> dict[str, Any] | None:
    """The ``report.json`` that belongs to this lock: in ``folder`` or its parent, with the same mask and seed."""
    for candidate in (Path(folder) / REPORT_FILE, Path(folder).parent / REPORT_FILE):
        if not candidate.is_file():
            continue
        report = json.loads(candidate.read_text())
        other = report.get("lock", {})
        if other.get("mask") == lock.get("mask") and other.get("seed") == lock.get("seed"):
            return report
    return None


def _head_results(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per domain and head kind: the locked encoder's fresh-probe test accuracy at the full training fraction.

    For each head kind the pooling is chosen on validation accuracy, as the attacker would choose it.
    """
    scores = report.get("probe_after", {}).get("scores", [])
    full = report.get("fraction")
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for score in scores:
        if score.get("role") != "encoder" or full is None or not math.isclose(score.get("fraction", -1), full):
            continue
        key = (score["domain"], score["head"])
        validation = as_finite_float(sum(score["validation_accuracy"]) / max(1, len(score["validation_accuracy"])))
        if key not in best or (validation or 0.0) > best[key]["validation"]:
            best[key] = {"validation": validation or 0.0, "score": score}
    rows = []
    for (domain, head), entry in best.items():
        rows.append(
            {
                "domain": domain,
                "head": head,
                "pooling": entry["score"].get("pooling"),
                "accuracy": as_finite_float(entry["score"].get("mean")),
            }
        )
    return sorted(rows, key=lambda r: PROBE_HEADS.index(r["head"]) if r["head"] in PROBE_HEADS else len(PROBE_HEADS))


# ------------------------------------------------------------------------------------------------ card data
@dataclass
class EncoderLockCardData:
    """Everything the card shows, filled from ``encoderlock_config.json`` and (when present) ``report.json``."""

    model_name: str
    authorized: list[str]
    prohibited: list[str]
    variant: str
    objective: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)
    rounds_completed: int | None = None
    best_round: int | None = None
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    weight_hashes: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    head_results: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, str] = field(default_factory=dict)
    probe_fraction: float | None = None
    repo_id: str | None = None
    base_model: str | None = None
    license: str | None = None
    gated: bool = False
    prohibited_uses: list[str] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls, folder: str | Path, report: dict[str, Any] | None = None, **overrides: Any
    ) -> EncoderLockCardData:
        """Read ``encoderlock_config.json`` and hash the weights in ``folder``; ``report`` adds measured results
        (default: a matching ``report.json`` in the folder or its parent)."""
        folder = Path(folder)
        config_path = folder / LOCK_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no {LOCK_CONFIG_FILE}: it is not a locked encoder folder")
        lock = json.loads(config_path.read_text())
        if report is None:
            report = find_report(folder, lock)
        authorized = [_domain_name(d) for d in lock.get("authorized", [])]
        prohibited = [_domain_name(d) for d in lock.get("prohibited", [])]
        if report is not None:
            authorized = list(report.get("authorized", authorized))
            prohibited = list(report.get("prohibited", prohibited))
        values: dict[str, Any] = dict(
            model_name=folder.resolve().name,
            authorized=authorized,
            prohibited=prohibited,
            variant=lock.get("variant", "unknown"),
            objective=lock.get("objective"),
            hyperparameters=dict(lock.get("hyperparameters", {})),
            mask=dict(lock.get("mask", {})),
            rounds_completed=lock.get("rounds_completed"),
            best_round=lock.get("best_round"),
            seed=lock.get("seed"),
            versions=dict(lock.get("versions", {})),
            weight_hashes=weight_hashes(folder),
        )
        if report is not None:
            values.update(
                results=[_clean_row(row) for row in report.get("table", [])],
                head_results=_head_results(report),
                verdict=dict(report.get("verdict", {})),
                probe_fraction=as_finite_float(report.get("fraction")),
            )
            model = (report.get("experiment") or {}).get("model")
            if isinstance(model, str) and _HUB_ID.match(model) and not Path(model).exists():
                values["base_model"] = model
        values.update(overrides)
        if not values.get("prohibited_uses"):
            values["prohibited_uses"] = [
                f"recognising or classifying images of the {d!r} domain" for d in values["prohibited"]
            ]
        return cls(**values)

    # --------------------------------------------------------------------------------------- metadata
    def authorization_metadata(self) -> dict[str, Any]:
        """The ``encoderlock:`` block of the card's front matter."""
        return {
            "format": CARD_FORMAT,
            "authorized": list(self.authorized),
            "prohibited": list(self.prohibited),
            "variant": self.variant,
            "objective": self.objective,
            "mask_fraction": as_finite_float(self.mask.get("fraction")),
            "mask_count": self.mask.get("count"),
            "num_parameters": self.mask.get("num_parameters"),
            "rounds_completed": self.rounds_completed,
            "probe_fraction": self.probe_fraction,
            "accuracy": {
                row["domain"]: {
                    key: row.get(key)
                    for key in (
                        "role",
                        "random_twin",
                        "victim",
                        "locked",
                        "lock_own_head",
                        "advantage_removed",
                        "advantage_kept",
                    )
                    if key in row
                }
                for row in self.results
            },
            "hash_algorithm": HASH_ALGORITHM,
            "weights": dict(self.weight_hashes),
        }

    def gating_metadata(self) -> dict[str, Any]:
        """``extra_gated_*`` keys asking each requester to acknowledge the prohibited uses (empty when not gated)."""
        if not self.gated:
            return {}
        prohibited = ", ".join(self.prohibited) or "the prohibited domains"
        return {
            "extra_gated_heading": GATE_HEADING,
            "extra_gated_description": (
                f"This encoder was locked with EncoderLock so that probing it for {prohibited} fails. "
                "Access is granted to people who agree not to work around that restriction."
            ),
            "extra_gated_prompt": (
                f"By requesting access you agree not to use this encoder, its features or any model derived from it "
                f"for: {prohibited}. You also agree not to attempt to undo the lock (for example by fine-tuning the "
                f"encoder on prohibited data or by disguising prohibited inputs)."
            ),
            "extra_gated_fields": {
                **{f"I will not use this model for: {use}": "checkbox" for use in self.prohibited_uses},
                "I will not attempt to remove or circumvent the lock": "checkbox",
                "Intended use": "text",
            },
            "extra_gated_button_content": GATE_BUTTON,
        }

    def eval_results(self) -> list[Any]:
        """``EvalResult`` per domain and head for the locked encoder (the best fresh probe, then each head kind)."""
        split = "test"
        results = []
        for row in self.results:
            entries = [("best fresh probe", row.get("locked"))]
            entries += [
                (f"fresh {h['head']} probe", h["accuracy"]) for h in self.head_results if h["domain"] == row["domain"]
            ]
            for head, value in entries:
                if value is None:
                    continue
                results.append(
                    EvalResult(
                        task_type="image-classification",
                        task_name=f"Probing ({row.get('role') or 'other'} domain)",
                        dataset_type=row["domain"],
                        dataset_name=row["domain"],
                        dataset_split=split,
                        metric_type="accuracy",
                        metric_name=f"{head} accuracy",
                        metric_value=round(value, 6),
                    )
                )
        return results

    def to_model_card_data(self):
        """A ``huggingface_hub.ModelCardData`` with the standard keys, ``model-index``, gating and ``encoderlock:``."""
        eval_results = self.eval_results()
        return ModelCardData(
            model_name=self.model_name,
            library_name="transformers",
            pipeline_tag="image-feature-extraction",
            license=self.license,
            base_model=self.base_model,
            tags=list(CARD_TAGS),
            eval_results=eval_results or None,
            **self.gating_metadata(),
            **{METADATA_KEY: self.authorization_metadata()},
        )

    def template_context(self) -> dict[str, Any]:
        """Values the Jinja template reads (percentages already formatted)."""
        mask = self.mask
        return {
            "model_name": self.model_name,
            "repo_id": self.repo_id or self.model_name,
            "authorized": self.authorized,
            "prohibited": self.prohibited,
            "variant": self.variant,
            "objective": self.objective or "n/a",
            "mask_count": mask.get("count", "n/a"),
            "mask_total": mask.get("num_parameters", "n/a"),
            "mask_percent": "n/a"
            if as_finite_float(mask.get("fraction")) is None
            else f"{100 * mask['fraction']:.4f}%",
            "mask_layers": mask.get("per_layer", {}),
            "rounds_completed": self.rounds_completed,
            "best_round": self.best_round,
            "seed": self.seed,
            "hyperparameters": {k: json.dumps(v) for k, v in sorted(self.hyperparameters.items())},
            "results": [
                {
                    "domain": row["domain"],
                    "role": row.get("role") or "other",
                    **{k: percent(row.get(k)) for k in ("random_twin", "victim", "locked", "lock_own_head")},
                    "advantage": percent(row.get("advantage_removed", row.get("advantage_kept"))),
                    "choice": row.get("attacker_choice_locked") or "n/a",
                }
                for row in self.results
            ],
            "head_results": [
                {**h, "accuracy": percent(h["accuracy"])}
                for row in self.results
                for h in self.head_results
                if h["domain"] == row["domain"]
            ],
            "probe_percent": None if self.probe_fraction is None else f"{100 * self.probe_fraction:.0f}%",
            "verdict": self.verdict,
            "versions": self.versions,
            "weight_hashes": self.weight_hashes,
            "hash_algorithm": HASH_ALGORITHM,
            "hash_label": "SHA-256",
            "gated": self.gated,
            "prohibited_uses": self.prohibited_uses,
            "citation": CITATION,
            "paper_url": PAPER_URL,
            "weights_file": next(iter(self.weight_hashes), "model.safetensors"),
        }


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """A report table row with NaN turned into ``None`` (YAML- and Hub-safe)."""
    return {k: (as_finite_float(v) if isinstance(v, float) else v) for k, v in row.items()}


# ------------------------------------------------------------------------------------------------ rendering
def render_model_card(card_data: EncoderLockCardData, template_path: str | Path | None = None):
    """The ``huggingface_hub.ModelCard`` for ``card_data``, rendered from the package template."""
    return ModelCard.from_template(
        card_data.to_model_card_data(),
        template_path=str(template_path or TEMPLATE_PATH),
        **card_data.template_context(),
    )


def write_model_card(output_dir: str | Path, report: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """Render the card of the locked folder ``output_dir`` and save it as ``README.md`` there."""
    card = render_model_card(EncoderLockCardData.from_folder(output_dir, report=report, **overrides))
    path = Path(output_dir) / CARD_FILE
    card.save(path)
    return path


# ---------------------------------------------------------------------------------------------- authorization
@dataclass(frozen=True)
class Authorization:
    """The authorization a locked encoder's card declares (parsed from its ``encoderlock:`` block)."""

    authorized: tuple[str, ...]
    prohibited: tuple[str, ...]
    variant: str
    objective: str | None
    mask_fraction: float | None
    mask_count: int | None
    weights: dict[str, str]
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = CARD_FORMAT

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> Authorization:
        """Parse an ``encoderlock:`` block; :class:`LockVerificationError` when it is missing or incomplete."""
        if not isinstance(metadata, dict):
            raise LockVerificationError(f"the model card has no '{METADATA_KEY}:' block in its YAML front matter")
        missing = [key for key in ("authorized", "prohibited", "variant", "weights") if not metadata.get(key)]
        if missing:
            raise LockVerificationError(f"the card's '{METADATA_KEY}:' block lacks {', '.join(missing)}")
        if metadata.get("hash_algorithm", HASH_ALGORITHM) != HASH_ALGORITHM:
            raise LockVerificationError(f"unsupported hash algorithm {metadata.get('hash_algorithm')!r}")
        return cls(
            authorized=tuple(metadata["authorized"]),
            prohibited=tuple(metadata["prohibited"]),
            variant=str(metadata["variant"]),
            objective=metadata.get("objective"),
            mask_fraction=as_finite_float(metadata.get("mask_fraction")),
            mask_count=metadata.get("mask_count"),
            weights=dict(metadata["weights"]),
            accuracy=dict(metadata.get("accuracy") or {}),
            format=str(metadata.get("format", CARD_FORMAT)),
        )

    @classmethod
    def from_card(cls, card_path: str | Path) -> Authorization:
        """Parse the ``README.md`` at ``card_path``."""
        path = Path(card_path)
        if not path.is_file():
            raise LockVerificationError(f"no model card ({CARD_FILE}) found at {path.parent}")
        try:
            card = ModelCard.load(path)
        except Exception as error:  # malformed YAML or model-index
            raise LockVerificationError(f"the model card at {path} could not be parsed: {error}") from error
        return cls.from_metadata(card.data.to_dict().get(METADATA_KEY))

    def is_prohibited(self, domain: str) -> bool:
        return domain in self.prohibited

    def is_authorized(self, domain: str) -> bool:
        return domain in self.authorized

    def verify(self, folder: str | Path) -> None:
        """Check that ``folder`` holds exactly the declared weight files with the declared SHA-256."""
        folder = Path(folder)
        present = set(weight_files(folder))
        problems = [f"{name}: missing" for name in sorted(set(self.weights) - present)]
        problems += [f"{name}: not declared in the card" for name in sorted(present - set(self.weights))]
        for name in sorted(set(self.weights) & present):
            actual = sha256_file(folder / name)
            if actual != self.weights[name]:
                problems.append(f"{name}: sha256 {actual} does not match the card's {self.weights[name]}")
        if problems:
            raise LockVerificationError(
                "the weights do not match the model card's encoderlock metadata: " + "; ".join(problems)
            )
