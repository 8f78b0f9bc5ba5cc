"""Faults and hostile files: signals, a damaged or planted checkpoint or cache, a full disk, a
second sweep. Each must end in a state the next run recovers from, with nothing lost that had
finished, no code executed from a file, and a one-line account of what happened."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dkbench.cli import main
from dkbench.errors import RunInterrupted
from dkbench.runner.checkpointing import LAST
from dkbench.runner.run_folder import RunFolder
from tests.conftest import TINY_PROBE
from tests.robustness.test_resume import Killed, _kill_at


class _Planted:
    """Unpickling this runs code: what a hostile file would carry."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


# --- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_as_interrupted_and_the_rerun_resumes(tmp_path, sig):
    """`scancel` / a pre-empted node (SIGTERM) and Ctrl-C (SIGINT): the run stops within moments,
    says `interrupted` (not `running` forever, not `failed`), exits 128 + n with one line, keeps
    its last.ckpt; the same command then resumes it and finishes."""
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("DKBENCH_TRACEBACK", None)
    argv = [sys.executable, "-m", "dkbench.cli", "train", *TINY_PROBE, "trainer.max_epochs=30",
            "checkpoint.last_every_n_epochs=1"]
    # the command-line settings name the suite folder (adhoc@...: run_folder.variant_suffix)
    from dkbench.cli import _with_variant

    variant = next(a for a in _with_variant(argv[3:]) if a.startswith("variant=")).removeprefix("variant=")
    run = tmp_path / "runs" / f"adhoc{variant}" / "probe" / "tinycnn__baseline" / "seed_0"
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / LAST).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # honoured within seconds; the bound only guards a hang
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("dkbench train:")]
    assert len(lines) == 1 and sig.name in lines[0] and "resume" in lines[0] and "Traceback" not in err, err[-2000:]
    assert _status(run)["status"] == "interrupted" and _status(run)["signal"] == sig.name
    assert (run / "checkpoints" / LAST).exists() and not list((run / "checkpoints").glob("*.tmp"))
    if sig == signal.SIGTERM:  # the rerun resumes from last.ckpt and finishes (once is enough)
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Restoring states from the checkpoint" in done.stderr + done.stdout
        assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 30
        assert _status(run)["status"] == "done"


