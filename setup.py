"""Packaging for hf_encoderlock."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# One version: the package's own __version__.
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "hf_encoderlock" / "__init__.py").read_text()).group(1)

# Optional parts: the offline built-in domains (demo), fine-tuning attacks with LoRA (attacks), report plots (plots).
# `dev` holds everything the tests and the main job need, so the README's two set-up commands stay enough.
EXTRAS = {
    "demo": ["mlxtend>=0.23", "scikit-image>=0.22"],
    "attacks": ["peft>=0.13"],
    "plots": ["matplotlib>=3.8"],
    # model-signing 1.1 imports OpenSSL without declaring pyOpenSSL
    "signing": ["model-signing>=1.0", "pyopenssl>=23.0"],
}
EXTRAS["all"] = sorted({requirement for group in EXTRAS.values() for requirement in group})
# Developers test against the transformers that the shipped help (cli/lock_help.json) was rendered with and the private
# Trainer hooks (lock/trainer.py, PRIVATE_TRAINER_HOOKS) were checked against; users may run any transformers >= 5.19.
# Raise it together with `python -m hf_encoderlock.cli.lock --write-help`.
EXTRAS["dev"] = [*EXTRAS["all"], "pytest>=8.0", "ruff>=0.6", "transformers==5.25.0"]

setup(
    name="hf_encoderlock",
    version=VERSION,
    description="EncoderLock for the Hugging Face ecosystem: lock pre-trained encoders against malicious probing.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["hf_encoderlock", "hf_encoderlock.*"]),
    include_package_data=True,
    package_data={
        "hf_encoderlock": [
            "assets/victim/*",
            "cli/lock_help.json",
            "hub/model_card_template.md",
            "py.typed",
        ]
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.19",
        "datasets>=3.0",
        "accelerate>=1.0",
        "huggingface-hub>=1.0",
        "safetensors>=0.4",
        "jinja2>=3.1",
        "numpy>=1.26",
        "pillow>=10.0",
        "scikit-learn>=1.4",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "filelock>=3.12",  # the main job holds its output folder (experiment.py)
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["encoderlock=hf_encoderlock.cli.main:main"]},
)
