"""The Dask graph: submissions are read and split by era, then one task per era scores every model.

The job runs in four steps:

1. **discover** (client): list the data files and read only ``id``, ``era`` and
   the scoring target to learn each era's ids and which files hold it; list
   submissions, stakes and the benchmark.
2. **load** (one task per batch of models): read the batch's files
   concurrently, a window of bytes at a time, validate them, apply
   re-uploads, and cut each model's
   predictions into per-era arrays (rows = the era's resolved ids, sorted),
   ranked there: the scoring needs only tie-kept ranks, kept as uint16 — a
   quarter of the predictions' bytes. The batch's ranks are written to one
   file in the job's scratch folder, era after era; the task returns only
   where each era's part lies (:class:`StagedBatch`).
3. **score** (one task per resolved era): read that era's rows (features kept
   int8, only the columns needed) from the files that hold it, read the era's
   part of every batch's scratch file, and call
   :func:`numerai_dask.scoring.score_era` once for all models valid in the
   era. A worker holds one task's working set: no ranks wait in its memory.
4. **reduce** (client): the per-era tables become the leaderboard; the
   scratch folder is removed.

Predictions (small) travel to the era's features (large), never the reverse.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import io
import platform
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import ParamSpec, TypeVar

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.delayed import Delayed
from dask.utils import parse_bytes
from distributed import Client, Future, as_completed, get_worker, wait
from threadpoolctl import get_cached_controller

from numerai_dask import __version__
from numerai_dask.leaderboard import PayoutRule, build_leaderboard, era_order
from numerai_dask.scoring import DegenerateEraError, Ranks, score_era
from numerai_dask.settings import require, require_between, require_count
from numerai_dask.storage import FileInfo, Storage, StorageError
from numerai_dask.submissions import (EraIndex, Rejection, RepeatedIds, describe_error, merge_model_files,
                                      split_by_era)
from numerai_dask.wording import counted

T = TypeVar("T")
P = ParamSpec("P")
#: ``meta_corr`` is the meta model's CORR in the era, repeated on each of its models' rows.
PER_ERA_COLUMNS = ("era", "model", "corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max", "fe_rms", "meta_corr")
REJECTION_COLUMNS = ("model", "file", "era", "reason")
#: A task that fails (a storage error outlasting the read retries) is tried again this often.
TASK_RETRIES = 2
#: The column of an era's cached predictions that holds its ids, beside one column per model: a name no
#: model can have (model names have no spaces), where "id" was one.
CACHED_IDS_COLUMN = "row id"
#: Models of the top of the leaderboard whose predictions the report correlates with each other.
CORRELATED_MODELS = 16
#: Per-era metrics that depend on one model alone (plus every ``corr_<target>``).
SINGLE_MODEL_METRICS = ("corr", "fnc", "fe_max", "fe_rms")
#: The automatic size limit of one prediction file: this many bytes per data row, plus SUBMISSION_SLACK_BYTES.
#: A CSV row of an id and a full-precision float is about 40 bytes; extra columns fit in the margin.
SUBMISSION_BYTES_PER_ROW = 100
SUBMISSION_SLACK_BYTES = 1 << 20
#: Resolved rows an era needs to be scored (a correlation needs two points); with fewer it waits as an unresolved
#: era does, and when every era has fewer the data is wrong.
MIN_ERA_ROWS = 2
#: A worker gives its free heap pages back after each task once its process memory passes this share of its
#: first memory threshold (see :func:`release_memory`).
TRIM_SHARE_OF_THRESHOLD = 0.5
#: The folder at the top of the scratch storage where the load tasks of a job or a refresh write the batches'
#: ranks for its era tasks is named this and the job's own id (32 hex digits); it is removed when the job ends
#: (see :func:`job_scratch`).
SCRATCH_PREFIX = ".numerai-dask-scratch-"
#: A running job rewrites the heartbeat file in its scratch folder this often (seconds).
SCRATCH_HEARTBEAT_SECONDS = 60.0
#: A scratch folder with no file written for this long belongs to a job that ended without removing it (its
#: client killed); the next job on the same scratch storage removes it (see :func:`sweep_stale_scratch`).
SCRATCH_STALE_SECONDS = 3600.0
SCRATCH_HEARTBEAT = "heartbeat"
_SCRATCH_FOLDER = re.compile(re.escape(SCRATCH_PREFIX) + "[0-9a-f]{32}")


class JobError(Exception):
    """The job itself cannot run (bad root, missing target column…): a one-line cause."""


class InputError(JobError):
    """What in the job's inputs stops it, found by a task (a cache that no longer matches the data): the same
    answer however often the task is tried."""


@dataclass(frozen=True)
class ScoringParams:
    """What to score against: everything here is recorded in the manifest."""

    target: str = "target"
    extra_targets: tuple[str, ...] = ()
    feature_set: str | None = None
    neutralization: float = 1.0
    payout: PayoutRule = field(default_factory=PayoutRule)
    models_per_task: int = 64
    #: A load task reads its models' files this many bytes at a time (at least one model), keeping only
    #: their ranks: its memory stays bounded whatever the files' sizes.
    read_window_bytes: int = 32 * 2**20
    #: Prediction files larger than this are rejected from the listing, unread; None: automatic (see below).
    max_submission_bytes: int | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.target, str), "target", f"must be a column name (text), got {self.target!r}")
        require(self.feature_set is None or isinstance(self.feature_set, str), "feature_set",
                f"must be a feature set's name (text), got {self.feature_set!r}")
        require_between(self.neutralization, "neutralization", 0.0, 1.0)
        for key, names in (("target", [self.target]), ("extra_targets", self.extra_targets)):
            for name in names:
                require(name not in ("id", "era"), key, f"{name!r} is the data's {name} column, not a target")
        repeated = sorted({t for t in self.extra_targets if self.extra_targets.count(t) > 1})
        require(not repeated, "extra_targets", f"{', '.join(map(repr, repeated))} given more than once")
        require_count(self.models_per_task, "models_per_task")
        require_count(self.read_window_bytes, "read_window_bytes")
        if self.max_submission_bytes is not None:
            require_count(self.max_submission_bytes, "max_submission_bytes")

    def submission_size_limit(self, data_rows: int) -> int:
        """The largest prediction file read: the explicit limit, else SUBMISSION_BYTES_PER_ROW per data row plus slack.

        Checked against the listing's sizes before anything is read, so one huge
        upload cannot exhaust a worker's memory.
        """
        if self.max_submission_bytes is not None:
            return self.max_submission_bytes
        return SUBMISSION_BYTES_PER_ROW * data_rows + SUBMISSION_SLACK_BYTES


@dataclass(frozen=True)
class EraPlan:
    """One resolved era: its value as stored in the data, its label, and the files holding its rows."""

    value: object
    label: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class JobInputs:
    """Everything the client learns before building the graph."""

    data_files: list[FileInfo]
    features: list[str]
    index: EraIndex
    eras: list[EraPlan]
    unresolved: list[str]
    submissions: dict[str, list[FileInfo]]
    stakes: pd.Series | None
    stakes_file: FileInfo | None
    benchmark_file: tuple[str, FileInfo] | None
    feature_sets_file: FileInfo | None
    rejections: list[Rejection]


@dataclass(frozen=True)
class ModelFiles:
    """One model's prediction files: full paths in application order, and their total size in bytes."""

    model: str
    paths: tuple[str, ...]
    size: int

    @classmethod
    def of(cls, model: str, files: Sequence[FileInfo]) -> ModelFiles:
        return cls(model, tuple(f.path for f in files), sum(f.size for f in files))


