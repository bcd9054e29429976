"""Built-in domain rendering (hf_encoderlock.data.builtin): glyph and MNIST-M arrays are seeded and need no fonts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hf_encoderlock.data import builtin as bd


@pytest.mark.parametrize("name", ["syn-digits", "letters"])
def test_rendered_images_deterministic(name):
    recipe = replace(bd.SYN_DIGITS_RECIPE if name == "syn-digits" else bd.LETTERS_RECIPE, per_class=4)
    first = bd.glyph_arrays(name, recipe, seed=3)
    second = bd.glyph_arrays(name, recipe, seed=3)
    other = bd.glyph_arrays(name, recipe, seed=4)
    assert first[0].shape == (40, 32, 32, 3) and first[0].dtype == np.uint8
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_mnist_m_deterministic_and_seed_dependent():
    a, b, c = bd.mnist_m_arrays(0), bd.mnist_m_arrays(0), bd.mnist_m_arrays(1)
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(a[1], c[1])  # same digits, different backgrounds


def test_glyphs_render_without_system_fonts():
    """CI machines may lack DejaVu: Pillow's built-in default font must be enough."""
    recipe = replace(bd.LETTERS_RECIPE, per_class=3)
    images, labels, names = bd.glyph_arrays("letters", recipe, seed=0, font_paths=())
    assert images.shape == (30, 32, 32, 3)
    assert np.bincount(labels).tolist() == [3] * 10 and names == tuple("ABCDEFGHJK")
    assert images.std() > 10  # glyphs and backgrounds actually vary
