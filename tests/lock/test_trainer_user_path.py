"""EncoderLockTrainer from a user's side: their own model object and dataset, and the habits of transformers.Trainer
(push_to_hub=True, hub_strategy, evaluation callbacks, load_best_model_at_end, max_steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, TrainerCallback, ViTConfig, ViTModel

from hf_encoderlock import EncoderAdapter, EncoderLockConfig, EncoderLockTrainer, LockedEncoder, LockVerificationError
from hf_encoderlock._files import LOCK_STATE_FILE, LOCK_TENSORS_FILE, MASK_FILE, TRAINER_STATE_FILE
from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import EncoderError, vit_image_processor
from tests.helpers import TINY_LOCK, make_lock_config
from tests.hub_server import TOKEN


def _vit_model() -> ViTModel:
    """A user's own transformers backbone, built from a config (no processor saved anywhere)."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config).eval()


class SmallConvNet(torch.nn.Module):
    """A plain torch module from pixels to features (no transformers config)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.head = torch.nn.Linear(8 * 4 * 4, 16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(pixels)).flatten(1))


def to_pixels(images) -> torch.Tensor:
    """The user's own preprocessing: RGB, 16x16, 0-1, channels first."""
    arrays = [np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def test_a_transformers_backbone_with_its_processor_is_wrapped_by_the_trainer(tmp_path, toy_domains):
    model = _vit_model()
    args = make_lock_config(tmp_path / "run", TINY_LOCK)
    trainer = EncoderLockTrainer(
        model, args, toy_domains.authorized, toy_domains.prohibited, processing_class=vit_image_processor(16)
    )
    assert isinstance(trainer.encoder, EncoderAdapter) and trainer.encoder.backbone is model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert 0 < changed <= sum(int(m.sum()) for m in trainer.mask.values())  # the user's own model was locked


def test_a_model_folder_is_loaded_by_the_trainer(tmp_path, toy_domains):
    folder = tmp_path / "my-encoder"
    EncoderAdapter(_vit_model(), image_processor=vit_image_processor(16)).save_pretrained(folder)
    trainer = EncoderLockTrainer(
        str(folder), make_lock_config(tmp_path / "run"), toy_domains.authorized, toy_domains.prohibited
    )
    assert trainer.encoder.image_processor is not None and trainer.encoder.name == str(folder)


def test_a_backbone_without_a_processor_is_refused_before_any_work(tmp_path, toy_domains):
    with pytest.raises(EncoderError, match="processing_class"):
        EncoderLockTrainer(_vit_model(), make_lock_config(tmp_path / "run"), toy_domains.authorized, None)


def test_a_plain_module_locks_saves_and_reloads(tmp_path, toy_domains):
    torch.manual_seed(0)
    module = SmallConvNet()
    args = make_lock_config(tmp_path / "run", TINY_LOCK)
    trainer = EncoderLockTrainer(
        module, args, toy_domains.authorized, toy_domains.prohibited, processing_class=to_pixels
    )
    trainer.train()
    trainer.save_model()
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "encoderlock_module.json", "encoderlock_config.json", MASK_FILE} <= saved
    reloaded = EncoderAdapter.from_pretrained(tmp_path / "run", model=SmallConvNet(), preprocess_fn=to_pixels)
    for name, value in module.state_dict().items():
        assert torch.equal(value, reloaded.backbone.state_dict()[name]), name

    # the verified loader: the card's hashes checked, then the user's module and preprocessing
    images = toy_domains.eval_authorized["image"][:4]
    locked = LockedEncoder.from_pretrained(tmp_path / "run", model=SmallConvNet(), preprocess_fn=to_pixels)
    with torch.no_grad():
        assert torch.equal(locked.features(images), module.eval()(to_pixels(images)))
    assert locked.processor is None and locked.encoder.preprocess_fn is to_pixels
    weights = tmp_path / "run" / "model.safetensors"
    tampered = load_file(weights)
    tampered["head.bias"] = tampered["head.bias"] + 1.0  # an edit after the lock: the card no longer matches
    save_file(tampered, weights)
    with pytest.raises(LockVerificationError, match="model.safetensors"):
        LockedEncoder.from_pretrained(tmp_path / "run", model=SmallConvNet(), preprocess_fn=to_pixels)


