"""`dkbench list …` prints every registry; bad commands say what is valid."""

import pytest

from dkbench.cli import main


@pytest.mark.parametrize(
    ("what", "expected"),
    [("datasets", ["breastmnist", "probe", "busi_binary", "kvasir_seg", "adrenalmnist3d"]),
     ("backbones", ["resnet18_28", "efficientnet_lite0_imagenet", "tinycnn"]),
     ("strategies", ["baseline"]),
     ("experiments", ["medmnist_v2_resnet18_28"]),
     ("suites", ["demo", "smoke", "medmnist_v2"])],
)
def test_list_prints_registry(capsys, what, expected):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out


def test_unknown_command_and_list_target(capsys):
    assert main(["frobnicate"]) == 2
    assert "commands:" in capsys.readouterr().err
    assert main(["list", "nothing"]) == 2
    assert "datasets|backbones|strategies" in capsys.readouterr().err


def test_report_without_suite_is_a_clear_error():
    with pytest.raises(ValueError, match="suite=<name>"):
        main(["report"])
