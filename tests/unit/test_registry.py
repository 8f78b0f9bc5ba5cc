"""The registry imports only the module a lookup needs, and still lists everything.

Lookups run in fresh interpreters: the test process has usually imported the whole
catalogue already, which would hide an eager import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dkbench.registry import Registry, UnknownNameError


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lookup_imports_only_the_named_strategy():
    got = _fresh(
        "import json, sys\n"
        "from dkbench.strategies import STRATEGIES\n"
        "STRATEGIES.get('baseline')\n"
        "mods = [m for m in sys.modules if m.startswith('dkbench.strategies.catalogue.')]\n"
        "print(json.dumps({'mods': mods}))\n"
    )
    assert got["mods"] == ["dkbench.strategies.catalogue.baseline"]
    assert "dkbench.strategies.catalogue.curriculum" not in got["mods"]


def test_name_without_its_own_module_falls_back_to_the_full_scan():
    # `busi_seg` is registered by busi.py: no module of that name, so every reader loads.
    got = _fresh(
        "import json, sys\n"
        "from dkbench.data.registry import DATASETS\n"
        "entry = DATASETS.get('busi_seg')\n"
        "print(json.dumps({'ok': entry is not None, 'kvasir': 'dkbench.data.readers.kvasir' in sys.modules}))\n"
    )
    assert got == {"ok": True, "kvasir": True}


def test_listing_still_loads_every_module():
    got = _fresh(
        "import json\n"
        "from dkbench.strategies import STRATEGIES\n"
        "STRATEGIES.get('baseline')\n"
        "print(json.dumps(STRATEGIES.names()))\n"
    )
    assert {"baseline", "curriculum", "shape_prior", "roi_input"} <= set(got)


def test_unknown_name_lists_the_valid_ones():
    from dkbench.strategies import STRATEGIES

    with pytest.raises(UnknownNameError) as err:
        STRATEGIES.get("no_such_strategy")
    message = str(err.value)
    assert "\n" not in message
    assert "unknown strategy 'no_such_strategy'" in message
    assert "baseline" in message and "curriculum" in message
    assert "no_such_strategy" not in STRATEGIES


@pytest.mark.parametrize("name", ["../baseline", "a.b", "_private", ""])
def test_odd_names_never_reach_the_importer(name):
    # Not identifiers (or private): they must not become module paths, only a clean miss.
    reg: Registry = Registry("strategy", package="dkbench.strategies.catalogue")
    with pytest.raises(UnknownNameError):
        reg.get(name)


def test_registry_without_package_needs_no_import():
    reg: Registry = Registry("thing")
    reg.register("a")(object)
    assert reg.get("a") is object and "b" not in reg and reg.names() == ["a"]
