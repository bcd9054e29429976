"""Turn any vision backbone into ``features(pixel_values) -> (batch, dim)``.

The :class:`EncoderAdapter` wraps a Hugging Face backbone loaded with ``AutoModel`` (ViT, DeiT, DINOv2, Swin,
ConvNeXt, ResNet, ...) or any ``torch.nn.Module`` that maps pixels to features, together with the image
processor that prepares its inputs. Pooling turns the backbone's output into one vector per image:

- ``"cls"``: the first token of a token sequence (ViT-style models with a CLS token);
- ``"mean"``: the mean of the patch tokens (the CLS token and register tokens excluded where known);
- ``"pooler"``: the backbone's own ``pooler_output``;
- ``"spatial_mean"``: the mean over the spatial grid of a convolutional feature map;
- ``"auto"``: ``cls`` for models with a CLS token, else ``pooler`` when the backbone has one, else the mean.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn

from ._files import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    PLAIN_MODULE_CONFIG_FILE,
    PLAIN_MODULE_FORMAT,
    PROCESSOR_CONFIG_FILE,
)

# transformers' model classes (AutoModel, AutoImageProcessor, ViTModel) are imported inside the functions that load or
# build a Hugging Face model: importing them costs seconds, and a plain nn.Module, the attacker's probes and the data
# layer never need them. No import cycle is involved.

POOLINGS = ("auto", "cls", "mean", "pooler", "spatial_mean")
# Every transformers load: never run code shipped with a checkpoint, and never ask about it (a terminal would get an
# interactive "run the custom code? [y/N]" prompt for a config with ``auto_map`` otherwise).
NO_REMOTE_CODE: dict[str, Any] = {"trust_remote_code": False}
PIL_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}  # input channel counts a PIL image can be converted to
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Transparent pixels are composited on white (what an image viewer shows), for every alpha mode alike; PIL's own
# convert() drops alpha instead, showing whatever colour a fully transparent pixel happens to store.
ALPHA_BACKGROUND = "white"
ALPHA_MODES = {"LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}  # mode -> its opaque mode

logger = logging.getLogger(__name__)


class EncoderError(ValueError):
    """An encoder could not be loaded or used as asked; the message names the problem."""


def _check_reads_images(backbone: nn.Module, source: str) -> None:
    """Refuse a transformers model whose input is not ``pixel_values`` (a text or audio model): it would fail only
    once images reach it, with transformers' message about its own inputs."""
    reads = getattr(backbone, "main_input_name", "pixel_values")
    if reads != "pixel_values":
        raise EncoderError(
            f"{source!r} is a {type(backbone).__name__}, whose input is {reads}, not images: a lock needs a vision "
            "encoder (one whose input is pixel_values)"
        )