def test_other_column_names_and_a_dataset_dict(tmp_path, toy_domains):
    def renamed(dataset):
        return DatasetDict(train=dataset.rename_columns({"image": "img", "label": "fine_label"}))

    args = make_lock_config(tmp_path / "run", TINY_LOCK)
    mapping = {"img": "image", "fine_label": "label"}
    trainer = EncoderLockTrainer(
        _vit_model(),
        args,
        renamed(toy_domains.authorized),
        renamed(toy_domains.prohibited),
        processing_class=vit_image_processor(16),
        column_mapping=mapping,
        eval_dataset={"authorized": renamed(toy_domains.eval_authorized)["train"]},
    )
    assert len(trainer.lock_authorized) + len(trainer.val_authorized) == len(toy_domains.authorized)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_authorized_head_accuracy"] <= 1.0
    with pytest.raises(LockDataError, match="no 'test' split"):
        EncoderLockTrainer(
            _vit_model(),
            args,
            renamed(toy_domains.authorized),
            None,
            processing_class=vit_image_processor(16),
            column_mapping=mapping,
            dataset_split="test",
        )
    with pytest.raises(LockDataError, match="not in the dataset"):
        EncoderLockTrainer(
            _vit_model(),
            args,
            toy_domains.authorized,
            toy_domains.prohibited,
            processing_class=vit_image_processor(16),
            column_mapping={"picture": "image"},
        )


def test_a_streaming_dataset_is_refused_in_one_line(tmp_path, toy_domains):
    stream = IterableDataset.from_generator(lambda: iter([{"image": None, "label": 0}]))
    with pytest.raises(LockDataError, match="streaming") as refused:
        EncoderLockTrainer(
            _vit_model(), make_lock_config(tmp_path / "run"), stream, None, processing_class=vit_image_processor(16)
        )
    assert "\n" not in str(refused.value) and "streaming=False" in str(refused.value)


class _Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.evaluations: list[dict] = []
        self.descriptions: list[str] = []
        self.trainer = None  # set once the trainer exists: callbacks are not handed the trainer

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append(dict(metrics))

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None:
            return
        bars = [c.training_bar for c in self.trainer.callback_handler.callbacks if getattr(c, "training_bar", None)]
        self.descriptions += [bar.desc.rstrip(": ") for bar in bars]  # tqdm appends ": " to a description


def test_evaluate_fires_on_evaluate_and_early_stopping_works_on_a_lock_metric(tmp_path, toy_domains):
    recorder = _Recorder()
    args = make_lock_config(
        tmp_path / "run",
        TINY_LOCK,
        num_rounds=4,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="eval_head_gap",
        greater_is_better=True,
    )
    stopper = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)  # never "improves"
    trainer = EncoderLockTrainer(
        _vit_model(),
        args,
        toy_domains.authorized,
        toy_domains.prohibited,
        processing_class=vit_image_processor(16),
        eval_dataset={"authorized": toy_domains.eval_authorized, "prohibited": toy_domains.eval_prohibited},
        callbacks=[recorder, stopper],
    )
    trainer.train()
    assert recorder.evaluations and all("eval_head_gap" in metrics for metrics in recorder.evaluations)
    assert trainer.state.global_step < args.max_steps  # the user's early stopping ended the lock


