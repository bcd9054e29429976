"""Tests for the domain loader: built-ins, cache, arrays, folders, Hub-style datasets and spec validation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.data import builtin as bd
from hf_encoderlock.data import domains
from hf_encoderlock.data.domains import (
    BUILTIN_DOMAINS,
    DomainError,
    DomainSpec,
    default_cache_dir,
    describe_domain,
    domain_from_arrays,
    domain_from_folder,
    load_domain,
    train_validation_split,
)

EXPECTED_CLASSES = {
    "mnist": list("0123456789"),
    "digits": list("0123456789"),
    "mnist-m": list("0123456789"),
    "syn-digits": list("0123456789"),
    "letters": list("ABCDEFGHJK"),
}
MIN_SIZE = {"mnist": 5000, "digits": 1797, "mnist-m": 5000, "syn-digits": 2000, "letters": 2000}


def raw_image_bytes(dataset: Dataset) -> list[bytes]:
    """The stored (encoded) bytes of every image, in order."""
    table = dataset.select_columns(["image"]).with_format("arrow")[:]
    return table.column("image").combine_chunks().field("bytes").to_pylist()


def tiny_arrays(n_per_class: int = 6, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = rng.integers(0, 256, size=(labels.size, 8, 8, 3), dtype=np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("domain_cache")


@pytest.fixture(scope="module")
def builtins(module_cache) -> dict[str, DatasetDict]:
    """Every built-in domain, built once (seed 0) into a module-wide cache."""
    return {name: load_domain(name, seed=0, cache_dir=module_cache) for name in BUILTIN_DOMAINS}


# --------------------------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name", BUILTIN_DOMAINS)
def test_builtin_shape_labels_and_images(builtins, name):
    dd = builtins[name]
    assert set(dd) == {"train", "test"}
    info = describe_domain(dd)
    total = info["splits"]["train"] + info["splits"]["test"]
    assert total >= MIN_SIZE[name]
    assert info["splits"]["test"] == round(0.2 * total)
    assert info["class_names"] == EXPECTED_CLASSES[name]
    assert info["num_classes"] == 10
    for split, ds in dd.items():
        assert ds.column_names == ["image", "label"]
        assert isinstance(ds.features["image"], ImageFeature)
        assert isinstance(ds.features["label"], ClassLabel)
        assert ds.features["label"].names == EXPECTED_CLASSES[name]
        counts = info["class_counts"][split]
        assert min(counts) > 0 and sum(counts) == ds.num_rows
        for row in ds.select(range(3)):
            assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
            assert 0 <= row["label"] < 10


@pytest.mark.parametrize("name", ["syn-digits", "letters"])
def test_rendered_domains_are_balanced(builtins, name):
    counts = np.add.reduce([describe_domain(builtins[name])["class_counts"][s] for s in ("train", "test")])
    assert len(set(counts.tolist())) == 1


def test_builtin_same_seed_is_bit_identical(builtins):
    again = domains.build_builtin_domain("digits", seed=0)
    for split in ("train", "test"):
        assert raw_image_bytes(again[split]) == raw_image_bytes(builtins["digits"][split])
        assert again[split]["label"][:] == builtins["digits"][split]["label"][:]


def test_builtin_different_seed_changes_split(builtins):
    other = domains.build_builtin_domain("digits", seed=1)
    assert raw_image_bytes(other["test"]) != raw_image_bytes(builtins["digits"]["test"])
    assert sorted(raw_image_bytes(other["train"]) + raw_image_bytes(other["test"])) == sorted(
        raw_image_bytes(builtins["digits"]["train"]) + raw_image_bytes(builtins["digits"]["test"])
    )  # same real images, different split


def test_builtin_aliases_and_spec_forms(builtins, module_cache):
    via_alias = load_domain("MNIST_M", cache_dir=module_cache)
    via_mapping = load_domain({"name": "mnist-m"}, cache_dir=module_cache)
    for dd in (via_alias, via_mapping):
        assert raw_image_bytes(dd["test"]) == raw_image_bytes(builtins["mnist-m"]["test"])
    assert DomainSpec("mnist").display_name == "mnist"
    assert DomainSpec("user/ds", config="cfg").display_name == "user/ds:cfg"
    assert DomainSpec("user/ds").display_name == "user/ds"


# --------------------------------------------------------------------------------------------- cache


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HF_ENCODERLOCK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "hf_encoderlock"


def test_cache_is_written_once_then_reused(monkeypatch, tmp_path):
    calls = []

    def fake_build(name, seed=0):
        calls.append((name, seed))
        return domain_from_arrays(*tiny_arrays(), seed=seed)

    monkeypatch.setattr(domains, "build_builtin_domain", fake_build)
    first = load_domain("digits", seed=7, cache_dir=tmp_path)
    second = load_domain("digits", seed=7, cache_dir=tmp_path)
    assert calls == [("digits", 7)]
    entry = tmp_path / "domains" / f"digits-seed7-v{bd.BUILTIN_VERSION}"
    assert entry.is_dir()
    assert [p.name for p in (tmp_path / "domains").iterdir()] == [entry.name]  # no temp dirs left behind
    assert raw_image_bytes(first["train"]) == raw_image_bytes(second["train"])
    load_domain("digits", seed=8, cache_dir=tmp_path)
    assert calls[-1] == ("digits", 8)


def test_default_cache_location_used(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(tmp_path))
    monkeypatch.setattr(domains, "build_builtin_domain", lambda name, seed=0: domain_from_arrays(*tiny_arrays()))
    load_domain("letters", seed=2)
    assert (tmp_path / "domains" / f"letters-seed2-v{bd.BUILTIN_VERSION}").is_dir()


def test_interrupted_build_never_looks_complete(monkeypatch, tmp_path):
    def failing_save(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(domains, "build_builtin_domain", lambda name, seed=0: domain_from_arrays(*tiny_arrays()))
    monkeypatch.setattr(DatasetDict, "save_to_disk", failing_save)
    with pytest.raises(KeyboardInterrupt):
        load_domain("mnist", cache_dir=tmp_path)
    assert list((tmp_path / "domains").iterdir()) == []


# --------------------------------------------------------------------------------------------- arrays and folders


def test_domain_from_arrays_basic():
    images, labels = tiny_arrays(n_per_class=10)
    dd = domain_from_arrays(images, labels, ["cat", "dog", "fox"], test_size=0.2, seed=1)
    assert dd["train"].num_rows == 24 and dd["test"].num_rows == 6
    assert dd["train"].features["label"].names == ["cat", "dog", "fox"]
    assert describe_domain(dd)["class_counts"]["test"] == [2, 2, 2]
    img = dd["test"][0]["image"]
    assert img.mode == "RGB" and img.size == (8, 8)
    again = domain_from_arrays(images, labels, ["cat", "dog", "fox"], test_size=0.2, seed=1)
    assert raw_image_bytes(again["test"]) == raw_image_bytes(dd["test"])


def test_domain_from_arrays_grey_float_and_string_labels():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(12, 6, 6))
    labels = ["b", "a", "c"] * 4
    dd = domain_from_arrays(images, labels, test_size=0.25)
    assert dd["train"].features["label"].names == ["a", "b", "c"]
    assert dd["train"][0]["image"].mode == "RGB"
    pil = [Image.new("L", (5, 5), i * 20) for i in range(8)]
    assert domain_from_arrays(pil, [0, 1] * 4, test_size=0.25)["train"].num_rows == 6


def test_domain_from_folder_flat_and_split_layouts(tmp_path):
    flat = tmp_path / "flat"
    for c, cls in enumerate(["cat", "dog"]):
        (flat / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (6, 6), 40 * c + i).save(flat / cls / f"{i}.png")
    (flat / "README.txt").write_text("not an image")
    dd = domain_from_folder(flat, seed=0)
    assert dd["train"].features["label"].names == ["cat", "dog"]
    assert (dd["train"].num_rows, dd["test"].num_rows) == (8, 2)
    assert dd["test"][0]["image"].mode == "RGB"
    assert load_domain(str(flat))["test"].num_rows == 2

    split = tmp_path / "split"
    for part, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            (split / part / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (7, 7), (i * 30, 0, 0)).save(split / part / cls / f"{i}.jpg")
    dd = domain_from_folder(split)
    assert (dd["train"].num_rows, dd["test"].num_rows) == (8, 4)
    assert describe_domain(dd)["class_counts"] == {"train": [4, 4], "test": [2, 2]}


def test_folder_errors(tmp_path):
    with pytest.raises(DomainError, match="no such"):
        domain_from_folder(tmp_path / "missing")
    with pytest.raises(DomainError, match="no such file or folder"):
        load_domain(str(tmp_path / "missing"))
    (tmp_path / "cls" / "x").mkdir(parents=True)
    (tmp_path / "cls" / "x" / "0.png").write_bytes(b"definitely not a png")
    (tmp_path / "cls" / "y").mkdir()
    with pytest.raises(DomainError, match="not a readable image"):
        domain_from_folder(tmp_path / "cls")
    (tmp_path / "one" / "only").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (4, 4), i).save(tmp_path / "one" / "only" / f"{i}.png")
    with pytest.raises(DomainError, match="single class"):
        domain_from_folder(tmp_path / "one")


# --------------------------------------------------------------------------------------------- splitting


def test_train_validation_split_stratified_and_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    ds = Dataset.from_dict({"label": labels, "x": list(range(100))})
    train, val = train_validation_split(ds, 0.2, seed=3)
    assert (train.num_rows, val.num_rows) == (80, 20)
    assert np.bincount(val["label"][:]).tolist() == [10, 6, 4]
    assert set(train["x"][:]) | set(val["x"][:]) == set(range(100))
    assert not set(train["x"][:]) & set(val["x"][:])
    again = train_validation_split(ds, 0.2, seed=3)
    assert again[1]["x"][:] == val["x"][:] and again[0]["x"][:] == train["x"][:]
    assert train_validation_split(ds, 0.2, seed=4)[1]["x"][:] != val["x"][:]
    with pytest.raises(DomainError, match="validation_fraction"):
        train_validation_split(ds, 1.5, seed=0)


# --------------------------------------------------------------------------------------------- Hub-style datasets


def hub_like(n: int = 20, label_values=None, extra: bool = True) -> DatasetDict:
    """An in-memory stand-in for a Hub dataset: 'img'/'digit' columns plus an extra column."""
    rng = np.random.default_rng(0)
    values = label_values if label_values is not None else [i % 4 for i in range(n)]
    cols = {"img": [Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)) for _ in range(n)], "digit": values}
    if extra:
        cols["note"] = [f"row {i}" for i in range(n)]
    ds = Dataset.from_dict(cols).cast_column("img", ImageFeature())
    return DatasetDict(train=ds, validation=ds.select(range(8)))


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset inside the loader with a function returning a preset DatasetDict."""
    holder = {}

    def fake_load_dataset(name, config=None, **kwargs):
        holder["called"] = (name, config)
        return holder["data"]

    monkeypatch.setattr(domains, "load_dataset", fake_load_dataset)
    return holder