@dataclass(frozen=True)
class ModelBatch:
    """A batch of models cut by era: era label → (model names, ranked predictions, models × rows; see :func:`compact_ranks`)."""

    by_era: dict[str, tuple[list[str], np.ndarray]]
    rejections: list[Rejection]


@dataclass(frozen=True)
class StagedRanks:
    """Where one era's ranks of a batch lie in the batch's scratch file: its bytes, ``count`` models × ``rows``
    of ``dtype``, and which models they are (indices into the batch's names; None: all of them, in order)."""

    offset: int
    count: int
    rows: int
    dtype: str
    models: np.ndarray | None

    @property
    def end(self) -> int:
        return self.offset + self.count * self.rows * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class StagedBatch:
    """A batch of models loaded and ranked, its ranks in a scratch file: era label → where they lie."""

    relpath: str
    names: list[str]
    by_era: dict[str, StagedRanks]
    rejections: list[Rejection]


@dataclass(frozen=True)
class EraScores:
    """One era's scores, or why the era was skipped, and where its cache was written (if asked)."""

    label: str
    table: pd.DataFrame
    skipped: str | None = None
    models: tuple[str, ...] = ()
    cache: EraCacheFiles | None = None
    #: What in the job's inputs stops the job (a bad data file), returned rather than raised: see
    #: :func:`score_staged_era_task`.
    failure: Exception | None = None


@dataclass(frozen=True)
class EraCacheFiles:
    """One era's cached results, relative to the output root: ranked predictions (see :func:`compact_ranks`) and
    scores (None for an era skipped as degenerate: it has none)."""

    predictions: str
    scores: str | None


@dataclass(frozen=True)
class EraCache:
    """What an earlier run left for one era, and how much of it still holds.

    ``keep`` are the cached models whose predictions still hold; with
    ``keep_scores`` their single-model scores hold too (the era's data is
    unchanged), so only the cross-model metrics are recomputed for them.
    """

    out: Storage
    files: EraCacheFiles
    keep: tuple[str, ...]
    keep_scores: bool


@dataclass(frozen=True)
class CacheWrite:
    """Where an era task writes its cache: the output storage and the files' relative paths."""

    out: Storage
    files: EraCacheFiles


@dataclass
class JobResult:
    """The scored job, ready to publish.

    ``inputs`` is what the job discovered (a later pass reads the top models'
    files through it); ``prediction_correlation`` is that pass's models × models
    table (see :func:`prediction_correlations`), when it was made.
    """

    per_era: pd.DataFrame
    leaderboard: pd.DataFrame
    rejections: pd.DataFrame
    skipped_eras: dict[str, str]
    manifest: dict
    inputs: JobInputs | None = field(default=None, repr=False)
    prediction_correlation: pd.DataFrame | None = None


@dataclass(frozen=True)
class Progress:
    """How far one phase of a job is: ``done`` of ``total`` units, seconds since it began, seconds left (estimated)."""

    phase: str
    unit: str
    done: int
    total: int
    elapsed: float
    eta: float | None


@dataclass(frozen=True)
class Phase:
    """A phase to follow: its futures and how many units (models, eras) each one stands for."""

    name: str
    unit: str
    futures: list[Future]
    weights: list[int] | None = None


# ---------------------------------------------------------------------- discover


def select_features(storage: Storage, columns: Sequence[str], feature_set: str | None) -> list[str]:
    """The feature columns to score with: all ``feature_*`` columns, or one named set of them (each once, in the
    set's order: a feature listed twice would count twice in the exposures)."""
    available = [c for c in columns if c.startswith("feature_")]
    if feature_set is None:
        return available
    sets = storage.read_feature_sets()
    if feature_set not in sets:
        known = ", ".join(sorted(sets)) or ("none (data/features.json names no feature sets)"
                                            if storage.info("data/features.json") else "none (no data/features.json)")
        raise JobError(f"unknown feature set {feature_set!r}; known sets: {known}")
    present = set(available)
    missing = [f for f in sets[feature_set] if f not in present]
    if missing:
        columns = counted(len(missing), "column that is", "columns that are")
        raise JobError(f"feature set {feature_set!r} names {columns} not among the data's feature_* columns, "
                       f"e.g. {missing[:3]}")
    return list(dict.fromkeys(sets[feature_set]))


def check_features_in_every_file(storage: Storage, data_files: Sequence[FileInfo], features: Sequence[str],
                                 every_feature: bool) -> None:
    """Every data file holds the features taken from the first (and, when every feature is scored, no other
    ``feature_*`` column): a feature the first file lacked was dropped silently, changing FNC, TC and the
    exposures of the eras in the other files."""
    wanted = set(features)
    first = display_files(storage, [data_files[0].path])
    for info in data_files[1:]:
        available = {c for c in storage.data_columns(info.path) if c.startswith("feature_")}
        missing, extra = sorted(wanted - available), sorted(available - wanted) if every_feature else []
        if missing or extra:
            difference = (f"lacks {counted(len(missing), 'feature')} of {first}, e.g. {missing[:3]}" if missing else
                          f"has {counted(len(extra), 'feature')} {first} lacks, e.g. {extra[:3]}")
            raise StorageError(f"{display_files(storage, [info.path])}: {difference}; every data file must hold "
                               "the same features")


