"""The shipped pretrained model: train it again from its recipe and test it on every public test
set (experiments.release ships a run as the package's model).

    # test the shipped model (or --run RUN) on the DRIVE, CHASE_DB1 and HRF test images
    python -m benchmarks.pretrained --datasets ../shared/datasets
    # retrain it from vesselseg/recipes/pretrained.json first, then test the new run
    python -m benchmarks.pretrained --datasets ../shared/datasets --train

Training uses the training images of DRIVE (official split), CHASE_DB1 (first 20) and HRF
(numbers 01-05 of each group); a seeded 15 % of each is held out for validation (the threshold,
and the checkpoint with "keep": "best"). Their test images are never seen. The shipped model is
tested at its default precision (bfloat16 on CPU-only machines with bf16 units), a --run or
--train model as trained; results.json records each test's compute_precision. Results:
results.json and results.md in --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from vesselseg.cli import add_scales_argument, run_cli
from vesselseg.config import TrainConfig, load_config
from vesselseg.errors import ConfigError, DatasetError
from vesselseg.io import write_text_atomic
from vesselseg.outputs import new_folder

from .accuracy import (
    HEADER,
    PROTOCOL,
    choose_setting_threshold,
    evaluate_run,
    metrics_row,
    prepare_data,
    recipe_file,
    training_facts,
)

#: Dataset reader name -> its folder name in the shared datasets folder.
FOLDERS = {"drive": "DRIVE", "chase": "CHASEDB1", "hrf": "HRF"}


def preprocess_all(datasets: Path, out: Path, config: TrainConfig,
                   progress: bool = True) -> dict[str, Path]:
    folders = {}
    for name, folder in FOLDERS.items():
        if not (datasets / folder).is_dir():
            raise DatasetError(f"{datasets / folder}: dataset folder not found")
        folders[name] = prepare_data(name, datasets / folder, out / "data" / name, config,
                                     progress)
    return folders


def run_pretrained_benchmark(datasets: str | Path, out: str | Path, run: str | Path | None = None,
                             train_new: bool = False, recipe: str | Path | None = None,
                             tta: bool = False, progress: bool = True,
                             init_from: str | None = None,
                             working_size: int | None = None,
                             scales: tuple[float, ...] = (1.0,)) -> dict:
    """Test the shipped model (or `run`, or a newly trained one) on each dataset's test split;
    `init_from` (a run or "pretrained") makes the new one a fine-tuning of it; `working_size`
    overrides the model's own size for the tests, `scales` averages several magnifications."""
    from vesselseg.finetune import finished_run
    from vesselseg.train import train

    if init_from:
        finished_run(init_from)  # a wrong folder fails now, not after preprocessing
    out = Path(out)
    recipe_path = recipe_file(recipe, "pretrained")
    config = load_config(TrainConfig, recipe_path)
    folders = preprocess_all(Path(datasets), out, config, progress)
    results: dict = {"recipe": str(recipe_path), "protocol": PROTOCOL, "tests": {}}
    if train_new:
        config = replace(config, data=[str(f) for f in folders.values()],
                         runs_dir=str(out / "runs"), init_from=init_from or config.init_from)
        run = train(config, progress=progress).path
        choose_setting_threshold(run, tta, scales)
        results.update(training_facts(run))
    results["model"] = str(run) if run else "shipped pretrained model"
    for name, data in folders.items():
        tests = new_folder((Path(run) if run else out) / "tests", name)
        results["tests"][name] = evaluate_run(run, data, tests, tta, progress, working_size,
                                              scales)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown_table(results))
    return results


def results_label(results: dict) -> str:
    return ("vesselseg pretrained" if results["model"] == "shipped pretrained model"
            else f"run {Path(results['model']).name}")


def markdown_table(results: dict) -> str:
    lines = list(HEADER)
    for name, test in results["tests"].items():
        size = test.get("working_size", test.get("training_size"))
        lines.append(metrics_row(f"{FOLDERS[name]} ({test['test_images']} images)",
                                 results_label(results) + (" + TTA" if test["tta"] else "")
                                 + scales_label(test.get("scales", [1.0]))
                                 + (f" at {size}" if size != test.get("training_size") else ""),
                                 test["pooled"]))
    return "\n".join(lines) + "\n"


def scales_label(scales: list[float]) -> str:
    return "" if list(scales) == [1.0] else " + scales " + ",".join(f"{x:g}" for x in scales)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrained",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="../shared/datasets",
                        help="folder holding DRIVE/, CHASEDB1/ and HRF/ (default "
                             "../shared/datasets)")
    parser.add_argument("--run", help="test this run instead of the shipped model")
    parser.add_argument("--train", action="store_true",
                        help="train a new model from the recipe first, then test it")
    parser.add_argument("--recipe",
                        help="recipe name or TrainConfig JSON file (default: pretrained, the "
                             "shipped model's recipe)")
    parser.add_argument("--init-from", metavar="RUN",
                        help="with --train: fine-tune RUN (or 'pretrained') instead of starting "
                             "from random weights")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    add_scales_argument(parser)
    parser.add_argument("--working-size", type=int, metavar="N",
                        help="test with the FOV crop at NxN (default: the model's working size)")
    parser.add_argument("--out", help="output folder (default: new folder in artifacts/benchmarks)")
    return parser


def _main(args: argparse.Namespace) -> int:
    if args.init_from and not args.train:
        raise ConfigError("--init-from only applies with --train")
    out = Path(args.out) if args.out else new_folder("artifacts/benchmarks", "pretrained")
    results = run_pretrained_benchmark(args.datasets, out, args.run, args.train, args.recipe,
                                       args.tta, init_from=args.init_from,
                                       working_size=args.working_size, scales=args.scales)
    print(markdown_table(results))
    print(f"protocol: {PROTOCOL}\nresults: {out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
