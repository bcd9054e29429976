"""Bad inputs fail before any training, with a message naming the problem, and write nothing that looks like a result.

Each row builds its bad input and makes the call that must refuse it (mostly ``EncoderLockTrainer(...)``: the data
are checked and preprocessed there, before ``train()``).
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from transformers import ViTConfig, ViTModel

from hf_encoderlock.data.domains import DomainError, domain_from_folder, load_domain
from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import EncoderAdapter, EncoderError, load_encoder, tiny_vit_encoder, vit_image_processor
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, EncoderLockTrainer, NonFiniteWeightsError
from tests.helpers import CHECK_ONLY_LOCK, make_lock_config, toy_domain

RESULT_FILES = ("config.json", "model.safetensors", LOCK_CONFIG_FILE)
NUM_IMAGES = 24


def _config(out: Path, **overrides: Any) -> EncoderLockConfig:
    return make_lock_config(out, CHECK_ONLY_LOCK, **overrides)


def _encoder() -> EncoderAdapter:
    return tiny_vit_encoder(seed=0, image_size=16, patch_size=4)


def _red() -> Dataset:
    return toy_domain(NUM_IMAGES, 0, "red")


def _green() -> Dataset:
    return toy_domain(NUM_IMAGES, 1, "green")


def _lock(out: Path, authorized: Any = None, prohibited: Any = None, encoder: EncoderAdapter | None = None, **kwargs):
    """Build (never train) a lock; the construction is where data are checked."""
    return EncoderLockTrainer(
        encoder or _encoder(),
        _config(out),
        _red() if authorized is None else authorized,
        _green() if prohibited is None else prohibited,
        "red",
        "green",
        **kwargs,
    )


def _with_labels(labels: list[Any], feature: Any) -> Dataset:
    images = _red()["image"][: len(labels)]
    features = Features({"image": ImageFeature(), "label": feature})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def _cycled(values: list[Any]) -> list[Any]:
    return [values[i % len(values)] for i in range(NUM_IMAGES)]


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _corrupt_image_dataset() -> Dataset:
    good = {"bytes": _png_bytes(), "path": None}
    images = [good] * NUM_IMAGES
    images[5] = {"bytes": b"\x89PNG\r\n\x1a\n this is not a png", "path": None}
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=3)})
    return Dataset.from_dict({"image": images, "label": _cycled([0, 1, 2])}, features=features)


def _with_stored_image(dataset: Dataset, row: int, value: dict) -> Dataset:
    """``dataset`` with the stored ``{bytes, path}`` of one image replaced."""
    stored = dataset.select_columns(["image"]).with_format("arrow")[:].column("image").to_pylist()
    stored[row] = value
    return Dataset.from_dict({"image": stored, "label": dataset["label"]}, features=dataset.features)


def _with_stored_image_everywhere(dataset: Dataset, value: dict) -> Dataset:
    """``dataset`` with every image replaced by the same stored image."""
    stored = [{"path": None, **value}] * len(dataset)
    return Dataset.from_dict({"image": stored, "label": dataset["label"]}, features=dataset.features)


# the tensor a damaged checkpoint breaks: the first weight matrix of block 0 (found by position: names differ across
# transformers releases)
DAMAGED = next(name for name, p in _encoder().backbone.named_parameters() if p.dim() == 2 and ".0." in name)


def _encoder_with(value: float) -> EncoderAdapter:
    """The tiny encoder with one entry of :data:`DAMAGED` set to ``value`` (a checkpoint damaged on disk)."""
    encoder = _encoder()
    with torch.no_grad():
        dict(encoder.backbone.named_parameters())[DAMAGED].view(-1)[3] = value
    return encoder


def _nan_tiff() -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(buffer, format="TIFF")
    return {"bytes": buffer.getvalue(), "path": None}


def _png_header(width: int, height: int) -> dict:
    """A stored PNG whose header claims ``width x height`` pixels but holds none (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return {"bytes": png, "path": None}


def _saved_domain_of_paths(out: Path) -> Path:
    root = out.parent / "path_domain"
    for i in range(6):
        (root / "files").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 30 * i).save(root / "files" / f"{i}.png")
    paths = [str(root / "files" / f"{i}.png") for i in range(6)]
    Dataset.from_dict({"image": paths, "label": [0, 1] * 3}).save_to_disk(str(root / "saved"))
    return root / "saved"


def _four_channel_encoder() -> EncoderAdapter:
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_channels=4,
    )
    return EncoderAdapter(ViTModel(config), pooling="cls", image_processor=vit_image_processor(16), name="rgba-vit")


def _folder_with_corrupt_png(out: Path) -> Path:
    root = out.parent / "folder_domain"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _empty_model_folder(out: Path) -> Path:
    folder = out.parent / "empty_model"
    folder.mkdir()
    return folder