def read_era_index(storage: Storage, data_files: list[FileInfo], target: str) -> tuple[EraIndex, dict[str, list[str]]]:
    """Read ``id``, ``era`` and the target of every data file: the era index and which files hold each era.

    Data that cannot be scored is a StorageError naming the file(s) and the
    problem: a row without an id or an era, an id on more than one row, every
    era with fewer than MIN_ERA_ROWS resolved rows (the era column is likely
    not the era). An era with fewer, among others with enough, waits for its
    targets as an unresolved era does: one row cannot be correlated.
    """
    frames = []
    files_by_era: dict[str, list[str]] = {}
    era_kinds: dict[str, str] = {}
    for info in data_files:
        frame = storage.read_data(info.path, ["era", target])
        for era in pd.unique(frame["era"]):
            files_by_era.setdefault(str(era), []).append(info.path)
        if len(frame):  # an empty file's column may have no type of its own
            era_kinds.setdefault(era_kind(frame["era"]), info.path)
        frames.append(frame)
    if len(era_kinds) > 1:
        (kind, path), (other_kind, other_path) = list(era_kinds.items())[:2]
        raise StorageError(f"the era column holds {kind} in {display_files(storage, [path])} but {other_kind} in "
                           f"{display_files(storage, [other_path])}; every data file must give eras alike")
    data = pd.concat(frames, ignore_index=True)
    file_of_row = np.repeat(np.array([info.path for info in data_files], dtype=object), [len(f) for f in frames])
    for column, need in (("id", "every row needs an id"), ("era", "every row must belong to an era")):
        missing = data[column].isna().to_numpy()
        if missing.any():
            raise StorageError(f"{display_files(storage, sorted(set(file_of_row[missing])))}: "
                               f"{counted(int(missing.sum()), 'row has', 'rows have')} no {column} (a missing value "
                               f"in {column!r}); {need}")
    resolved = data[data[target].notna()].groupby("era", sort=True).size()
    thin = resolved[resolved < MIN_ERA_ROWS]
    if len(thin) and len(thin) == len(resolved):
        era, rows = next(iter(thin.items()))
        raise StorageError(f"{display_files(storage, files_by_era[str(era)])}: era {era} has only {rows} row with a "
                           f"resolved target, as every era has; an era needs at least {MIN_ERA_ROWS} to be scored "
                           "(is 'era' the era?)")
    if len(thin):
        data.loc[data["era"].isin(thin.index), target] = np.nan
    try:
        index = EraIndex.from_frame(data.rename(columns={target: "target"}))
    except RepeatedIds as error:  # the index checks; the files holding those rows are found only then
        where = data["id"].isin(error.repeated).to_numpy()
        raise StorageError(f"{display_files(storage, sorted(set(file_of_row[where])))}: "
                           f"{counted(len(error.repeated), 'id appears', 'ids appear')} on more than one row of the "
                           f"data, e.g. {error.repeated[0]!r}; each id must be one row") from None
    return index, files_by_era


def era_kind(eras: pd.Series) -> str:
    """What an era column holds, in words: eras of one kind only can be one index (DESIGN.md: text or integers)."""
    if pd.api.types.is_integer_dtype(eras):
        return "integers"
    if pd.api.types.is_string_dtype(eras) or pd.api.types.is_object_dtype(eras):
        return "text"
    return f"{eras.dtype} values"


def display_files(storage: Storage, paths: Sequence[str]) -> str:
    """Full paths as a person would type them, for messages (credentials removed)."""
    return ", ".join(storage.display(storage.relative(p)) for p in paths)


def discover(storage: Storage, params: ScoringParams) -> JobInputs:
    """List and read what the graph needs: data layout, era index, submissions, stakes, benchmark."""
    data_files = storage.list_data_files()
    if not data_files:
        missing = storage.what_is_missing("data")
        raise JobError(f"no data files: {missing}" if missing else
                       f"no data files: {storage.display('data')} holds no .parquet file")
    columns = storage.data_columns(data_files[0].path)
    for name in (params.target, *params.extra_targets):
        if name not in columns:
            raise JobError(f"{display_files(storage, [data_files[0].path])}: target column {name!r} is not in the data "
                           f"(targets there: {[c for c in columns if c.startswith('target')]})")
    features = select_features(storage, columns, params.feature_set)
    check_features_in_every_file(storage, data_files, features, every_feature=params.feature_set is None)
    index, files_by_era = read_era_index(storage, data_files, params.target)
    eras = [
        EraPlan(era, index.era_label(era), tuple(files_by_era[index.era_label(era)]))
        for era in index.resolved_eras()
    ]
    if not eras:
        raise JobError("no era has a resolved target: nothing to score")
    submissions, rejections = storage.list_submissions(params.submission_size_limit(len(index.ids)))
    if not submissions:
        missing = storage.what_is_missing("submissions")
        raise JobError(f"no submissions: {rejections_text(rejections)}" if rejections else
                       f"no submissions: {missing}" if missing else
                       f"no submissions: {storage.display('submissions')} holds no .csv or .parquet file")
    stakes_file = storage.find_stakes()
    return JobInputs(
        data_files=data_files,
        features=features,
        index=index,
        eras=eras,
        unresolved=[index.era_label(e) for e in index.unresolved_eras()],
        submissions=submissions,
        stakes=storage.read_stakes() if stakes_file else None,
        stakes_file=stakes_file,
        benchmark_file=storage.find_benchmark(),
        feature_sets_file=storage.info("data/features.json"),
        rejections=list(rejections),
    )


# ------------------------------------------------------------------- worker heap


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system.

    NumPy and Arrow free a task's temporaries into the heap, and glibc keeps
    free pages that do not sit at its top. Dask counts them as unmanaged memory
    of the worker: on the 80-era benchmark about 100 MiB a worker, for which it
    spilled data and paused.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_memory() -> None:
    """Free what only reference cycles still hold; a worker near its memory thresholds also gives the C heap's
    free pages back (:func:`trim_heap`).

    Python frees objects in reference cycles only when its cyclic collector
    runs, which allocation counts decide. After the 80-era benchmark a worker
    held about 160 MiB that one collection freed (its garbage: frames and
    tracebacks of the worker's event loop, futures, Parquet metadata); with a
    collection after each task, its peak fell from 556–574 to 449–454 MiB
    (700 MiB workers spilling above 40 %).
    A full collection scans the worker's 120,000 objects (0.1 s), so the first
    one freezes the survivors (libraries, the worker itself) out of later ones.

    A worker far from its thresholds keeps its free heap pages for the next
    task: pages given back are faulted in again, and on the 20-era benchmark
    trimming after every task cost each worker about 0.3 s of system time and
    the job about 0.3 s (7.87 against 7.58 s over four alternating pairs), with
    the same peaks within noise (470–505 against 479–508 MiB).

    A worker near its thresholds gives its free pages back only when a task
    ends: within a task glibc keeps reusing them. Such a worker used to
    switch glibc to Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` for good too
    (every block past 128 KiB mapped on its own, unmapped when freed), and
    every task then faulted its arrays in afresh: on 700 MiB workers at 80
    eras, loads took 17.8–21.4 s of task time (both workers) against 13.1–14.4 and scores
    43.6–49.9 s against 37.6–39.5, the job 33.0–40.2 s against 27.3–32.3, with
    the same peaks (456–613 against 469–567 MiB; spilling above 40 %, 50 % and
    70 %, two alternating pairs each).
    """
    gc.collect()
    _freeze_survivors()
    if worker_memory_is_near_thresholds():
        trim_heap()


def worker_memory_is_near_thresholds() -> bool:
    """Whether this Dask worker's process memory is above TRIM_SHARE_OF_THRESHOLD of the first memory
    threshold at which it acts (spilling, pausing); False outside a worker or without a memory limit."""
    try:
        worker = get_worker()
    except ValueError:
        return False
    memory = worker.memory_manager
    fractions = [f for f in (memory.memory_target_fraction, memory.memory_spill_fraction,
                             memory.memory_pause_fraction) if f]
    if not memory.memory_limit or not fractions:
        return False
    return worker.monitor.get_process_memory() > TRIM_SHARE_OF_THRESHOLD * min(fractions) * memory.memory_limit