def test_trainer_habits_that_do_not_fit_a_lock_are_refused_at_construction(tmp_path, toy_domains):
    with pytest.raises(ValueError, match="best_model_criterion"):
        EncoderLockTrainer(
            _vit_model(),
            make_lock_config(
                tmp_path / "run", load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps"
            ),
            toy_domains.authorized,
            toy_domains.prohibited,
            processing_class=vit_image_processor(16),
        )
    with pytest.raises(ValueError, match="max_steps=7"):
        make_lock_config(tmp_path / "run", max_steps=7)
    with pytest.raises(ValueError, match="num_train_epochs"):
        make_lock_config(tmp_path / "run", num_train_epochs=1)
    steps = TINY_LOCK["num_rounds"] * TINY_LOCK["update_steps_per_round"]
    assert make_lock_config(tmp_path / "run", max_steps=steps).max_steps == steps  # an agreeing value is fine


def test_the_progress_bar_names_the_round_and_phase(tmp_path, toy_domains):
    recorder = _Recorder()
    args = make_lock_config(tmp_path / "run", TINY_LOCK, disable_tqdm=False)
    trainer = EncoderLockTrainer(
        _vit_model(),
        args,
        toy_domains.authorized,
        toy_domains.prohibited,
        processing_class=vit_image_processor(16),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    assert recorder.descriptions[0] == f"round 1/{args.num_rounds}: updates"
    assert recorder.descriptions[-1] == f"round {args.num_rounds}/{args.num_rounds}: updates"


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint", "all_checkpoints", "end"])
def test_push_to_hub_true_never_uploads_the_mask_state_or_checkpoints(
    tmp_path, toy_domains, fake_hub, hub_strategy, caplog
):
    """Whatever the hub_strategy, one push of the finished lock: a checkpoint's weights (a half-done lock) were
    pushed as commits, and the first held the original values at most of the positions the lock changed (found on
    the user's path)."""
    args = make_lock_config(
        tmp_path / "run",
        TINY_LOCK,
        push_to_hub=True,
        hub_model_id="user/locked-by-habit",
        hub_strategy=hub_strategy,
        hub_token=TOKEN,
        hub_gated="auto",
        save_strategy="steps",
        save_steps=3,
    )
    with caplog.at_level("WARNING", logger="hf_encoderlock"):
        trainer = EncoderLockTrainer(
            _vit_model(), args, toy_domains.authorized, toy_domains.prohibited, processing_class=vit_image_processor(16)
        )
    assert ("pushed once, finished" in caplog.text) is (hub_strategy != "end")
    trainer.train()
    assert "user/locked-by-habit" not in fake_hub.repos or not fake_hub.repos["user/locked-by-habit"].commits
    trainer.save_model()  # the Trainer habit: save_model pushes when push_to_hub=True (must not recurse)
    repo = fake_hub.repos["user/locked-by-habit"]
    assert repo.gated == "auto"
    private = {MASK_FILE, LOCK_STATE_FILE, LOCK_TENSORS_FILE, TRAINER_STATE_FILE, "optimizer.pt", "scheduler.pt"}
    for _, files in repo.commits:
        assert not private & set(files), sorted(private & set(files))
        assert not any("/" in path for path in files), "a checkpoint folder was uploaded"
    latest = set(repo.commits[-1][1])
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= latest
    assert (tmp_path / "run" / MASK_FILE).is_file()  # the mask stays on the owner's machine
    assert len(repo.commits) == 1  # only the finished lock
    assert repo.commits[0][1]["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()


def test_default_config_is_the_tuned_lock_and_reference_is_the_papers():
    tuned, reference = EncoderLockConfig(output_dir="unused"), EncoderLockConfig.reference(output_dir="unused")
    assert tuned.objective == "information" and tuned.prohibited_poolings == ["auto"]
    assert (tuned.num_rounds, tuned.weights_per_round, tuned.candidate_blocks) == (20, 510, [-1, 0, 1])
    assert (tuned.authorized_projection, tuned.projection_threshold(), tuned.learning_rate) == ("auto", 0.01, 0.3)
    assert (tuned.repair_steps, tuned.repair_learning_rate, tuned.max_steps) == (20, 0.01, 20 * 10 + 20)
    assert (tuned.max_authorized_drift, tuned.unprojected_learning_rate) == (0.1, 0.01)
    assert reference.objective == "paper" and reference.prohibited_poolings is None
    assert (reference.projection_threshold(), reference.learning_rate, reference.repair_steps) == (None, 1e-2, 0)
    assert reference.max_authorized_drift == 0
    assert (reference.weights_per_round, reference.layers_per_round, reference.update_steps_per_round) == (100, 1, 40)


def test_image_paths_are_read_only_under_an_allowed_root(tmp_path, toy_domains):
    root = tmp_path / "images"
    root.mkdir()
    paths, labels = [], []
    for index, row in enumerate(toy_domains.authorized):
        path = root / f"{index}.png"
        row["image"].save(path)
        paths.append(str(path))
        labels.append(row["label"])
    as_paths = Dataset.from_dict({"image": paths, "label": labels})
    args = make_lock_config(tmp_path / "run", TINY_LOCK)
    with pytest.raises(LockDataError, match="allow_local_images_under"):
        EncoderLockTrainer(_vit_model(), args, as_paths, None, processing_class=vit_image_processor(16))
    trainer = EncoderLockTrainer(
        _vit_model(),
        args,
        as_paths,
        toy_domains.prohibited,
        processing_class=vit_image_processor(16),
        allow_local_images_under=root,
    )
    assert len(trainer.lock_authorized) + len(trainer.val_authorized) == len(paths)


class DepthwiseConvNet(torch.nn.Module):
    """A plain module with a depthwise convolution (ConvNeXt-style), which the projection cannot handle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.depthwise = torch.nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8)
        self.head = torch.nn.Linear(8 * 4 * 4, 16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.depthwise(self.stem(pixels))).flatten(1))


def test_default_projection_skips_weights_it_cannot_project_with_a_warning(tmp_path, toy_domains, caplog):
    torch.manual_seed(0)
    module = DepthwiseConvNet()
    args = make_lock_config(tmp_path / "run", TINY_LOCK, authorized_projection="auto", weights_per_round=40)
    trainer = EncoderLockTrainer(
        module, args, toy_domains.authorized, toy_domains.prohibited, processing_class=to_pixels
    )
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.rounds"):
        trainer.train()
    assert "their updates are not projected (e.g. backbone.depthwise.weight)" in caplog.text
    assert "backbone.depthwise.weight" in trainer.candidates and "backbone.stem.weight" in trainer.candidates
    assert set(trainer.projection.moments) == set(trainer.candidates) - {"backbone.depthwise.weight"}
    assert sum(int(m.sum()) for m in trainer.mask.values()) == 2 * 40


def test_a_plain_module_with_own_columns_repairs_and_refuses_push_to_hub_before_any_work(
    tmp_path, toy_domains, fake_hub
):
    """A user's own module and column names with repair steps: the lock runs rounds + repair steps and the bar names
    the repair. Asked to push to the Hub, the same module is refused at construction (its folder cannot load with
    AutoModel), not at the first checkpoint after the lock has run."""

    def renamed(dataset):
        return dataset.rename_columns({"image": "img", "label": "digit"})

    def trainer_for(**overrides):
        return EncoderLockTrainer(
            SmallConvNet(),
            make_lock_config(tmp_path / "run", TINY_LOCK, repair_steps=2, disable_tqdm=False, **overrides),
            renamed(toy_domains.authorized),
            renamed(toy_domains.prohibited),
            processing_class=to_pixels,
            column_mapping={"img": "image", "digit": "label"},
            callbacks=[recorder],
        )

    torch.manual_seed(0)
    recorder = _Recorder()
    with pytest.raises(EncoderError, match="push_to_hub=True needs a transformers PreTrainedModel"):
        trainer_for(push_to_hub=True, hub_model_id="user/plain", hub_token=TOKEN, hub_strategy="checkpoint")
    assert "user/plain" not in fake_hub.repos
    trainer = trainer_for()
    recorder.trainer = trainer
    trainer.train()
    assert trainer.state.global_step == TINY_LOCK["num_rounds"] * TINY_LOCK["update_steps_per_round"] + 2
    assert recorder.descriptions[-1] == "repair"
