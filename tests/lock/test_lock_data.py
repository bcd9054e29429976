"""The lock's data without a trainer: reading, splits, challenge samples, pseudo-labels, early refusals."""

import pytest
import torch

from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.lock.lock_data import CHALLENGE_SETS, LockData
from tests.helpers import VARIANT_LOCK, tiny_lock_data, toy_domain, unlabelled


def _hashes(rows) -> set[bytes]:
    return {bytes(row.tolist()) for row in rows.content_hashes}


def _load(args, authorized, prohibited) -> LockData:
    return tiny_lock_data(args, authorized, prohibited)[1]


def test_splits_partition_each_domain_and_challenges_encode_a_fixed_sample(tiny_lock_config, toy_domains):
    args = tiny_lock_config(challenge_max_images=8)
    data = _load(args, toy_domains.authorized, toy_domains.prohibited)
    for lock, val in [(data.lock_authorized, data.val_authorized), (data.lock_prohibited, data.val_prohibited)]:
        assert len(lock) + len(val) == 48 and len(val) > 0
        assert not _hashes(lock) & _hashes(val)  # no image in both parts
    assert list(data.challenge_sets) == list(CHALLENGE_SETS)
    assert all(len(rows) == 8 for rows in data.challenge_sets.values())
    assert _hashes(data.challenge_sets["lock_authorized"]) <= _hashes(data.lock_authorized)
    again = _load(args, toy_domains.authorized, toy_domains.prohibited)  # seeded: the same split and sample
    assert torch.equal(
        again.challenge_sets["val_prohibited"].pixel_values, data.challenge_sets["val_prohibited"].pixel_values
    )
    assert data.pairs == max(len(data.lock_authorized), len(data.lock_prohibited))
    assert data.zero_shot_source is None and not data.pseudo_labelled


def test_unlabelled_prohibited_images_get_pseudo_labels_and_zero_shot_names_its_generators(tiny_lock_config):
    args = tiny_lock_config(preset=VARIANT_LOCK, variant="unsupervised")
    data = _load(args, toy_domain(48, 0, "red"), unlabelled(toy_domain(48, 1, "green")))
    assert data.pseudo_labelled and data.lock_prohibited.num_classes == args.num_pseudo_classes
    labels = torch.cat([data.lock_prohibited.labels, data.val_prohibited.labels])
    assert set(labels.tolist()) == set(range(args.num_pseudo_classes))
    args = tiny_lock_config(preset=VARIANT_LOCK, variant="zero-shot", zero_shot_images=48)
    data = _load(args, toy_domain(48, 0, "red"), None)
    assert data.zero_shot_source == list(args.zero_shot_generators)
    assert len(data.lock_prohibited) + len(data.val_prohibited) == 48


def test_bad_lock_data_is_refused_before_any_split(tiny_lock_config, toy_domains):
    with pytest.raises(LockDataError, match="at least 8 needed"):
        _load(tiny_lock_config(), toy_domain(5, 0, "red"), toy_domains.prohibited)
    with pytest.raises(LockDataError, match="needs a prohibited dataset"):
        _load(tiny_lock_config(), toy_domains.authorized, None)
    data = _load(tiny_lock_config(), toy_domains.authorized, toy_domains.prohibited)
    with pytest.raises(LockDataError, match="out of range"):
        data.check_eval_datasets({"authorized": toy_domain(12, 2, "red", num_classes=4)})
    with pytest.raises(LockDataError, match="keys among"):
        data.check_eval_datasets({"other": toy_domains.eval_authorized})