@functools.cache
def _freeze_survivors() -> None:
    """Move every object alive now out of the cyclic collector's reach, once per process (see :func:`release_memory`)."""
    gc.freeze()


def returning_freed_memory(task: Callable[P, T]) -> Callable[P, T]:
    """A Dask task function that calls :func:`release_memory` when it ends, whether it returns or raises."""

    @functools.wraps(task)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return task(*args, **kwargs)
        finally:
            release_memory()

    return run


def one_blas_thread() -> None:
    """Hold this process's BLAS pools, and this thread's OpenMP pool, to one thread, for good.

    Workers this project starts have their BLAS variables set; a worker of
    another cluster may not. OpenBLAS's pool is process-wide and shared by a
    worker's task threads, so a limit restored when one era task ends would
    give the pool its threads back under another task still scoring. Called
    at the start of each era task, since OpenMP's limit is per thread. The
    scan of the pools is threadpoolctl's cached one, redone when modules are
    imported: a scan on every call, as ``threadpool_limits`` does, took 1.6 ms
    an era. Era tasks run in the caller's own process (a ``Client(processes=False)``)
    leave that process with one BLAS thread too.
    """
    get_cached_controller().limit(limits=1)


# -------------------------------------------------------------------------- load


@returning_freed_memory
def load_model_batch(storage: Storage, models: Sequence[ModelFiles], index: EraIndex,
                     read_window_bytes: int = ScoringParams.read_window_bytes) -> ModelBatch:
    """Read, validate and cut by era the predictions of a batch of models (one Dask task).

    Files are read concurrently ``read_window_bytes`` at a time; a window's
    models are ranked per era before the next window is read, so the task
    holds at most one window of file bytes plus compact ranks. An era's
    ranks are joined across windows one era at a time, each era's pieces
    dropped as it is joined, so the batch's ranks are never held twice.
    """
    rejections: list[Rejection] = []
    names: dict[str, list[str]] = {}
    ranks: dict[str, list[np.ndarray]] = {}
    for window in chunked(models, [m.size for m in models], len(models), read_window_bytes):
        contents = storage.read_many([path for m in window for path in m.paths])
        arrays: dict[str, list[np.ndarray]] = {}
        for m in window:
            files = [storage.label(p) for p in m.paths]
            raw = [contents.pop(p) for p in m.paths]  # each file's bytes are released once parsed
            predictions, problems = merge_model_files(m.model, list(zip(files, raw)), index)
            rejections += problems
            if predictions is None:
                continue
            by_era, problems = split_by_era(m.model, predictions, index, files=files)
            rejections += problems
            for era, values in by_era.items():
                label = index.era_label(era)
                names.setdefault(label, []).append(m.model)
                arrays.setdefault(label, []).append(values)
        for label, values in arrays.items():
            ranks.setdefault(label, []).append(compact_ranks(np.vstack(values)))
    return ModelBatch({label: (names[label], joined(ranks.pop(label))) for label in names}, rejections)


@returning_freed_memory
def stage_model_batch(storage: Storage, models: Sequence[ModelFiles], index: EraIndex, read_window_bytes: int,
                      scratch: Storage, folder: str) -> StagedBatch:
    """Load a batch of models (:func:`load_model_batch`) and write its ranks to a file of its own in ``folder``
    of ``scratch`` (one Dask task): what the era tasks will read, instead of ranks waiting in a worker's memory.

    Each run of the task writes a new file, so a task run again (its result
    lost with a worker) never rewrites a file that a score task may be reading.

    Held in memory, every era's ranks stay in the workers until their era is
    scored, and Dask spills them only once a worker's memory passes its spill
    threshold: at 80 eras on 700 MiB workers the first score task, started with
    all of them in memory, peaked at 553–576 MiB. Written out, a worker holds
    one task's working set (418–450 MiB there, ``bench_job.py --eras 80 --memory-limit 700MiB``).
    """
    # load_model_batch without its own release_memory: this task releases once it has written the batch out.
    return stage_batch(load_model_batch.__wrapped__(storage, models, index, read_window_bytes), scratch, folder)


def stage_batch(batch: ModelBatch, scratch: Storage, folder: str) -> StagedBatch:
    """Write a loaded batch's ranks, era after era, to a new file in ``folder`` of ``scratch``; return where each
    era's ranks lie.

    An era holding all of the batch's models records no index list: at
    Numerai scale the lists would be sent to every era task.
    """
    names = sorted({name for era_names, _ in batch.by_era.values() for name in era_names})
    position = {name: i for i, name in enumerate(names)}
    by_era: dict[str, StagedRanks] = {}
    offset = 0
    for label, (era_names, ranks) in batch.by_era.items():
        members = None if era_names == names else np.array([position[n] for n in era_names], dtype=np.int32)
        by_era[label] = StagedRanks(offset, len(era_names), ranks.shape[1], ranks.dtype.str, members)
        offset += ranks.nbytes
    relpath = f"{folder}/{uuid.uuid4().hex}.ranks"
    try:
        scratch.write_parts(relpath, (memoryview(ranks).cast("B") for _, ranks in batch.by_era.values()))
    except OSError as error:
        raise JobError(f"cannot write the job's scratch {scratch.display(relpath)} ({describe_error(error)}); "
                       "the workers must be able to write there (the output storage, --out)") from error
    return StagedBatch(relpath, names, by_era, batch.rejections)


def staged_era_slices(scratch: Storage, batches: Sequence[StagedBatch], label: str) -> list[tuple[list[str], np.ndarray]]:
    """One era's ranks of every batch that has any, read from the scratch files together: (model names, models × rows)."""
    parts = [(batch, batch.by_era[label]) for batch in batches if label in batch.by_era]
    if not parts:
        return []
    try:
        contents = scratch.read_ranges([b.relpath for b, _ in parts], [p.offset for _, p in parts],
                                       [p.end for _, p in parts])
    except OSError as error:
        raise JobError(f"era {label}: cannot read the job's scratch at {scratch.display_url} ({describe_error(error)}); "
                       "every worker must reach it") from error
    return [(batch.names if part.models is None else [batch.names[i] for i in part.models],
             np.frombuffer(data, part.dtype).reshape(part.count, part.rows))
            for (batch, part), data in zip(parts, contents)]


