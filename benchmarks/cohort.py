"""Cohort throughput: photos per second and peak memory of `vesselseg eval` over a CSV of many
photos, for the single-process engine and for a local Ray with 1 and 2 workers, in one run.

Each configuration runs the real command in a fresh process, as a user would. Memory is the
peak, over the run, of the summed memory of the command's whole process tree (the driver, and
for Ray its GCS server, raylet and worker processes), sampled every 0.25 s with psutil: RSS
(shared library pages counted once per process, an upper bound) and PSS (shared pages split
between the processes that map them: what the tree really takes). Throughput is the steady rate
between the first and the last row of results.csv (startup excluded: it does not grow with the
photos), and the wall time includes it. The CPU seconds of the command's processes and of every
other process on the machine meanwhile are printed too: a figure measured beside another busy
job (the "other" column well above zero) is not a clean one.

Photos: by default PHOTOS generated fundus photos of SIZE px (5 distinct ones under new names)
and a small U-Net trained on generated photos for a few steps, because the shipped model costs
~2.7 s per photo on a 2-core CPU (1,000 photos x 3 configurations would take over 2 hours).
`--run pretrained --source ../shared/datasets/DRIVE/test --photos 40` measures the shipped model
on real photos (each listed under new names through symbolic links; nothing is copied).

    python -m benchmarks.cohort                        # 1,000 generated photos, small model
    python -m benchmarks.cohort --paths 100000         # what a listed photo costs eval's memory
    python -m benchmarks.cohort --run pretrained --source ../shared/datasets/DRIVE/test \\
        --photos 40 --json cohort_pretrained.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIGS = {"local": [], "ray1": ["--engine", "ray", "--workers", "1"],
           "ray2": ["--engine", "ray", "--workers", "2"]}
SAMPLE_SECONDS = 0.25


def tree_memory(pid: int, cpu: dict | None = None) -> tuple[float, float]:
    """(RSS, PSS) in GB summed over process `pid` and all its descendants; `cpu`, when given,
    gets each process's CPU seconds so far (by pid)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    rss = pss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
            if cpu is not None:
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**30, pss / 2**30


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _rows(table: Path) -> int:
    try:
        with open(table, "rb") as handle:
            return max(0, handle.read().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def measure(command: list[str], table: Path, photos: int) -> dict:
    """Run `command` (an eval writing `table`), sampling its process tree's memory and the
    rows of results.csv; returns the figures."""
    start, busy = time.monotonic(), _busy_seconds()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_rss = peak_pss = 0.0
    cpu: dict[int, float] = {}
    first = last = None
    cpu_at_first = 0.0
    rows_at_first = rows = 0
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    while process.poll() is None:
        rss, pss = tree_memory(process.pid, cpu)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        now, count = time.monotonic(), _rows(table)
        if count and first is None:
            first, rows_at_first, cpu_at_first = now, count, sum(cpu.values())
        if count != rows:
            rows, last = count, now
        time.sleep(SAMPLE_SECONDS)
    wall = time.monotonic() - start
    busy = _busy_seconds() - busy
    reader.join()
    rows = _rows(table)
    if process.returncode != 0 or rows != photos:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}, {rows} of "
                         f"{photos} rows): {b''.join(errors).decode(errors='replace')[-2000:]}")
    steady = ((rows - rows_at_first) / (last - first)
              if first is not None and last is not None and last > first else None)
    # CPU per photo after the first row (start-up excluded): robust to other jobs on the
    # machine, and what one worker with a core to itself would need per photo
    cpu_per_photo = ((sum(cpu.values()) - cpu_at_first) / (rows - rows_at_first)
                     if first is not None and rows > rows_at_first else None)
    return {"photos": rows, "wall_s": round(wall, 1), "photos_per_s": steady and round(steady, 2),
            "photos_per_s_with_startup": round(rows / wall, 2),
            "seconds_to_first_row": round((first or wall) - start, 1),
            "peak_rss_gb": round(peak_rss, 2), "peak_pss_gb": round(peak_pss, 2),
            # CPU seconds of the command's processes (as last sampled) and of everything else
            # on the machine meanwhile: figures taken beside another busy job are not clean
            "cpu_s": round(sum(cpu.values()), 1),
            "cpu_s_per_photo": cpu_per_photo and round(cpu_per_photo, 4),
            "other_cpu_s": round(max(0.0, busy - sum(cpu.values())), 1)}


def write_generated_cohort(folder: Path, photos: int, size: int) -> Path:
    """`photos` generated photos (5 distinct ones repeated under new names) and their CSV."""
    from vesselseg.datasets import generate_fundus
    from vesselseg.io import write_png

    images = folder / "photos"
    images.mkdir(parents=True)
    samples = [generate_fundus(seed, size).image for seed in range(5)]
    for index in range(photos):
        write_png(images / f"p{index:05d}.png", samples[index % len(samples)])
    return _csv(folder, [f"photos/p{index:05d}.png" for index in range(photos)])


def link_real_cohort(folder: Path, source: Path, photos: int) -> Path:
    """`photos` symbolic links to the photos of `source` (or source/images), round-robin, and
    their CSV: the real photos under new names, nothing copied."""
    from vesselseg.io import is_image_file

    where = source / "images" if (source / "images").is_dir() else source
    originals = sorted(p.resolve() for p in where.iterdir() if is_image_file(p))
    if not originals:
        raise SystemExit(f"{where}: no photos")
    links = folder / "photos"
    links.mkdir(parents=True)
    names = []
    for index in range(photos):
        original = originals[index % len(originals)]
        name = f"p{index:05d}{''.join(original.suffixes)}"
        (links / name).symlink_to(original)
        names.append(f"photos/{name}")
    return _csv(folder, names)