def test_hub_columns_mapped_and_test_carved(fake_hub):
    fake_hub["data"] = hub_like()
    spec = {"name": "user/digits", "config": "small", "image_column": "img", "label_column": "digit"}
    dd = load_domain(spec, seed=0)
    assert fake_hub["called"] == ("user/digits", "small")
    assert set(dd) == {"train", "test"} and dd["train"].column_names == ["image", "label"]
    assert (dd["train"].num_rows, dd["test"].num_rows) == (16, 4)
    assert dd["train"].features["label"].names == ["0", "1", "2", "3"]
    assert dd["test"][0]["image"].mode == "RGB"


def test_hub_explicit_test_split_and_string_labels(fake_hub):
    fake_hub["data"] = hub_like(label_values=["dog", "cat"] * 10)
    spec = DomainSpec("user/pets", test_split="validation", image_column="img", label_column="digit")
    dd = load_domain(spec)
    assert dd["train"].num_rows == 20 and dd["test"].num_rows == 8
    assert dd["train"].features["label"].names == ["cat", "dog"]
    assert dd["train"]["label"][:2] == [1, 0]


def test_saved_dataset_folder_is_loaded_like_the_hub(tmp_path):
    hub_like().save_to_disk(str(tmp_path / "saved"))
    dd = load_domain({"name": str(tmp_path / "saved"), "image_column": "img", "label_column": "digit"})
    assert dd["train"].column_names == ["image", "label"] and dd["test"].num_rows == 4