def score_staged_era_task(
    storage: Storage,
    era: EraPlan,
    features: list[str],
    params: ScoringParams,
    scratch: Storage,
    batches: list[StagedBatch],
    stakes: pd.Series | None,
    benchmark: np.ndarray | None,
    cache: EraCache | None = None,
    write: CacheWrite | None = None,
) -> EraScores:
    """Score one era (:func:`score_era_task`, one Dask task, with its ``cache`` and ``write``) from its ranks in the
    batches' scratch files.

    What stops the job because of its inputs (a bad data file, a
    :class:`StorageError`; an :class:`InputError`) is returned as the era's
    ``failure``, for the client to raise (:func:`raise_era_failure`): raised
    here, Dask would run the task again ``TASK_RETRIES`` times for the same
    answer, and each time a LocalCluster's worker would print its traceback.
    Anything else (the scratch unreadable from this worker) is raised, and
    tried again.
    """
    try:
        return score_era_task(storage, era, features, params, staged_era_slices(scratch, batches, era.label),
                              stakes, benchmark, cache, write)
    except (InputError, StorageError) as error:
        return EraScores(era.label, empty_per_era(params), failure=error)


def raise_era_failure(results: Iterable[EraScores]) -> None:
    """Raise the first failure the era tasks returned (see :func:`score_staged_era_task`), if any."""
    for result in results:
        if result.failure is not None:
            raise result.failure


def joined(pieces: list[np.ndarray]) -> np.ndarray:
    """Arrays stacked along their first axis (the one array itself, uncopied, when there is only one)."""
    return pieces[0] if len(pieces) == 1 else np.vstack(pieces)


def compact_ranks(by_model: np.ndarray) -> np.ndarray:
    """Predictions (models × rows) as their tie-kept doubled ranks, compact: all the scoring needs of them."""
    return Ranks.of(by_model.T).compact()


def batch_rejections(batch: StagedBatch) -> list[Rejection]:
    return batch.rejections


def load_benchmark(storage: Storage, inputs: JobInputs) -> tuple[dict[str, np.ndarray], list[Rejection]]:
    """The benchmark's predictions per era label (validated like a submission)."""
    if inputs.benchmark_file is None:
        return {}, []
    name, info = inputs.benchmark_file
    label = f"benchmark/{name}"
    contents = storage.read_many([info.path])
    predictions, rejections = merge_model_files(label, [(storage.label(info.path), contents[info.path])],
                                                inputs.index)
    if predictions is None:
        return {}, rejections
    by_era, problems = split_by_era(label, predictions, inputs.index, files=[storage.label(info.path)])
    return {inputs.index.era_label(e): v for e, v in by_era.items()}, rejections + problems


# ------------------------------------------------------------------------- score


def read_era_rows(storage: Storage, era: EraPlan, columns: list[str], target: str,
                  features: Sequence[str] = ()) -> pd.DataFrame:
    """The era's resolved rows from every file that holds it, sorted by id.

    A missing value in one of ``features`` on a resolved row is a StorageError
    naming the file, the era and the columns: no metric is defined on it.
    """
    frames = []
    for path in era.files:
        frame = storage.read_data(path, columns, eras=[era.value])
        frame = frame[frame[target].notna()]
        holes = frame[list(features)].isna().any()
        if holes.any():
            names = holes.index[holes].tolist()
            raise StorageError(f"{display_files(storage, [path])}: era {era.label}: feature column(s) "
                               f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''} have missing values (NaN); "
                               "features must be complete on every row with a resolved target")
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return rows.sort_values("id", kind="stable").reset_index(drop=True)


@returning_freed_memory
def score_era_task(
    storage: Storage,
    era: EraPlan,
    features: list[str],
    params: ScoringParams,
    slices: list[tuple[list[str], np.ndarray] | None],
    stakes: pd.Series | None,
    benchmark: np.ndarray | None,
    cache: EraCache | None = None,
    write: CacheWrite | None = None,
) -> EraScores:
    """Score every model valid in one era (one Dask task).

    Fresh ranked predictions come from ``slices``; with ``cache``, the cached
    models it keeps join them and keep their single-model scores when those
    still hold. Models are scored in name order, as a full run orders them, so
    the meta model is summed in the same order. With ``write``, the era's ranked
    predictions and scores are written to the output storage for a later refresh.
    """
    rows = read_era_rows(storage, era, ["era", *features, params.target, *params.extra_targets], params.target,
                         features)
    ids = rows["id"].to_numpy()
    by_name = {name: values for names, matrix in filter(None, slices) for name, values in zip(names, matrix)}
    kept_scores = pd.DataFrame()
    if cache is not None and cache.keep:
        cached = read_columns(cache.out, cache.files.predictions, [CACHED_IDS_COLUMN, *cache.keep])
        if not np.array_equal(cached.pop(CACHED_IDS_COLUMN), ids):
            raise InputError(f"era {era.label}: cached predictions do not match the era's ids; delete the cache")
        by_name.update({name: values for name, values in cached.items() if name not in by_name})
        if cache.keep_scores:
            kept_scores = single_model_scores(read_parquet(cache.out, cache.files.scores), cache.keep)
    if not by_name:
        return EraScores(era.label, empty_per_era(params), skipped="no valid submission covers this era")
    models = sorted(by_name)
    by_model = np.vstack([by_name[name] for name in models])
    if by_model.shape[1] != len(rows):
        raise InputError(f"era {era.label}: {len(rows)} resolved rows in the data but {by_model.shape[1]} predicted")
    stake = np.ones(len(models)) if stakes is None else stakes.reindex(models).fillna(0.0).to_numpy()
    rescore = ~np.isin(models, kept_scores.index) if len(kept_scores) else None
    one_blas_thread()
    try:
        scores = score_era(
            Ranks(by_model.T),
            rows[params.target].to_numpy(np.float64),
            rows[features].to_numpy(),
            stake,
            benchmark,
            proportion=params.neutralization,
            extra_targets={t: rows[t].to_numpy(np.float64) for t in params.extra_targets},
            per_model=rescore,
        )
    except DegenerateEraError as error:  # its models' predictions are cached all the same, for when the data changes
        return EraScores(era.label, empty_per_era(params), skipped=str(error), models=tuple(models),
                         cache=write_era_cache(write, ids, models, by_model, None))
    if benchmark is None:
        scores["bmc"] = np.full(len(models), np.nan)
    table = pd.DataFrame({"era": era.label, "model": models, **scores})
    if len(kept_scores):
        table = table.set_index("model")
        table.update(kept_scores, overwrite=False)
        table = table.reset_index()
    table = table[list(per_era_columns(params))]
    return EraScores(era.label, table, models=tuple(models), cache=write_era_cache(write, ids, models, by_model, table))


def write_era_cache(write: CacheWrite | None, ids: np.ndarray, models: list[str], by_model: np.ndarray,
                    table: pd.DataFrame | None) -> EraCacheFiles | None:
    """Write an era's ranked predictions and, unless it was skipped (None), its scores where ``write`` says; return
    what was written (None when not asked)."""
    if write is None:
        return None
    write.out.write_columns(write.files.predictions, {CACHED_IDS_COLUMN: ids, **dict(zip(models, by_model))})
    if table is None:
        return EraCacheFiles(write.files.predictions, None)
    write.out.write_parquet(write.files.scores, table)
    return write.files


