"""`vesselseg compare RUN [RUN ...]`: runs side by side: the settings in which they differ, how
their training went, and the pooled metrics of their latest test on each data set.

The latest test of a run is the newest RUN/tests/*/summary.json per data set (for the shipped
model, artifacts/tests/*pretrained*/ or --tests). `--plot` draws the metrics as grouped bars.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .cli import run_cli
from .errors import InputError
from .runs import RunFolder

#: Pooled test metrics shown by default (any of evaluation.METRIC_NAMES with --metrics).
DEFAULT_METRICS = ("f1", "auc_roc", "auc_pr", "sensitivity", "specificity", "cldice")
#: The file types --plot can write (matplotlib's, without its backend-specific ones).
FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")
#: Training facts from status.json.
STATUS_KEYS = ("state", "epochs", "seconds", "threshold")


def flat_settings(config) -> dict:
    """A TrainConfig as flat keys: preprocess.size, augment.window..."""
    flat = {}
    for key, value in asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = " ".join(value) if isinstance(value, list) else value
    return flat


def latest_tests(run: RunFolder, tests_dir: str | Path = "artifacts/tests") -> dict[str, dict]:
    """The newest test summary of `run` per data set: {data label: summary}."""
    if run.is_shipped:
        folders = sorted(Path(tests_dir).glob("*pretrained*"))
    else:
        folders = sorted((run.path / RunFolder.TESTS).glob("*"))
    latest: dict[str, dict] = {}
    for folder in folders:  # names start with a UTC timestamp: later ones replace earlier
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise InputError(f"{summary_path}: unreadable test summary ({exc})") from None
        if isinstance(summary, dict) and isinstance(summary.get("pooled"), dict):
            label = f"{summary.get('data', folder.name)} [{summary.get('split', 'test')}]"
            latest[label] = summary
    return latest


def compare_runs(runs: list[str | Path], metrics: tuple[str, ...] = DEFAULT_METRICS,
                 all_settings: bool = False, tests_dir: str | Path = "artifacts/tests"
                 ) -> pd.DataFrame:
    """One column per run; rows: settings (only those that differ, unless `all_settings`),
    training facts, then `<data set>: <metric>` of each run's latest test."""
    folders = [RunFolder.existing(run) for run in runs]
    names = _column_names(folders)
    settings = {name: flat_settings(folder.config()) for name, folder in zip(names, folders)}
    keys = sorted({key for values in settings.values() for key in values})
    rows: dict[str, dict] = {}
    for key in keys:
        values = [settings[name].get(key) for name in names]
        if all_settings or len({json.dumps(v, default=str) for v in values}) > 1:
            rows[key] = dict(zip(names, values))
    for key in STATUS_KEYS:
        rows[f"status.{key}"] = {name: folder.status().get(key)
                                 for name, folder in zip(names, folders)}
    tests = {name: latest_tests(folder, tests_dir) for name, folder in zip(names, folders)}
    labels = sorted({label for found in tests.values() for label in found})
    for label in labels:
        for metric in metrics:
            rows[f"{label}: {metric}"] = {
                name: tests[name].get(label, {}).get("pooled", {}).get(metric) for name in names}
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


def _column_names(folders: list[RunFolder]) -> list[str]:
    names: list[str] = []
    for folder in folders:
        name = "pretrained" if folder.is_shipped else folder.path.name
        names.append(name if name not in names else f"{name} ({len(names) + 1})")
    return names


def plot_metrics(table: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars: one group per `<data set>: <metric>` row, one bar per run."""
    import numpy as np

    from .plots import new_figure, save_figure

    # a value that is not a number (a hand-edited summary.json) is drawn as missing
    metric_rows = table[[":" in str(index) for index in table.index]].apply(
        pd.to_numeric, errors="coerce").astype(float)
    if metric_rows.empty or metric_rows.isna().all().all():
        raise InputError("no test results to plot: run `vesselseg test` on the runs first")
    figure, (axis,) = new_figure(1, (max(6.0, 0.9 * len(metric_rows) * len(table.columns)), 4.5))
    width = 0.8 / len(table.columns)
    positions = np.arange(len(metric_rows))
    for index, run in enumerate(table.columns):
        axis.bar(positions + index * width, metric_rows[run].to_numpy(), width, label=run)
    axis.set_xticks(positions + 0.4 - width / 2, metric_rows.index, rotation=30, ha="right",
                    fontsize=8)
    axis.set_ylim(max(0.0, float(np.nanmin(metric_rows.to_numpy())) - 0.05), 1.0)
    axis.set_ylabel("pooled over the test images")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg compare",
        description="Runs side by side: the settings that differ, how training went and the "
                    "pooled metrics of each run's latest test per data set.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders (or 'pretrained', the shipped model)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help=f"comma-separated pooled metrics (default: "
                             f"{','.join(DEFAULT_METRICS)})")
    parser.add_argument("--all-settings", action="store_true",
                        help="show every setting, not only those that differ")
    parser.add_argument("--tests-dir", default="artifacts/tests",
                        help="where the shipped model's test results are (default: "
                             "artifacts/tests)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the metrics as grouped bars")
    parser.add_argument("--out", metavar="CSV", help="also write the table as CSV")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser


def _main(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .evaluation import METRIC_NAMES

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"--metrics: unknown {', '.join(unknown)}; valid: "
                          f"{', '.join(METRIC_NAMES)}")
    if args.plot:
        suffix = Path(args.plot).suffix.lower().lstrip(".")
        if suffix and suffix not in FIGURE_FORMATS:
            raise ConfigError(f"--plot {args.plot}: {suffix!r} is not a figure format; use one "
                              f"of {', '.join(FIGURE_FORMATS)}")
    table = compare_runs(args.runs, metrics, args.all_settings, args.tests_dir)
    for path in (args.out, args.plot):
        if path and Path(path).exists():
            raise InputError(f"{path} already exists; choose another name")
    if args.out:
        from .io import write_text_atomic

        write_text_atomic(args.out, table.to_csv())
    if args.plot:
        plot_metrics(table, args.plot)
    if args.json:
        print(table.to_json(orient="columns", indent=2))
    else:
        with pd.option_context("display.max_rows", None, "display.width", 200,
                               "display.float_format", "{:.4f}".format):
            print(table.to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
