"""Probe reports: the accuracy and lock measures, and the attacker's best on validation."""

import math

import numpy as np
import pytest

from hf_encoderlock.probing.heads import accuracy
from hf_encoderlock.probing.probe_report import (
    ProbeReport,
    ProbeScore,
    advantage_kept,
    advantage_removed,
    lock_measures,
    make_compute_metrics,
)


def test_accuracy_and_the_trainers_compute_metrics():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])
    compute_metrics = make_compute_metrics()
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
    assert compute_metrics((logits, np.array([0, 1, 1]))) == {"accuracy": pytest.approx(2 / 3)}


def test_advantage_removed_and_kept():
    # prohibited: victim 90%, locked 20%, twin 10%: (90 - 20) / (90 - 10) = 0.875 of the advantage removed
    assert advantage_removed(0.2, 0.9, 0.1) == pytest.approx(0.875)
    assert advantage_kept(0.2, 0.9, 0.1) == pytest.approx(0.125)
    # authorized: victim 80%, locked 75%, twin 30%: (75 - 30) / (80 - 30) = 0.9 of the advantage kept
    assert advantage_kept(0.75, 0.8, 0.3) == pytest.approx(0.9)
    assert math.isnan(advantage_removed(0.5, 0.4, 0.4))  # no advantage to remove: undefined
    assert math.isnan(advantage_kept(0.5, 0.4, 0.45))


def _score(role, domain, accuracy_by_seed, head="linear", pooling="cls", fraction=1.0, val=None):
    return ProbeScore(
        role,
        domain,
        head,
        pooling,
        fraction,
        100,
        10,
        50,
        [0, 1],
        list(accuracy_by_seed),
        list(val or accuracy_by_seed),
        [{"lr": 0.01}, {"lr": 0.01}],
    )


def _report(name, scores):
    domains = {"auth": {"num_classes": 10, "chance": 0.1}, "proh": {"num_classes": 10, "chance": 0.1}}
    return ProbeReport(name, "twin", domains, {"seeds": [0, 1], "heads": ["linear"], "poolings": ["cls"]}, scores)


def test_attacker_best_is_chosen_on_validation_and_lock_measures_follow():
    victim = _report(
        "victim",
        [
            _score("encoder", "auth", [0.8, 0.8]),
            _score("encoder", "proh", [0.9, 0.9]),
            # a head that is better on test but worse on validation must not be chosen
            _score("encoder", "proh", [0.99, 0.99], head="mlp", val=[0.5, 0.5]),
            _score("random_twin", "auth", [0.3, 0.3]),
            _score("random_twin", "proh", [0.1, 0.1]),
        ],
    )
    locked = _report("locked", [_score("encoder", "auth", [0.74, 0.76]), _score("encoder", "proh", [0.2, 0.2])])
    best = victim.best("proh", 1.0)
    assert best.mean == pytest.approx(0.9) and best.choices[0]["head"] == "linear"
    measures = lock_measures(victim, locked, authorized=["auth"], prohibited=["proh"])
    rows = {r["domain"]: r for r in measures["rows"]}
    assert rows["proh"]["advantage_removed"] == pytest.approx(0.875)
    assert rows["auth"]["advantage_kept"] == pytest.approx(0.9)
    assert measures["summary"]["100%"] == pytest.approx({"mean_advantage_removed": 0.875, "mean_advantage_kept": 0.9})
    unlisted = lock_measures(victim, locked, prohibited=["proh"])  # "auth" in neither list: both measures, no mean
    auth = next(r for r in unlisted["rows"] if r["domain"] == "auth")
    assert auth["advantage_kept"] == pytest.approx(0.9) and auth["advantage_removed"] == pytest.approx(0.1)
    assert unlisted["summary"]["100%"] == pytest.approx({"mean_advantage_removed": 0.875})
    with pytest.raises(ValueError, match="random-twin"):
        lock_measures(locked, locked, prohibited=["proh"])
