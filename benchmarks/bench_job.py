"""The whole job against numerai-tools era by era and against the machine's floor, in one run.

    .venv/bin/python benchmarks/bench_job.py [--eras 20 --rows-per-era 5000 --features 705 --models 500]
                                             [--workers 2] [--memory-limit 2GiB] [--spill 0.4]
                                             [--malloc-trim-threshold 65536] [--reference-eras K] [--repeat 3]

On one generated dataset (every model predicting every era, no unresolved era):

(a) numerai-tools, the way a user would today: pandas reads the data and every
    submission, then ``reference.py`` computes every metric era by era (one
    BLAS thread). With ``--reference-eras K`` only K eras are computed and the
    scoring time is scaled to all eras (printed as such).
(b) ``numerai-dask score`` end to end — read, validate, score, reduce, publish —
    on a LocalCluster of ``--workers`` single-threaded processes that is
    already running (its start-up is printed apart). With ``--scaling`` also
    on one worker, for the throughput ratio; and on one worker with the whole
    cluster held to one core, which takes from the one worker what two take from
    each other: the cores the client, the scheduler, the nannies and the
    workers' event loops use.
(c) the floor: raw NumPy doing only the unavoidable work at the same sizes —
    reading every input file's bytes, one argsort per model column per ranking
    (two rankings: predictions and FNC residuals), one factorization per era
    (the features' Gram matrix, in float32 where that is exact, its Cholesky
    factor, its extreme eigenvalues by Lanczos and, the features being of full
    rank and well conditioned, its inverse from that factor, by the kernel's own
    functions: the basis applied through the features, never formed),
    and the GEMMs that project and measure exposures — with both cores busy doing only
    that: the arithmetic is timed in ``--workers`` processes at once, as the
    job's workers run. The ideal floor (one core's time divided by the number
    of workers) is printed too, with the ratio between the two: what a second
    core gives on this machine.

(b), (c) and the one-worker job are measured ``--repeat`` times, interleaved
(one of each per round, every job on a fresh cluster), and compared by their
medians; every run is printed. On this machine a process's first job also pays
for memory new to the machine (README), which the floor, measured later, did
not: one run each would compare unlike conditions, and noise of ±15 % besides.

Prints a table with (a)/(b), (b)/(c), each worker's peak resident memory (also
above its resident size before the job, its libraries loaded) and one era's
working set (the peak of NumPy allocations while one era is scored, traced in
this process; and in resident memory, what one era alone takes in a worker of
its own), and the largest difference between (a)'s and (b)'s
numbers. Then a model of Numerai scale from measured per-era costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from dask.utils import format_bytes, parse_bytes
from threadpoolctl import threadpool_limits

from numerai_dask.clusters import ClusterSpec, WorkerSettings, connect
from numerai_dask.pipeline import EraPlan, ScoringParams, read_era_rows, discover, run_job
from numerai_dask.report import new_run_id, publish_run
from numerai_dask.scoring import _cholesky_weights, _weights_product, score_era, small_integer_gram
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate, make_era

METRICS = ("corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max", "fe_rms")
#: The floor's arithmetic is timed on at most this many eras per process, then scaled to all eras.
FLOOR_ERAS = 4


def dataset(folder: Path, args: argparse.Namespace) -> Path:
    """Generate the dataset into ``folder``, unless a previous run left the same one there; its root."""
    shape = {"eras": args.eras, "rows_per_era": args.rows_per_era, "features": args.features,
             "models": args.models, "seed": args.seed}
    marker = folder / "bench-dataset.json"
    if not (marker.exists() and json.loads(marker.read_text()) == shape):
        started = time.perf_counter()
        generate(str(folder / "root"), n_eras=args.eras, rows_per_era=args.rows_per_era, n_features=args.features,
                 n_models=args.models, n_unresolved=0, seed=args.seed, n_data_files=min(4, args.eras),
                 extra_targets=())
        marker.write_text(json.dumps(shape))
        print(f"generated in {time.perf_counter() - started:.0f} s")
    return folder / "root"


def input_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- (a)


def numerai_tools_way(root: Path, reference_eras: int | None) -> tuple[float, float, pd.DataFrame, int]:
    """Read everything with pandas, then score era by era with numerai-tools.

    Returns (read seconds, scoring seconds for all eras — scaled when only some
    were computed, per-era table of what was computed, eras computed).
    """
    # Imported here, not at the top: LocalCluster's workers import this script again
    # (multiprocessing's spawn): numerai-tools made each of them about 55 MiB larger.
    from reference import read_predictions, reference
    started = time.perf_counter()
    data = pd.concat([pd.read_parquet(p) for p in sorted((root / "data").glob("*.parquet"))])
    models = sorted(p.name.split(".")[0] for p in (root / "submissions").iterdir())
    predictions = pd.DataFrame({m: read_predictions(root, _files_of(root, m)) for m in models})
    stakes = pd.read_csv(root / "stakes.csv").set_index("model")["stake"].reindex(models).fillna(0.0)
    benchmark = pd.read_parquet(root / "benchmark" / "benchmark.parquet").set_index("id")["prediction"]
    read_seconds = time.perf_counter() - started

    features = [c for c in data.columns if c.startswith("feature_")]
    eras = list(pd.unique(data["era"]))
    computed = eras[:reference_eras] if reference_eras else eras
    tables, seconds = [], 0.0
    with threadpool_limits(1):
        for era in computed:
            rows = data[data["era"] == era].sort_index()
            ids = rows.index
            scores, took = reference(predictions.loc[ids].to_numpy(), rows["target"].to_numpy(),
                                     rows[features].to_numpy(), stakes.to_numpy(), benchmark.loc[ids].to_numpy())
            seconds += sum(took.values())
            tables.append(pd.DataFrame({"era": str(era), "model": models, **scores}))
    return read_seconds, seconds * len(eras) / len(computed), pd.concat(tables), len(computed)


def _files_of(root: Path, model: str) -> list[str]:
    folder = root / "submissions" / model
    if folder.is_dir():
        return [str(p.relative_to(root)) for p in sorted(folder.iterdir())]
    return [str(p.relative_to(root)) for p in (root / "submissions").glob(f"{model}.*")]


# --------------------------------------------------------------------------- (b)


@dataclass(frozen=True)
class JobRun:
    """One timed run of the job on a fresh LocalCluster (see :func:`numerai_dask_way`)."""

    cluster_seconds: float
    job_seconds: float
    per_era: pd.DataFrame
    peaks: list[int]  # each worker's peak resident bytes
    idle: list[int]  # each worker's resident bytes before the job, the job's modules loaded
    stages: dict


def numerai_dask_way(root: Path, out: Path, workers: int, settings: WorkerSettings,
                     cores: int | None = None) -> JobRun:
    """Start a LocalCluster of workers with ``settings``, then time the job end to end on it; with ``cores``,
    the cluster's processes and this one (client, scheduler, nannies) run on that many cores only."""
    started = time.perf_counter()
    spec = ClusterSpec("local", {"workers": workers}, worker=settings)
    with on_cores(cores), connect(spec, log=lambda _: None) as client:
        client.wait_for_workers(workers)
        cluster_seconds = time.perf_counter() - started
        idle = client.run(idle_resident_bytes)
        started = time.perf_counter()
        result = run_job(client, Storage(str(root)), ScoringParams())
        publish_run(Storage(str(out)), result, new_run_id())
        job_seconds = time.perf_counter() - started
        peaks = client.run(peak_resident_bytes)
    return JobRun(cluster_seconds, job_seconds, result.per_era, list(peaks.values()), list(idle.values()),
                  result.manifest["timings_seconds"])


