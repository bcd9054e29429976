"""Model cards for locked encoders: what was locked, how well, and the machine-readable authorization block.

The card is rendered from the repository's ``model_card_template.md`` (shipped in the package, see setup.py) with
``huggingface_hub.ModelCard.from_template``. Its YAML front matter carries an ``encoderlock:`` block (authorized and
prohibited domains, variant, mask size, measured accuracies, SHA-256 of every file the lock publishes except the card
itself) that :func:`hf_encoderlock.hub.load_locked` parses back into an :class:`Authorization` and checks against the
files and against ``encoderlock_config.json``.

The files and their hashes come from :mod:`.manifest`, the domains' public names from :mod:`.public_names`, and
the ``encoderlock:`` block is read back and checked by :mod:`.authorization`.

The card follows the Hub's standard sections (``huggingface_hub``'s ``modelcard_template.md``) and publishes no local
path: ``base_model`` and ``datasets`` only name Hub ids, built-in and local domains are described in the text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .._files import CARD_FILE, CARD_FORMAT_V2, LOCK_CONFIG_FILE, MODEL_WEIGHTS_FILE, REPORT_JSON, SIGNATURE_FILE
from .._utils import as_finite_float, percent
from ..probing.lock_report import advantage_text
from .authorization import METADATA_KEY
from .manifest import HASH_ALGORITHM, file_hashes, weight_hashes
from .public_names import (
    declared_domains,
    describe_training_domain,
    domain_display_name,
    is_hub_id,
    split_dataset_name,
)

# The top-level model_card_template.md of the repository; the package ships it through a link (see setup.py).
TEMPLATE_PATH = Path(__file__).parent / "model_card_template.md"
REPORT_FILE = REPORT_JSON
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
YAML_DECIMALS = 4  # measured fractions in the front matter: 0.283, never 0.28300000000000003
MASK_SIGNIFICANT_DIGITS = 4  # a mask fraction is tiny (2.3e-07): rounded to significant digits, not decimals
# The per-domain fields of the ``encoderlock: accuracy:`` block, as the report's table names them.
ACCURACY_KEYS = (
    "role",
    "random_twin",
    "victim",
    "locked",
    "lock_own_head",
    "advantage_removed",
    "advantage_kept",
    "adaptive_worst",  # the adaptive attacker's worst case (probe-only families) and the advantage it leaves removed
    "adaptive_removed",
)


def _rounded(value: Any, decimals: int = YAML_DECIMALS) -> float | None:
    """A measured fraction rounded for the card (``None`` when missing or not finite)."""
    number = as_finite_float(value)
    return None if number is None else round(number, decimals)


def _significant(value: Any, digits: int = MASK_SIGNIFICANT_DIGITS) -> float | None:
    """``value`` rounded to ``digits`` significant digits (``None`` when missing or not finite)."""
    number = as_finite_float(value)
    return None if number is None else float(f"{number:.{digits}g}")


def _tidy(value: Any) -> Any:
    """Floats (also inside lists and dicts) cut to 6 significant digits, so ``0.1 + 0.2`` shows as ``0.3``."""
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tidy(v) for v in value]
    return value


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


def _recorded_results(folder: Path, hashes: dict[str, str]) -> dict[str, Any]:
    """What the folder's current card measured, when it describes exactly these weights (a downloaded snapshot has
    its card but not the ``report.json`` it was rendered from); ``{}`` otherwise."""
    path = folder / CARD_FILE
    if not path.is_file():
        return {}
    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception:  # an unreadable card records nothing worth keeping
        return {}
    block = data.get(METADATA_KEY)
    if not isinstance(block, dict) or block.get("weights") != hashes:
        return {}
    results, head_results = [], []
    for domain, entry in (block.get("accuracy") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        row = {"domain": domain, **{k: entry[k] for k in ACCURACY_KEYS if k in entry}}
        if entry.get("attacker_choice"):
            row["attacker_choice_locked"] = entry["attacker_choice"]
        if entry.get("adaptive_attack"):
            row["adaptive_attack"] = entry["adaptive_attack"]
        results.append(row)
        for head, measured in (entry.get("heads") or {}).items():
            measured = measured if isinstance(measured, dict) else {}
            head_results.append(
                {
                    "domain": domain,
                    "head": head,
                    "pooling": measured.get("pooling"),
                    "accuracy": measured.get("accuracy"),
                }
            )
    head_results.sort(key=lambda r: PROBE_HEADS.index(r["head"]) if r["head"] in PROBE_HEADS else len(PROBE_HEADS))
    recorded: dict[str, Any] = {
        "results": results,
        "head_results": head_results,
        "verdict": dict(block.get("verdict") or {}),
        "probe_fraction": as_finite_float(block.get("probe_fraction")),
    }
    recorded.update({key: data[key] for key in ("license", "base_model") if isinstance(data.get(key), str)})
    return recorded


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
    #: ``authorized_projection='auto'`` found no room at the first round and the lock ran unprojected
    projection_dropped: bool = False
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    weight_hashes: dict[str, str] = field(default_factory=dict)
    file_hashes: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    head_results: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, str] = field(default_factory=dict)
    probe_fraction: float | None = None
    repo_id: str | None = None
    base_model: str | None = None
    license: str | None = None
    gated: bool = False
    prohibited_uses: list[str] = field(default_factory=list)
    poolings: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    training_data: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls, folder: str | Path, report: dict[str, Any] | None = None, include_mask: bool = False, **overrides: Any
    ) -> EncoderLockCardData:
        """Read ``encoderlock_config.json`` and hash every file a push publishes from ``folder`` (the mask too with
        ``include_mask``); ``report`` adds measured results (default: a matching ``report.json`` in the folder or
        its parent, else what the folder's current card recorded for these same weights).

        The domains come from ``encoderlock_config.json`` (the card must agree with it, see
        :meth:`Authorization.verify`); only a zero-shot lock, whose config names no real prohibited domain, takes
        its prohibited domains from the report."""
        folder = Path(folder)
        config_path = folder / LOCK_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no {LOCK_CONFIG_FILE}: it is not a locked encoder folder")
        lock = json.loads(config_path.read_text())
        if report is None:
            report = find_report(folder, lock)
        authorized, prohibited = declared_domains(lock)
        if prohibited is None:
            prohibited = [domain_display_name(d) for d in lock.get("prohibited", [])]
            if report is not None:
                prohibited = list(report.get("prohibited", prohibited))
        if report is not None and not authorized:  # a hand-written config without domains
            authorized = list(report.get("authorized", []))
        training_data = [
            {"role": role, **describe_training_domain(entry)}
            for role in ("authorized", "prohibited")
            for entry in lock.get(role, [])
        ]
        hashes = weight_hashes(folder)
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
            projection_dropped=bool(lock.get("projection_dropped", False)),
            seed=lock.get("seed"),
            versions=dict(lock.get("versions", {})),
            weight_hashes=hashes,
            file_hashes=file_hashes(folder, include_mask=include_mask),
            poolings=[str(p) for p in lock.get("poolings") or []],
            datasets=list(dict.fromkeys(d["hub_id"] for d in training_data if d["hub_id"])),
            training_data=training_data,
        )
        if report is not None:
            values.update(
                results=[_clean_row(row) for row in report.get("table", [])],
                head_results=_head_results(report),
                verdict=dict(report.get("verdict", {})),
                probe_fraction=as_finite_float(report.get("fraction")),
            )
        else:
            values.update(_recorded_results(folder, hashes))
        if report is not None:  # a base_model the current card names was asked for: keep it
            values["base_model"] = _recorded_results(folder, hashes).get("base_model")
        # Named only when asked: the caller's choice, or the current card's (asked for when it was written). The
        # checkpoint the lock started from is not named by default: it points to the unlocked weights. Only a Hub id
        # is published, never a local path.
        candidates = [overrides.pop("base_model", None), values.get("base_model")]
        values["base_model"] = next((c for c in candidates if is_hub_id(c) and ":" not in c), None)
        values.update({k: v for k, v in overrides.items() if not (k == "license" and v is None)})
        if not values.get("prohibited_uses"):
            values["prohibited_uses"] = [
                f"recognising or classifying images of the {d!r} domain" for d in values["prohibited"]
            ]
        return cls(**values)

    # --------------------------------------------------------------------------------------- metadata
    def _accuracy_entry(self, row: dict[str, Any]) -> dict[str, Any]:
        """One domain of the ``accuracy:`` block: rounded figures, the attacker's choice and each head kind."""
        entry: dict[str, Any] = {
            key: (_rounded(row[key]) if key != "role" else row[key]) for key in ACCURACY_KEYS if key in row
        }
        if row.get("attacker_choice_locked"):
            entry["attacker_choice"] = row["attacker_choice_locked"]
        if row.get("adaptive_attack"):
            entry["adaptive_attack"] = row["adaptive_attack"]
        heads = {
            h["head"]: {"pooling": h.get("pooling"), "accuracy": _rounded(h.get("accuracy"))}
            for h in self.head_results
            if h["domain"] == row["domain"]
        }
        if heads:
            entry["heads"] = heads
        return entry

    def authorization_metadata(self) -> dict[str, Any]:
        """The ``encoderlock:`` block of the card's front matter."""
        metadata = {
            "format": CARD_FORMAT_V2,
            "authorized": list(self.authorized),
            "prohibited": list(self.prohibited),
            "variant": self.variant,
            "objective": self.objective,
            "poolings": list(self.poolings) or None,
            "mask_fraction": _significant(self.mask.get("fraction")),
            "mask_count": self.mask.get("count"),
            "num_parameters": self.mask.get("num_parameters"),
            "rounds_completed": self.rounds_completed,
            "probe_fraction": _rounded(self.probe_fraction),
            "accuracy": {row["domain"]: self._accuracy_entry(row) for row in self.results},
            "hash_algorithm": HASH_ALGORITHM,
            "weights": dict(self.weight_hashes),
            "files": dict(self.file_hashes),
        }
        if self.verdict:
            metadata["verdict"] = dict(self.verdict)
        return metadata

    def gating_metadata(self) -> dict[str, Any]:
        """``extra_gated_*`` keys asking each requester to acknowledge the prohibited uses (empty when not gated)."""
        if not self.gated:
            return {}
        prohibited = ", ".join(self.prohibited) or "the prohibited domains"
        return {
            "extra_gated_heading": GATE_HEADING,
            "extra_gated_description": (
                f"This encoder was locked with EncoderLock, a change meant to make probing it for {prohibited} fail; "
                "the model card's evaluation says how far it does. Access is granted to people who agree not to work "
                "around that restriction."
            ),
            "extra_gated_prompt": (
                f"By requesting access you agree not to use this encoder, its features or any model derived from it "
                f"for: {prohibited}. You also agree not to attempt to undo the lock (for example by fine-tuning the "
                f"encoder on prohibited data, editing its weights or disguising prohibited inputs)."
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
            dataset_type, dataset_config = split_dataset_name(row["domain"])
            for head, value in entries:
                value = _rounded(value)
                if value is None:
                    continue
                results.append(
                    EvalResult(
                        task_type="image-classification",
                        task_name=f"Probing ({row.get('role') or 'other'} domain)",
                        dataset_type=dataset_type,
                        dataset_name=row["domain"],
                        dataset_config=dataset_config,
                        dataset_split=split,
                        metric_type="accuracy",
                        metric_name=f"{head} accuracy",
                        metric_value=value,
                    )
                )
        return results

    @property
    def card_name(self) -> str:
        """The name the Hub shows for the model (``model-index``): the repository id once it is known."""
        return self.repo_id or self.model_name

    def to_model_card_data(self):
        """A ``huggingface_hub.ModelCardData`` with the standard keys, ``model-index``, gating and ``encoderlock:``."""
        eval_results = self.eval_results()
        return ModelCardData(
            model_name=self.card_name,
            library_name="transformers",
            pipeline_tag="image-feature-extraction",
            license=self.license,
            base_model=self.base_model,
            datasets=list(self.datasets) or None,
            metrics=["accuracy"] if eval_results else None,
            tags=list(CARD_TAGS),
            eval_results=eval_results or None,
            **self.gating_metadata(),
            **{METADATA_KEY: self.authorization_metadata()},
        )

    def template_context(self) -> dict[str, Any]:
        """Values the Jinja template reads (percentages already formatted)."""
        mask = self.mask
        fraction = as_finite_float(mask.get("fraction"))
        return {
            "model_name": self.model_name,
            "repo_id": self.card_name,
            "repo_url": f"https://huggingface.co/{self.repo_id}" if self.repo_id else None,
            "base_model": self.base_model,
            "license": self.license,
            "authorized": self.authorized,
            "prohibited": self.prohibited,
            "variant": self.variant,
            "objective": self.objective or "n/a",
            "poolings": self.poolings,
            "poolings_text": ", ".join(f"`{p}`" for p in self.poolings) or "not recorded",
            "training_data": self.training_data,
            "mask_count": mask.get("count", "n/a"),
            "mask_total": mask.get("num_parameters", "n/a"),
            # positional, three significant digits: "0.115%", "0.000023%" (never "0.0000%" or "2.3e-05%")
            "mask_percent": "n/a"
            if fraction is None
            else f"{np.format_float_positional(_significant(100 * fraction, 3), trim='-')}%",
            "mask_layers": mask.get("per_layer", {}),
            # a lock saved before the keys were recorded has none: its table names the in-memory tensors only
            "mask_keys": mask.get("saved_keys") if isinstance(mask.get("saved_keys"), dict) else {},
            "rounds_completed": self.rounds_completed,
            "best_round": self.best_round,
            "projection_dropped": self.projection_dropped,
            "seed": self.seed,
            "weight_bound": as_finite_float(self.hyperparameters.get("weight_bound")),
            "weight_bound_recorded": "weight_bound" in self.hyperparameters,
            "hyperparameters": {k: json.dumps(_tidy(v)) for k, v in sorted(self.hyperparameters.items())},
            "results": [
                {
                    "domain": row["domain"],
                    "role": row.get("role") or "other",
                    **{k: percent(row.get(k)) for k in ("random_twin", "victim", "locked", "lock_own_head")},
                    "advantage": advantage_text(
                        row, "advantage_removed" if "advantage_removed" in row else "advantage_kept"
                    ),
                    "choice": row.get("attacker_choice_locked") or "n/a",
                }
                for row in self.results
            ],
            "worst_cases": [
                {
                    "domain": row["domain"],
                    "accuracy": percent(row.get("adaptive_worst")),
                    "attack": row.get("adaptive_attack") or "n/a",
                    "removed": percent(row.get("adaptive_removed")),
                    "fresh": percent(row.get("advantage_removed")),
                }
                for row in self.results
                if row.get("adaptive_worst") is not None
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
            "file_hashes": self.file_hashes,
            "signature_file": SIGNATURE_FILE,
            "hash_algorithm": HASH_ALGORITHM,
            "hash_label": "SHA-256",
            "gated": self.gated,
            "prohibited_uses": self.prohibited_uses,
            "citation": CITATION,
            "paper_url": PAPER_URL,
            "weights_file": next(iter(self.weight_hashes), MODEL_WEIGHTS_FILE),
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


def write_model_card(
    output_dir: str | Path,
    report: dict[str, Any] | None = None,
    license: str | None = None,
    include_mask: bool = False,
    **overrides: Any,
) -> Path:
    """Render the card of the locked folder ``output_dir`` and save it as ``README.md`` there.

    ``license`` is a Hub license id (``"apache-2.0"``, ``"mit"``, ``"other"`` ...; default: the one the folder's
    card already declares for these weights, else none); ``include_mask`` hashes the mask too (when it is pushed);
    other keywords override :class:`EncoderLockCardData` fields (``repo_id``, ``gated``, ``model_name``,
    ``prohibited_uses`` ...).
    """
    data = EncoderLockCardData.from_folder(
        output_dir, report=report, license=license, include_mask=include_mask, **overrides
    )
    card = render_model_card(data)
    path = Path(output_dir) / CARD_FILE
    if path.is_symlink():  # a Hub cache snapshot links to a shared blob: replace the link, never write through it
        path.unlink()
    card.save(path)
    return path
