"""Input transformations: each changes images as it says, seeded, and in front of every image an encoder sees."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_encoderlock.probing.transforms import (
    TRANSFORMS,
    ChannelStats,
    TransformError,
    apply_transform,
    parse_transform_spec,
    transformed_encoder,
    with_transformed_copies,
)
from tests.helpers import toy_domain


def coloured(n: int = 6, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        pixels = rng.integers(0, 100, (8, 8, 3)).astype(np.uint8)
        pixels[..., 0] += 120
        images.append(Image.fromarray(pixels))
    return images


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def test_greyscale_equal_channels_and_inversion():
    images = coloured()
    grey = pixels(apply_transform(images, "greyscale", 1.0)[0])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (pixels(apply_transform(images, "invert", 1.0)[0]) == 255 - pixels(images[0])).all()


def test_channel_permutation_moves_the_red_channel():
    images = coloured()
    permuted = pixels(apply_transform(images, "permute_channels", 5.0)[0])  # (2, 1, 0)
    assert (permuted[..., 2] == pixels(images[0])[..., 0]).all()


def test_sizes_and_modes_kept_and_the_input_untouched():
    images = coloured()
    before = [pixels(image) for image in images]
    for name, spec in TRANSFORMS.items():
        reference = ChannelStats(np.full(3, 100.0), np.full(3, 20.0))
        out = apply_transform(images, name, spec.strengths[-1], reference=reference, source=reference)
        assert all(o.size == i.size and o.mode == i.mode for o, i in zip(out, images)), name
    assert all((pixels(image) == b).all() for image, b in zip(images, before))


def test_randomised_transforms_are_seeded_per_image():
    images = coloured()
    a, b = apply_transform(images, "colour_jitter", 0.5, seed=3), apply_transform(images, "colour_jitter", 0.5, seed=3)
    c = apply_transform(images, "colour_jitter", 0.5, seed=4)
    assert all((pixels(x) == pixels(y)).all() for x, y in zip(a, b))
    assert any((pixels(x) != pixels(y)).any() for x, y in zip(a, c))
    # the same image gets the same draw wherever it appears (train, validation or test)
    assert (pixels(apply_transform(images[::-1], "colour_jitter", 0.5, seed=3)[-1]) == pixels(a[0])).all()


def test_statistics_matching_moves_the_domain_towards_the_reference():
    images = coloured(40)
    source = ChannelStats.of_images(images)
    reference = ChannelStats(np.array([30.0, 30.0, 200.0]), np.array([10.0, 10.0, 10.0]))
    matched = ChannelStats.of_images(apply_transform(images, "match_domain_stats", 1.0, 0, reference, source))
    assert np.allclose(matched.mean, reference.mean, atol=3.0) and np.allclose(matched.std, reference.std, atol=3.0)
    per_image = ChannelStats.of_images(apply_transform(images, "match_image_stats", 1.0, 0, reference))
    assert np.allclose(per_image.mean, reference.mean, atol=3.0)


def test_the_transformed_view_preprocesses_transformed_images_with_the_same_weights(encoder):
    images = [image.resize((32, 32)) for image in coloured()]
    view = transformed_encoder(encoder, "invert", 1.0)
    assert view.backbone is encoder.backbone  # a view, not a copy: nothing to keep in sync
    expected = encoder.preprocess(apply_transform(images, "invert", 1.0))
    assert torch.equal(view.preprocess(images), expected)
    assert not torch.equal(view.preprocess(images), encoder.preprocess(images))


def test_bad_requests_name_the_problem(encoder):
    with pytest.raises(TransformError, match="unknown transform 'blur'"):
        apply_transform(coloured(), "blur", 1.0)
    with pytest.raises(TransformError, match="needs channel statistics"):
        transformed_encoder(encoder, "match_image_stats", 1.0)
    assert {t for t, spec in TRANSFORMS.items() if spec.needs_reference} == {"match_domain_stats", "match_image_stats"}


def test_transformed_copies_follow_the_rows_with_labels_kept():
    dataset = toy_domain(6, seed=0, style="green")
    both = with_transformed_copies(dataset, ["greyscale", "permute_channels:5"], seed=0)
    assert len(both) == 3 * len(dataset)
    assert list(both["label"]) == list(dataset["label"]) * 3
    for row in range(len(dataset)):
        original = pixels(dataset[row]["image"])
        assert (pixels(both[row]["image"]) == original).all()
        grey = pixels(both[len(dataset) + row]["image"])
        assert (grey[..., 0] == grey[..., 2]).all() and not (grey == original).all()
        assert (pixels(both[2 * len(dataset) + row]["image"]) == original[..., ::-1]).all()


@pytest.mark.parametrize(
    "spec",
    ["sepia", "greyscale:x", "resample:-2", "resample:nan", "resample:0.5", "permute_channels:9",
     "permute_channels:2.5", "colour_jitter:1.5", "match_image_stats:2"],
)  # fmt: skip
def test_transform_specs_are_checked_by_name_and_strength(spec):
    with pytest.raises(TransformError, match="transform"):
        parse_transform_spec(spec)


def test_transform_spec_without_strength_takes_the_first_listed():
    assert parse_transform_spec("permute_channels") == ("permute_channels", TRANSFORMS["permute_channels"].strengths[0])
    assert parse_transform_spec("resample:3") == ("resample", 3.0)


def test_a_strength_out_of_its_transforms_range_is_refused_before_any_image_is_touched():
    with pytest.raises(TransformError, match="permute_channels.*whole number from 1 to 5"):
        apply_transform(coloured(), "permute_channels", 9.0)
