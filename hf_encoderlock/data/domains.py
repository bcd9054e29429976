"""Image domains for EncoderLock: built-in offline domains, local folders, in-memory arrays and Hub datasets.

Every loader returns a ``datasets.DatasetDict`` with exactly the splits ``train`` and ``test`` and exactly the
columns ``image`` (an ``Image(mode="RGB")`` feature: images decode as RGB whatever their stored mode) and
``label`` (a ``ClassLabel`` with real class names).

A string spec resolves, in order:

1. a built-in name (see :data:`BUILTIN_DOMAINS`; case and ``_``/``-`` are ignored, so ``"MNIST_M"`` works);
2. an existing local path: a ``save_to_disk`` folder (loaded with ``load_from_disk``, columns/splits mapped as
   for the Hub) or an image folder (class-per-subfolder, optionally under ``train/`` and ``test/``);
3. otherwise a Hub dataset id, loaded with ``datasets.load_dataset(name, config)``.

Labels: ``ClassLabel`` columns keep their names; integer labels ``0..K-1`` are named ``"0".."K-1"``; string
labels are encoded deterministically by their sorted unique values (over both splits); float labels are an error.
When the test split is ``None`` (or the default ``"test"`` does not exist) a stratified, seeded test split of
``test_size`` is carved from the training split. All problems with a spec raise :class:`DomainError`.

Images come only from the data: an image column of strings (file paths or URLs) is refused unless
``allow_local_images_under`` names a folder, whose files alone are then read (URLs never). Images are read
faithfully: one whose stored mode would not decode faithfully as RGB (16-bit, float, alpha, a palette with
transparency) is stored re-encoded as an 8-bit PNG converted by :func:`hf_encoderlock.encoders.convert_image`
(16-bit scaled, alpha composited on white); float arrays with NaN or inf are refused; an image may hold at most
:data:`~hf_encoderlock.data.lock_tensors.MAX_IMAGE_PIXELS` pixels.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, load_dataset, load_from_disk
from PIL import Image as PILImage
from PIL import ImageOps

from .._paths import default_cache_dir
from .._utils import atomic_folder
from ..encoders import SIXTEEN_BIT_MODES, EncoderError, convert_image, float_pixels_to_8bit, integer_pixels_to_8bit
from .builtin import BUILTIN_DOMAINS, BUILTIN_VERSION, TEST_FRACTION, builtin_arrays
from .errors import DomainError
from .lock_tensors import (
    LockDataError,
    allow_images_under,
    cast_local_images,
    check_image_pixels,
    open_stored_image,
)
from .splits import stratified_indices

__all__ = [
    "BUILTIN_DOMAINS",
    "DomainError",
    "DomainSpec",
    "build_builtin_domain",
    "default_cache_dir",
    "describe_domain",
    "domain_from_arrays",
    "domain_from_folder",
    "load_domain",
    "train_validation_split",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
IMAGE_FEATURE = datasets.Image(mode="RGB")
# Modes that IMAGE_FEATURE's decoding (PIL's convert to RGB) reads faithfully. An image in any other mode (16-bit and
# float pixels saturate or clip, alpha is dropped) is stored re-encoded by convert_image instead.
FAITHFUL_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"})
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | SIXTEEN_BIT_MODES  # re-encoded as L, the others as RGB
SCAN_ROWS = 256  # stored images read at a time when a split's images are checked


@dataclass
class DomainSpec:
    """Where a domain's images and labels come from and how its columns/splits map."""

    name: str
    config: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    image_column: str = "image"
    label_column: str = "label"
    test_size: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.name, os.PathLike):
            self.name = os.fspath(self.name)
        if not isinstance(self.name, str) or not self.name.strip():
            raise DomainError(f"domain name must be a non-empty string, got {self.name!r}")
        if not 0.0 < float(self.test_size) < 1.0:
            raise DomainError(f"domain {self.name!r}: test_size must be in (0, 1), got {self.test_size}")
        if self.image_column == self.label_column:
            raise DomainError(f"domain {self.name!r}: image_column and label_column are both {self.image_column!r}")

    @property
    def display_name(self) -> str:
        """Short name for reports: ``"mnist"``, ``"user/ds:cfg"`` or a local folder's base name."""
        builtin = _builtin_name(self.name)
        if builtin is not None:
            return builtin
        if _is_local(self.name):
            return Path(self.name).expanduser().resolve().name or self.name
        return f"{self.name}:{self.config}" if self.config else self.name