def test_hub_unreachable_offline_raises_domain_error():
    with pytest.raises(DomainError, match="could not be loaded.*mnist"):
        load_domain("someone/definitely-not-a-dataset-xyz")


# --------------------------------------------------------------------------------------------- bad specs


def test_unknown_name_suggests_builtin(caplog):
    with caplog.at_level(logging.WARNING, logger=domains.__name__), pytest.raises(DomainError, match="Did you mean"):
        load_domain("mnsit")
    # said before the Hub lookup, which offline answers only after its retries
    assert [r.getMessage() for r in caplog.records] == [
        "domain 'mnsit' is not a built-in domain (did you mean 'mnist'?); looking for it on the Hugging Face Hub"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=domains.__name__), pytest.raises(DomainError):
        load_domain("someone/definitely-not-a-dataset-xyz")
    assert not caplog.records
    with pytest.raises(DomainError, match="unknown built-in domain"):
        domains.build_builtin_domain("nope")
    with pytest.raises(DomainError, match="unknown domain spec key"):
        load_domain({"name": "mnist", "colour": "red"})
    with pytest.raises(DomainError, match="test_size"):
        DomainSpec("mnist", test_size=1.0)
    with pytest.raises(DomainError, match="seed"):
        load_domain("mnist", seed=-1)