# (id, call building the bad input and making the refusing call, error type, message pattern)
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    (
        "missing-label-column",
        lambda out: _lock(out, authorized=_red().remove_columns("label")),
        LockDataError,
        r"domain 'red': no 'label' column .* column_mapping=\{'your_column': 'label'\}",
    ),
    (
        "a-dataset-path-where-a-dataset-is-expected",
        lambda out: _lock(out, prohibited=str(out.parent / "green-on-disk")),
        LockDataError,
        r"domain 'green': got the path or name '.*green-on-disk', not a dataset. Load it first: "
        r"hf_encoderlock.load_domain",
    ),
    (
        "missing-image-column",
        lambda out: _lock(out, prohibited=_green().remove_columns("image")),
        LockDataError,
        r"domain 'green': no 'image' column",
    ),
    (
        "image-column-holds-strings",
        lambda out: _lock(
            out, authorized=Dataset.from_dict({"image": ["a.png"] * NUM_IMAGES, "label": _cycled([0, 1])})
        ),
        LockDataError,
        r"domain 'red': row 0 of the 'image' column holds str, not an image",
    ),
    (
        "nan-pixels-in-a-float-image",
        lambda out: _lock(out, authorized=_with_stored_image(_red(), 4, _nan_tiff())),
        LockDataError,
        r"domain 'red': the image in row 4 has non-finite pixel values \(NaN or inf\)",
    ),
    (
        "image-fetched-from-a-url",
        lambda out: _lock(
            out, prohibited=_with_stored_image(_green(), 2, {"bytes": None, "path": "https://x.invalid/a.png"})
        ),
        LockDataError,
        r"domain 'green': the image in row 2 is a remote reference \('https://x.invalid/a.png'\)",
    ),
    (
        "image-over-the-pixel-limit",
        lambda out: _lock(out, authorized=_with_stored_image(_red(), 1, _png_header(9000, 9000))),
        LockDataError,
        r"domain 'red': the image in row 1 is 9000x9000 \(81,000,000 pixels\), over the 67,108,864-pixel limit",
    ),
    (
        "decompression-bomb",
        lambda out: _lock(out, prohibited=_with_stored_image(_green(), 7, _png_header(30000, 30000))),
        LockDataError,
        r"domain 'green': the image in row 7 is refused as a decompression bomb",
    ),
    (
        "string-image-column-in-a-saved-domain",
        lambda out: load_domain(str(_saved_domain_of_paths(out))),
        DomainError,
        r"domain 'saved': column 'image' in split 'train' does not hold readable images: it holds strings .* "
        r"allow_local_images_under",
    ),
    (
        "undecodable-image-bytes",
        lambda out: _lock(out, authorized=_corrupt_image_dataset()),
        LockDataError,
        r"domain 'red': the image in row 5 cannot be decoded",
    ),
    (
        "model-takes-4-channel-images",
        lambda out: _lock(out, encoder=_four_channel_encoder()),
        EncoderError,
        r"rgba-vit expects 4-channel inputs",
    ),
    (
        "image-without-pixels",
        lambda out: _encoder().preprocess([Image.new("RGB", (0, 0))]),
        EncoderError,
        r"image 0 has no pixels \(0x0\)",
    ),
    (
        "empty-split",
        lambda out: _lock(out, prohibited=_green().select([])),
        LockDataError,
        r"domain 'green': the dataset is empty",
    ),
    (
        "single-class-split",
        lambda out: _lock(out, authorized=_red().filter(lambda row: row["label"] == 0)),
        LockDataError,
        r"domain 'red': needs at least two classes, found 1",
    ),
    (
        "too-few-images",
        lambda out: _lock(out, prohibited=_green().select(range(6))),
        LockDataError,
        r"domain 'green': 6 images, at least 8 needed",
    ),
    (
        "a-label-of-a-billion",  # the heads would get 10^9 outputs: refused before any image is decoded
        lambda out: _lock(out, prohibited=_with_labels(_cycled([0, 1, 10**9]), Value("int64"))),
        LockDataError,
        r"domain 'green': row 2 of 'label' holds class id 1000000000, far beyond the 24 rows .* ClassLabel",
    ),
    (
        "a-class-label-declaring-too-many-classes",
        lambda out: _lock(out, authorized=_with_labels(_cycled([0, 1]), ClassLabel(num_classes=200_000))),
        LockDataError,
        r"domain 'red': the 'label' ClassLabel declares 200000 classes; at most 100000",
    ),
    (
        "prohibited-images-all-identical",
        lambda out: _lock(out, prohibited=_with_stored_image_everywhere(_green(), {"bytes": _png_bytes()})),
        LockDataError,
        r"domain 'green': its 24 images are all identical .* at least 8 distinct images",
    ),
    (
        "nan-weight-in-the-encoder",
        lambda out: _lock(out, encoder=_encoder_with(float("nan"))),
        NonFiniteWeightsError,
        rf"encoder tensor {re.escape(DAMAGED)} holds 1 NaN/inf value\(s\) before the lock",
    ),
    (
        "inf-weight-in-the-encoder",
        lambda out: _lock(out, encoder=_encoder_with(float("inf"))),
        NonFiniteWeightsError,
        rf"encoder tensor {re.escape(DAMAGED)} holds 1 NaN/inf",
    ),
    (
        "negative-labels",
        lambda out: _lock(out, authorized=_with_labels(_cycled([-1, 0, 1]), Value("int64"))),
        LockDataError,
        r"domain 'red': labels must lie in \[0, 1\], got \[-1, 1\]",
    ),
    (
        "float-labels",
        lambda out: _lock(out, authorized=_with_labels(_cycled([0.0, 1.5]), Value("float32"))),
        LockDataError,
        r"domain 'red': labels must be integers, got torch.float32",
    ),
    (
        "string-labels",
        lambda out: _lock(out, authorized=_with_labels(_cycled(["cat", "dog"]), Value("string"))),
        LockDataError,
        r"domain 'red': labels must be integer class ids; row 0 of 'label' holds str 'cat'",
    ),
    (
        "missing-label",
        lambda out: _lock(out, authorized=_with_labels(_cycled([0, 1, None]), Value("int64"))),
        LockDataError,
        r"domain 'red': the 'label' of row 2 is missing \(None\)",
    ),
    (
        "eval-labels-beyond-the-heads-classes",
        lambda out: _lock(out, eval_dataset={"authorized": toy_domain(12, 5, "red", num_classes=4)}),
        LockDataError,
        r"eval_dataset\['authorized'\]: label 3 is out of range for the 3 classes .* 'red'",
    ),
    (
        "eval-dataset-unknown-key",
        lambda out: _lock(out, eval_dataset={"test": _red()}),
        LockDataError,
        r"eval_dataset must be a dict with keys among \('authorized', 'prohibited'\), got \['test'\]",
    ),
    (
        "prohibited-identical-to-authorized",
        lambda out: _lock(out, authorized=_red(), prohibited=_red()),
        LockDataError,
        r"the prohibited domain is identical to the authorized domain",
    ),
    (
        "prohibited-is-the-authorized-set-reordered",
        lambda out: _lock(out, authorized=_red(), prohibited=_red().shuffle(seed=1)),
        LockDataError,
        r"the prohibited domain is identical to the authorized domain",
    ),
    (
        "weights-per-round-above-the-candidate-layers",
        lambda out: EncoderLockTrainer(_encoder(), _config(out, weights_per_round=10**7), _red(), _green()),
        ValueError,
        r"weights_per_round=10000000 exceeds the \d+ entries of the 1 largest candidate layer",
    ),
    (
        "unreadable-image-file-in-folder-domain",
        lambda out: domain_from_folder(_folder_with_corrupt_png(out)),
        DomainError,
        r"broken\.png is not a readable image",
    ),
    (
        "missing-encoder-files",
        lambda out: load_encoder(_empty_model_folder(out)),
        EncoderError,
        r"empty_model has no config.json: it is not a saved encoder folder",
    ),
    ("zero-rounds", lambda out: _config(out, num_rounds=0), ValueError, r"num_rounds must be >= 1"),
    (
        "validation-fraction-above-one",
        lambda out: _config(out, validation_fraction=1.5),
        ValueError,
        r"validation_fraction must be in \(0, 1\)",
    ),
    (
        "zero-weights-per-round",
        lambda out: _config(out, weights_per_round=0),
        ValueError,
        r"weights_per_round must be >= 1",
    ),
    ("nan-learning-rate", lambda out: _config(out, learning_rate=float("nan")), ValueError, r"learning_rate .* nan"),
    ("negative-learning-rate", lambda out: _config(out, learning_rate=-0.1), ValueError, r"learning_rate must be > 0"),
    ("fractional-rounds", lambda out: _config(out, num_rounds=2.5), ValueError, r"num_rounds must be an integer"),
    (
        "no-adversaries",
        lambda out: _config(out, adversary_kinds=[]),
        ValueError,
        r"adversary_kinds must be a non-empty",
    ),
    (
        "bad-candidate-regex",
        lambda out: _config(out, candidate_name_patterns=["attention.(query"]),
        ValueError,
        r"candidate_name_patterns: 'attention.\(query' is not a valid regex",
    ),
]


@pytest.mark.parametrize("build, error, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_fails_before_training_and_writes_no_result(tmp_path, build, error, message):
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        build(out)
    written = [path for path in tmp_path.rglob("*") if path.name in RESULT_FILES]
    assert written == [], f"a refused input left result files: {written}"
    assert not list(tmp_path.rglob("checkpoint-*"))
