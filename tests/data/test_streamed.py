"""Streamed lock data (hf_encoderlock.data.streamed): the same pixels as in memory, decoded only when asked for."""

import io

import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.data.lock_tensors import DomainTensors, LockDataError, preprocess_domain, stratified_split
from hf_encoderlock.data.streamed import StreamedDomain, load_lock_domain, preprocessed_bytes_per_image
from hf_encoderlock.encoders import tiny_vit_encoder
from tests.helpers import toy_domain


@pytest.fixture(scope="module")
def encoder():
    return tiny_vit_encoder(seed=0, image_size=16, patch_size=4)


def test_a_domain_over_the_byte_budget_is_streamed_and_one_within_it_is_held(encoder):
    red = toy_domain(20, 0, "red")
    per_image, shape = preprocessed_bytes_per_image(encoder, red, "red")
    assert shape == (3, 16, 16) and per_image == 3 * 16 * 16 * 4
    assert isinstance(load_lock_domain(encoder, red, "red", cache_bytes=20 * per_image), DomainTensors)
    streamed = load_lock_domain(encoder, red, "red", cache_bytes=20 * per_image - 1)
    assert isinstance(streamed, StreamedDomain) and len(streamed) == 20 and streamed.pixel_shape == shape


def test_streamed_rows_decode_to_exactly_the_in_memory_pixels_labels_and_hashes(encoder):
    red = toy_domain(30, 0, "red")
    held = preprocess_domain(encoder, red, "red")
    streamed = load_lock_domain(encoder, red, "red", cache_bytes=0, chunk_size=4)
    assert streamed.counter.images == 0  # the check pass hashes images; it keeps no pixels
    assert torch.equal(streamed.labels, held.labels) and torch.equal(streamed.content_hashes, held.content_hashes)
    index = torch.tensor([17, 3, 29, 3])
    batch = streamed.take(index)
    assert torch.equal(batch.pixel_values, held.pixel_values[index])
    assert torch.equal(batch.labels, held.labels[index])
    assert torch.equal(batch.content_hashes, held.content_hashes[index])
    assert streamed.counter.images == 4 and streamed.counter.largest == 4
    assert torch.equal(torch.cat(list(streamed.pixel_chunks(7))), held.pixel_values)
    assert streamed.counter.largest == 7  # never more than one chunk at once


def test_splits_of_a_streamed_domain_stay_streamed_and_match_the_held_splits(encoder):
    red = toy_domain(30, 0, "red")
    held_lock, held_val = stratified_split(preprocess_domain(encoder, red, "red"), 0.2, seed=5)
    lock, val = stratified_split(load_lock_domain(encoder, red, "red", cache_bytes=0), 0.2, seed=5)
    assert isinstance(lock, StreamedDomain) and isinstance(val, StreamedDomain)
    assert lock.counter.images == 0  # splitting decodes nothing
    for streamed, held in ((lock, held_lock), (val, held_val)):
        assert torch.equal(streamed.take(torch.arange(len(streamed))).pixel_values, held.pixel_values)
        assert torch.equal(streamed.labels, held.labels)


def test_a_bad_image_is_named_by_row_when_the_domain_is_loaded_not_mid_lock(encoder):
    good = Image.new("RGB", (16, 16), (200, 10, 10))
    rows = [{"image": {"bytes": _png(good), "path": None}, "label": i % 2} for i in range(6)]
    rows[4]["image"] = {"bytes": b"not an image", "path": None}
    features = Features({"image": ImageFeature(), "label": Value("int64")})
    dataset = Dataset.from_list(rows, features=features)
    with pytest.raises(LockDataError, match=r"domain 'red': the image in row 4 cannot be decoded"):
        load_lock_domain(encoder, dataset, "red", cache_bytes=0)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