def saved_weight_keys(backbone: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """The key under which ``save_pretrained`` writes each of the backbone's parameters ``names`` to
    ``model.safetensors``.

    transformers 5 renames some modules in memory (ViT's ``layers.0.attention.q_proj``) and writes them back under
    their checkpoint names (``encoder.layer.0.attention.attention.query``); the card gives both, so that a reader of
    the weights file finds the tensors it names. A name that is not renamed one to one (a plain ``nn.Module``, a
    tensor the conversion merges or splits) maps to itself.
    """
    params = dict(backbone.named_parameters())
    unknown = [name for name in names if name not in params]
    if unknown:
        raise EncoderError(f"no parameter(s) {unknown} in the {type(backbone).__name__}")
    chosen = {name: params[name] for name in names}
    if not hasattr(backbone, "save_pretrained"):
        return {name: name for name in chosen}
    from transformers.core_model_loading import revert_weight_conversion

    try:
        saved = revert_weight_conversion(backbone, dict(chosen))
    except Exception as err:  # the keys only name tensors for a reader: a conversion failing here must not fail a save
        logger.info("weights file keys not resolved (%s: %s); in-memory names kept", type(err).__name__, err)
        return {name: name for name in chosen}
    # renaming keeps each tensor object, so identity maps the saved key back to its parameter
    key_of = {id(tensor): key for key, tensor in saved.items()}
    return {name: key_of.get(id(tensor), name) for name, tensor in chosen.items()}


# ------------------------------------------------------------------------------------------------ image conversion
def integer_pixels_to_8bit(array: np.ndarray) -> np.ndarray:
    """Integer pixels as ``uint8``, scaled by their bit depth: values up to 255 are kept, up to 65535 are 16-bit
    (``>> 8``), up to ``2**32 - 1`` are 32-bit (``>> 24``); never clipped. Negative values raise :class:`EncoderError`
    (the message is a phrase that callers prefix with the image's name)."""
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise EncoderError(f"has negative pixel values (down to {low}): not an image")
    for bits in (8, 16, 32):
        if high < 2**bits:
            return (array.astype(np.uint64) >> (bits - 8)).astype(np.uint8)
    raise EncoderError(f"has pixel values up to {high}, beyond 32 bits: not an image")


def float_pixels_to_8bit(array: np.ndarray) -> np.ndarray:
    """Float pixels as ``uint8``: ``0-1`` images are scaled to ``0-255``, others rounded and clipped to ``0-255``;
    NaN or infinite values raise :class:`EncoderError` (they have no colour: silently zeroing them would paint
    black)."""
    if not np.isfinite(array).all():
        raise EncoderError("has non-finite pixel values (NaN or inf)")
    scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
    return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def eight_bit_image(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit channels: 16-bit images (``I;16``...) scaled by their bit depth (PIL's own convert
    saturates them to white), 32-bit integer (``I``) and float (``F``) images as :func:`integer_pixels_to_8bit` and
    :func:`float_pixels_to_8bit` read them. Any other image comes back unchanged (the same object)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode == "I" or image.mode.startswith("I;"):
        return Image.fromarray(integer_pixels_to_8bit(np.asarray(image)))
    if image.mode == "F":
        return Image.fromarray(float_pixels_to_8bit(np.asarray(image)))
    return image


def convert_image(image: Image.Image, mode: str) -> Image.Image:
    """``image`` converted faithfully to ``mode`` (``"RGB"`` or ``"L"``).

    High-bit-depth and float images go through :func:`eight_bit_image`; a palette's transparency is honoured; alpha
    (``LA``, ``RGBA``, ``PA`` and premultiplied modes) is composited on :data:`ALPHA_BACKGROUND`; ``CMYK``, ``YCbCr``
    and the rest go through PIL. Raises :class:`EncoderError` (a phrase: "has ...", "is in mode ...") when the
    pixels cannot be read or converted.
    """
    image = eight_bit_image(image)
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette marks some entries transparent
    opaque = ALPHA_MODES.get(image.mode)
    if opaque is not None:
        straight = image.convert(opaque + "A")  # palette expanded, premultiplied alpha undone
        background = Image.new(opaque, image.size, ALPHA_BACKGROUND)
        image = Image.composite(straight.convert(opaque), background, straight.getchannel("A"))
    if image.mode != mode:
        try:
            image = image.convert(mode)
        except ValueError as error:
            raise EncoderError(f"is in mode {image.mode!r}, which cannot be converted to {mode} ({error})") from error
    return image


def _has_cls_token(backbone: nn.Module) -> bool:
    embeddings = getattr(backbone, "embeddings", None)
    return embeddings is not None and getattr(embeddings, "cls_token", None) is not None


def _num_prefix_tokens(backbone: nn.Module) -> int:
    """Tokens that come before the patch tokens (CLS plus any register tokens)."""
    if not _has_cls_token(backbone):
        return 0
    config = getattr(backbone, "config", None)
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def _main_output(outputs: Any) -> torch.Tensor:
    """The backbone's main feature tensor, whatever form its output takes."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    last = getattr(outputs, "last_hidden_state", None)
    if last is None and isinstance(outputs, dict):
        last = outputs.get("last_hidden_state")
    if last is None and isinstance(outputs, (tuple, list)) and outputs:
        last = outputs[0]
    if not isinstance(last, torch.Tensor):
        raise EncoderError(f"cannot find a feature tensor in the backbone output of type {type(outputs).__name__}")
    return last


def _pooler_output(outputs: Any) -> torch.Tensor | None:
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None and isinstance(outputs, dict):
        pooled = outputs.get("pooler_output")
    return pooled if isinstance(pooled, torch.Tensor) else None


class EncoderAdapter(nn.Module):
    """A backbone plus its image processor, exposing pooled features.

    Args:
        backbone: a ``PreTrainedModel`` from ``AutoModel`` or any module mapping pixel values to features.
        pooling: the default pooling (see the module docstring).
        image_processor: the Hugging Face image processor that prepares inputs (``None`` for plain modules;
            :meth:`preprocess` then needs ``preprocess_fn``).
        preprocess_fn: optional callable mapping a list of PIL images to a pixel-value tensor.
        name: a short name used in reports.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooling: str = "auto",
        image_processor: Any | None = None,
        preprocess_fn: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        _check_reads_images(backbone, name or type(backbone).__name__)
        if pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.backbone = backbone
        self.image_processor = image_processor
        self.preprocess_fn = preprocess_fn
        self._has_pooler: bool | None = None
        self.name = name or getattr(getattr(backbone, "config", None), "_name_or_path", "") or type(backbone).__name__
        self.pooling = self._resolve_pooling(pooling)
        self._feature_dim: int | None = None

    # ----------------------------------------------------------------------------------------------- pooling
    @property
    def has_cls_token(self) -> bool:
        return _has_cls_token(self.backbone)

    def _resolve_pooling(self, pooling: str) -> str:
        if pooling != "auto":
            return pooling
        if self.has_cls_token:
            return "cls"
        return "pooler" if self.has_pooler_output else "mean"

    @property
    def has_pooler_output(self) -> bool:
        """Whether the backbone returns a ``pooler_output`` (checked once with a one-image dry run)."""
        if self._has_pooler is None:
            if getattr(self.backbone, "pooler", None) is not None:
                self._has_pooler = True
            elif not hasattr(self.backbone, "config"):
                self._has_pooler = False
            else:
                with torch.no_grad():
                    dry = self._backbone_outputs(torch.zeros(1, *self.input_shape()))
                self._has_pooler = _pooler_output(dry) is not None
        return self._has_pooler

    def available_poolings(self) -> tuple[str, ...]:
        """Poolings that make sense for this backbone, the default first."""
        options = ["cls", "mean"] if self.has_cls_token else ["mean"]
        if not self.has_cls_token and self.has_pooler_output:
            options.insert(0, "pooler")
        ordered = [self.pooling] + [p for p in options if p != self.pooling]
        return tuple(dict.fromkeys(ordered))

    def _pool(self, outputs: Any, pooling: str) -> torch.Tensor:
        if pooling == "pooler":
            pooled = _pooler_output(outputs)
            if pooled is None:
                raise EncoderError(f"pooling 'pooler' asked for, but {self.name} returns no pooler_output")
            return pooled.flatten(1)
        hidden = _main_output(outputs)
        if hidden.dim() == 2:
            return hidden
        if hidden.dim() == 4:  # (batch, channels, height, width) from conv backbones
            if pooling == "cls":
                raise EncoderError(f"pooling 'cls' needs a token sequence; {self.name} returns a feature map")
            return hidden.mean(dim=(2, 3))
        if hidden.dim() != 3:
            raise EncoderError(f"unexpected backbone output shape {tuple(hidden.shape)} from {self.name}")
        if pooling == "cls":
            if not self.has_cls_token:
                raise EncoderError(f"pooling 'cls' asked for, but {self.name} has no CLS token; use 'mean'")
            return hidden[:, 0]
        if pooling in ("mean", "spatial_mean"):
            return hidden[:, _num_prefix_tokens(self.backbone) :].mean(dim=1)
        raise EncoderError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")

    # ----------------------------------------------------------------------------------------------- forward
    def _backbone_outputs(self, pixel_values: torch.Tensor) -> Any:
        return (
            self.backbone(pixel_values=pixel_values)
            if hasattr(self.backbone, "config")
            else self.backbone(pixel_values)
        )

    def pooled_features(self, pixel_values: torch.Tensor, poolings: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features under several poolings from ONE backbone pass."""
        outputs = self._backbone_outputs(pixel_values)
        return {p: self._pool(outputs, self._resolve_pooling(p)) for p in poolings}

    def features(self, pixel_values: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
        """``(batch, dim)`` features under ``pooling`` (the adapter's default when ``None``)."""
        chosen = self._resolve_pooling(pooling or self.pooling)
        return self._pool(self._backbone_outputs(pixel_values), chosen)

    def forward(
        self, pixel_values: torch.Tensor, poolings: Sequence[str] | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Default-pooling features; with ``poolings``, a dict of features per pooling from one pass (so a DDP
        wrapper sees a single forward either way)."""
        if poolings is not None:
            return self.pooled_features(pixel_values, poolings)
        return self.features(pixel_values)

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature vector (read from the config, else measured once)."""
        if self._feature_dim is None:
            config = getattr(self.backbone, "config", None)
            size = getattr(config, "hidden_size", None)
            if isinstance(size, int) and self.pooling in ("cls", "mean"):
                self._feature_dim = size
            else:
                with torch.no_grad():
                    probe = torch.zeros(1, *self.input_shape())
                    self._feature_dim = int(self.features(probe).shape[-1])
        return self._feature_dim

    @property
    def patch_size(self) -> int | None:
        """The side of the square patches a patch-embedding backbone cuts its input into (its config's
        ``patch_size``), or None when it has none (a convolutional or plain backbone) or its patches are not square."""
        size = getattr(getattr(self.backbone, "config", None), "patch_size", None)
        if isinstance(size, (tuple, list)):
            size = size[0] if len(set(size)) == 1 else None
        return size if isinstance(size, int) and size > 0 else None

    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` the backbone expects."""
        config = getattr(self.backbone, "config", None)
        channels = int(getattr(config, "num_channels", 3) or 3)
        size = _processor_size(self.image_processor) or getattr(config, "image_size", None) or 224
        if isinstance(size, (tuple, list)):
            return channels, int(size[0]), int(size[1])
        return channels, int(size), int(size)

    # -------------------------------------------------------------------------------------------- preprocess
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pixel values (float32) for a list of PIL images, via the model's own image processor (the images first
        converted to the model's channel mode by :func:`convert_image`: 16-bit scaled, alpha composited on white)."""
        if self.preprocess_fn is not None:
            return self.preprocess_fn(images)
        if self.image_processor is None:
            raise EncoderError(
                f"{self.name} has no image processor; pass image_processor= or preprocess_fn= to the adapter"
            )
        channels = self.input_shape()[0]
        mode = PIL_MODE_FOR_CHANNELS.get(channels)
        if mode is None:
            raise EncoderError(
                f"{self.name} expects {channels}-channel inputs; PIL images can only be prepared with "
                f"{sorted(PIL_MODE_FOR_CHANNELS)} channels: pass preprocess_fn= to the adapter"
            )
        empty = next((i for i, img in enumerate(images) if 0 in img.size), None)
        if empty is not None:
            width, height = images[empty].size
            raise EncoderError(f"image {empty} has no pixels ({width}x{height}): it cannot be resized for {self.name}")
        converted = []
        for index, image in enumerate(images):
            try:
                converted.append(convert_image(image, mode))
            except EncoderError as error:
                raise EncoderError(f"image {index} {error}") from error
        batch = self.image_processor(images=converted, return_tensors="pt")
        return batch["pixel_values"].float()

    def normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of shape ``(C, 1, 1)`` that the processor's normalisation applies to 0-1 pixels
        (``pixel_values = (raw - mean) / std``); zeros and ones when the processor does not normalise."""
        channels = self.input_shape()[0]
        processor = self.image_processor
        if processor is None or not getattr(processor, "do_normalize", False):
            return torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)
        mean = torch.as_tensor(processor.image_mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(processor.image_std, dtype=torch.float32).reshape(-1, 1, 1)
        return mean.expand(channels, 1, 1).clone(), std.expand(channels, 1, 1).clone()

    # ----------------------------------------------------------------------------------------- construction
    def random_init_twin(self, seed: int = 0) -> EncoderAdapter:
        """The same architecture and preprocessing with freshly initialised weights."""
        torch.manual_seed(seed)
        config = getattr(self.backbone, "config", None)
        if config is not None and hasattr(self.backbone, "save_pretrained"):
            from transformers import AutoModel

            twin = AutoModel.from_config(copy.deepcopy(config), **NO_REMOTE_CODE)
        else:
            twin = copy.deepcopy(self.backbone)
            for module in twin.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        twin.eval()
        return EncoderAdapter(
            twin,
            pooling=self.pooling,
            image_processor=self.image_processor,
            preprocess_fn=self.preprocess_fn,
            name=f"{self.name} (random init)",
        )

    def save_pretrained(self, folder: str | os.PathLike, **kwargs: Any) -> None:
        """Write the encoder to ``folder``.

        A Hugging Face backbone writes a folder that ``AutoModel``, ``AutoImageProcessor`` and ``pipeline`` all load
        (it must carry its image processor). A plain ``nn.Module`` writes its state dict (``model.safetensors``) and
        ``encoderlock_module.json`` (class name, pooling, input shape); :meth:`from_pretrained` loads it back into an
        instance of the same class (``model=``), and the image processor when it has one.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not hasattr(self.backbone, "save_pretrained"):
            save_model(self.backbone, str(folder / MODEL_WEIGHTS_FILE))
            info = {
                "format": PLAIN_MODULE_FORMAT,
                "module_class": f"{type(self.backbone).__module__}.{type(self.backbone).__qualname__}",
                "pooling": self.pooling,
                "input_shape": list(self.input_shape()),
                "name": self.name,
            }
            (folder / PLAIN_MODULE_CONFIG_FILE).write_text(json.dumps(info, indent=2))
            if self.image_processor is not None:
                self.image_processor.save_pretrained(folder)
            return
        if self.image_processor is None:
            raise EncoderError(f"{self.name} has no image processor; every saved encoder folder must carry one")
        self.backbone.save_pretrained(folder, **kwargs)
        self.image_processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        pooling: str = "auto",
        model: nn.Module | None = None,
        preprocess_fn: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None,
        image_processor: Any | None = None,
        **kwargs: Any,
    ) -> EncoderAdapter:
        """Load a backbone and its image processor from a folder or the Hub.

        A folder saved from a plain ``nn.Module`` needs ``model``: an instance of the same class, whose weights are
        replaced (strictly) by the saved ones; ``preprocess_fn`` when the folder holds no image processor.
        ``image_processor`` replaces the one saved with the model (needed when it has none).
        """
        from transformers import AutoModel

        source = str(name_or_path)
        local = Path(source)
        if (local / PLAIN_MODULE_CONFIG_FILE).is_file():
            adapter = cls._from_plain_folder(local, model, pooling, preprocess_fn)
            adapter.image_processor = image_processor or adapter.image_processor
            return adapter
        if local.exists() and not (local / MODEL_CONFIG_FILE).is_file():
            raise EncoderError(f"{source} has no {MODEL_CONFIG_FILE}: it is not a saved encoder folder")
        if not local.exists():
            try:  # else transformers' message speaks of a malformed repository id, not of a missing folder
                validate_repo_id(source)
            except HFValidationError:
                raise EncoderError(
                    f"{source!r} is not an existing folder, nor a Hub model id (name or namespace/name)"
                ) from None
        if kwargs.pop("trust_remote_code", False):
            raise EncoderError(
                "trust_remote_code=True is not supported: a lock is loaded with transformers' own classes only, "
                "never with code shipped in the model's folder or repository"
            )
        try:
            backbone, loading = AutoModel.from_pretrained(source, output_loading_info=True, **kwargs, **NO_REMOTE_CODE)
        except (OSError, ValueError) as error:  # ValueError: a config that needs custom code (auto_map)
            raise EncoderError(f"could not load the encoder {source!r}: {error}") from error
        missing = sorted(loading.get("missing_keys") or ())
        _check_reads_images(backbone, source)  # before the processor, whose absence would be the wrong complaint
        if missing and all(key.startswith("pooler.") for key in missing) and getattr(backbone, "pooler", None):
            # Saved without a pooler: transformers made a random, unseeded one, which would then be probed, saved
            # with the lock and published as the original's (found on the user's path). Dropped after loading, so
            # the global random stream is the same as before.
            backbone.pooler = None
        elif missing:
            logger.warning(
                "%s: the checkpoint lacks %d tensor(s) of the model (%s), which transformers initialised at random",
                source,
                len(missing),
                ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""),
            )
        processor = image_processor
        if processor is None:
            try:
                processor = load_image_processor(
                    source, "; give one with image_processor=... (--image_processor on the command line)"
                )
            except EncoderError:
                if preprocess_fn is None:
                    raise  # with a preprocess function the model's own processor is optional
        backbone.eval()
        return cls(backbone, pooling=pooling, image_processor=processor, preprocess_fn=preprocess_fn, name=source)

    @classmethod
    def _from_plain_folder(cls, folder: Path, model, pooling: str, preprocess_fn) -> EncoderAdapter:
        info = json.loads((folder / PLAIN_MODULE_CONFIG_FILE).read_text())
        if info.get("format") != PLAIN_MODULE_FORMAT:
            raise EncoderError(f"{folder / PLAIN_MODULE_CONFIG_FILE}: unknown format {info.get('format')!r}")
        expected = info.get("module_class", "?")
        if model is None:
            raise EncoderError(
                f"{folder} holds the weights of a plain torch module ({expected}); pass model=<an instance of it>"
            )
        found = f"{type(model).__module__}.{type(model).__qualname__}"
        if found != expected:
            raise EncoderError(f"{folder} was saved from {expected}, got model={found}")
        try:
            load_model(model, str(folder / MODEL_WEIGHTS_FILE), strict=True)
        except RuntimeError as error:
            raise EncoderError(f"{folder}: the saved weights do not fit the given model ({error})") from error
        processor = None
        if (folder / PROCESSOR_CONFIG_FILE).is_file():
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(str(folder), **NO_REMOTE_CODE)
        chosen = info.get("pooling", "auto") if pooling == "auto" else pooling
        return cls(
            model.eval(), pooling=chosen, image_processor=processor, preprocess_fn=preprocess_fn, name=str(folder)
        )


def _processor_size(processor: Any) -> tuple[int, int] | None:
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    getter = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    height, width = getter("height"), getter("width")
    if height and width:
        return int(height), int(width)
    shortest = getter("shortest_edge")
    return (int(shortest), int(shortest)) if shortest else None


def load_image_processor(source: str | os.PathLike, hint: str = "") -> Any:
    """The image processor saved in the folder or Hub repository ``source`` (transformers' own classes only)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(source), **NO_REMOTE_CODE)
    except (OSError, ValueError) as error:  # ValueError: a processor that needs custom code
        raise EncoderError(f"{str(source)!r} has no usable image processor{hint}: {error}") from error


def split_processing(processing: Any | None) -> tuple[Any | None, Callable | None]:
    """``(image processor, preprocess function)`` from what a user passes as ``processing_class``: a Hugging Face
    image processor (it has ``save_pretrained``), or a function from a list of PIL images to a pixel tensor."""
    if processing is None or hasattr(processing, "save_pretrained"):
        return processing, None
    if callable(processing):
        return None, processing
    raise EncoderError(
        f"processing_class must be an image processor or a function from PIL images to a pixel tensor, "
        f"got {type(processing).__name__}"
    )


def _processor_of(backbone: nn.Module) -> Any | None:
    """The image processor saved with a ``PreTrainedModel``'s checkpoint (``config._name_or_path``), if reachable."""
    name = getattr(getattr(backbone, "config", None), "_name_or_path", "") or ""
    if not name:
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name, **NO_REMOTE_CODE)
    except (OSError, ValueError):  # no processor saved there, or not reachable offline
        return None


def load_encoder(
    model_or_path: str | os.PathLike | nn.Module | EncoderAdapter,
    pooling: str = "auto",
    image_processor: Any | None = None,
    model: nn.Module | None = None,
) -> EncoderAdapter:
    """An :class:`EncoderAdapter` from a folder, a Hub id, a backbone module or an adapter (returned as is).

    ``image_processor`` may also be a preprocess function (PIL images -> pixel tensor), or a folder or Hub id whose
    saved image processor is loaded (for a model saved without one). A ``PreTrainedModel`` given without one gets the
    processor saved next to its checkpoint when that can be found. ``model`` is the instance a folder saved from a
    plain ``nn.Module`` loads into.
    """
    if isinstance(image_processor, (str, os.PathLike)):
        image_processor = load_image_processor(image_processor)
    processor, preprocess_fn = split_processing(image_processor)
    if isinstance(model_or_path, EncoderAdapter):
        return model_or_path
    if isinstance(model_or_path, nn.Module):
        if processor is None and preprocess_fn is None:
            processor = _processor_of(model_or_path)
        return EncoderAdapter(model_or_path, pooling=pooling, image_processor=processor, preprocess_fn=preprocess_fn)
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise EncoderError(
            "the encoder must be a model id or folder, a PreTrainedModel, an nn.Module or an EncoderAdapter; "
            f"got {type(model_or_path).__name__}"
        )
    return EncoderAdapter.from_pretrained(
        model_or_path, pooling=pooling, model=model, preprocess_fn=preprocess_fn, image_processor=processor
    )


def vit_image_processor(image_size: int, mean: float = 0.5, std: float = 0.5) -> Any:
    """A ViT image processor that resizes to ``image_size`` and normalises each channel."""
    import transformers

    # Without torchvision, transformers falls back from ViTImageProcessor to its PIL twin with a warning in every
    # process; asking for the PIL class directly gives the same processor without the noise.
    name = "ViTImageProcessor" if importlib.util.find_spec("torchvision") else "ViTImageProcessorPil"
    processor_class = getattr(transformers, name, None) or transformers.ViTImageProcessor
    return processor_class(
        size={"height": image_size, "width": image_size},
        image_mean=[mean] * 3,
        image_std=[std] * 3,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
    )


def tiny_vit_encoder(
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    pooling: str = "cls",
) -> EncoderAdapter:
    """A small randomly initialised ViT with its processor, for tests and smoke runs."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        num_channels=3,
    )
    backbone = ViTModel(config).eval()
    return EncoderAdapter(backbone, pooling=pooling, image_processor=vit_image_processor(image_size), name="tiny-vit")