@contextlib.contextmanager
def on_cores(count: int | None) -> Iterator[None]:
    """This process, and every process it starts meanwhile, on ``count`` of its cores (None: all of them)."""
    if count is None:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(allowed)[:count])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def idle_resident_bytes() -> int:
    """This worker's resident memory now, before any task; its program has loaded the job's modules already
    (spawn imports this script, which imports them, in every LocalCluster worker)."""
    if "numerai_dask.pipeline" not in sys.modules:
        raise RuntimeError("the worker has not loaded the job's modules: its idle size would not be comparable")
    return psutil.Process().memory_info().rss


def peak_resident_bytes() -> int:
    """This process's peak resident memory since it started its program (run in each worker).

    ``VmHWM`` belongs to the memory map that ``exec`` created. ``ru_maxrss`` is
    kept across ``exec``: a worker forked from a process that had just
    generated the dataset reported that process's 2.3 GiB as its own peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# --------------------------------------------------------------------------- (c)


@dataclass(frozen=True)
class Floor:
    """The floor's seconds: reading the bytes, and the arithmetic measured both ways (see :func:`floor`)."""

    read: float
    arithmetic: float  # the eras' arithmetic shared by ``workers`` processes running at once
    ideal_arithmetic: float  # one process's time divided by ``workers``: perfect use of every core
    machine_scaling: float  # throughput of ``workers`` processes at once over one

    @property
    def seconds(self) -> float:
        return self.read + self.arithmetic

    @property
    def ideal_seconds(self) -> float:
        return self.read + self.ideal_arithmetic