def test_a_sweep_stops_launching_cells_after_a_signal(tmp_path, capsys, monkeypatch):
    """A signal inside a cell: the sweep launches no further cell and exits 128 + n in one line."""
    import dkbench.runner.train as train_mod

    calls = []

    def interrupted(cfg, **kwargs):
        calls.append(cfg.paths.run_dir)
        raise RunInterrupted(signal.SIGTERM)

    monkeypatch.setattr(train_mod, "train", interrupted)
    code = main(["sweep", "suite=smoke", "suite.seeds=[0,1,2]", f"paths.root_dir={tmp_path}",
                 f"paths.runs_dir={tmp_path / 'runs'}", "ui.progress_bar=false"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and len(calls) == 1, (code, calls)
    message = [line for line in err.splitlines() if line.startswith("dkbench sweep:")]
    assert len(message) == 1 and "SIGTERM" in message[0] and "Traceback" not in err


def test_report_calls_an_interrupted_or_abandoned_run_interrupted(tmp_path):
    from dkbench.leaderboard.collect import read_cell

    run = RunFolder(tmp_path / "cell")
    run.path.mkdir()
    run.set_status("interrupted", "abc", signal="SIGTERM")
    assert read_cell(run.path)[:2] == ("incomplete", "interrupted by SIGTERM; rerun to resume")
    run.set_status("running", "abc")  # what kill -9 leaves behind
    assert read_cell(run.path)[:2] == ("incomplete", "interrupted (status.json still 'running')")


# --- damaged or planted files --------------------------------------------------------------------
def test_a_truncated_last_ckpt_is_set_aside_and_the_run_restarts(tiny_run, tmp_path, monkeypatch):
    """A last.ckpt cut short (a crash outside dkbench's atomic writes, a damaged disk) used to fail
    every rerun with "PytorchStreamReader failed reading zip archive"; it is renamed aside and the
    run trains from epoch 0."""
    overrides = ["trainer.max_epochs=3", "checkpoint.last_every_n_epochs=1"]
    _kill_at(monkeypatch, 1)
    with pytest.raises(Killed):
        tiny_run(*overrides)
    monkeypatch.undo()
    (last,) = (tmp_path / "runs").glob(f"*/*/*/seed_0/checkpoints/{LAST}")
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    metrics, run = tiny_run(*overrides)
    assert metrics["epochs_trained"] == 3 and _status(run)["status"] == "done"
    assert len(list((run / "checkpoints").glob(f"{LAST}.unreadable-*"))) == 1  # kept for inspection


def test_a_planted_roi_predictor_cache_runs_no_code_and_is_rebuilt(tiny_run, tmp_path):
    """roi_input loaded its cached ROI predictor with weights_only=False: a planted file under
    runs/.cache ran code. Now it is read tensors-only; an unreadable one is rebuilt."""
    quick = ["strategy=roi_input_predicted", "strategy.options.predictor_epochs=1"]
    tiny_run(*quick)
    (cache,) = (tmp_path / "runs" / ".cache" / "roi_input").glob("*.pt")
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": _Planted(marker)}, cache)
    metrics, run = tiny_run(*quick, "tag=@again")  # a new run folder, the same cache entry
    assert not marker.exists() and _status(run)["status"] == "done"
    assert torch.load(cache, weights_only=True)["state_dict"]  # rebuilt: plain tensors again


def test_a_planted_shape_prior_cache_runs_no_code(tmp_path):
    from dkbench.strategies.catalogue.shape_prior import ShapeAEConfig, _load

    marker = tmp_path / "PWNED"
    path = tmp_path / "prior.pt"
    torch.save({"config": _Planted(marker)}, path)
    assert _load(path, ShapeAEConfig(), "key") is None and not marker.exists()


def test_a_planted_weights_file_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """`backbone.weights=evil.pt` used to fall back to weights_only=False and run the file's code."""
    monkeypatch.delenv("DKBENCH_TRACEBACK", raising=False)
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Planted(marker)}, evil)
    code = main(["train", *TINY_PROBE, f"backbone.weights={evil}", f"paths.root_dir={tmp_path}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dkbench train:")]
    assert code == 2 and len(lines) == 1 and "never unpickles" in lines[0] and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("prefix", ["../../escape", "a/b", "..", "/abs", ""])
def test_cache_keys_are_plain_file_names(prefix):
    from dkbench.storage import content_key

    key = content_key(prefix, {"x": 1})
    assert "/" not in key and ".." not in key and not key.startswith(".")
    assert content_key(prefix, {"x": 1}) == key != content_key(prefix, {"x": 2})


# --- a full disk ---------------------------------------------------------------------------------
def test_disk_full_while_recording_leaves_a_recoverable_run(tiny_run, tmp_path, monkeypatch, capsys):
    """ENOSPC while the results are written: no DONE, no half-written file, status `failed` with
    the reason; once space is back the rerun finishes it (and the CLI says so in one line)."""
    real = RunFolder.write_json

    def full_disk(self, name, obj):
        if name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.file(name)))
        return real(self, name, obj)

    monkeypatch.setattr(RunFolder, "write_json", full_disk)
    monkeypatch.delenv("DKBENCH_TRACEBACK", raising=False)
    # variant= (empty): the plain folder that `tiny_run` composes for the rerun
    code = main(["train", *TINY_PROBE, f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}", "variant="])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dkbench train:")]
    assert code == 1 and len(lines) == 1 and "disk" in lines[0] and "Traceback" not in err, err[-2000:]
    (run,) = (tmp_path / "runs").glob("*/*/*/seed_0")
    assert not (run / "DONE").exists() and not list(run.glob(".*.tmp"))
    assert _status(run)["status"] == "failed" and "No space left" in _status(run)["error"]
    monkeypatch.setattr(RunFolder, "write_json", real)
    metrics, again = tiny_run()
    assert again == run and (run / "DONE").exists() and "test/auroc" in metrics
