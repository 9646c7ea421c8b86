"""Does the tf.data pipeline keep the processor busy? Training images/s at batch 4 on 512x512 with
the real pipeline (decode, cache, shuffle, augment, batch, prefetch) against the same steps on
a batch already in memory; prints the overhead (target: at most 10 %).

    python -m benchmarks.pipeline --data data/drive
"""
from __future__ import annotations

import argparse
import sys

from vesselseg.cli import run_cli


def _main(args: argparse.Namespace) -> int:
    from .speed import training_throughput

    figures = training_throughput(args.data, args.base_filters, steps=args.steps)
    overhead = figures["in_memory"] / figures["pipeline"] - 1
    print(f"in-memory tensors: {figures['in_memory']:.2f} img/s")
    print(f"tf.data pipeline:  {figures['pipeline']:.2f} img/s")
    print(f"pipeline overhead: {100 * overhead:.1f} % (target <= 10 %) "
          f"[{'met' if overhead <= 0.10 else 'NOT met'}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="preprocessed folder at 512x512")
    parser.add_argument("--base-filters", type=int, default=8,
                        help="U-Net width (default 8, the former v0.2 model's; the shipped "
                             "model is 32)")
    parser.add_argument("--steps", type=int, default=40,
                        help="timed training steps per source (default 40; short runs flatter "
                             "the pipeline, whose prefetch buffer hides its first steps)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
