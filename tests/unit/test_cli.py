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


def test_report_without_suite_is_a_clear_error(capsys):
    assert main(["report"]) == 2
    assert "suite=<name>" in capsys.readouterr().err


def test_report_on_an_empty_runs_folder_says_where_it_looked(tmp_path, capsys):
    """No run folders: exit status 1 and one line naming the folder and the fix; nothing written."""
    code = main(["report", "suite=smoke", f"paths.runs_dir={tmp_path / 'nowhere'}",
                 f"paths.reports_dir={tmp_path / 'reports'}"])
    err = capsys.readouterr().err
    assert code == 1 and str(tmp_path / "nowhere" / "smoke") in err and "dkbench sweep suite=smoke" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "reports").exists()


def test_hydra_flags_and_their_values_are_not_taken_for_overrides():
    from dkbench.cli import _overrides_only

    args = ["--cfg", "job", "-cn", "train", "dataset=breastmnist_64", "hydra.run.dir=x", "--package", "_global_",
            "seed=3"]
    assert _overrides_only(args) == ["dataset=breastmnist_64", "seed=3"]


def test_printing_the_config_needs_no_data(tmp_path, monkeypatch, capsys):
    """`--cfg job` prints the composed config; it runs nothing, so missing data is no reason to refuse."""
    monkeypatch.setenv("DKBENCH_DATA", str(tmp_path / "nothing_here"))
    assert main(["train", "experiment=medmnist_v2_resnet18_28_3d", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "name: vesselmnist3d" in out and "batch_size: 32" in out and "spatial_dims: 3" in out


def test_list_backbones_says_what_each_can_do(capsys):
    assert main(["list", "backbones"]) == 0
    rows = {line.split(" | ")[0]: line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    assert rows["unet"][2] == "2D, 3D" and rows["unet"][3] == "yes"          # dense: serves segmentation
    assert rows["resnet18_28"][3] == "no"
    assert rows["resnet18"][4] == "yes" and rows["unet"][4] == "no"          # a feature pyramid: serves detection
    assert rows["efficientnet_lite0_imagenet"][5] == "shipped / cached"     # offline ImageNet weights
    assert rows["densenet121"][6] == "32"                                    # smallest input
    for name in ("timm_resnet18", "timm_convnext_atto"):                     # configs of an absent extra stay listed
        assert name in rows
        assert "timm" in rows[name][7] or rows[name][2] != "-"
