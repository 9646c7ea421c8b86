"""Reproducible accuracy benchmark: preprocess a public dataset, train from scratch within a
wall-clock budget, test on its test split, and write results.json + results.md.

    python -m benchmarks.accuracy --dataset drive --source ../shared/datasets/DRIVE \\
        --budget-minutes 60

Protocol of the reported figures: native resolution, pixels inside the FOV (official masks for
DRIVE and HRF, estimated for CHASE_DB1), pooled over the test images, 1st annotator as reference,
threshold chosen on the validation images (never on the test images).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from vesselseg.cli import add_scales_argument, run_cli
from vesselseg.config import RECIPES_DIR, TrainConfig, find_recipe, load_config
from vesselseg.io import write_text_atomic
from vesselseg.outputs import new_folder

#: Where `--recipe NAME` looks: the package's recipes, then the experiments' ones.
RECIPE_FOLDERS = (RECIPES_DIR, Path(__file__).resolve().parents[1] / "experiments" / "recipes")


def recipe_file(recipe: str | Path | None, default: str) -> Path:
    """A recipe by path or by name (the package's recipes first, then experiments/recipes)."""
    return find_recipe(recipe or default, RECIPE_FOLDERS)
#: Published figures (F1 / AUC-ROC) for the results tables, as their papers report them (DRIVE's
#: 2nd observer and LWNet measured by this project's protocol; the papers' own protocols vary).
PUBLISHED = {
    "drive": [("2nd human observer", 0.7891, None), ("retina-unet", 0.816, None),
              ("IterNet", 0.8205, None), ("SA-UNet", 0.826, None), ("LWNet", 0.828, 0.981)],
    "chase": [("IterNet", 0.8073, 0.9851), ("SA-UNet", 0.8153, 0.9905)],
}


def run_benchmark(dataset: str, source: str | Path, out: str | Path,
                  budget_minutes: float | None = None, recipe: str | Path | None = None,
                  tta: bool = False, progress: bool = True,
                  scales: tuple[float, ...] = (1.0,)) -> dict:
    """Preprocess, train and test; returns the results dictionary (also written as JSON)."""
    from vesselseg.train import train

    out = Path(out)
    recipe_path = recipe_file(recipe, dataset)
    config = load_config(TrainConfig, recipe_path)
    data = prepare_data(dataset, source, out / "data" / dataset, config, progress)
    if budget_minutes is not None:
        config = replace(config, budget_minutes=budget_minutes)
    config = replace(config, data=[str(data)], runs_dir=str(out / "runs"))
    run = train(config, progress=progress).path
    choose_setting_threshold(run, tta, scales)
    results = {"dataset": dataset, "recipe": str(recipe_path), **training_facts(run),
               **evaluate_run(run, data, run / "tests" / "benchmark", tta, progress,
                              scales=scales)}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown_table(results))
    return results


def prepare_data(dataset: str, source: str | Path, data: Path, config: TrainConfig,
                 progress: bool = True) -> Path:
    """Preprocess a raw dataset as the recipe says (images without annotation are skipped)."""
    from vesselseg.preprocess import preprocess_dataset

    preprocess_dataset(dataset, source, data, replace(config.preprocess), progress=progress,
                       skip_missing=True)
    return data


def choose_setting_threshold(run: Path, tta: bool, scales: tuple[float, ...]) -> None:
    """A run the benchmark trained is tested with flip TTA or several scales at a threshold
    chosen on its validation images for that setting (averaging shifts the probabilities)."""
    from vesselseg.calibrate import calibrate
    from vesselseg.inference import setting_key

    if setting_key(tta, scales):
        calibrate(run, tta, scales)


def training_facts(run: Path) -> dict:
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    return {"run": str(run), "training_minutes": round(status["seconds"] / 60.0, 1),
            "epochs": status["epochs"]}


def evaluate_run(run: str | Path | None, data: Path, out: Path, tta: bool = False,
                 progress: bool = True, working_size: int | None = None,
                 scales: tuple[float, ...] = (1.0,)) -> dict:
    """Test a run (None: the shipped model) on the test split of a preprocessed folder, at
    `working_size` (default: the model's own) times each of `scales` (averaged)."""
    from vesselseg.inference import Segmenter
    from vesselseg.test import items_from_manifest, run_test

    options = {"tta": tta, "working_size": working_size, "scales": scales}
    segmenter = Segmenter.from_run(run, **options) if run else Segmenter.pretrained(**options)
    report = run_test(segmenter, items_from_manifest(data), out, progress=progress)
    return {"threshold": segmenter.threshold, "threshold_source": segmenter.threshold_source,
            "tta": tta, "scales": list(segmenter.scales),
            "compute_precision": segmenter.compute_precision,
            "working_size": segmenter.working_size, "training_size": segmenter.preprocess.size,
            "test_images": len(report.table) - 3,
            "tests": str(report.out), "pooled": report.pooled, "protocol": PROTOCOL}


PROTOCOL = ("native resolution, inside the FOV, pooled over the test images, 1st annotator, "
            "threshold chosen on validation images")
HEADER = ["| test set | model | Acc | Se | Sp | Precision | F1 | IoU | AUC-ROC | AUC-PR | clDice |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]


def metrics_row(test_set: str, model: str, pooled: dict) -> str:
    names = ("accuracy", "sensitivity", "specificity", "precision", "f1", "iou", "auc_roc",
             "auc_pr", "cldice")
    return f"| {test_set} | {model} | " + " | ".join(f"{pooled[n]:.4f}" for n in names) + " |"


def markdown_table(results: dict) -> str:
    lines = [*HEADER, metrics_row(f"{results['dataset']} ({results['test_images']} images)",
                                  f"vesselseg ({results['training_minutes']} min CPU)",
                                  results["pooled"])]
    for name, f1, auc in PUBLISHED.get(results["dataset"], []):
        auc_text = f"{auc:g}" if auc else ""  # as published, to their digits
        lines.append(f"| {results['dataset']} | {name} (published) | | | | | {f1:g} | | "
                     f"{auc_text} | | |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=("drive", "chase", "hrf"))
    parser.add_argument("--source", required=True, help="raw dataset folder")
    parser.add_argument("--budget-minutes", type=float,
                        help="wall-clock training budget (default: the recipe's)")
    parser.add_argument("--recipe",
                        help="recipe name or TrainConfig JSON file (default: the package's "
                             "recipe named DATASET; names are also looked up in "
                             "experiments/recipes)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    add_scales_argument(parser)
    parser.add_argument("--out", help="output folder (default: new folder in artifacts/benchmarks)")
    return parser


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else new_folder("artifacts/benchmarks", args.dataset)
    results = run_benchmark(args.dataset, args.source, out, args.budget_minutes, args.recipe,
                            args.tta, scales=args.scales)
    print(markdown_table(results))
    print(f"results: {out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
