"""Probe features (hf_encoderlock.probing.features): cached by encoder weights and dataset, pooling checked."""

import pytest
import torch

from hf_encoderlock.probing.features import FeatureError, extract_features


def test_features_are_cached_by_encoder_weights_and_dataset(encoder, domains, tmp_path):
    dataset = domains["alpha"]["test"]
    first = extract_features(encoder, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
    assert set(first.features) == {"cls", "mean"} and first.features["cls"].shape == (24, 32)
    assert torch.equal(first.labels, torch.tensor(dataset["label"]))
    calls = []
    original = encoder.pooled_features
    encoder.pooled_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = extract_features(encoder, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
        assert calls == [] and torch.equal(again.features["mean"], first.features["mean"])
        twin = encoder.random_init_twin(0)
        other = extract_features(twin, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
        assert other.cache_key != first.cache_key and not torch.equal(other.features["cls"], first.features["cls"])
        subset = extract_features(encoder, dataset.select(range(10)), ["cls"], cache_dir=tmp_path, progress=False)
        assert subset.cache_key != first.cache_key and len(calls) == 1 and len(subset) == 10
    finally:
        del encoder.pooled_features
    with pytest.raises(FeatureError, match="not offered"):
        extract_features(encoder, dataset, ["spatial_mean"], progress=False)
