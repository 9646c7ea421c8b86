"""`vesselseg inspect FILE`: what an export (or a run folder) says about itself.

Prints the record `vesselseg export` embeds (`metadata`): model name and version, the
input/output contract, the preprocessing, working size and tiling, and the threshold of every
inference setting; `--json` prints the record itself. Reading an ONNX or TFLite export needs no
TensorFlow. A run folder (or 'pretrained') shows the record its exports would carry.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import run_cli
from .metadata import PLAIN, describe_run, read_metadata


def record_of(target: str | Path) -> tuple[dict, str]:
    """(record, what it is) of an export file / SavedModel folder, or of a run folder."""
    from .runs import PRETRAINED_NAME, RunFolder

    path = Path(target)
    if str(target) == PRETRAINED_NAME or (path.is_dir() and (path / RunFolder.CONFIG).exists()):
        from .inference import export_size

        run = RunFolder.existing(target)
        config = run.config()
        facts = describe_run(run, "keras", export_size(config),
                             precision=f"{config.precision} as trained (exports: float32)")
        facts.pop("created", None)
        return facts, f"run folder {run.path}"
    return read_metadata(path), f"export {path}"


def describe(facts: dict, what: str) -> str:
    """The record as lines a person reads."""
    model, tiling = facts.get("model", {}), facts.get("tiling", {})
    pre = facts.get("preprocess", {})
    lines = [f"{what}",
             f"  model:         {model.get('name', '?')} {model.get('version', '')} "
             f"({model.get('architecture', '?')}, base {model.get('base_filters', '?')}, depth "
             f"{model.get('depth', '?')}; best.keras sha256 "
             f"{str(model.get('source_sha256', ''))[:16]}...)",
             f"  format:        {facts.get('format', '?')}, computes in "
             f"{facts.get('precision', '?')}; made by vesselseg "
             f"{facts.get('vesselseg_version', '?')}"
             + (f" on {facts['created']}" if facts.get("created") else "")]
    contract = facts.get("input", {}), facts.get("output", {})
    lines += [f"  input:         {contract[0].get('shape')} {contract[0].get('dtype', '')} "
              f"{contract[0].get('layout', '')}: {contract[0].get('values', '')}",
              f"  output:        {contract[1].get('shape')} {contract[1].get('dtype', '')}: "
              f"{contract[1].get('meaning', '')}",
              "  preprocessing: " + ", ".join(f"{key} {value}" for key, value in pre.items()
                                              if key not in ("augment", "val_fraction", "seed")),
              f"  working size:  {facts.get('working_size')} (model windows "
              f"{tiling.get('window')}, overlap {tiling.get('overlap')}, U-Net depth "
              f"{tiling.get('depth')})"]
    thresholds = facts.get("thresholds") or {}
    if thresholds:
        lines.append("  thresholds:    " + "; ".join(
            f"{name} {value:.4f}" + (" (default)" if name == PLAIN else "")
            for name, value in thresholds.items()))
        lines.append(f"                 ({facts.get('threshold_how', '')})")
    else:
        lines.append("  thresholds:    none recorded: 0.5")
    int8 = facts.get("int8")
    if int8:
        lines.append(f"  int8 check:    pooled F1 {int8['f1_int8']:.4f} against float32 "
                     f"{int8['f1_float32']:.4f} ({int8['f1_change']:+.4f}, allowed "
                     f"{int8['bar']:g}) on {int8['check']} ({int8['images']} images)")
    check = facts.get("verification", {}).get("max_abs_diff_vs_keras")
    if check:
        lines.append(f"  verified:      max abs probability diff vs Keras "
                     f"{max(check.values()):.2g}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg inspect",
        description="Show what an export made by vesselseg export carries: model name and "
                    "version, input/output contract, preprocessing, working size and tiling, "
                    "and the threshold of each inference setting (no TensorFlow needed for ONNX "
                    "and TFLite). A run folder or 'pretrained' shows the record its exports "
                    "would carry.")
    parser.add_argument("target", metavar="FILE",
                        help="an .onnx or .tflite file, a SavedModel folder, a run folder or "
                             "'pretrained'")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    return parser


def _main(args: argparse.Namespace) -> int:
    facts, what = record_of(args.target)
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        print(describe(facts, what), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
