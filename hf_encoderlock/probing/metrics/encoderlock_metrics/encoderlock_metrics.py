"""EncoderLock scores as an `evaluate` metric, shipped with the package and loaded by path (works offline).

Two configurations:

* ``"default"``: classification accuracy from ``predictions`` and ``references`` (class ids).
* ``"lock"``: the lock measures from probe accuracies. Each row is one domain: ``locked`` (attacker's accuracy on the
  locked encoder), ``victim`` (on the original encoder) and ``random_twin`` (on the random-init twin, the attacker's
  no-encoder baseline).

  - advantage removed (prohibited domain) = (victim - locked) / (victim - random_twin)
  - advantage kept (authorized domain)    = (locked - random_twin) / (victim - random_twin) = 1 - advantage removed

  A row whose victim is no better than its random twin has no advantage to remove or keep: its measures are NaN.
"""

import math

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{ding2025probemenot,
  title     = {Probe-Me-Not: Protecting Pre-trained Encoders from Malicious Probing},
  author    = {Ding, Ruyi and Zhou, Tong and Su, Lili and Ding, Aidong Adam and Xu, Xiaolin and Fei, Yunsi},
  booktitle = {Network and Distributed System Security Symposium (NDSS)},
  year      = {2025}
}
"""

_DESCRIPTION = """\
Accuracy of a probe and the EncoderLock lock measures (advantage removed on prohibited domains, advantage kept on
authorized domains), relative to the encoder's random-init twin.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
Returns:
    accuracy (`float`): fraction of correct predictions.

Args (config "lock"):
    locked (`list[float]`): attacker's accuracy on the locked encoder, one value per domain.
    victim (`list[float]`): attacker's accuracy on the original (victim) encoder.
    random_twin (`list[float]`): attacker's accuracy on the random-init twin encoder.
    role (`str`, optional): "prohibited" (return advantage removed), "authorized" (return advantage kept) or None
        (both).
Returns:
    advantage_removed / advantage_kept (`float`): mean over rows with a defined value (NaN if none).
    advantage_removed_per_row / advantage_kept_per_row (`list[float]`): per-row values (NaN where undefined).

Examples:
    >>> metric = evaluate.load("path/to/encoderlock_metrics")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
    >>> lock = evaluate.load("path/to/encoderlock_metrics", config_name="lock")
    >>> lock.compute(locked=[0.2], victim=[0.9], random_twin=[0.1], role="prohibited")
    {'advantage_removed': 0.875, 'advantage_removed_per_row': [0.875]}
"""

CONFIGS = ("default", "lock")
ROLES = ("prohibited", "authorized")
# A victim this close to its random twin (in accuracy) has no measurable advantage.
MIN_ADVANTAGE = 1e-12


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to their references."""
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions ({predictions.shape}) and references ({references.shape}) differ in length")
    if predictions.size == 0:
        return float("nan")
    return float((predictions == references).mean())


def advantage_removed(locked: float, victim: float, random_twin: float) -> float:
    """(victim - locked) / (victim - random_twin); NaN when the victim has no advantage over its random twin."""
    advantage = float(victim) - float(random_twin)
    if not advantage > MIN_ADVANTAGE:
        return float("nan")
    return (float(victim) - float(locked)) / advantage


def advantage_kept(locked: float, victim: float, random_twin: float) -> float:
    """(locked - random_twin) / (victim - random_twin); NaN when the victim has no advantage over its random twin."""
    advantage = float(victim) - float(random_twin)
    if not advantage > MIN_ADVANTAGE:
        return float("nan")
    return (float(locked) - float(random_twin)) / advantage


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EncoderlockMetrics(evaluate.Metric):
    """Probe accuracy and EncoderLock lock measures."""

    def _info(self):
        if self.config_name not in CONFIGS:
            raise KeyError(f"Unknown config {self.config_name!r}; choose one of {CONFIGS}")
        if self.config_name == "lock":
            features = datasets.Features(
                {
                    "locked": datasets.Value("float64"),
                    "victim": datasets.Value("float64"),
                    "random_twin": datasets.Value("float64"),
                }
            )
        else:
            features = datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://arxiv.org/abs/2411.12508"],
        )

    def _compute(self, predictions=None, references=None, locked=None, victim=None, random_twin=None, role=None):
        if self.config_name == "lock":
            return lock_measures(locked, victim, random_twin, role=role)
        return {"accuracy": accuracy(predictions, references)}


def lock_measures(locked, victim, random_twin, role=None) -> dict:
    """Lock measures for rows of (locked, victim, random_twin) accuracies; see the module docstring."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    if not (len(locked) == len(victim) == len(random_twin)):
        raise ValueError("locked, victim and random_twin must have the same length")
    rows = list(zip(locked, victim, random_twin))
    out = {}
    if role in (None, "prohibited"):
        removed = [advantage_removed(*row) for row in rows]
        out["advantage_removed"] = _nanmean(removed)
        out["advantage_removed_per_row"] = removed
    if role in (None, "authorized"):
        kept = [advantage_kept(*row) for row in rows]
        out["advantage_kept"] = _nanmean(kept)
        out["advantage_kept_per_row"] = kept
    return out
