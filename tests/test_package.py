"""The public API: every exported name resolves, and importing the package stays light."""

import subprocess
import sys

import hf_encoderlock


def test_every_exported_name_resolves():
    for name in hf_encoderlock.__all__:
        assert getattr(hf_encoderlock, name) is not None, name


def test_import_does_not_pull_in_the_trainer():
    code = "import sys, hf_encoderlock; print('transformers.trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