def test_missing_column_lists_available(fake_hub):
    fake_hub["data"] = hub_like()
    with pytest.raises(DomainError, match=r"label column 'label' not found.*\['img', 'digit', 'note'\]"):
        load_domain({"name": "u/d", "image_column": "img"})
    with pytest.raises(DomainError, match="image column 'pixels' not found"):
        load_domain({"name": "u/d", "image_column": "pixels", "label_column": "digit"})


def test_float_labels_rejected(fake_hub):
    fake_hub["data"] = hub_like(label_values=[0.5, 1.5] * 10)
    with pytest.raises(DomainError, match="floats"):
        load_domain({"name": "u/d", "image_column": "img", "label_column": "digit"})
    with pytest.raises(DomainError, match="floats"):
        domain_from_arrays(np.zeros((4, 4, 4), np.uint8), np.array([0.0, 1.0, 0.0, 1.0]))


def test_bad_split_name_lists_available(fake_hub):
    fake_hub["data"] = hub_like()
    with pytest.raises(DomainError, match=r"split 'training' not found.*\['train', 'validation'\]"):
        load_domain({"name": "u/d", "train_split": "training", "image_column": "img", "label_column": "digit"})
    with pytest.raises(DomainError, match="split 'dev' not found"):
        load_domain({"name": "u/d", "test_split": "dev", "image_column": "img", "label_column": "digit"})


def test_empty_split_rejected(fake_hub):
    data = hub_like()
    fake_hub["data"] = DatasetDict(train=data["train"], test=data["train"].select([]))
    with pytest.raises(DomainError, match="'test' is empty"):
        load_domain({"name": "u/d", "image_column": "img", "label_column": "digit"})
    with pytest.raises(DomainError, match="empty"):
        domain_from_arrays(np.zeros((0, 4, 4), np.uint8), [])


def test_single_class_rejected(fake_hub):
    fake_hub["data"] = hub_like(label_values=[2] * 20)
    with pytest.raises(DomainError, match="single class"):
        load_domain({"name": "u/d", "image_column": "img", "label_column": "digit"})
    with pytest.raises(DomainError, match="single class"):
        domain_from_arrays(np.zeros((6, 4, 4), np.uint8), [1] * 6)


def test_non_images_rejected(fake_hub):
    data = hub_like()
    fake_hub["data"] = DatasetDict(train=data["train"].cast_column("digit", Value("int64")))
    with pytest.raises(DomainError, match="does not hold readable images"):  # strings are taken as image paths
        load_domain({"name": "u/d", "image_column": "note", "label_column": "digit"})
    with pytest.raises(DomainError, match="not images"):
        load_domain({"name": "u/d", "image_column": "digit", "label_column": "note"})
    with pytest.raises(DomainError, match="not an image"):
        domain_from_arrays([np.zeros((4, 4, 4, 4), np.uint8), np.zeros((4, 4), np.uint8)], [0, 1])
    with pytest.raises(DomainError, match="not an image"):
        domain_from_arrays(["hello", "world"], [0, 1])


def test_hub_string_paths_are_read_only_under_an_allowed_folder(fake_hub, tmp_path):
    for i in range(8):
        Image.new("L", (5, 5), 20 * i).save(tmp_path / f"{i}.png")
    paths = Dataset.from_dict({"file": [str(tmp_path / f"{i}.png") for i in range(8)], "digit": [0, 1] * 4})
    fake_hub["data"] = DatasetDict(train=paths)
    spec = {"name": "user/paths", "image_column": "file", "label_column": "digit", "test_size": 0.5}
    with pytest.raises(DomainError, match=r"domain 'user/paths': column 'file' in split 'train' .* holds strings"):
        load_domain(spec)
    dd = load_domain(spec, allow_local_images_under=tmp_path)
    assert sorted(row["image"].getpixel((0, 0))[0] for split in dd.values() for row in split) == list(range(0, 160, 20))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DomainError, match=r"row 0 of the 'file' column .* lies outside"):
        load_domain(spec, allow_local_images_under=tmp_path / "elsewhere")


def test_hub_16_bit_images_decode_scaled_not_white(fake_hub):
    deep = [Image.fromarray(np.full((5, 5), 256 * (10 * i) + 99, np.uint16)) for i in range(8)]
    fake_hub["data"] = DatasetDict(train=Dataset.from_dict({"img": deep, "digit": [0, 1] * 4}))
    dd = load_domain({"name": "u/deep", "image_column": "img", "label_column": "digit", "test_size": 0.5})
    values = sorted(row["image"].getpixel((0, 0)) for split in dd.values() for row in split)
    assert values == [(10 * i,) * 3 for i in range(8)]
