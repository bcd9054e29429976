"""BatchNorm running statistics are not weights the lock may change: they stay bit-identical, and the package's
own audit passes on its own output."""

from __future__ import annotations

import torch
from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

from hf_encoderlock.audit import audit_locked
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import toy_domain


def test_a_lock_leaves_batchnorm_statistics_untouched(tmp_path, tiny_lock_config):
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    torch.manual_seed(0)
    model = ResNetModel(config).eval()
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 16}, crop_pct=1.0)
    original = tmp_path / "original"
    model.save_pretrained(original)
    processor.save_pretrained(original)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    assert any(name.endswith("running_mean") for name in buffers)

    args = tiny_lock_config(
        tmp_path, preset={}, num_rounds=2, update_steps_per_round=2, weights_per_round=5,
        per_device_train_batch_size=12, score_batches=1, challenge_every=1, adversary_epochs=1,
        adversary_learning_rates=[1e-2], seed=0, save_strategy="no",
    )  # fmt: skip
    trainer = EncoderLockTrainer(
        model, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green", processing_class=processor
    )
    trainer.train()
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    trainer.save_model()
    report = audit_locked(tmp_path / "run", original=original, probes=False)
    assert report.ok, report.problems + report.unchecked
    assert report.weights["changed"] > 0 and report.weights["outside_mask"] == 0
