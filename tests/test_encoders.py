"""The encoder adapter: pooling on token and conv backbones, preprocessing, saving and loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModel,
    BertConfig,
    BertModel,
    ConvNextConfig,
    ConvNextModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
    pipeline,
)

from hf_encoderlock.encoders import (
    EncoderAdapter,
    EncoderError,
    load_encoder,
    saved_weight_keys,
    tiny_vit_encoder,
    vit_image_processor,
)


def _images(count: int, size: int = 28, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def vit():
    return tiny_vit_encoder(seed=0)


def test_vit_poolings_match_hidden_states(vit):
    pixels = vit.preprocess(_images(3))
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    with torch.no_grad():
        hidden = vit.backbone(pixel_values=pixels).last_hidden_state
        pooled = vit.pooled_features(pixels, ["cls", "mean"])
    assert torch.allclose(pooled["cls"], hidden[:, 0])
    assert torch.allclose(pooled["mean"], hidden[:, 1:].mean(1))
    assert vit.available_poolings() == ("cls", "mean")
    assert vit.feature_dim == 32 and vit(pixels).shape == (3, 32)


def test_grey_images_are_converted_to_rgb(vit):
    grey = [img.convert("L") for img in _images(2)]
    assert vit.preprocess(grey).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "backbone",
    [
        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
        ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
    ],
    ids=["resnet", "convnext"],
)
def test_conv_backbones_pool_feature_maps(backbone):
    adapter = EncoderAdapter(backbone.eval(), image_processor=vit_image_processor(32))
    pixels = adapter.preprocess(_images(2))
    with torch.no_grad():
        outputs = backbone(pixel_values=pixels)
        mean = adapter.features(pixels, "mean")
        pooler = adapter.features(pixels, "pooler")
    assert adapter.pooling == "pooler"
    assert torch.allclose(mean, outputs.last_hidden_state.mean(dim=(2, 3)))
    assert pooler.shape == (2, 16) and adapter.feature_dim == 16
    with pytest.raises(EncoderError, match="CLS|cls"):
        adapter.features(pixels, "cls")


def test_plain_module_with_preprocess_fn(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    prep = lambda imgs: torch.stack([torch.zeros(3, 8, 8) for _ in imgs])  # noqa: E731
    adapter = EncoderAdapter(module, preprocess_fn=prep)
    assert adapter.pooling == "mean"
    assert adapter(adapter.preprocess(_images(2))).shape == (2, 4)
    # a plain module saves its state dict and a small config, and loads back into an instance of its class
    adapter.save_pretrained(tmp_path / "plain")
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"model.safetensors", "encoderlock_module.json"}
    with pytest.raises(EncoderError, match="plain torch module"):
        EncoderAdapter.from_pretrained(tmp_path / "plain")
    with pytest.raises(EncoderError, match="was saved from"):
        EncoderAdapter.from_pretrained(tmp_path / "plain", model=torch.nn.Linear(2, 2))
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    loaded = EncoderAdapter.from_pretrained(tmp_path / "plain", model=fresh, preprocess_fn=prep)
    for saved, restored in zip(module.state_dict().values(), loaded.backbone.state_dict().values()):
        assert torch.equal(saved, restored)
    assert loaded.pooling == "mean" and loaded(loaded.preprocess(_images(1))).shape == (1, 4)
    processor = vit_image_processor(8)  # an image processor given with the folder is kept, as for any model
    given = load_encoder(tmp_path / "plain", image_processor=processor, model=fresh)
    assert given.image_processor is processor and given.preprocess(_images(1)).shape == (1, 3, 8, 8)


def test_saved_folder_loads_with_auto_classes_and_pipeline(vit, tmp_path):
    vit.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), torch.nn.Module)
    assert AutoImageProcessor.from_pretrained(tmp_path) is not None
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    tokens = np.asarray(extractor(_images(1)[0]))
    assert tokens.shape[-1] == 32
    reloaded = load_encoder(tmp_path)
    pixels = vit.preprocess(_images(2))
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels), vit(pixels), atol=1e-6)


def test_random_twin_has_same_shape_but_new_weights(vit):
    twin = vit.random_init_twin(seed=1)
    pixels = vit.preprocess(_images(2))
    with torch.no_grad():
        assert twin(pixels).shape == vit(pixels).shape
        assert not torch.allclose(twin(pixels), vit(pixels))
    assert type(twin.backbone) is type(vit.backbone)


def test_missing_encoder_files_fail_clearly(tmp_path):
    with pytest.raises(EncoderError, match="config.json"):
        load_encoder(tmp_path)
    with pytest.raises(EncoderError, match="unknown pooling"):
        tiny_vit_encoder(pooling="max")


def test_transformers_is_never_asked_to_run_code_shipped_with_a_checkpoint(tmp_path, monkeypatch):
    """A config with ``auto_map`` would make transformers prompt "run the custom code? [y/N]" in a terminal."""
    import transformers.models.auto.auto_factory as auto_factory
    import transformers.models.auto.configuration_auto as configuration_auto
    import transformers.models.auto.image_processing_auto as image_processing_auto

    asked = []
    for module in (auto_factory, configuration_auto, image_processing_auto):
        original = module.resolve_trust_remote_code

        def record(trust_remote_code, *args, _original=original, **kwargs):
            asked.append(trust_remote_code)
            return _original(trust_remote_code, *args, **kwargs)

        monkeypatch.setattr(module, "resolve_trust_remote_code", record)
    folder = tmp_path / "custom"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    try:
        EncoderAdapter.from_pretrained(folder)
    except EncoderError:
        pass  # refusing the custom code is fine; running it or asking about it is not
    assert not (tmp_path / "ran").exists()
    assert asked and all(value is False for value in asked), asked
    with pytest.raises(EncoderError, match="trust_remote_code=True is not supported"):
        EncoderAdapter.from_pretrained(folder, trust_remote_code=True)


def test_a_missing_folder_is_named_as_such(tmp_path):
    for missing in (tmp_path / "no" / "model", "./no/such/model"):
        with pytest.raises(EncoderError, match="is not an existing folder, nor a Hub model id"):
            load_encoder(missing)


def test_a_model_saved_without_an_image_processor_takes_one_from_another_folder(tmp_path):
    """A fine-tuned copy often has no preprocessor_config.json: the error says how to give one, and giving one (a
    folder, as the CLI's --image_processor does, or a processor object) loads the model with it."""
    bare, donor = tmp_path / "bare", tmp_path / "donor"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(bare)
    (bare / "preprocessor_config.json").unlink()
    vit_image_processor(16, mean=0.25, std=0.5).save_pretrained(donor)
    with pytest.raises(EncoderError, match=r"no usable image processor; give one with image_processor=.*--image_"):
        load_encoder(bare)
    for given in (str(donor), vit_image_processor(16, mean=0.25, std=0.5)):
        encoder = load_encoder(bare, image_processor=given)
        mean, std = encoder.normalization()
        assert torch.allclose(mean, torch.full_like(mean, 0.25)) and torch.allclose(std, torch.full_like(std, 0.5))
        assert encoder.preprocess([Image.new("RGB", (20, 20), "white")]).shape == (1, 3, 16, 16)
    with pytest.raises(EncoderError, match=r"'.*nowhere' has no usable image processor"):
        load_encoder(bare, image_processor=str(tmp_path / "nowhere"))


def test_a_checkpoint_without_a_pooler_loads_without_a_random_one(tmp_path):
    """transformers fills a missing pooler with random, unseeded weights, which were then probed, locked and
    published as the original's (found on the user's path): the loaded encoder has none, and two loads are equal."""
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "no-pooler")
    vit_image_processor(16).save_pretrained(tmp_path / "no-pooler")
    first, second = load_encoder(tmp_path / "no-pooler"), load_encoder(tmp_path / "no-pooler")
    assert first.backbone.pooler is None and "pooler" not in first.available_poolings()
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    first.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as saved:
        assert not any("pooler" in key for key in saved.keys())