def floor(root: Path, workers: int, eras: int, rows: int, features: int, models: int, seed: int) -> Floor:
    """The floor at these sizes on ``workers`` cores.

    Reading every input file's bytes is divided by ``workers``. The arithmetic
    of a few eras is timed in one process, then in ``workers`` processes at
    once (the job's workers share caches and memory bandwidth too); each is
    scaled to all eras.
    """
    started = time.perf_counter()
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()
    read_seconds = time.perf_counter() - started
    repeats = max(1, min(FLOOR_ERAS, eras // workers))
    work = [rows, features, models, seed, repeats]
    with ProcessPoolExecutor(1) as one:
        alone = one.submit(floor_arithmetic, *work).result() / repeats
    with ProcessPoolExecutor(workers) as many:
        together = max(many.map(floor_arithmetic, *[[value] * workers for value in work])) / repeats
    return Floor(read_seconds / workers, together * eras / workers, alone * eras / workers, workers * alone / together)


def floor_arithmetic(rows: int, features: int, models: int, seed: int, repeats: int = 1) -> float:
    """Seconds of one era's unavoidable arithmetic (× ``repeats``) on one core: sorts, factorization, GEMMs."""
    era = make_era(rows, features, models, seed=seed)
    with threadpool_limits(1):
        started = time.perf_counter()
        for _ in range(repeats):
            for _ in range(2):  # predictions, then FNC's residuals
                np.argsort(np.ascontiguousarray(era.predictions.T), axis=1)
            x = era.features.astype(np.float64)
            a = x - x.mean(axis=0)
            # the kernel's own factorization for such features: the Gram matrix in float32 (exact for 0–4
            # buckets), its Cholesky factor inverted, the spread from the extreme eigenvalues of G and G⁻¹,
            # and G⁻¹ = L⁻ᵀL⁻¹
            weights, *_ = _cholesky_weights(small_integer_gram(era.features))
            inverse = _weights_product(weights, cholesky=True)
            residual = era.predictions - a @ (inverse @ (a.T @ era.predictions))
            a.T @ residual  # exposures: one more F × N × M product
        return time.perf_counter() - started


def median_floor(floors: list[Floor]) -> Floor:
    """The run whose total is the median (its parts stay consistent with each other)."""
    return sorted(floors, key=lambda f: f.seconds)[(len(floors) - 1) // 2]


def median(values: list[float]) -> float:
    return float(np.median(values))


def runs_text(seconds: Iterable[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in seconds)


# ---------------------------------------------------------------------- memory


#: What scoring one era takes: the storage, the era, the feature names, the number of models.
OneEra = tuple[Storage, EraPlan, list[str], int]


def era_working_set(era: OneEra) -> int:
    """Peak bytes NumPy allocates while one era is read and scored (traced in this process)."""
    tracemalloc.start()
    score_one_era(*era)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def era_resident_set(era: OneEra, settings: WorkerSettings) -> int:
    """Resident bytes one era takes in a worker of its own: the worker's peak while it reads and scores one era,
    above its size before (the job's modules loaded) — the era's working set as the workers' peaks measure it."""
    with connect(ClusterSpec("local", {"workers": 1}, worker=settings), log=lambda _: None) as client:
        client.wait_for_workers(1)
        (before,) = client.run(idle_resident_bytes).values()
        client.submit(score_one_era, *era, pure=False).result()
        (peak,) = client.run(peak_resident_bytes).values()
    return peak - before


def first_era(root: Path) -> OneEra:
    """What scoring the dataset's first era takes: its storage, the era, the feature names, the number of models."""
    storage = Storage(str(root))
    inputs = discover(storage, ScoringParams())
    return storage, inputs.eras[0], inputs.features, len(inputs.submissions)


def score_one_era(storage: Storage, era: EraPlan, features: list[str], models: int) -> None:
    """Read one era's rows and score them for random predictions of ``models`` models."""
    target = ScoringParams().target
    rows = read_era_rows(storage, era, ["era", *features, target], target)
    n = len(rows)
    predictions = np.random.default_rng(0).random((n, models))
    with threadpool_limits(1):
        score_era(predictions, rows[target].to_numpy(np.float64), rows[features].to_numpy(),
                  np.ones(models), np.random.default_rng(1).random(n))


# ------------------------------------------------------------------ Numerai scale


def numerai_scale(workers: list[int], rows: int = 5000, features: int = 2376, eras: int = 600,
                  models: int = 10_000) -> list[str]:
    """Time ``score_era`` at Numerai's feature count for two model counts; extrapolate linearly in models.

    An era costs a fixed part (its feature basis) plus a part per model (sorts
    and GEMM columns): two measurements give both, each the faster of two runs
    (one slow run on a noisy machine would otherwise set the slope).
    """
    costs = {}
    with threadpool_limits(1):
        for m in (250, 1000):
            era = make_era(rows, features, m, seed=m)
            costs[m] = min(_seconds(lambda: score_era(era.predictions, era.target, era.features, era.stakes,
                                                      era.benchmark)) for _ in range(2))
    per_model = (costs[1000] - costs[250]) / 750
    fixed = max(costs[250] - 250 * per_model, 0.0)
    era_seconds = fixed + models * per_model
    lines = [f"score_era at {rows} rows × {features} features: {costs[250]:.2f} s for 250 models, "
             f"{costs[1000]:.2f} s for 1000 → {fixed:.2f} s per era + {per_model * 1000:.2f} s per 1000 models",
             f"Numerai scale ({models} models × {eras} eras × {features} features): "
             f"{era_seconds:.1f} s per era on one core"]
    lines += [f"  on {k:4d} worker{'s' if k != 1 else ' '}: {era_seconds * eras / k / 3600:7.2f} h (scoring only)"
              for k in workers]
    return lines


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# ------------------------------------------------------------------------ main


def largest_difference(theirs: pd.DataFrame, ours: pd.DataFrame) -> float:
    joined = theirs.merge(ours, on=["era", "model"], suffixes=("_a", "_b"))
    return max(float(np.nanmax(np.abs(joined[f"{m}_a"] - joined[f"{m}_b"]))) for m in METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eras", type=int, default=20)
    parser.add_argument("--rows-per-era", type=int, default=5000)
    parser.add_argument("--features", type=int, default=705)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="auto", help="per worker, e.g. 600MiB (default: share of the machine)")
    parser.add_argument("--spill", type=float, help="spill to disk above this fraction of the memory limit "
                                                    "(default: WorkerSettings' 0.6 target and 0.7 spill)")
    parser.add_argument("--malloc-trim-threshold", type=int, default=WorkerSettings.malloc_trim_threshold,
                        help="the workers' MALLOC_TRIM_THRESHOLD_ in bytes (default: WorkerSettings', "
                             f"{WorkerSettings.malloc_trim_threshold}; Dask sets 65536)")
    parser.add_argument("--reference-eras", type=int, help="compute only this many eras with numerai-tools and scale")
    parser.add_argument("--skip-reference", action="store_true", help="skip (a), e.g. for a memory run")
    parser.add_argument("--scaling", action="store_true", help="also run (b) on one worker, and on one core")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (b), (c) and the one-worker job (medians)")
    parser.add_argument("--numerai-scale", action="store_true", help="model the time at Numerai scale")
    parser.add_argument("--dir", help="keep the generated dataset here and reuse it (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.dir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        root = dataset(folder, args)
        size = input_bytes(root)
        print(f"dataset: {args.eras} eras × {args.rows_per_era} rows × {args.features} features × "
              f"{args.models} models, {format_bytes(size)} of input files; {args.workers} workers")
        settings = WorkerSettings(memory_limit=args.memory_limit, malloc_trim_threshold=args.malloc_trim_threshold)
        if args.spill is not None:
            settings = replace(settings, target=min(settings.target, args.spill), spill=min(settings.spill, args.spill))
        runs: list[JobRun] = []
        floors: list[Floor] = []
        one_worker: list[float] = []
        one_core: list[float] = []
        for r in range(args.repeat):
            runs.append(numerai_dask_way(root, Path(scratch) / f"out{r}", args.workers, settings))
            floors.append(floor(root, args.workers, args.eras, args.rows_per_era, args.features, args.models,
                                args.seed))
            if args.scaling:
                one_worker.append(numerai_dask_way(root, Path(scratch) / f"one{r}", 1, settings).job_seconds)
                one_core.append(numerai_dask_way(root, Path(scratch) / f"core{r}", 1, settings, cores=1).job_seconds)
        job, bound = runs[0], median_floor(floors)
        job_seconds = median([run.job_seconds for run in runs])
        ours = job.per_era
        peaks = [max(worker) for worker in zip(*(run.peaks for run in runs))]
        print(f"(b) numerai-dask score          {job_seconds:8.2f} s   median of {runs_text(r.job_seconds for r in runs)}"
              f"; stages of the first {job.stages}; LocalCluster start {job.cluster_seconds:.1f} s apart")
        print(f"(c) floor                       {bound.seconds:8.2f} s   median of {runs_text(f.seconds for f in floors)} "
              f"(read bytes {bound.read:.2f} s + arithmetic {bound.arithmetic:.2f} s, measured in {args.workers} "
              "processes at once)")
        print(f"    ideal floor                 {bound.ideal_seconds:8.2f} s   (the arithmetic on one core ÷ "
              f"{args.workers}; {args.workers} processes at once give {bound.machine_scaling:.2f}× the throughput "
              "of one on this machine)")
        if args.scaling:
            alone = median(one_worker)
            print(f"(b) on one worker               {alone:8.2f} s   median of {runs_text(one_worker)} → "
                  f"{args.workers} workers are {alone / job_seconds:.2f}× the throughput of one (goal ≥ 1.8)")
            on_one = median(one_core)
            print(f"    one worker on one core      {on_one:8.2f} s   median of {runs_text(one_core)} → "
                  f"{args.workers} workers on {len(os.sched_getaffinity(0))} cores are {on_one / job_seconds:.2f}× "
                  "the throughput of one worker on one core (the cluster's own processes on that core too)")
        era = first_era(root)
        working_set = era_working_set(era)
        limit = parse_bytes(args.memory_limit) if args.memory_limit != "auto" else None
        print(f"peak memory per worker          {', '.join(format_bytes(p) for p in peaks)} (the largest of the runs); "
              f"one era's working set {format_bytes(working_set)}, the peak is {max(peaks) / working_set:.1f}× it "
              "(goal ≤ 3)"
              + (f"; memory limit {format_bytes(limit)} per worker, input files "
                 f"{size / (limit * args.workers):.1f}× the workers' total" if limit else "")
              + (f"; spilling above {args.spill:.0%} of it" if args.spill is not None else "")
              + (f"; MALLOC_TRIM_THRESHOLD_={args.malloc_trim_threshold}"
                 if args.malloc_trim_threshold != WorkerSettings.malloc_trim_threshold else ""))
        above = [max(worker) for worker in zip(*([p - i for p, i in zip(run.peaks, run.idle)] for run in runs))]
        idle = [max(worker) for worker in zip(*(run.idle for run in runs))]
        print(f"    above the idle worker       {', '.join(format_bytes(a) for a in above)} = "
              f"{max(above) / working_set:.1f}× the working set (each worker idle before the job, the job's "
              f"modules loaded: {', '.join(format_bytes(i) for i in idle)})")
        resident = era_resident_set(era, settings)
        print(f"    one era alone in a worker   {format_bytes(resident)} resident above the idle worker (its working set "
              f"in resident memory): the peak is {max(peaks) / resident:.1f}× it (goal ≤ 3), "
              f"{max(above) / resident:.1f}× above the idle worker")
        print(f"(b)/(c)                         {job_seconds / bound.seconds:8.2f}    (goal ≤ 2; against the ideal "
              f"floor {job_seconds / bound.ideal_seconds:.2f})")
        if not args.skip_reference:
            read_seconds, score_seconds, theirs, computed = numerai_tools_way(root, args.reference_eras)
            scaled = "" if computed == args.eras else f", scaled from {computed} eras"
            total = read_seconds + score_seconds
            print(f"(a) numerai-tools era by era    {total:8.2f} s   (pandas reads {read_seconds:.2f} s + "
                  f"scoring {score_seconds:.2f} s{scaled})")
            print(f"(a)/(b)                         {total / job_seconds:8.1f}×   (goal ≥ 25)")
            print(f"largest difference (a) vs (b)   {largest_difference(theirs, ours):.2e}")
        if args.numerai_scale:
            for line in numerai_scale([1, 2, 16, 64, 256]):
                print(line)


if __name__ == "__main__":
    main()