def read_parquet(out: Storage, relpath: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A parquet file the job itself wrote (a cache file), only the given columns."""
    return pd.read_parquet(io.BytesIO(out.read_bytes(relpath)), columns=columns)


def read_columns(out: Storage, relpath: str, columns: list[str]) -> dict[str, np.ndarray]:
    """The given columns of a parquet file the job itself wrote, as arrays by name (no pandas frame; numeric
    columns may come back read-only)."""
    table = pq.read_table(pa.BufferReader(out.read_bytes(relpath)), columns=columns)
    return {name: table.column(name).to_numpy() for name in columns}


def single_model_scores(table: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """The metrics of ``models`` that depend on each model alone, indexed by model."""
    columns = [c for c in table.columns if c in SINGLE_MODEL_METRICS or c.startswith("corr_")]
    return table[table["model"].isin(models)].set_index("model")[columns]


def per_era_columns(params: ScoringParams) -> tuple[str, ...]:
    return PER_ERA_COLUMNS + tuple(f"corr_{t}" for t in params.extra_targets)


def empty_per_era(params: ScoringParams) -> pd.DataFrame:
    columns = per_era_columns(params)
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("era", "model") else np.float64) for c in columns})


# ------------------------------------------------------------------------- graph


def batches(submissions: dict[str, list[FileInfo]], params: ScoringParams) -> list[list[ModelFiles]]:
    """Models in name order, each with its files in application order, cut into load tasks' batches."""
    return in_batches([ModelFiles.of(m, submissions[m]) for m in sorted(submissions)], params.models_per_task)


def in_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive runs of ``items``, as few as hold at most ``size`` items each, their lengths differing by one at
    most: load tasks of about the same size end at about the same time before scoring, which needs them all (500
    models in runs of 64 were seven runs of 64 and one of 52)."""
    count = -(-len(items) // size)
    cuts = [len(items) * i // count for i in range(count + 1)] if count else []
    return [list(items[a:b]) for a, b in zip(cuts, cuts[1:])]


def chunked(items: Sequence[T], sizes: Sequence[int], max_items: int, max_bytes: int) -> list[list[T]]:
    """Consecutive runs of ``items`` of at most ``max_items`` items and ``max_bytes`` bytes (or one item)."""
    runs: list[list[T]] = []
    total = 0
    for item, size in zip(items, sizes):
        if not runs or len(runs[-1]) >= max_items or total + size > max_bytes:
            runs.append([])
            total = 0
        runs[-1].append(item)
        total += size
    return runs


def build_graph(
    storage: Storage, inputs: JobInputs, params: ScoringParams, benchmark: dict[str, np.ndarray],
    model_batches: list[list[ModelFiles]], scratch: Storage, folder: str,
) -> tuple[list[Delayed], list[Delayed]]:
    """One load task per batch of models, its ranks written to ``folder`` in ``scratch``; one score task per era,
    which reads its part of every batch's file.

    Task names carry a token of this job's inputs, parameters and scratch
    folder: two jobs on one cluster must never share results, nor one job's
    scratch files, which it removes when it ends. What every era task takes (the era
    index, the feature names, the stakes) is one node of the graph, not a copy
    in each task that Dask would walk and ship: at 600 eras × 2,376 features
    walking the names alone took 1.3 s.
    """
    token = dask.base.tokenize(storage, input_record(inputs), params, scratch, folder)
    index = dask.delayed(inputs.index, traverse=False, name=f"era-index-{token}")
    features = dask.delayed(inputs.features, traverse=False, name=f"features-{token}")
    stakes = dask.delayed(inputs.stakes, traverse=False, name=f"stakes-{token}")
    loaded = [
        dask.delayed(stage_model_batch, pure=True)(storage, batch, index, params.read_window_bytes, scratch, folder,
                                                   dask_key_name=f"load-{i}-{token}")
        for i, batch in enumerate(model_batches)
    ]
    scored = [
        dask.delayed(score_staged_era_task, pure=True)(
            storage,
            era,
            features,
            params,
            scratch,
            loaded,
            stakes,
            benchmark.get(era.label),
            dask_key_name=f"score-era-{era.label}-{token}",
        )
        for era in inputs.eras
    ]
    rejections = [dask.delayed(batch_rejections, pure=True)(b) for b in loaded]
    return scored, rejections


# ------------------------------------------------------------------------ run


def rejections_frame(rejections: Sequence[Rejection]) -> pd.DataFrame:
    if not rejections:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REJECTION_COLUMNS})
    return pd.DataFrame([asdict(r) for r in rejections], columns=list(REJECTION_COLUMNS))


def input_record(inputs: JobInputs) -> list[dict]:
    """Every input file seen (path, size, version): the manifest's record and refresh's baseline."""
    files = list(inputs.data_files) + [f for fs in inputs.submissions.values() for f in fs]
    files += [f for f in (inputs.stakes_file, inputs.feature_sets_file) if f is not None]
    if inputs.benchmark_file is not None:
        files.append(inputs.benchmark_file[1])
    return [asdict(f) for f in sorted(files, key=lambda f: f.path)]


@contextlib.contextmanager
def large_graph_allowance(nbytes: int) -> Iterator[None]:
    """Raise Dask's large-graph warning threshold by ``nbytes``: data a graph holds once by design.

    The warning is meant for data copied into many tasks. The era index and the
    benchmark are each in the graph once (:func:`build_graph`) and grow with the
    data: 12 MiB and 3 MiB at 80 eras of 5,000 rows, which made every such job
    warn. Anything else that makes the graph large still does.
    """
    key = "distributed.admin.large-graph-warning-threshold"
    with dask.config.set({key: parse_bytes(dask.config.get(key)) + nbytes}):
        yield


def run_job(
    client: Client,
    storage: Storage,
    params: ScoringParams,
    *,
    scratch: Storage | None = None,
    log: Callable[[str], None] = lambda _: None,
    on_progress: Callable[[Progress], None] | None = None,
) -> JobResult:
    """Discover, load, score and reduce on ``client``'s cluster: the whole job short of publishing.

    The load tasks leave the batches' ranks for the score tasks in a folder of
    their own at the top of ``scratch`` (:data:`SCRATCH_PREFIX`; by default
    ``storage``, the input root, under which the CLI's default output lies too),
    which every worker must reach and write to. The folder is removed when the
    job ends (see :func:`job_scratch`). ``on_progress`` hears how far reading
    and validating (models) and scoring (eras) are.
    """
    started = time.perf_counter()
    inputs = discover(storage, params)
    log(f"{counted(len(inputs.data_files), 'data file')}, {counted(len(inputs.eras), 'resolved era')} "
        f"({len(inputs.unresolved)} unresolved skipped), {counted(len(inputs.features), 'feature')}, "
        f"{counted(len(inputs.submissions), 'model')}")
    benchmark, benchmark_rejections = load_benchmark(storage, inputs)
    discovered = time.perf_counter()
    model_batches = batches(inputs.submissions, params)
    with job_scratch(client, storage if scratch is None else scratch, log) as job:
        scored, rejected = build_graph(storage, inputs, params, benchmark, model_batches, job.storage, job.folder)
        with large_graph_allowance(inputs.index.nbytes + sum(values.nbytes for values in benchmark.values())):
            futures = job.track(client.compute(scored + rejected, retries=TASK_RETRIES))
        if on_progress is not None:
            follow([Phase("read and validate", "models", futures[len(scored):], [len(b) for b in model_batches]),
                    Phase("score", "eras", futures[: len(scored)])], on_progress)
        results = client.gather(futures)
    era_results: list[EraScores] = results[: len(scored)]
    raise_era_failure(era_results)
    # The benchmark's last: a job that scored nothing names the first rejection, which should be a submission's.
    rejections = inputs.rejections + [r for batch in results[len(scored):] for r in batch] + benchmark_rejections
    computed = time.perf_counter()
    tables = [r.table for r in era_results if r.skipped is None]
    skipped = {r.label: r.skipped for r in era_results if r.skipped is not None}
    timings = {"discover": discovered - started, "score": computed - discovered}
    return job_result(storage, params, inputs, tables, skipped, rejections, timings)


@dataclass
class JobScratch:
    """A job's scratch folder at the top of ``storage``, and the tasks that must end before it is removed (those
    that write there, or depend on them)."""

    storage: Storage
    folder: str
    tasks: list[Future] = field(default_factory=list)

    def track(self, futures: list[Future]) -> list[Future]:
        """Count ``futures`` among the tasks that must end before the folder is removed; return them."""
        self.tasks += futures
        return futures


@contextlib.contextmanager
def job_scratch(client: Client, storage: Storage, log: Callable[[str], None]) -> Iterator[JobScratch]:
    """A new scratch folder (:data:`SCRATCH_PREFIX`) at the top of ``storage``, its heartbeat renewed while the
    block runs (:func:`scratch_heartbeat`), removed when the block ends; first, the folders other jobs left behind
    are swept (:func:`sweep_stale_scratch`).

    When the block fails, the folder is removed once its tracked tasks have
    ended: they run on after one of them fails, and would write again. When
    it is interrupted, they are cancelled instead, and one already running
    may still write there afterwards (a folder the sweep removes an hour
    later). A failed removal or sweep is logged, not raised.
    """
    try:
        sweep_stale_scratch(storage, log)
    except Exception as error:  # housekeeping: s3fs also raises botocore's errors, which are not OSErrors
        log(f"could not sweep old scratch folders in {storage.display_url}: {describe_error(error)}")
    job = JobScratch(storage, f"{SCRATCH_PREFIX}{uuid.uuid4().hex}")
    try:
        with scratch_heartbeat(storage, job.folder, log):
            try:
                yield job
            except Exception:
                await_or_cancel(client, job.tasks)
                raise
            except BaseException:
                client.cancel(job.tasks)
                raise
    finally:
        remove_scratch(storage, job.folder, log)


@contextlib.contextmanager
def scratch_heartbeat(storage: Storage, folder: str, log: Callable[[str], None],
                      every: float = SCRATCH_HEARTBEAT_SECONDS) -> Iterator[None]:
    """Write ``folder``'s heartbeat file now, then again every ``every`` seconds until the block ends: its fresh
    write time is the sign, for other jobs' sweeps, that the folder's job is alive (its text, the time, is for
    people looking into the storage).

    The first write failing fails the job (the workers could not write there
    either); a later failure is told and the write tried again at the next
    beat. No beat is written once the block has ended, so none brings a
    removed folder back.
    """
    relpath = f"{folder}/{SCRATCH_HEARTBEAT}"

    def beat() -> None:
        storage.write_text(relpath, f"numerai-dask job alive at {datetime.now(timezone.utc).isoformat()}\n")

    try:
        beat()
    except Exception as error:
        raise JobError(f"cannot write the job's scratch {storage.display(relpath)} ({describe_error(error)}); the "
                       "client and the workers must be able to write there (the output storage, --out, for the "
                       "command line)") from error
    stop, writing = threading.Event(), threading.Lock()

    def keep_beating() -> None:
        failing = False
        while not stop.wait(every):
            with writing:
                if stop.is_set():
                    return
                try:
                    beat()
                except Exception as error:  # the thread must outlive any failure, botocore's included
                    if not failing:
                        log(f"could not renew the scratch heartbeat {storage.display(relpath)} "
                            f"({describe_error(error)}); retrying every {every:.0f} s: after "
                            f"{SCRATCH_STALE_SECONDS / 3600:.0f} h without one, another job may remove this scratch")
                    failing = True
                    continue
            if failing:
                log(f"renewed the scratch heartbeat {storage.display(relpath)} again")
            failing = False

    threading.Thread(target=keep_beating, name="numerai-dask scratch heartbeat", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        with writing:  # a beat being written ends first; any later one sees the stop
            pass


def sweep_stale_scratch(storage: Storage, log: Callable[[str], None], stale_after: float = SCRATCH_STALE_SECONDS,
                        now: float | None = None) -> list[str]:
    """Remove the scratch folders at the top of ``storage`` with no file written for ``stale_after`` seconds;
    return their names.

    A live job rewrites its folder's heartbeat (:func:`scratch_heartbeat`). A
    killed client leaves its folder behind, at Numerai scale tens of GB of
    ranks, and its heartbeat stops; an interrupted job's folder may come back
    without one when a task still running writes its ranks. Either is
    removed once its newest file is ``stale_after`` old, by the storage's
    times against this client's clock, which must agree within that; a folder
    whose files tell no time is left.
    """
    now = time.time() if now is None else now
    removed = []
    for name in storage.top_folders(SCRATCH_PREFIX):
        if not _SCRATCH_FOLDER.fullmatch(name):
            continue
        touched = storage.newest_change(name)
        if touched is None:
            log(f"scratch folder {storage.display(name)} has no file that tells its time: left; "
                "it can be deleted once no job is running")
        elif now - touched > stale_after:
            log(f"removing the scratch folder {storage.display(name)}, untouched for {(now - touched) / 3600:.1f} h "
                "(its job ended without removing it)")
            remove_scratch(storage, name, log, "another job's scratch")
            removed.append(name)
    return removed


def await_or_cancel(client: Client, tasks: list[Future]) -> None:
    """Wait until ``tasks`` have ended; cancel them instead if interrupted meanwhile (Ctrl-C)."""
    try:
        if tasks:
            wait(tasks)
    except BaseException:
        client.cancel(tasks)
        raise


def remove_scratch(scratch: Storage, folder: str, log: Callable[[str], None], whose: str = "the job's scratch") -> None:
    """Remove a scratch folder; a failure to is told, not raised (the job's result stands without it)."""
    try:
        scratch.delete(folder)
    except OSError as error:
        log(f"could not remove {whose} {scratch.display(folder)}: {describe_error(error)}")


def job_result(
    storage: Storage,
    params: ScoringParams,
    inputs: JobInputs,
    tables: list[pd.DataFrame],
    skipped: dict[str, str],
    rejections: Sequence[Rejection],
    timings: dict[str, float],
    previous: pd.DataFrame | None = None,
) -> JobResult:
    """The reduce: per-era tables become the leaderboard (ranked against ``previous``), plus the manifest."""
    started = time.perf_counter()
    per_era = pd.concat(tables, ignore_index=True) if tables else empty_per_era(params)
    if per_era.empty:
        raise JobError(f"no model could be scored in any era: {why_nothing_scored(inputs, rejections)}")
    per_era = per_era.sort_values(["era", "model"], key=era_sort_key, kind="stable").reset_index(drop=True)
    leaderboard = build_leaderboard(per_era, params.payout, previous)
    timings = {**timings, "reduce": time.perf_counter() - started}
    manifest = {
        "root": storage.display_url,
        "parameters": {**asdict(params), "payout": asdict(params.payout)},
        "inputs": input_record(inputs),
        "eras": {"scored": era_order(per_era["era"]), "skipped": skipped, "unresolved": inputs.unresolved},
        "benchmark": storage.label(inputs.benchmark_file[1].path) if inputs.benchmark_file else None,
        "models": {"submitted": len(inputs.submissions), "scored": int(per_era["model"].nunique()),
                   "rejections": len(rejections), "not_scored": not_scored(inputs, per_era, rejections)},
        "versions": {"numerai_dask": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "pandas": pd.__version__, "dask": dask.__version__},
        "timings_seconds": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    return JobResult(per_era, leaderboard, rejections_frame(rejections), skipped, manifest, inputs)


def why_nothing_scored(inputs: JobInputs, rejections: Sequence[Rejection]) -> str:
    """Why a job scored nothing, for its error: nothing is published, so the rejections are told here."""
    if not rejections:
        models = counted(len(inputs.submissions), "model predicts", "models predict")
        return f"every era the {models} is unresolved or skipped"
    return rejections_text(rejections)


def rejections_text(rejections: Sequence[Rejection]) -> str:
    """How many ``rejections`` there are, and the first of them: for an error, which publishes none."""
    first = rejections[0]
    era = f" era {first.era}" if first.era else ""
    return f"{counted(len(rejections), 'rejection')}, the first: {first.model} · {first.file}{era}: {first.reason}"


def not_scored(inputs: JobInputs, per_era: pd.DataFrame, rejections: Sequence[Rejection]) -> list[str]:
    """The submitted models no era scored and no rejection names, sorted: they predict only eras that are
    unresolved or were skipped, so their absence from the leaderboard has no other record."""
    return sorted(set(inputs.submissions) - set(per_era["model"]) - {r.model for r in rejections})


def era_sort_key(column: pd.Series) -> pd.Series:
    """Sort key putting eras in scoring order (numeric when all are digits) and other columns as they are."""
    if column.name != "era":
        return column
    position = {era: i for i, era in enumerate(era_order(column))}
    return column.astype(str).map(position)


def follow(phases: Sequence[Phase], report: Callable[[Progress], None], every: float = 2.0) -> None:
    """Tell ``report`` how far each phase is as its futures finish: when a phase begins and ends, and in
    between at most every ``every`` seconds.

    Phases run one after another: a phase's clock starts when the one before it
    ends, unless its own work finished earlier. The estimate of the time left
    assumes the rest goes at the pace so far. Failed futures count as
    finished: gathering them raises afterwards.
    """
    phases = [phase for phase in phases if phase.futures]
    if not phases:
        return
    owner = {}
    for i, phase in enumerate(phases):
        for future, weight in zip(phase.futures, phase.weights or [1] * len(phase.futures)):
            owner[future.key] = (i, weight)
    totals = [sum(phase.weights or [1] * len(phase.futures)) for phase in phases]
    remaining = [len(phase.futures) for phase in phases]
    done = [0] * len(phases)
    began = [time.perf_counter()] * len(phases)

    def tell(i: int) -> None:
        elapsed = time.perf_counter() - began[i]
        eta = elapsed / done[i] * (totals[i] - done[i]) if done[i] else None
        report(Progress(phases[i].name, phases[i].unit, done[i], totals[i], elapsed, eta))

    tell(0)
    last = time.perf_counter()
    for future in as_completed([f for phase in phases for f in phase.futures]):
        i, weight = owner[future.key]
        done[i] += weight
        remaining[i] -= 1
        if remaining[i] == 0:
            tell(i)
            if i + 1 < len(phases) and remaining[i + 1]:
                if not done[i + 1]:
                    began[i + 1] = time.perf_counter()
                tell(i + 1)
            last = time.perf_counter()
        elif time.perf_counter() - last >= every:
            tell(i)
            last = time.perf_counter()


# ------------------------------------------------- a second pass for the report


def prediction_correlations(
    client: Client, storage: Storage, result: JobResult, models: int = CORRELATED_MODELS
) -> pd.DataFrame:
    """How alike the top models' predictions are: the mean over eras of their per-era Spearman correlation.

    A small second pass after the reduce: one Dask task reads the files of the
    leaderboard's first ``models`` models again, validated and cut by era
    exactly as for scoring. Each pair is averaged over the eras both models
    were scored in. An empty table when fewer than two models are available.
    """
    inputs = result.inputs
    if inputs is None:
        raise JobError("prediction_correlations needs the job's inputs (a JobResult from run_job or a refresh)")
    top = [m for m in result.leaderboard["model"].head(models) if m in inputs.submissions]
    if len(top) < 2:
        return pd.DataFrame(dtype=np.float64)
    files = [ModelFiles.of(m, inputs.submissions[m]) for m in top]
    index = dask.delayed(inputs.index, traverse=False)
    task = dask.delayed(rank_correlation_task, pure=True)(storage, files, index)
    with large_graph_allowance(inputs.index.nbytes):
        future = client.compute(task, retries=TASK_RETRIES)
    return future.result()


def rank_correlation_task(storage: Storage, models: list[ModelFiles], index: EraIndex) -> pd.DataFrame:
    """Read ``models`` (one Dask task) and average their per-era rank correlations."""
    return mean_rank_correlation(load_model_batch(storage, models, index), [m.model for m in models])


def mean_rank_correlation(batch: ModelBatch, names: list[str]) -> pd.DataFrame:
    """Mean over eras of the Spearman correlation (Pearson of average ranks) of every pair of ``names``.

    The batch holds doubled average ranks already: their Pearson correlation is the Spearman correlation.
    """
    position = {name: i for i, name in enumerate(names)}
    total = np.zeros((len(names), len(names)))
    count = np.zeros((len(names), len(names)))
    for era_models, matrix in batch.by_era.values():
        if len(era_models) < 2:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation = np.corrcoef(matrix.astype(np.float64))
        at = np.ix_([position[m] for m in era_models], [position[m] for m in era_models])
        finite = np.isfinite(correlation)
        total[at] += np.where(finite, correlation, 0.0)
        count[at] += finite
    mean = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return pd.DataFrame(mean, index=names, columns=names)
