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
    # `busi_seg` is registered by busi.py; without its line in the package's MODULES index, the
    # lookup finds no module of that name and loads every reader
    got = _fresh(
        "import json, sys\n"
        "import dkbench.data.readers as readers\n"
        "readers.MODULES.pop('busi_seg')\n"
        "from dkbench.data.registry import DATASETS\n"
        "entry = DATASETS.get('busi_seg')\n"
        "print(json.dumps({'ok': entry is not None, 'kvasir': 'dkbench.data.readers.kvasir' in sys.modules}))\n"
    )
    assert got == {"ok": True, "kvasir": True}


def test_indexed_names_import_only_their_module_and_a_tinycnn_run_needs_no_monai():
    got = _fresh(
        "import json, sys\n"
        "from dkbench.backbones import create_backbone\n"
        "from dkbench.data.registry import DATASETS\n"
        "from dkbench.backbones.registry import task_incompatibility\n"
        "create_backbone('tinycnn', in_chans=1, img_size=28)\n"
        "task_incompatibility('tinycnn', 'binary')\n"
        "DATASETS.get('busi_seg')\n"
        "zoo = sorted(m for m in sys.modules if m.startswith('dkbench.backbones.zoo.'))\n"
        "readers = sorted(m for m in sys.modules if m.startswith('dkbench.data.readers.'))\n"
        "print(json.dumps({'zoo': zoo, 'readers': readers, 'monai': 'monai' in sys.modules}))\n"
    )
    assert got == {"zoo": ["dkbench.backbones.zoo.tiny"], "readers": ["dkbench.data.readers.busi"], "monai": False}


@pytest.mark.parametrize("package, registry", [("dkbench.backbones.zoo", "dkbench.backbones.registry:BACKBONES"),
                                               ("dkbench.data.readers", "dkbench.data.registry:DATASETS")])
def test_module_index_names_the_module_that_registers_each_entry(package, registry):
    """MODULES is a second record of where names live: it must agree with the modules."""
    import importlib

    index = importlib.import_module(package).MODULES
    module_name, attr = registry.split(":")
    reg = getattr(importlib.import_module(module_name), attr)
    reg.names()  # load everything
    for name, module in index.items():
        if name.startswith("timm_") and name not in reg:  # the optional extra is absent here
            continue
        entry = reg.get(name)
        assert entry.__module__ == f"{package}.{module}", (name, entry.__module__)
    unindexed = [n for n in reg.names() if n not in index and reg.get(n).__module__ != f"{package}.{n}"]
    assert not unindexed, f"add these to {package}.MODULES: {unindexed}"


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
