"""`python -m experiments.release RUN`: ship a finished run as the package's pretrained model.

Copies the run's model (weights only: the checkpoint's optimizer state is dead weight, 2/3 of the
file), config, thresholds, status and history into vesselseg/pretrained/, keeping the model card.
The copy goes through a staging folder, so a failed release leaves the old model whole. Then
check that vesselseg/recipes/pretrained.json still describes the shipped model (a test does).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from vesselseg.cli import run_cli
from vesselseg.runs import PRETRAINED_DIR, RunFolder

#: Always shipped; then those the run has: a trained run's history, a joined run's members.
SHIPPED_FILES = (RunFolder.MODEL, RunFolder.CONFIG, RunFolder.THRESHOLD, RunFolder.STATUS)
SHIPPED_IF_PRESENT = (RunFolder.HISTORY, "ensemble.json")


def ship(run: str | Path, target: str | Path = PRETRAINED_DIR, version: str = "") -> Path:
    """Copy a finished run's model files into `target` (the package's pretrained folder). The
    model is saved from Keras's own layers (`model.save_portable`), so it loads with plain
    Keras; `version` (e.g. v0.8) goes into status.json for every result to record."""
    import json

    from vesselseg.backends import load_keras_model
    from vesselseg.model import save_portable

    run = RunFolder.named(run).require_finished("release")
    target = Path(target)
    staging = target.with_name(target.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED_FILES + tuple(n for n in SHIPPED_IF_PRESENT if (run.path / n).exists()):
        if name == RunFolder.MODEL:
            save_portable(load_keras_model(run.model_path), staging / name)
        elif name == RunFolder.STATUS:
            status = json.loads((run.path / name).read_text(encoding="utf-8"))
            status.update(model_name="vesselseg-pretrained", model_version=version or "unversioned")
            (staging / name).write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
        else:
            shutil.copy2(run.path / name, staging / name)
    if (target / "MODEL_CARD.md").exists():
        shutil.copy2(target / "MODEL_CARD.md", staging / "MODEL_CARD.md")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="finished run folder to ship")
    parser.add_argument("--version", default="", help="the model's release name, e.g. v0.8")
    parser.add_argument("--target", default=str(PRETRAINED_DIR),
                        help="folder to ship into (default: vesselseg/pretrained)")
    return parser


def _main(args: argparse.Namespace) -> int:
    print(f"shipped {args.run} -> {ship(args.run, args.target, args.version)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
