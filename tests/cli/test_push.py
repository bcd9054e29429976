"""``encoderlock push``: a locked folder to the (local, fake) Hub, private and manually gated."""

from hf_encoderlock.cli.main import main as cli_main
from hf_encoderlock.lock.trainer import MASK_FILE
from tests.hub_server import TOKEN


def test_cli_push_with_private_and_manual_gate(locked_folder, fake_hub, capsys):
    code = cli_main(["push", "--gated", str(locked_folder), "user/cli-locked", "--private", "--manual-approval",
                     "--token", TOKEN, "--include-mask"])  # fmt: skip
    assert code == 0 and "user/cli-locked" in capsys.readouterr().out
    repo = fake_hub.repos["user/cli-locked"]
    assert repo.private and repo.gated == "manual"
    assert MASK_FILE in repo.commits[-1][1]
