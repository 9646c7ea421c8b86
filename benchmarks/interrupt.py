"""How long Ctrl-C takes to stop each long command, and what it leaves behind.

Each command runs as a user would start it, in a fresh process; once it is visibly working
(eval: its first result row; preprocess: its first written samples; train: its first finished
epoch) it gets SIGINT, as a terminal sends on Ctrl-C. Printed per command and repeat: the seconds
from the signal to the process's exit, its exit status (130 expected) and the temporary `.part`
files left in its output (0 expected). The issue's bar: within a second or two.

    python -m benchmarks.interrupt --drive ../shared/datasets/DRIVE \
        --hrf ../shared/datasets/HRF [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: The issue's bar for Ctrl-C, in seconds.
TARGET_SECONDS = 2.0


def _data_rows(table: Path) -> int:
    return max(table.read_text().count("\n") - 1, 0) if table.exists() else 0


def _pngs(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png")) if folder.exists() else 0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_once(command: list[str], working: Callable[[], bool], out: Path,
                   timeout: float = 600.0) -> dict:
    """Start `command`, send SIGINT once `working()` is true, and time the exit."""
    # A shell's background job starts with SIGINT ignored, and Python keeps it ignored: give
    # the command the default a terminal gives it, so that SIGINT is Ctrl-C.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_default_sigint)
    deadline = time.monotonic() + timeout
    while not working():
        if process.poll() is not None:
            if process.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode})")
            return {"seconds": None, "exit": 0, "part_files": 0, "note": "ended before SIGINT"}
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{' '.join(command)}: not working after {timeout:.0f} s")
        time.sleep(0.05)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    seconds = time.monotonic() - sent
    parts = sum(1 for _ in out.parent.rglob("*.part")) if out.parent.exists() else 0
    return {"seconds": seconds, "exit": code, "part_files": parts}


def _commands(drive: Path, hrf: Path, data: Path, work: Path
              ) -> dict[str, tuple[list[str], Callable[[], bool], Path]]:
    python = [sys.executable, "-m", "vesselseg"]
    eval_out, pre_out = work / "eval" / "out", work / "pre" / "out"
    run_dir = work / "runs"
    return {
        "eval (shipped model, 20 DRIVE photos)": (
            [*python, "eval", str(drive / "test" / "images"), "--out", str(eval_out)],
            lambda: _data_rows(eval_out / "results.csv") >= 1, eval_out),
        "preprocess (HRF, 45 photos)": (
            [*python, "preprocess", "--dataset", "hrf", "--source", str(hrf), "--out",
             str(pre_out)],
            lambda: _pngs(pre_out.parent) >= 4, pre_out),
        "train (DRIVE, 256 px, small U-Net)": (
            [*python, "train", "--data", str(data), "--runs-dir", str(run_dir), "--epochs",
             "50", "--steps-per-epoch", "4", "--batch-size", "2", "--base-filters", "8"],
            lambda: any(_data_rows(p) >= 1 for p in run_dir.glob("*/history.csv")), run_dir),
    }


def measure(drive: Path, hrf: Path, repeats: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vesselseg-interrupt-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "vesselseg", "preprocess", "--dataset", "drive",
                        "--source", str(drive), "--out", str(work / "data"), "--size", "256",
                        "-q"], check=True)
        for repeat in range(repeats):
            commands = _commands(drive, hrf, work / "data", work / f"r{repeat}")
            for name, (command, working, out) in commands.items():
                result = interrupt_once(command, working, out)
                results.setdefault(name, []).append(result)
                if result["seconds"] is None:
                    print(f"{name}, repeat {repeat + 1}: finished before SIGINT", flush=True)
                    continue
                print(f"{name}, repeat {repeat + 1}: stopped {result['seconds']:.2f} s after "
                      f"SIGINT, exit {result['exit']}, {result['part_files']} .part files",
                      flush=True)
    return results


def summary_table(results: dict[str, list[dict]]) -> str:
    lines = ["| command | Ctrl-C to exit, median (max) | exit status | .part files left |",
             "|---|---|---|---|"]
    for name, runs in results.items():
        runs = [r for r in runs if r["seconds"] is not None]
        if not runs:
            lines.append(f"| {name} | finished before SIGINT | | |")
            continue
        seconds = [r["seconds"] for r in runs]
        lines.append(f"| {name} | {statistics.median(seconds):.2f} s ({max(seconds):.2f} s) | "
                     f"{', '.join(sorted({str(r['exit']) for r in runs}))} | "
                     f"{sum(r['part_files'] for r in runs)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interrupt",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--drive", type=Path, default=Path("../shared/datasets/DRIVE"),
                        help="the DRIVE folder (default ../shared/datasets/DRIVE)")
    parser.add_argument("--hrf", type=Path, default=Path("../shared/datasets/HRF"),
                        help="the HRF folder, for preprocess (default ../shared/datasets/HRF)")
    parser.add_argument("--repeats", type=int, default=3, help="interruptions per command")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = measure(args.drive, args.hrf, args.repeats)
    print()
    print(summary_table(results))
    worst = max((r["seconds"] for runs in results.values() for r in runs
                 if r["seconds"] is not None), default=0.0)
    print(f"\nslowest stop {worst:.2f} s (target <= {TARGET_SECONDS:g} s): "
          f"{'met' if worst <= TARGET_SECONDS else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
