"""A lock over streamed data (decoded per batch, ``lock_cache_bytes``) is the lock over data held in memory, and never
decodes more than a batch at once."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hf_encoderlock.data.lock_tensors import DomainTensors
from hf_encoderlock.data.streamed import StreamedDomain
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import TINY_LOCK, VARIANT_LOCK, make_lock_config, toy_domain, unlabelled

BATCH = 8  # images per step and per encoding pass: the lock data (48 images a domain) is six times larger
#: the tuned objective (reference features, augmented views, every pooling) on the tiny lock
INFORMATION = dict(objective="information", info_knn_weight=1.0, info_preserve_weight=1.0, prohibited_poolings=["auto"])


def _lock(tmp_path, name: str, preset: dict[str, Any], prohibited, **overrides: Any) -> tuple[EncoderLockTrainer, dict]:
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = make_lock_config(
        tmp_path / name, preset, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, **overrides
    )
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), prohibited, "red", "green")
    trainer.train()
    result = {f"mask/{name}": value.cpu() for name, value in trainer.mask.items()}
    result.update({f"weight/{name}": value.detach().clone() for name, value in encoder.named_parameters()})
    for role in ("authorized", "adversary"):
        result.update({f"{role}/{k}": v.cpu() for k, v in getattr(trainer.heads, role).state_dict().items()})
    return trainer, result


SETUPS = {
    "supervised": (TINY_LOCK, lambda: toy_domain(48, 1, "green"), INFORMATION),
    "unsupervised": (VARIANT_LOCK, lambda: unlabelled(toy_domain(48, 1, "green")), {"variant": "unsupervised"}),
    "zero-shot": (VARIANT_LOCK, lambda: None, {"variant": "zero-shot", "zero_shot_images": 48}),
}


@pytest.mark.parametrize("variant", sorted(SETUPS))
def test_a_streamed_lock_equals_the_lock_held_in_memory_and_decodes_one_batch_at_a_time(tmp_path, variant):
    preset, prohibited, overrides = SETUPS[variant]
    held, held_result = _lock(tmp_path, "held", preset, prohibited(), **overrides)
    streamed, streamed_result = _lock(tmp_path, "streamed", preset, prohibited(), lock_cache_bytes=0, **overrides)
    assert isinstance(held.lock_authorized, DomainTensors) and isinstance(held.lock_prohibited, DomainTensors)
    assert isinstance(streamed.lock_authorized, StreamedDomain) and isinstance(streamed.lock_prohibited, StreamedDomain)
    for side in (streamed.lock_authorized, streamed.lock_prohibited):
        assert side.counter.images > 48  # every image was decoded again and again, never held ...
        assert side.counter.largest <= BATCH  # ... and never more than a batch at once
    assert held_result.keys() == streamed_result.keys()
    for name, value in held_result.items():
        assert torch.equal(value, streamed_result[name]), f"{name} differs between streamed and held lock data"


def test_a_challenge_encodes_a_fixed_sample_of_at_most_challenge_max_images(tmp_path):
    trainer, _ = _lock(tmp_path, "capped", TINY_LOCK, toy_domain(48, 1, "green"), challenge_max_images=8)
    sizes = {key: len(data) for key, data in trainer.challenge_sets.items()}
    assert sizes == {"lock_authorized": 8, "val_authorized": 8, "lock_prohibited": 8, "val_prohibited": 8}
    assert len(trainer.lock_authorized) > 8 and len(trainer.val_authorized) > 8  # the lock itself reads every image
    uncapped = make_lock_config(tmp_path / "all", TINY_LOCK, challenge_max_images=None)
    assert uncapped.challenge_max_images is None
    with pytest.raises(ValueError, match="challenge_max_images must be None or a whole number >= 8"):
        make_lock_config(tmp_path / "bad", TINY_LOCK, challenge_max_images=3)


def test_dataloader_workers_decode_streamed_batches_to_the_same_lock(tmp_path):
    """``dataloader_num_workers``: batches are decoded in worker processes, and the lock is unchanged."""
    _, in_process = _lock(tmp_path, "main", TINY_LOCK, toy_domain(48, 1, "green"), lock_cache_bytes=0)
    _, in_workers = _lock(
        tmp_path, "workers", TINY_LOCK, toy_domain(48, 1, "green"), lock_cache_bytes=0, dataloader_num_workers=2
    )
    for name, value in in_process.items():
        assert torch.equal(value, in_workers[name]), f"{name} differs with dataloader workers"


def test_reference_features_come_from_fixed_blocks_whatever_the_batch(tmp_path):
    """The frozen encoder's features of a lock image do not depend on which batch first held it (a resumed run or
    another rank gets the same bits), and only the blocks a batch touches are computed."""
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = make_lock_config(
        tmp_path / "run", TINY_LOCK, per_device_train_batch_size=BATCH, lock_cache_bytes=0, **INFORMATION
    )
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), toy_domain(48, 1, "green"), "red", "green")
    data = trainer.lock_authorized
    index = torch.tensor([len(data) - 1, 2, 9])
    got = trainer._reference_features(data.take(index).pixel_values, index)
    assert trainer.lock_state.reference_known.tolist().count(True) == 3  # the blocks of rows 2, 9 and the last
    with torch.no_grad():
        blocks = [trainer.reference_encoder(chunk) for chunk in data.pixel_chunks(BATCH)]
    assert torch.equal(got, torch.cat(blocks)[index])