def test_a_model_that_does_not_read_images_is_refused_as_such(tmp_path):
    """A text model was refused for lacking an image processor, then, given one, failed on its first batch."""
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderError, match=r"is a BertModel, whose input is input_ids, not images"):
        load_encoder(tmp_path / "bert")
    with pytest.raises(EncoderError, match=r"is a BertModel"):
        load_encoder(BertModel(config))


def test_saved_weight_keys_name_each_parameter_as_save_pretrained_writes_it(vit, tmp_path):
    names = ["layers.0.attention.q_proj.weight", "layers.1.mlp.fc1.weight"]
    names.append("embeddings.patch_embeddings.projection.weight")
    keys = saved_weight_keys(vit.backbone, names)
    vit.backbone.save_pretrained(tmp_path)
    params = dict(vit.backbone.named_parameters())
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert set(keys.values()) <= set(weights.keys())
        assert all(torch.equal(weights.get_tensor(keys[name]), params[name]) for name in names)
    assert keys["layers.0.attention.q_proj.weight"] == "encoder.layer.0.attention.attention.query.weight"
    assert keys["embeddings.patch_embeddings.projection.weight"] == "embeddings.patch_embeddings.projection.weight"
    plain = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert saved_weight_keys(plain, ["0.weight"]) == {"0.weight": "0.weight"}
    with pytest.raises(EncoderError, match="no parameter"):
        saved_weight_keys(plain, ["1.weight"])


def test_patch_size_is_read_from_a_patch_embedding_backbone_only(vit):
    def vit_with_patches(patch_size):
        config = ViTConfig(
            image_size=32, patch_size=patch_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
        )
        return EncoderAdapter(ViTModel(config).eval(), image_processor=vit_image_processor(32))

    resnet = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic"))
    assert vit.patch_size == 8
    assert vit_with_patches((4, 4)).patch_size == 4
    assert vit_with_patches((4, 8)).patch_size is None
    assert EncoderAdapter(resnet.eval(), image_processor=vit_image_processor(32)).patch_size is None
