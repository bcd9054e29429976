"""Images are read faithfully and only from the data: every PIL mode converts to what it shows (16-bit scaled, alpha
composited on white), non-finite pixels and oversized images are refused by domain and row, string image columns are
never read unless local files are allowed under a folder, and a prohibited set that repeats the authorized images is
caught by content hash in any order."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.data import lock_tensors
from hf_encoderlock.data.domains import DomainError, domain_from_arrays, domain_from_folder, load_domain
from hf_encoderlock.data.lock_tensors import (
    DomainTensors,
    LockDataError,
    as_lock_dataset,
    cast_local_images,
    combine_labelled_domains,
    content_overlap,
    image_content_hash,
    preprocess_domain,
)
from hf_encoderlock.encoders import EncoderError, convert_image, tiny_vit_encoder
from tests.helpers import toy_domain

SIXTEEN = np.array([[0, 100 * 256, 200 * 256 + 255, 65535]], dtype=np.uint16)  # 8-bit view: 0, 100, 200, 255
SIXTEEN_AS_8BIT = [0, 100, 200, 255]


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])  # entry 0 red, entry 1 blue
    image.putpixel((1, 0), 1)
    if transparent:
        image.info["transparency"] = 0
    return image


def _sixteen_big_endian() -> Image.Image:
    return Image.frombytes("I;16B", (4, 1), SIXTEEN.astype(">u2").tobytes())


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit grey pixels, without the pixels (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _image_dataset(values: list, num_classes: int = 2) -> Dataset:
    """A labelled dataset whose ``image`` column stores ``values`` (PIL images or ``{bytes, path}`` dicts) as is."""
    labels = [i % num_classes for i in range(len(values))]
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict({"image": values, "label": labels}, features=features)


def _stored(image: Image.Image, fmt: str = "PNG") -> dict:
    return {"bytes": _encoded(image, fmt), "path": None}


def _with_row(good: Image.Image, bad: dict, row: int, count: int = 8) -> Dataset:
    values = [_stored(good) for _ in range(count)]
    values[row] = bad
    return _image_dataset(values)


def _files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*"))


@pytest.fixture(scope="module")
def encoder():
    return tiny_vit_encoder(seed=0, image_size=16, patch_size=4)


# ------------------------------------------------------------------------------------------------- conversion

# (id, image, mode, expected pixels)
CONVERSIONS = [
    ("16-bit grey scaled, not saturated", Image.fromarray(SIXTEEN), "L", [SIXTEEN_AS_8BIT]),
    ("16-bit big-endian", _sixteen_big_endian(), "L", [SIXTEEN_AS_8BIT]),
    ("16-bit to RGB", Image.fromarray(SIXTEEN), "RGB", [[[v] * 3 for v in SIXTEEN_AS_8BIT]]),
    ("32-bit int holding 16-bit values", Image.fromarray(SIXTEEN.astype(np.int32)), "L", [SIXTEEN_AS_8BIT]),
    ("32-bit int holding 8-bit values", Image.fromarray(np.array([[0, 7, 255]], np.int32)), "L", [[0, 7, 255]]),
    ("float 0-1", Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "L", [[0, 128, 255]]),
    ("float 0-255", Image.fromarray(np.array([[0.0, 7.0, 300.0]], np.float32)), "L", [[0, 7, 255]]),
    ("palette", _palette(False), "RGB", [[[255, 0, 0], [0, 0, 255]]]),
    ("palette transparency on white", _palette(True), "RGB", [[[255, 255, 255], [0, 0, 255]]]),
    ("CMYK", Image.new("CMYK", (1, 1), (255, 0, 0, 0)), "RGB", [[[0, 255, 255]]]),
    ("LA transparent on white", Image.new("LA", (1, 1), (0, 0)), "L", [[255]]),
    ("LA opaque", Image.new("LA", (1, 1), (30, 255)), "RGB", [[[30, 30, 30]]]),
    ("RGBA half transparent", Image.new("RGBA", (1, 1), (255, 0, 0, 128)), "RGB", [[[255, 127, 127]]]),
    ("RGBA to grey", Image.new("RGBA", (1, 1), (0, 0, 0, 0)), "L", [[255]]),
    ("1-bit", Image.new("1", (1, 1), 1), "RGB", [[[255, 255, 255]]]),
]


@pytest.mark.parametrize("image, mode, expected", [c[1:] for c in CONVERSIONS], ids=[c[0] for c in CONVERSIONS])
def test_every_mode_converts_to_what_it_shows(image, mode, expected):
    converted = convert_image(image, mode)
    assert converted.mode == mode
    assert np.asarray(converted).tolist() == expected


def test_preprocess_reads_a_16_bit_image_like_its_8_bit_twin(encoder):
    eight = Image.fromarray((SIXTEEN >> 8).astype(np.uint8))
    pixels = encoder.preprocess([Image.fromarray(SIXTEEN), _sixteen_big_endian(), eight])
    assert torch.equal(pixels[0], pixels[2]) and torch.equal(pixels[1], pixels[2])
    assert float(pixels[0].std()) > 0  # not a saturated white image


# (id, image, message): pixels that cannot be read are refused, naming the image
UNREADABLE = [
    ("NaN", Image.fromarray(np.array([[0.5, np.nan]], np.float32)), r"image 1 has non-finite pixel values"),
    ("inf", Image.fromarray(np.array([[np.inf, 0.5]], np.float32)), r"image 1 has non-finite pixel values"),
    ("negative", Image.fromarray(np.array([[-3, 5]], np.int32)), r"image 1 has negative pixel values \(down to -3\)"),
]


@pytest.mark.parametrize("image, message", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_unreadable_pixels_are_refused_by_preprocess(encoder, image, message):
    with pytest.raises(EncoderError, match=message):
        encoder.preprocess([Image.new("RGB", (2, 2)), image])


# ------------------------------------------------------------------------------------------ domains from arrays

# (id, array, expected grey value of its first pixel)
ARRAYS = [
    ("uint16 scaled by its bit depth", np.full((4, 4), 40000, np.uint16), 40000 >> 8),
    ("int64 holding 8-bit values", np.full((4, 4), 200, np.int64), 200),
    ("float 0-1", np.full((4, 4), 0.5), 128),
    ("RGBA composited on white", np.zeros((4, 4, 4), np.uint8), 255),
]


@pytest.mark.parametrize("array, value", [c[1:] for c in ARRAYS], ids=[c[0] for c in ARRAYS])
def test_arrays_are_stored_faithfully(array, value):
    dd = domain_from_arrays([array] * 4, [0, 1, 0, 1], test_size=0.5)
    image = dd["train"][0]["image"]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (value, value, value)


# (id, images, message)
BAD_ARRAYS = [
    ("NaN", [np.zeros((4, 4)), np.full((4, 4), np.nan)], r"image 1 has non-finite pixel values \(NaN or inf\)"),
    ("inf", [np.zeros((4, 4, 3)), np.full((4, 4, 3), np.inf)], r"image 1 has non-finite pixel values"),
    ("negative", [np.zeros((4, 4), np.int16), np.full((4, 4), -1, np.int16)], r"image 1 has negative pixel values"),
    ("16-bit PIL NaN float", [Image.fromarray(np.full((4, 4), np.nan, np.float32))] * 2, r"image 0 has non-finite"),
]


@pytest.mark.parametrize("images, message", [c[1:] for c in BAD_ARRAYS], ids=[c[0] for c in BAD_ARRAYS])
def test_non_finite_or_negative_arrays_are_refused(images, message):
    with pytest.raises(DomainError, match=message):
        domain_from_arrays(images, [0, 1], test_size=0.5)


# ------------------------------------------------------------------------------------------ domains from folders

# (id, image saved in the folder, the grey value it must decode to)
FOLDER_IMAGES = [
    ("16-bit PNG", Image.fromarray(np.full((4, 4), 40000, np.uint16)), 40000 >> 8),
    ("RGBA PNG", Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 255),
    ("LA PNG", Image.new("LA", (4, 4), (10, 255)), 10),
    ("palette with transparency", _palette(True).resize((4, 4)), 255),
]


@pytest.mark.parametrize("image, value", [c[1:] for c in FOLDER_IMAGES], ids=[c[0] for c in FOLDER_IMAGES])
def test_folder_images_decode_faithfully(tmp_path, image, value):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            if label == "a" and i == 0:
                image.save(tmp_path / label / "odd.png")
            else:
                Image.new("L", (4, 4), 60).save(tmp_path / label / f"{i}.png")
    before = _files(tmp_path)
    dd = domain_from_folder(tmp_path, test_size=0.5, seed=0)
    decoded = [row["image"] for split in dd.values() for row in split]
    assert all(img.mode == "RGB" for img in decoded)
    assert sorted({img.getpixel((0, 0)) for img in decoded}) == sorted({(value,) * 3, (60, 60, 60)})
    assert _files(tmp_path) == before  # the user's folder is read, never written


# -------------------------------------------------------------------------------- Hub / saved datasets


def _hub_like(images: list) -> DatasetDict:
    labels = [i % 2 for i in range(len(images))]
    ds = Dataset.from_dict({"img": images, "y": labels}).cast_column("img", ImageFeature())
    return DatasetDict(train=ds)


def test_saved_16_bit_and_rgba_images_are_re_encoded_faithfully_without_writing(tmp_path):
    images = [Image.fromarray(np.full((4, 4), 40000, np.uint16)), Image.new("RGBA", (4, 4), (0, 0, 0, 0))] * 4
    images += [Image.new("L", (4, 4), 9)] * 4
    _hub_like(images).save_to_disk(str(tmp_path / "saved"))
    before = _files(tmp_path)
    dd = load_domain({"name": str(tmp_path / "saved"), "image_column": "img", "label_column": "y"})
    values = sorted({row["image"].getpixel((0, 0)) for split in dd.values() for row in split})
    assert values == [(9, 9, 9), (40000 >> 8,) * 3, (255, 255, 255)]
    assert _files(tmp_path) == before  # no cache file was written into the user's saved dataset


def test_string_image_column_is_refused_unless_local_files_are_allowed(tmp_path):
    root = tmp_path / "pictures"
    root.mkdir()
    for i in range(6):
        Image.new("L", (4, 4), 30 * i).save(root / f"{i}.png")
    paths = [str(root / f"{i}.png") for i in range(6)]
    Dataset.from_dict({"img": paths, "y": [0, 1] * 3}).save_to_disk(str(tmp_path / "saved"))
    spec = {"name": str(tmp_path / "saved"), "image_column": "img", "label_column": "y", "test_size": 0.5}
    with pytest.raises(
        DomainError, match=r"column 'img' in split 'train' .* holds strings .* allow_local_images_under"
    ):
        load_domain(spec)
    dd = load_domain(spec, allow_local_images_under=root)
    assert sorted(row["image"].getpixel((0, 0))[0] for s in dd.values() for row in s) == [0, 30, 60, 90, 120, 150]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DomainError, match=r"row 0 of the 'img' column .* lies outside .*other"):
        load_domain(spec, allow_local_images_under=other)


# (id, the string in row 1, message)
LOCAL_PATHS = [
    ("URL", "https://example.invalid/cat.png", r"row 1 of the 'image' column is a URL .* never fetched"),
    ("fsspec chain", "zip://a.png::https://example.invalid/a.zip", r"row 1 of the 'image' column is a URL"),
    ("outside the root", "../secret.png", r"row 1 of the 'image' column \('../secret.png'\) lies outside"),
    ("missing file", "missing.png", r"row 1 of the 'image' column names no file"),
    ("empty string", "", r"row 1 of the 'image' column holds '', not a file path"),
]


@pytest.mark.parametrize("value, message", [c[1:] for c in LOCAL_PATHS], ids=[c[0] for c in LOCAL_PATHS])
def test_local_images_are_read_only_under_their_root(tmp_path, value, message, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network access"))
    root = tmp_path / "root"
    root.mkdir()
    Image.new("L", (4, 4)).save(root / "ok.png")
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    dataset = Dataset.from_dict({"image": ["ok.png", value, "ok.png"], "label": [0, 1, 0]})
    with pytest.raises(LockDataError, match=r"domain 'red': " + message):
        as_lock_dataset(dataset, "red", allow_local_images_under=root)
    with pytest.raises(LockDataError, match=r"domain 'red': row 0 of the 'image' column holds str, not an image"):
        as_lock_dataset(dataset, "red")  # refused by default, whatever the strings


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(LockDataError, match=r"row 0 of the 'image' column \('link.png'\) lies outside"):
        cast_local_images(Dataset.from_dict({"image": ["link.png"]}), "image", root, "red")


def test_allowed_local_images_reach_the_lock_in_column_order(tmp_path, encoder):
    for i in range(4):
        Image.new("RGB", (4, 4), (50 * i, 0, 0)).save(tmp_path / f"{i}.png")
    dataset = Dataset.from_dict({"image": [f"{i}.png" for i in range(4)], "label": [0, 1, 0, 1]})
    cast = as_lock_dataset(dataset, "red", allow_local_images_under=tmp_path)
    assert cast.column_names == ["image", "label"] and isinstance(cast.features["image"], ImageFeature)
    assert [row["image"].getpixel((0, 0))[0] for row in cast] == [0, 50, 100, 150]
    assert len(preprocess_domain(encoder, cast, "red")) == 4


def test_combining_domains_refuses_a_string_image_column():
    strings = Dataset.from_dict({"image": ["/etc/hostname"] * 4, "label": [0, 1] * 2})
    with pytest.raises(LockDataError, match=r"domain 'paths': row 0 of the 'image' column holds str"):
        combine_labelled_domains({"red": toy_domain(4, 0, "red", num_classes=2), "paths": strings})


# ------------------------------------------------------------------------------------------ the lock's decoder


def test_lock_data_decodes_16_bit_images_like_their_8_bit_twins(encoder):
    sixteen = _image_dataset([_stored(Image.fromarray(np.full((4, 4), 256 * i + 200, np.uint16))) for i in range(6)])
    eight = _image_dataset([_stored(Image.new("L", (4, 4), i)) for i in range(6)])
    assert torch.equal(
        preprocess_domain(encoder, sixteen, "deep").pixel_values, preprocess_domain(encoder, eight, "flat").pixel_values
    )


# (id, the stored value of row 3, message)
BAD_ROWS = [
    (
        "NaN float TIFF",
        _stored(Image.fromarray(np.full((4, 4), np.nan, np.float32)), "TIFF"),
        r"domain 'red': the image in row 3 has non-finite pixel values \(NaN or inf\)",
    ),
    (
        "remote reference",
        {"bytes": None, "path": "https://example.invalid/cat.png"},
        r"domain 'red': the image in row 3 is a remote reference \('https://example.invalid/cat.png'\)",
    ),
    (
        "over the pixel limit",
        {"bytes": _png_header(9000, 9000), "path": None},
        r"domain 'red': the image in row 3 is 9000x9000 \(81,000,000 pixels\), over the 67,108,864-pixel limit",
    ),
    (
        "decompression bomb",
        {"bytes": _png_header(20000, 20000), "path": None},
        r"domain 'red': the image in row 3 is refused as a decompression bomb",
    ),
    (
        "undecodable bytes",
        {"bytes": b"\x89PNG\r\n\x1a\n not a png", "path": None},
        r"domain 'red': the image in row 3 cannot be decoded",
    ),
]


@pytest.mark.parametrize("value, message", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_rows_are_named_by_domain_and_row_without_network(encoder, value, message, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network access"))
    with pytest.raises(LockDataError, match=message):
        preprocess_domain(encoder, _with_row(Image.new("RGB", (4, 4)), value, 3), "red")


def test_lowered_limits_name_the_row_in_domains_and_lock_data(tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(lock_tensors, "MAX_IMAGE_PIXELS", 15)
    with pytest.raises(LockDataError, match=r"domain 'red': the image in row 0 is 4x4 \(16 pixels\), over the 15-"):
        preprocess_domain(encoder, _image_dataset([_stored(Image.new("L", (4, 4)))] * 4), "red")
    with pytest.raises(DomainError, match=r"image 0 is 4x4 \(16 pixels\)"):
        domain_from_arrays([np.zeros((4, 4), np.uint8)] * 2, [0, 1], test_size=0.5)
    _hub_like([Image.new("L", (3, 3))] * 3 + [Image.new("L", (4, 4))]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DomainError, match=r"domain 'saved': split 'train': the image in row 3 is 4x4"):
        load_domain({"name": str(tmp_path / "saved"), "image_column": "img", "label_column": "y"})
    for label in ("a", "b"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / "folder" / label / "big.png")
    with pytest.raises(DomainError, match=r"big\.png is 4x4 \(16 pixels\), over the 15-pixel limit"):
        domain_from_folder(tmp_path / "folder")


def test_decoding_goes_through_the_processor_in_pixel_bounded_chunks(encoder, monkeypatch):
    monkeypatch.setattr(lock_tensors, "CHUNK_PIXELS", 3 * 16)
    sizes = []
    original = encoder.preprocess
    monkeypatch.setattr(encoder, "preprocess", lambda images: sizes.append(len(images)) or original(images))
    data = preprocess_domain(encoder, _image_dataset([_stored(Image.new("L", (4, 4), i)) for i in range(8)]), "red")
    assert sizes == [3, 3, 2] and len(data) == 8


# ------------------------------------------------------------------------------------------- content overlap


def _domain(name: str, count: int, offset: int = 0) -> DomainTensors:
    return preprocess_domain(
        tiny_vit_encoder(seed=0, image_size=16, patch_size=4),
        _image_dataset([_stored(Image.new("RGB", (4, 4), (offset + i, 0, 0))) for i in range(count)]),
        name,
    )


def test_a_reordered_copy_is_identical_and_overlap_is_counted():
    red = _domain("red", 40)
    reordered = red.subset(torch.randperm(40, generator=torch.Generator().manual_seed(0)))
    reordered.name = "green"
    with pytest.raises(LockDataError, match=r"the prohibited domain is identical to the authorized domain"):
        content_overlap(red, reordered)
    plain = DomainTensors("green", reordered.pixel_values, reordered.labels, reordered.num_classes)  # no hashes
    with pytest.raises(LockDataError, match=r"the prohibited domain is identical to the authorized domain"):
        content_overlap(red, plain)
    three_shared = _domain("green", 40, offset=37)  # rows 0-2 equal red's rows 37-39
    with pytest.raises(LockDataError, match=r"domain 'green': 3 of its 40 prohibited images \(8%\) are byte-identical"):
        content_overlap(red, three_shared)
    assert content_overlap(red, _domain("green", 40, offset=39)) == pytest.approx(1 / 40)
    assert content_overlap(red, _domain("green", 40, offset=100)) == 0.0


def test_content_hash_ignores_the_file_format_but_not_the_pixels():
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    as_png = Image.open(io.BytesIO(_encoded(image, "PNG")))
    as_bmp = Image.open(io.BytesIO(_encoded(image, "BMP")))
    assert image_content_hash(as_png) == image_content_hash(as_bmp) == image_content_hash(image)
    assert image_content_hash(_palette(False)) != image_content_hash(_palette(True).remap_palette([1, 0]))
    changed = image.copy()
    changed.putpixel((0, 0), (1, 1, 1))
    assert image_content_hash(changed) != image_content_hash(image)
