"""EncoderLockConfig's knobs, declared once: the defaults and help of every field the lock declares are the ones
captured before the knob groups were split out (tests/lock/config_before_issue26.json, written on commit 8aa5cb5)."""

import json
from pathlib import Path

from hf_encoderlock.lock.config import EncoderLockConfig

BEFORE = json.loads((Path(__file__).parent / "config_before_issue26.json").read_text(encoding="utf-8"))


def test_every_declared_default_help_and_hyperparameter_is_unchanged():
    config = EncoderLockConfig()
    dumped = config.to_dict()
    fields = EncoderLockConfig.__dataclass_fields__
    assert {name: dumped[name] for name in BEFORE["defaults"]} == BEFORE["defaults"]
    assert {name: fields[name].metadata.get("help") for name in BEFORE["help"]} == BEFORE["help"]
    # the lock's own fields are exactly the ones it had (none lost, none added by the split)
    assert sorted(config.lock_hyperparameters()) == sorted(BEFORE["lock_hyperparameters"])
    assert json.loads(json.dumps(config.lock_hyperparameters())) == BEFORE["lock_hyperparameters"]
