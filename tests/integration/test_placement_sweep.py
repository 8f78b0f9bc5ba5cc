"""A packed sweep through the real CLI, with placement faking two GPUs on CPU.

The CPU runs ignore the device they are given; what matters is that the joblib pool is sized
from `placement`, each concurrent run gets its own slot and thread share, and the run folders
carry the same config hash as an unplaced sweep (a rerun without placement skips them all).
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from tests.integration.test_sweep import SMOKE, cells, cli


def test_gpu_pack_sweep_places_runs_on_two_fake_devices(tmp_path):
    out = cli(tmp_path, "sweep", *SMOKE, "hydra/launcher=gpu_pack", "placement.devices=2",
              "placement.host_threads=4", "suite.seeds=[0,1]").stdout
    assert "2 done, 0 failed" in out
    assigned = {}
    for seed, run in cells(tmp_path).items():
        cfg = OmegaConf.load(run / "config.yaml")
        assigned[seed] = (cfg.placement.assigned.device, cfg.threads)
    # each run got a slot on one of the two fake devices and 4 // 2 host threads; which device is
    # timing-dependent (a job that starts after the other finished may take device 0 again), so
    # "distinct devices for concurrent jobs" is proven in tests/unit/test_placement.py instead
    assert set(assigned) == {"seed_0", "seed_1"} and all(d in ("0", "1") and t == 2 for d, t in assigned.values()), assigned
    slots = {p.name for p in (tmp_path / "runs/.placement").glob("*/slot-*.lock")}
    assert slots and slots <= {"slot-0-0.lock", "slot-1-0.lock"}, slots

    rerun = cli(tmp_path, "sweep", *SMOKE, "suite.seeds=[0,1]", "placement.devices=0").stdout
    assert "2 already done (skipped)" in rerun, "the config hash must not depend on the placement"
    assert all(json.loads((r / "status.json").read_text())["status"] == "done" for r in cells(tmp_path).values())