def _csv(folder: Path, names: list[str]) -> Path:
    table = folder / "cohort.csv"
    table.write_text("path\n" + "".join(f"{name}\n" for name in names))
    return table


def train_small_run(folder: Path, size: int) -> Path:
    """A small U-Net (4 filters, depth 2) trained for 2 short epochs on generated photos."""
    from vesselseg.config import PreprocessConfig, TrainConfig
    from vesselseg.datasets import write_synthetic_dataset
    from vesselseg.preprocess import preprocess_dataset
    from vesselseg.train import train

    raw = write_synthetic_dataset(folder / "raw", count=10, size=size, seed=3)
    preprocess_dataset("folder", raw, folder / "data", PreprocessConfig(size=size,
                       val_fraction=0.2), progress=False)
    config = TrainConfig(data=[str(folder / "data")], runs_dir=str(folder / "runs"),
                         run_name="cohort-bench", base_filters=4, depth=2, epochs=2,
                         steps_per_epoch=3, batch_size=2, cache=True)
    return train(config, progress=False).path


def path_list_memory(count: int) -> dict:
    """What eval holds per listed photo whatever the engine: the photo list read from a CSV
    (with ids and pixel sizes) and the output names. Timed once, then its Python allocations
    counted by tracemalloc in a second pass (resident memory is too coarse inside a process
    that has freed memory before). The photos need not exist: eval reads them one at a time."""
    import tracemalloc

    from vesselseg.eval import collect_images, output_names

    with tempfile.TemporaryDirectory(prefix="vesselseg-paths-") as tmp:
        table = Path(tmp) / "cohort.csv"
        table.write_text("id,path,pixel_size_um\n" + "".join(
            f"site{i % 50}/p{i:07d},photos/site{i % 50}/p{i:07d}.jpg,6.5\n"
            for i in range(count)))
        start = time.monotonic()
        names = output_names(collect_images([table]), Path(tmp) / "out")
        seconds = time.monotonic() - start
        del names
        tracemalloc.start()
        try:
            inputs = collect_images([table])
            names = output_names(inputs, Path(tmp) / "out")
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(names) == count
    return {"paths": count, "memory_mb": round(held / 2**20), "bytes_per_photo":
            round(held / count), "seconds": round(seconds, 1)}


def markdown(results: dict, header: dict) -> str:
    lines = [f"{header['photos']} photos ({header['photo_kind']}), model {header['model']}, "
             f"{header['cpus']} CPU cores, morphology {'on' if header['morphology'] else 'off'}",
             "",
             "| engine | photos/s (steady) | photos/s (with start-up) | first row (s) | "
             "wall (s) | peak RSS, all processes (GB) | peak PSS, all processes (GB) | "
             "CPU s (other processes) | CPU s per photo |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, figures in results.items():
        lines.append(f"| {name} | {figures['photos_per_s']} | "
                     f"{figures['photos_per_s_with_startup']} | "
                     f"{figures['seconds_to_first_row']} | {figures['wall_s']} | "
                     f"{figures['peak_rss_gb']} | {figures['peak_pss_gb']} | "
                     f"{figures['cpu_s']} ({figures['other_cpu_s']}) | "
                     f"{figures['cpu_s_per_photo']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cohort",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1000,
                        help="photos in the cohort (default: %(default)s)")
    parser.add_argument("--size", type=int, default=96,
                        help="side of the generated photos and of the small model "
                             "(default: %(default)s)")
    parser.add_argument("--source", type=Path,
                        help="real photos to list under new names instead of generated ones "
                             "(a folder, or a dataset folder with images/)")
    parser.add_argument("--run", help="the model (a run folder or 'pretrained'; default: a "
                                      "small U-Net trained here on generated photos)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="engines to measure, from %(default)s")
    parser.add_argument("--no-morphology", action="store_true",
                        help="skip the vessel measurements (eval --no-morphology)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--paths", type=int, metavar="N",
                        help="instead: the memory eval holds for a CSV of N photo paths (the "
                             "list and the output names; no photo is read)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.paths:
        print(json.dumps(path_list_memory(args.paths)))
        return 0
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; valid: {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="vesselseg-cohort-") as tmp:
        tmp = Path(tmp)
        if args.source:
            table = link_real_cohort(tmp / "cohort", args.source, args.photos)
        else:
            table = write_generated_cohort(tmp / "cohort", args.photos, args.size)
        run = args.run or str(train_small_run(tmp / "model", args.size))
        header = {"photos": args.photos, "photo_kind": f"links to {args.source}" if args.source
                  else f"generated, {args.size} px", "model": args.run or
                  f"small U-Net (4 filters, depth 2) at {args.size} px",
                  "cpus": os.cpu_count(), "morphology": not args.no_morphology}
        results = {}
        for name in configs:
            out = tmp / f"out-{name}"
            command = [sys.executable, "-m", "vesselseg", "eval", str(table), "--run", run,
                       "--out", str(out), "-q", *CONFIGS[name],
                       *(["--no-morphology"] if args.no_morphology else [])]
            results[name] = measure(command, out / "results.csv", args.photos)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(markdown(results, header), end="")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