# --------------------------------------------------------------------------------------------- spec resolution


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _builtin_name(name: str) -> str | None:
    """The canonical built-in name ``name`` refers to, or ``None``."""
    key = _normalise_name(name)
    aliases = {b: b for b in BUILTIN_DOMAINS} | {b.replace("-", ""): b for b in BUILTIN_DOMAINS}
    return aliases.get(key)


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.path.isabs(name)


def _to_spec(spec: str | os.PathLike | DomainSpec | Mapping[str, Any]) -> DomainSpec:
    if isinstance(spec, DomainSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return DomainSpec(name=os.fspath(spec))
    if isinstance(spec, Mapping):
        valid = {f.name for f in fields(DomainSpec)}
        unknown = sorted(set(spec) - valid)
        if unknown:
            raise DomainError(f"unknown domain spec key(s) {unknown}; valid keys: {sorted(valid)}")
        if "name" not in spec:
            raise DomainError(f"domain spec {dict(spec)!r} has no 'name'")
        return DomainSpec(**spec)
    raise DomainError(f"a domain spec must be a name, a DomainSpec or a mapping, got {type(spec).__name__}")


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(_normalise_name(name), BUILTIN_DOMAINS, n=1, cutoff=0.6)
    hint = f" Did you mean the built-in {close[0]!r}?" if close else ""
    return f"{hint} Built-in offline domains: {', '.join(BUILTIN_DOMAINS)}."


def load_domain(
    spec: str | os.PathLike | DomainSpec | Mapping[str, Any],
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    allow_local_images_under: str | os.PathLike | None = None,
) -> DatasetDict:
    """Load a domain as a ``DatasetDict`` with ``train``/``test`` splits and ``image``/``label`` columns.

    Built-ins are built once per seed and cached under ``cache_dir / "domains"`` (default
    :func:`default_cache_dir`); for them only ``name`` matters (always the fixed 80/20 split). Folders and
    in-memory data are not cached; Hub datasets use the ``datasets`` cache. A Hub or saved dataset whose image
    column holds strings (file paths) is read only with ``allow_local_images_under``: the folder its files must lie
    in (URLs are never read).
    """
    spec = _to_spec(spec)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DomainError(f"domain {spec.name!r}: seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if allow_local_images_under is not None:
        try:
            allow_images_under(allow_local_images_under, spec.display_name)
        except LockDataError as err:
            raise DomainError(str(err)) from err
    builtin = _builtin_name(spec.name)
    if builtin is not None:
        return _cached_builtin(builtin, seed, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    if _is_local(spec.name):
        return _load_local(spec, seed, allow_local_images_under)
    if _looks_like_path(spec.name):
        raise DomainError(f"domain {spec.name!r}: no such file or folder.{_suggestion(spec.name)}")
    return _load_hub(spec, seed, allow_local_images_under)


# --------------------------------------------------------------------------------------------- built-ins + cache


def _builtin_cache_path(name: str, seed: int, cache_dir: Path) -> Path:
    return cache_dir / "domains" / f"{name}-seed{seed}-v{BUILTIN_VERSION}"


def _cached_builtin(name: str, seed: int, cache_dir: Path) -> DatasetDict:
    """Load a built-in from the cache, building and saving it atomically (temp dir + rename) on a miss."""
    final = _builtin_cache_path(name, seed, cache_dir)
    if final.is_dir():
        try:
            return load_from_disk(str(final))
        except Exception as err:  # a damaged cache entry is rebuilt, never trusted
            logger.warning("cached domain %s is unreadable (%s); rebuilding", final, err)
            shutil.rmtree(final, ignore_errors=True)
    dd = build_builtin_domain(name, seed)
    with atomic_folder(final) as staging:  # a concurrent builder of the same entry writes identical files
        dd.save_to_disk(str(staging))
    return load_from_disk(str(final))


# --------------------------------------------------------------------------------------------- splitting


def _label_array(dataset: Dataset, column: str = "label") -> np.ndarray:
    """The whole ``column`` as a numpy array (batch access; row-wise Column iteration is ~100x slower)."""
    if dataset.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])


def train_validation_split(dataset: Dataset, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into ``(train, validation)``, stratified by ``label`` and deterministic for ``seed``.

    Each class contributes ``round(validation_fraction * n_class)`` examples (totals fixed by largest
    remainder) but always keeps at least one in ``train``; both parts come out shuffled.
    """
    if not 0.0 < float(validation_fraction) < 1.0:
        raise DomainError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if "label" not in dataset.column_names:
        raise DomainError(f"cannot stratify: no 'label' column (columns: {dataset.column_names})")
    if dataset.num_rows < 2:
        raise DomainError(f"cannot split a dataset of {dataset.num_rows} example(s)")
    train_idx, val_idx = stratified_indices(_label_array(dataset), float(validation_fraction), int(seed))
    return dataset.select(train_idx), dataset.select(val_idx)


def _carve_test(train: Dataset, test_size: float, seed: int, where: str) -> tuple[Dataset, Dataset]:
    """Carve a stratified test split off ``train``; errors name ``where``."""
    _check_split(train, f"{where} (train)")
    new_train, test = train_validation_split(train, test_size, seed)
    if test.num_rows == 0:
        raise DomainError(
            f"domain {where}: cannot carve a test split of {test_size:.0%} from {train.num_rows} example(s); "
            "provide a test split or more data"
        )
    return new_train, test


# --------------------------------------------------------------------------------------------- checks


def _check_split(dataset: Dataset, where: str) -> None:
    """Reject empty and single-class splits (needs an int ``label`` column)."""
    if dataset.num_rows == 0:
        raise DomainError(f"domain {where}: the split is empty")
    present = np.unique(_label_array(dataset))
    if present.size < 2:
        names = dataset.features["label"].names
        only = names[int(present[0])] if present.size else "?"
        raise DomainError(f"domain {where}: the split has a single class ({only!r}); at least two are needed")


def _finish(train: Dataset, test: Dataset, where: str) -> DatasetDict:
    _check_split(train, f"{where} (train)")
    _check_split(test, f"{where} (test)")
    return DatasetDict(train=train, test=test)


# --------------------------------------------------------------------------------------------- arrays


def _decodes_faithfully(image: PILImage.Image) -> bool:
    """Whether decoding ``image`` through :data:`IMAGE_FEATURE` (PIL's convert to RGB) keeps what it shows."""
    return image.mode in FAITHFUL_MODES and not (image.mode == "P" and "transparency" in image.info)


def _faithful(image: PILImage.Image, subject: str) -> PILImage.Image:
    """``image`` converted faithfully to 8-bit ``L`` or ``RGB`` (unchanged when it already decodes faithfully)."""
    if _decodes_faithfully(image):
        return image
    try:
        return convert_image(image, "L" if image.mode in GREY_MODES else "RGB")
    except EncoderError as err:
        raise DomainError(f"{subject} {err}") from err


def _faithful_png(image: PILImage.Image, subject: str) -> bytes:
    """PNG bytes of a decoded ``image`` read faithfully (EXIF orientation applied first, as ``datasets`` would)."""
    if image.getexif().get(PILImage.ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    buffer = io.BytesIO()
    _faithful(image, subject).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_pil(image: Any, index: int) -> PILImage.Image:
    """One image (PIL, or a ``(H, W)``/``(H, W, C)`` array, C in 1/3/4) as an 8-bit PIL image that decodes
    faithfully: integer pixels scaled by their bit depth, float ones from 0-1 (or 0-255), alpha composited on white;
    NaN / inf pixels are refused."""
    if isinstance(image, PILImage.Image):
        check_image_pixels(image.size, f"image {index}", DomainError)
        return _faithful(image, f"image {index}")
    try:
        array = np.asarray(image)
    except Exception as err:
        raise DomainError(f"image {index} is not an image ({type(image).__name__}): {err}") from err
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DomainError(f"image {index} is not an image: array dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise DomainError(f"image {index} is not an image: shape {array.shape} (want (H, W) or (H, W, 1|3|4))")
    check_image_pixels((array.shape[1], array.shape[0]), f"image {index}", DomainError)
    try:
        pixels = (
            float_pixels_to_8bit(array) if np.issubdtype(array.dtype, np.floating) else integer_pixels_to_8bit(array)
        )
    except EncoderError as err:
        raise DomainError(f"image {index} {err}") from err
    return _faithful(PILImage.fromarray(pixels), f"image {index}")


def _to_pil_list(images: Sequence[Any] | np.ndarray) -> list[PILImage.Image]:
    """PIL images from a stacked uint8 grey or RGB array (fast path) or from a sequence of images."""
    if (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3))
    ):
        return [PILImage.fromarray(image) for image in images]
    return [_to_pil(image, i) for i, image in enumerate(images)]


def _encode_labels(
    labels: Sequence[Any] | np.ndarray, class_names: Sequence[str] | None, where: str
) -> tuple[np.ndarray, list[str]]:
    """Integer codes and class names for raw labels (ints, or strings encoded by sorted unique value)."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DomainError(f"domain {where}: labels must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind in "USO" and array.size and all(isinstance(v, str) for v in array.tolist()):
        uniques = sorted(set(array.tolist()))
        names = list(class_names) if class_names is not None else uniques
        missing = sorted(set(uniques) - set(names))
        if missing:
            raise DomainError(f"domain {where}: labels {missing} are not in class_names {names}")
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[v] for v in array.tolist()], dtype=np.int64), [str(n) for n in names]
    if array.dtype.kind == "f":
        raise DomainError(f"domain {where}: labels are floats ({array.dtype}); integer class ids are required")
    if array.dtype.kind not in "iu":
        raise DomainError(f"domain {where}: labels must be integers or strings, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise DomainError(f"domain {where}: negative label {int(array.min())}")
    top = int(array.max()) + 1 if array.size else 0
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(top)]
    if top > len(names):
        raise DomainError(f"domain {where}: label {top - 1} is out of range for {len(names)} class names")
    return array.astype(np.int64), names


def domain_from_arrays(
    images: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    test_size: float = 0.2,
    seed: int = 0,
) -> DatasetDict:
    """A domain from in-memory images (``(N, H, W[, C])`` array, or a list of arrays/PIL images) and labels.

    Integer labels must lie in ``range(len(class_names))`` (class names default to ``"0".."max"``); string
    labels are encoded by sorted unique value. A stratified, seeded test split of ``test_size`` is carved.
    """
    where = "<arrays>"
    if not 0.0 < float(test_size) < 1.0:
        raise DomainError(f"domain {where}: test_size must be in (0, 1), got {test_size}")
    if len(images) != len(labels):
        raise DomainError(f"domain {where}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DomainError(f"domain {where}: the split is empty (no images)")
    codes, names = _encode_labels(labels, class_names, where)
    pil_images = _to_pil_list(images)
    features = Features({"image": IMAGE_FEATURE, "label": ClassLabel(names=names)})
    full = Dataset.from_dict({"image": pil_images, "label": codes.tolist()}, features=features)
    train, test = _carve_test(full, test_size, seed, where)
    return _finish(train, test, where)


# --------------------------------------------------------------------------------------------- folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_image(path: Path, where: str) -> str | dict[str, Any]:
    """What the image column stores for one file: its path, or, when its mode would not decode faithfully, the
    faithful 8-bit PNG bytes. The file must open and verify, and hold at most ``MAX_IMAGE_PIXELS`` pixels."""
    subject = f"domain {where}: {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as img:
                size, faithful = img.size, _decodes_faithfully(img)
                img.verify()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as err:
        raise DomainError(f"{subject} is refused as a decompression bomb ({err})") from err
    except Exception as err:
        raise DomainError(f"{subject} is not a readable image ({err})") from err
    check_image_pixels(size, subject, DomainError)
    if faithful:
        return str(path)
    try:
        with PILImage.open(path) as img:
            img.load()
            return {"bytes": _faithful_png(img, subject), "path": None}
    except DomainError:
        raise
    except Exception as err:
        raise DomainError(f"{subject} is not a readable image ({err})") from err


def _folder_split(folder: Path, class_names: list[str], where: str) -> Dataset:
    """One split from ``folder/<class>/...`` image files (verified; stored as paths, or re-encoded when their mode
    would not decode faithfully)."""
    images, codes = [], []
    for code, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in _image_files(class_dir):
            images.append(_folder_image(path, where))
            codes.append(code)
    features = Features({"image": IMAGE_FEATURE, "label": ClassLabel(names=class_names)})
    return Dataset.from_dict({"image": images, "label": codes}, features=features)


def _load_image_folder(
    root: Path, train_split: str, test_split: str | None, test_size: float, seed: int
) -> DatasetDict:
    where = repr(str(root))
    if not root.is_dir():
        raise DomainError(f"domain {where}: not a folder")
    allow_images_under(root, str(root))  # the user named this folder: its files are the domain's images
    if (root / train_split).is_dir():
        split_dirs = [root / train_split] + ([root / test_split] if test_split and (root / test_split).is_dir() else [])
        class_names = sorted({d.name for split in split_dirs for d in _class_dirs(split)})
        if not class_names:
            raise DomainError(f"domain {where}: {split_dirs[0]} has no class subfolders")
        train = _folder_split(split_dirs[0], class_names, f"{where} ({train_split})")
        if len(split_dirs) == 2:
            return _finish(train, _folder_split(split_dirs[1], class_names, where), where)
        if test_split not in (None, "test"):
            subfolders = [d.name for d in _class_dirs(root)]
            raise DomainError(f"domain {where}: split {test_split!r} not found; available splits: {subfolders}")
        return _finish(*_carve_test(train, test_size, seed, where), where)
    if train_split != "train":
        subfolders = [d.name for d in _class_dirs(root)]
        raise DomainError(f"domain {where}: split {train_split!r} not found; available subfolders: {subfolders}")
    class_names = [d.name for d in _class_dirs(root)]
    if not class_names:
        raise DomainError(f"domain {where}: no class subfolders (expected <folder>/<class>/<image files>)")
    train = _folder_split(root, class_names, where)
    return _finish(*_carve_test(train, test_size, seed, where), where)


def domain_from_folder(path: str | Path, *, test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """A domain from ``path/<class>/<images>`` or ``path/{train,test}/<class>/<images>``.

    Class names are the subfolder names (sorted; the union over both splits). Without a ``test/`` folder a
    stratified, seeded test split of ``test_size`` is carved from the training images. Every image file is
    verified to open; images are stored as file paths (re-encoded when their mode, e.g. 16-bit or RGBA, would not
    decode faithfully) and decode as RGB.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DomainError(f"domain {str(path)!r}: no such folder")
    if not 0.0 < float(test_size) < 1.0:
        raise DomainError(f"domain {str(path)!r}: test_size must be in (0, 1), got {test_size}")
    return _load_image_folder(root, "train", "test", test_size, seed)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _load_local(spec: DomainSpec, seed: int, allow_local_images_under: str | os.PathLike | None) -> DatasetDict:
    root = Path(spec.name).expanduser()
    if _is_saved_dataset(root):
        try:
            raw = load_from_disk(str(root))
        except Exception as err:
            raise DomainError(f"domain {spec.name!r}: could not load the saved dataset ({err})") from err
        if isinstance(raw, Dataset):
            raw = DatasetDict({spec.train_split: raw})
        return _normalise_dataset_dict(raw, spec, seed, allow_local_images_under)
    return _load_image_folder(root, spec.train_split, spec.test_split, spec.test_size, seed)


# --------------------------------------------------------------------------------------------- Hub / saved datasets


def _load_hub(spec: DomainSpec, seed: int, allow_local_images_under: str | os.PathLike | None) -> DatasetDict:
    close = difflib.get_close_matches(_normalise_name(spec.name), BUILTIN_DOMAINS, n=1, cutoff=0.6)
    if close:
        # a bare name may be a canonical Hub dataset, so it is looked up; said first because an unreachable Hub
        # answers only after its retries
        logger.warning(
            "domain %r is not a built-in domain (did you mean %r?); looking for it on the Hugging Face Hub",
            spec.name,
            close[0],
        )
    try:
        raw = load_dataset(spec.name, spec.config)
    except Exception as err:
        raise DomainError(
            f"domain {spec.display_name!r}: the dataset could not be loaded from the Hugging Face Hub "
            f"({type(err).__name__}: {err}).{_suggestion(spec.name)}"
        ) from err
    if isinstance(raw, Dataset):
        raw = DatasetDict({spec.train_split: raw})
    if not isinstance(raw, DatasetDict):
        raise DomainError(f"domain {spec.display_name!r}: unsupported dataset type {type(raw).__name__}")
    return _normalise_dataset_dict(raw, spec, seed, allow_local_images_under)


def _select_splits(raw: DatasetDict, spec: DomainSpec) -> tuple[Dataset, Dataset | None]:
    where = repr(spec.display_name)
    available = list(raw.keys())
    if spec.train_split not in raw:
        raise DomainError(f"domain {where}: split {spec.train_split!r} not found; available splits: {available}")
    if spec.test_split is None:
        return raw[spec.train_split], None
    if spec.test_split in raw:
        if spec.test_split == spec.train_split:
            raise DomainError(f"domain {where}: train_split and test_split are both {spec.train_split!r}")
        return raw[spec.train_split], raw[spec.test_split]
    if spec.test_split == "test":
        logger.info(
            "domain %s has no 'test' split; carving %.0f%% of %r", where, 100 * spec.test_size, spec.train_split
        )
        return raw[spec.train_split], None
    raise DomainError(f"domain {where}: split {spec.test_split!r} not found; available splits: {available}")


def _check_columns(split: Dataset, split_name: str, spec: DomainSpec) -> None:
    for role, column in (("image", spec.image_column), ("label", spec.label_column)):
        if column not in split.column_names:
            raise DomainError(
                f"domain {spec.display_name!r}: {role} column {column!r} not found in split {split_name!r}; "
                f"available columns: {split.column_names}"
            )


def _label_names(splits: list[Dataset], spec: DomainSpec) -> tuple[ClassLabel, bool]:
    """The ``ClassLabel`` for the label column and whether the raw column holds strings."""
    where = repr(spec.display_name)
    feature = splits[0].features[spec.label_column]
    if isinstance(feature, ClassLabel):
        return ClassLabel(names=list(feature.names)), False
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        values = sorted({v for s in splits for v in s.unique(spec.label_column) if v is not None})
        return ClassLabel(names=values), True
    if dtype is not None and dtype.startswith(("int", "uint")):
        values = [v for s in splits for v in s.unique(spec.label_column) if v is not None]
        if values and min(values) < 0:
            raise DomainError(f"domain {where}: label column {spec.label_column!r} has negative label {min(values)}")
        return ClassLabel(names=[str(i) for i in range(max(values, default=-1) + 1)]), False
    if dtype is not None and dtype.startswith(("float", "double")):
        raise DomainError(
            f"domain {where}: label column {spec.label_column!r} holds floats ({dtype}); "
            "integer class ids, strings or a ClassLabel are required"
        )
    raise DomainError(f"domain {where}: label column {spec.label_column!r} has unsupported type {feature}")


def _as_image_split(
    split: Dataset, split_name: str, spec: DomainSpec, allow_local_images_under: str | os.PathLike | None
) -> Dataset:
    """Cast the image column to an RGB ``Image`` feature, after checking every stored image (see
    :func:`_faithful_split`) and that the first example decodes. A column of strings (paths) is read only from
    ``allow_local_images_under``."""
    where = repr(spec.display_name)
    column = spec.image_column
    feature = split.features[column]
    if not isinstance(feature, datasets.Image):
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise DomainError(f"domain {where}: column {column!r} in split {split_name!r} holds {feature}, not images")
        if allow_local_images_under is None:
            raise DomainError(
                f"domain {where}: column {column!r} in split {split_name!r} does not hold readable images: it holds "
                "strings (file paths or URLs), which are never read by default, so that a dataset cannot make this "
                "machine open local files or fetch URLs; pass allow_local_images_under=<folder> to read local files "
                "under a folder you trust (URLs are never read)"
            )
        try:
            split = cast_local_images(split, column, allow_local_images_under, f"{spec.display_name} ({split_name})")
        except LockDataError as err:
            raise DomainError(str(err)) from err
    split = _faithful_split(split, column, f"domain {where}: split {split_name!r}")
    split = split.cast_column(column, IMAGE_FEATURE)
    if split.num_rows:
        try:
            first = split[0][column]
        except Exception as err:
            raise DomainError(
                f"domain {where}: column {column!r} in split {split_name!r} does not hold readable images ({err})"
            ) from err
        if not isinstance(first, PILImage.Image):
            raise DomainError(f"domain {where}: column {column!r} decodes to {type(first).__name__}, not images")
    return split


def _faithful_split(split: Dataset, column: str, where: str) -> Dataset:
    """Check every stored image of ``column`` from its header (no URL, readable, at most ``MAX_IMAGE_PIXELS``
    pixels); when some would not decode faithfully as RGB, re-encode those (in memory: writing a cache file next to
    a user's saved dataset would modify their folder)."""
    stored = split.select_columns([column]).with_format("arrow")
    faithful = True
    for start in range(0, split.num_rows, SCAN_ROWS):
        for row, value in enumerate(stored[start : start + SCAN_ROWS].column(column).to_pylist(), start):
            with open_stored_image(value, f"{where}: the image in row {row}", load=False, error=DomainError) as image:
                faithful = faithful and _decodes_faithfully(image)
    if faithful:
        return split
    raw = split.cast_column(column, datasets.Image(decode=False))
    return raw.map(
        _faithful_batch,
        batched=True,
        batch_size=SCAN_ROWS,
        with_indices=True,
        fn_kwargs={"column": column, "where": where},
        features=raw.features,
        keep_in_memory=True,
        desc=f"re-encoding images ({where})",
    )


def _faithful_batch(batch: dict[str, list], indices: list[int], column: str, where: str) -> dict[str, list]:
    """A batch of stored images with every one that would not decode faithfully re-encoded as an 8-bit PNG."""
    values = []
    for row, value in zip(indices, batch[column]):
        subject = f"{where}: the image in row {row}"
        with open_stored_image(value, subject, load=False, error=DomainError) as header:
            faithful = _decodes_faithfully(header)
        if faithful:
            values.append(value)
        else:
            image = open_stored_image(value, subject, error=DomainError)
            values.append({"bytes": _faithful_png(image, subject), "path": None})
    return {column: values}


def _standardise(split: Dataset, split_name: str, spec: DomainSpec, label: ClassLabel, from_strings: bool) -> Dataset:
    """Keep the mapped columns, rename them to ``image``/``label``, encode labels with ``label``."""
    split = split.select_columns([spec.image_column, spec.label_column])
    split = split.rename_columns({spec.image_column: "image", spec.label_column: "label"})
    if not from_strings:
        top = max(split.unique("label"), default=-1) if split.num_rows else -1
        if top >= label.num_classes:
            raise DomainError(
                f"domain {spec.display_name!r}: label {top} in split {split_name!r} is out of range "
                f"for {label.num_classes} classes"
            )
    return split.cast(Features({"image": split.features["image"], "label": label}))


def _normalise_dataset_dict(
    raw: DatasetDict, spec: DomainSpec, seed: int, allow_local_images_under: str | os.PathLike | None = None
) -> DatasetDict:
    """Validate a raw ``DatasetDict`` against ``spec`` and reshape it into the standard domain form."""
    where = repr(spec.display_name)
    train, test = _select_splits(raw, spec)
    named = [(spec.train_split, train)] + ([(spec.test_split, test)] if test is not None else [])
    for split_name, split in named:
        _check_columns(split, split_name, spec)
        if split.num_rows == 0:
            raise DomainError(f"domain {where}: split {split_name!r} is empty")
    label, from_strings = _label_names([s for _, s in named], spec)
    ready = [
        _standardise(_as_image_split(split, name, spec, allow_local_images_under), name, spec, label, from_strings)
        for name, split in named
    ]
    if test is None:
        return _finish(*_carve_test(ready[0], spec.test_size, seed, where), where)
    return _finish(ready[0], ready[1], where)


# --------------------------------------------------------------------------------------------- reporting


def describe_domain(dd: DatasetDict) -> dict[str, Any]:
    """Sizes per split, number of classes, class names and per-class counts of a loaded domain."""
    first = next(iter(dd.values()))
    names = list(first.features["label"].names)
    counts = {
        split: np.bincount(_label_array(ds), minlength=len(names)).tolist() if ds.num_rows else [0] * len(names)
        for split, ds in dd.items()
    }
    return {
        "splits": {split: ds.num_rows for split, ds in dd.items()},
        "num_classes": len(names),
        "class_names": names,
        "class_counts": counts,
    }


def build_builtin_domain(name: str, seed: int = 0) -> DatasetDict:
    """Build (uncached) a built-in domain as a ``DatasetDict`` with ``train``/``test`` (stratified 80/20 split)."""
    images, labels, class_names = builtin_arrays(name, seed)
    return domain_from_arrays(images, labels, class_names, test_size=TEST_FRACTION, seed=seed)
