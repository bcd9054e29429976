"""``encoderlock`` exit codes: user errors are one line with status 2, a traceback only with --debug."""

import pytest

from hf_encoderlock.cli import main as cli_main
from hf_encoderlock.cli.main import main


def test_a_user_error_is_one_line_with_status_2(tmp_path, capsys):
    missing = str(tmp_path / "no-such-domain")
    status = main(["probe", "--encoder", "unused", "--domains", missing, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("encoderlock probe: error:") and "\n" not in err
    assert "no-such-domain" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no-such-domain"):
        main(["probe", "--debug", "--encoder", "unused", "--domains", str(tmp_path / "no-such-domain"), "--out", "o"])


def test_an_unexpected_error_is_one_line_with_status_3(monkeypatch, capsys):
    module = cli_main.command_module("env")

    def broken(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(module, "run", broken)
    assert main(["env"]) == 3
    err = capsys.readouterr().err.strip()
    assert "unexpected RuntimeError: a bug over two lines" in err and "--debug" in err and "\n" not in err


def test_ctrl_c_is_one_line_with_status_130(monkeypatch, capsys):
    """A Ctrl-C printed a full KeyboardInterrupt traceback (found on the user's path)."""
    module = cli_main.command_module("env")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    assert main(["env"]) == 130
    assert capsys.readouterr().err.strip() == "encoderlock env: interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["env", "--debug"])
