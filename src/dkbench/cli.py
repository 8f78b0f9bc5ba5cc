"""`dkbench train | list …` — the command-line front door.

`train` hands the remaining arguments to Hydra unchanged, so every Hydra feature works:
overrides (`trainer.max_epochs=5`), `--cfg job`, `-m` multiruns with launcher plugins.
"""

from __future__ import annotations

import sys

USAGE = """usage: dkbench <command> [args]

commands:
  train [overrides]            one run, e.g. dkbench train dataset=breastmnist backbone=resnet18_28
  demo  [overrides]            the main job: short runs on the probe (+ BreastMNIST), offline
  list  datasets|backbones|strategies|experiments
                               print a registry (what `dataset=…` etc. accept)
"""


def _train() -> int:
    import hydra
    from omegaconf import DictConfig

    from dkbench.config import config_dir

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
    def main(cfg: DictConfig) -> None:
        from dkbench.runner.train import train

        train(cfg)

    main()
    return 0


def _list(what: str | None) -> int:
    from dkbench.listing import LISTERS

    if what not in LISTERS:
        print(f"usage: dkbench list {'|'.join(LISTERS)}", file=sys.stderr)
        return 2
    print(LISTERS[what]())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        sys.argv = [f"dkbench {command}", *rest]
        return _train()
    if command == "demo":
        from dkbench.runner.demo import run_demo

        run_demo(rest)
        return 0
    if command == "list":
        return _list(rest[0] if rest else None)
    print(f"unknown command '{command}'.\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
