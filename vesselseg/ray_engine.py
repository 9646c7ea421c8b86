"""`vesselseg eval --engine ray`: the same eval spread over a pool of Ray actors.

Why Ray Data: a cohort of 100,000 photos needs more than one process (a GPU server's several
GPUs, a cluster's nodes), and Ray Data streams a dataset through an actor pool with
backpressure, restarts dead actors and retries their tasks. Only the photos' paths travel
through Ray: each actor loads the Segmenter once (the same model and settings as the
single-process path, built by the same function), reads its photos from the shared file system,
and writes their PNGs atomically itself through `eval.finish_photo`, the per-photo code both
engines share, so the files and rows are the same. Each actor returns its rows; the driver
alone appends them to results.csv (one write + fsync each, as the single-process path), keyed
by photo, so a task that Ray retries after its actor died never writes a row twice; the retry
rewrites the same PNGs atomically. A photo that fails is a failed row; a task that keeps
killing its actor (RETRIES times) makes failed rows of its photos, and the run goes on.

`import ray` happens here only, and only when this engine runs: Ray is an optional extra
(`pip install "vesselseg[ray]"`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, VesselsegError

#: How often Ray retries a task whose actor died (killed, out of memory) before its photos
#: become failed rows; dead actors are always restarted.
RETRIES = 3
#: Photos per Ray task: a task is the unit Ray retries, so small tasks redo little after a
#: crash, and enough to keep an actor busy between the driver's hand-outs.
TASK_PHOTOS = 8
#: The object store of a local Ray: only paths and rows pass through it.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
INSTALL_HINT = 'the Ray engine needs Ray: pip install "vesselseg[ray]" (or "ray[data]")'


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` None starts a local Ray on this machine (or uses the one
    this process already started); else the cluster at `address` ("auto", "ray://host:10001").
    `threads_per_worker` caps TensorFlow's threads in each actor (default on a local Ray: this
    machine's cores shared out, so the workers do not oversubscribe them)."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None
    threads_per_worker: int | None = None
    #: Show Ray's and the workers' own log lines (eval -v); else only errors reach the
    #: terminal (a photo's error is its row, and eval prints it).
    verbose: bool = False
    #: For tests: a file path; the first actor call that creates it SIGKILLs its own process
    #: after writing one photo's files (a worker that dies mid-task).
    kill_marker: str | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"--workers: {self.workers} must be at least 1")
        if self.gpus_per_worker < 0 or not math.isfinite(self.gpus_per_worker):
            raise ConfigError(f"--gpus-per-worker: {self.gpus_per_worker} must be 0 or more")


def import_ray():
    """The ray module, or a ConfigError (exit 2) saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray core
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[object]:
    """Ray for the block: joins `options.address`, else starts a local Ray sized to this machine
    with a small object store and no dashboard, and shuts down what it started. A Ray this
    process already runs (a notebook, a test module) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    if not options.verbose:  # Ray's C++ side: warnings about its own defaults, not ours
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = {"include_dashboard": False, "log_to_driver": options.verbose,
             "logging_level": logging.INFO if options.verbose else logging.ERROR}
    if options.address:
        ray.init(address=options.address, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 **quiet)
    if not options.verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        if not options.address:
            _check_local_gpus(ray, options)
        yield ray
    finally:
        ray.shutdown()


def _check_local_gpus(ray, options: RayOptions) -> None:
    """A local pool asking for GPUs this machine lacks would wait for them forever."""
    wanted = options.workers * options.gpus_per_worker
    present = ray.cluster_resources().get("GPU", 0)
    if wanted > present:
        raise ConfigError(f"--workers {options.workers} x --gpus-per-worker "
                          f"{options.gpus_per_worker:g} asks for {wanted:g} GPUs and this "
                          f"machine has {present:g}; use fewer workers, or join a cluster "
                          f"with --address")


def _threads(options: RayOptions) -> int | None:
    if options.threads_per_worker:
        return options.threads_per_worker
    if options.address is None:  # a local Ray: this machine's cores shared out
        return max(1, (os.cpu_count() or 1) // options.workers)
    return None  # a cluster: TensorFlow's default on each node


def _cpus(options: RayOptions, threads: int | None) -> float:
    """The CPUs Ray reserves per worker: on a local Ray, the cores shared out (a fraction when
    there are more workers than cores, so that every worker of the pool can start)."""
    if options.address is None:
        return (os.cpu_count() or 1) / options.workers
    return float(threads or 1)


class PhotoWorker:
    """A Ray actor: loads the Segmenter once, then segments the photos of each task it gets."""

    def __init__(self, make_segmenter: Callable, out: str, columns: list[str], morphology,
                 cwd: str, threads: int | None = None, kill_marker: str | None = None):
        with contextlib.suppress(OSError):  # relative paths mean what they meant to the driver
            os.chdir(cwd)
        if threads:  # before TensorFlow starts its thread pools in this process
            for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
                os.environ[name] = str(threads)
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        from .process import limit_malloc_arenas

        limit_malloc_arenas()
        self.segmenter = make_segmenter()
        self.out, self.columns, self.morphology = Path(out), list(columns), morphology
        self.kill_marker = kill_marker
        if morphology.enabled:  # numba compiles skan's code once per actor
            from .morphology import warm_up

            warm_up()

    def __call__(self, batch: dict) -> dict:
        from .io import read_image
        from .photo_outputs import finish_photo

        images = [str(x) for x in batch["image"]]
        outputs = {key: json.loads(str(names)) for key, names in zip(images, batch["outputs"])}
        sizes = dict(zip(images, (float(x) for x in batch["pixel_size_um"])))
        ids = dict(zip(images, (str(x) for x in batch["id"])))
        photos: dict[str, object] = {}

        def load(key: str):
            photos[key] = read_image(key)
            return photos[key], None

        rows = []
        for key, prediction in self.segmenter.predict_many(images, load):
            size = sizes[key]
            result = finish_photo(
                Path(key), photos.pop(key, None), prediction,
                {kind: Path(path) for kind, path in outputs[key].items()}, self.out,
                self.segmenter, self.columns, self.morphology,
                pixel_size_um=None if math.isnan(size) else size, photo_id=ids[key] or None)
            rows.append(json.dumps(result.row, allow_nan=True))
            self._maybe_die()
        return {"image": images, "row": rows}

    def _maybe_die(self) -> None:
        """The test hook of RayOptions.kill_marker: die like an out-of-memory kill, once."""
        if not self.kill_marker:
            return
        try:
            os.close(os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def segment_images(make_segmenter: Callable, inputs, out: str | Path, options: RayOptions,
                   overwrite: bool = False, resume: bool = False, quiet: bool = True,
                   on_result=None, morphology=None, keep_results: bool = True) -> list:
    """`eval.segment_images` on a Ray actor pool: the same files and rows (in the order photos
    finish), failures as rows, `resume` skipping photos with a row. `make_segmenter` is a
    picklable function returning the Segmenter (each actor calls it once)."""
    from .console import progress
    from .photo_outputs import EvalResult, Inputs, MorphologyOptions, start_results

    morphology = morphology or MorphologyOptions()
    out = Path(out)
    if not isinstance(inputs, Inputs):
        inputs = Inputs(list(inputs), [], {})
    names, table, todo = start_results(inputs, out, overwrite, resume, morphology)
    results: list = []
    if not todo:
        return results
    written: set[str] = set()

    def record(row: dict) -> None:
        key = row[table.key]
        if key in written:  # a retried task's second answer
            return
        written.add(key)
        row = {column: row.get(column) for column in table.columns}
        table.append(row)
        path = Path(row["image"])
        failed = row["status"] != "done"
        result = EvalResult(path, {} if failed else names[path],
                            None if failed else row["vessel_density"],
                            row["error"] or None, row)
        if on_result is not None:
            on_result(result)
        if keep_results:
            results.append(result)

    with ray_session(options) as ray:
        items = [{"image": str(path),
                  "outputs": json.dumps({kind: str(p) for kind, p in names[path].items()}),
                  "pixel_size_um": inputs.pixel_sizes.get(path, math.nan),
                  "id": inputs.ids.get(path, "")} for path in todo]
        dataset = _pipeline(ray, items, make_segmenter, out, table.columns, morphology,
                            options)
        rows = (json.loads(row["row"]) for row in dataset.iter_rows())
        try:
            for row in progress(rows, total=len(todo), desc="eval", quiet=quiet):
                record(row)
        except (VesselsegError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's own failure, e.g. no worker could start
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise VesselsegError(f"Ray stopped the run ({type(exc).__name__}: {reason}); the "
                                 f"{len(written)} finished row(s) are kept in {table.path}: fix "
                                 f"the cause and rerun with --resume") from exc
    lost = [path for path in todo if str(path) not in written]
    for path in lost:  # tasks whose actor died RETRIES + 1 times: their photos failed
        from .photo_outputs import failed_row

        record(failed_row(path, table.columns, inputs, f"{path}: the Ray worker segmenting it "
                                                      f"died {RETRIES + 1} times (out of "
                                                      f"memory?)"))
    return results


def _pipeline(ray, items: list[dict], make_segmenter: Callable, out: Path, columns: list[str],
              morphology, options: RayOptions):
    """The Ray Data pipeline: items -> actor pool -> rows, streamed."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    # a task whose actor died RETRIES + 1 times is skipped (its photos become failed rows),
    # not the end of the whole run
    # tasks of TASK_PHOTOS, fewer when there are few photos, so that every worker gets some
    per_task = max(1, min(TASK_PHOTOS, math.ceil(len(items) / options.workers)))
    blocks = math.ceil(len(items) / per_task)
    context.max_errored_blocks = blocks
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    threads = _threads(options)
    with warnings.catch_warnings():  # max_restarts / max_task_retries have no named option
        warnings.simplefilter("ignore")
        return dataset.map_batches(
            PhotoWorker, batch_size=per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={"make_segmenter": make_segmenter, "out": str(out),
                                   "columns": list(columns), "morphology": morphology,
                                   "cwd": os.getcwd(), "threads": threads,
                                   "kill_marker": options.kill_marker},
            num_cpus=_cpus(options, threads), num_gpus=options.gpus_per_worker or None,
            max_restarts=-1, max_task_retries=RETRIES)
