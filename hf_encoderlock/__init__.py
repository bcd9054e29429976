"""hf_encoderlock: EncoderLock (NDSS 2025, "Probe-Me-Not") for the Hugging Face ecosystem."""

from .encoders import EncoderAdapter, EncoderError, load_encoder, tiny_vit_encoder, vit_image_processor
from .victim import VictimConfig, load_victim, pretrain_victim, victim_random_twin

__version__ = "0.1.0.dev0"

__all__ = [
    "EncoderAdapter",
    "EncoderError",
    "VictimConfig",
    "load_encoder",
    "load_victim",
    "pretrain_victim",
    "tiny_vit_encoder",
    "victim_random_twin",
    "vit_image_processor",
]
