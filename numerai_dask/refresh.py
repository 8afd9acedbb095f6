"""Incremental state: a refresh rescores only what changed since the last published run.

State lives with the outputs. A refreshed run's folder holds ``state.json``:
every input seen (path, size, version), the scoring fingerprint, the stakes,
and per era the models scored there and that era's cached validated
predictions, ranked, and scores (``cache/eras/<era>/<run_id>.{ranks,scores}.parquet``).
``latest.json`` points at the run, so leaderboard, state and caches switch
together in one PUT.

What each kind of change costs (everything else is reused):

=============================  =====================================================================
change                         work
=============================  =====================================================================
new or rewritten model files   that model is read again; every era gets its cross-model metrics
                               (mmc, bmc, tc, cwmm) recomputed; single-model metrics for it only
files appended to a model      only the new files are read; only the eras they touch are rescored
deleted model                  cross-model metrics of the eras it was scored in
stakes                         cross-model metrics of the eras holding a model whose stake changed
benchmark                      cross-model metrics of every era
a data file added/rewritten    its eras: every metric, from cached ranked predictions
an era's ids changed, an era   every submission is read again (those predictions were never cached)
removed, or newly resolved,
or rows of an era resolved
or unresolved
target, features, neutraliz-   everything
ation, project version, the
state's format
payout rule only               no era; the leaderboard is rebuilt
=============================  =====================================================================

Two refreshes of the same output coordinate through a lease on the storage
itself (:class:`Lease`); the loser says who holds it and exits non-zero.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from distributed import Client

from numerai_dask import __version__
from numerai_dask.pipeline import (
    CacheWrite,
    EraCache,
    EraCacheFiles,
    EraPlan,
    EraScores,
    JobError,
    JobInputs,
    JobResult,
    ModelBatch,
    ModelFiles,
    Phase,
    Progress,
    TASK_RETRIES,
    ScoringParams,
    StagedBatch,
    batch_rejections,
    discover,
    compact_ranks,
    follow,
    in_batches,
    input_record,
    job_result,
    job_scratch,
    joined,
    load_benchmark,
    load_model_batch,
    prediction_correlations,
    read_parquet,
    raise_era_failure,
    returning_freed_memory,
    score_staged_era_task,
    stage_batch,
)
from numerai_dask.report import new_run_id, publish_run
from numerai_dask.settings import InvalidSetting, require
from numerai_dask.storage import FileInfo, Storage, StorageError
from numerai_dask.submissions import (EraIndex, Predictions, Rejection, describe_error, merge_model_files, rows_in,
                                      split_by_era)
from numerai_dask.wording import counted

#: Part of every cached score's fingerprint: a cache of another format is rescored, never read. 2: an era's
#: cached predictions hold their ids under ``pipeline.CACHED_IDS_COLUMN`` (in 1, under "id", a valid model name).
#: 3: the state records which eras the benchmark covered (``benchmark_eras``).
STATE_FORMAT = 3
STATE_FILE = "state.json"
SAFE_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LeaseBusy(JobError):
    """Another refresh holds the output's lease."""


class NothingToDo(Exception):
    """No input or parameter changed since the last run."""


def digest(value: object) -> str:
    """A short stable fingerprint of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def scoring_fingerprint(params: ScoringParams, features: Sequence[str]) -> str:
    """What every cached score depends on: target, extra targets, features, neutralization, code version."""
    return digest([STATE_FORMAT, __version__, params.target, list(params.extra_targets), list(features),
                   params.neutralization])


#: Where the era caches are, under the output.
CACHE_FOLDER = "cache/eras"


def era_directory(label: str) -> str:
    """The cache folder of one era; labels that are not plain names are hashed, never used as paths."""
    return f"{CACHE_FOLDER}/{label if SAFE_LABEL.fullmatch(label) else 'h' + digest(label)}"


def file_entries(storage: Storage, files: Sequence[FileInfo]) -> list[list]:
    return [[storage.relative(f.path), f.size, f.version, f.stamp] for f in files]


# --------------------------------------------------------------------- lease


@dataclass
class Lease:
    """Exclusive right to refresh one output, held through objects on the storage itself.

    Each holder creates ``lease/<generation>.json`` with an exclusive create
    (O_EXCL locally, a conditional PUT on S3), one generation above the newest:
    of two refreshes racing for the same generation only one can create it. A
    generation is free once released (``<generation>.released``) or expired.
    """

    out: Storage
    seconds: float = 2 * 3600.0
    owner: str = field(default_factory=lambda: f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}")
    generation: int | None = None

    def _generations(self) -> list[int]:
        names = [p.rsplit("/", 1)[-1] for p in self.out.fs.ls(self.out.path("lease"), detail=False)] \
            if self.out.exists("lease") else []
        return sorted(int(n.split(".")[0]) for n in names if n.endswith(".json") and n.split(".")[0].isdigit())

    def acquire(self) -> None:
        """Take the lease or raise :class:`LeaseBusy` naming the holder and until when."""
        self.out.fs.invalidate_cache()
        generations = self._generations()
        newest = generations[-1] if generations else 0
        if generations and not self.out.exists(f"lease/{newest}.released"):
            holder = json.loads(self.out.read_bytes(f"lease/{newest}.json"))
            if holder["expires_at"] > time.time():
                until = dt.datetime.fromtimestamp(holder["expires_at"], dt.timezone.utc).isoformat(timespec="seconds")
                raise LeaseBusy(f"another refresh holds the lease on {self.out.display_url}: {holder['owner']} until "
                                f"{until}; if it is no longer running, an empty file "
                                f"{self.out.display(f'lease/{newest}.released')} releases it")
        record = {"owner": self.owner, "acquired_at": time.time(), "expires_at": time.time() + self.seconds}
        try:
            self.out.create_exclusive(f"lease/{newest + 1}.json", json.dumps(record).encode())
        except FileExistsError:
            raise LeaseBusy(f"another refresh took the lease on {self.out.display_url} at the same moment") from None
        self.generation = newest + 1

    def check(self) -> None:
        """Raise :class:`LeaseBusy` unless this lease is still the newest and unexpired (call before publishing)."""
        self.out.fs.invalidate_cache()
        record = json.loads(self.out.read_bytes(f"lease/{self.generation}.json"))
        if self._generations()[-1] != self.generation or record["expires_at"] <= time.time():
            raise LeaseBusy("the lease expired or was taken over during the refresh: not publishing")

    def release(self) -> None:
        if self.generation is not None:
            self.out.write_bytes(f"lease/{self.generation}.released", b"")
            for old in self._generations()[:-1]:
                self.out.delete(f"lease/{old}.json")
                self.out.delete(f"lease/{old}.released")
            self.generation = None


# ---------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Previous:
    """The last published run: its folder, state (None after a plain ``score``) and leaderboard."""

    folder: str
    state: dict | None
    leaderboard: pd.DataFrame | None


def read_previous(out: Storage) -> Previous | None:
    """The run ``latest.json`` names, with its state and leaderboard (None when nothing was published).
    Storage refusing (credentials S3 does not accept) is a StorageError naming the output."""
    try:
        return _read_previous(out)
    except OSError as error:
        raise StorageError(f"cannot read the previous run in {out.display_url} ({describe_error(error)})") from None


def _read_previous(out: Storage) -> Previous | None:
    if not out.exists("latest.json"):
        return None
    try:
        folder = json.loads(out.read_bytes("latest.json"))["path"]
        if not isinstance(folder, str):
            raise TypeError(f"its path is {folder!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise StorageError(f"{out.display('latest.json')} does not name a run ({describe_error(error)}); it should "
                           'hold {"path": "runs/<run id>", …}: restore it, or remove it to score afresh') from None
    state = json.loads(out.read_bytes(f"{folder}/{STATE_FILE}")) if out.exists(f"{folder}/{STATE_FILE}") else None
    board = None
    if out.exists(f"{folder}/leaderboard.parquet"):
        board = read_parquet(out, f"{folder}/leaderboard.parquet")
    return Previous(folder, state, board)


@dataclass
class RefreshPlan:
    """What must be read again and which eras may need work, before any submission is read."""

    fingerprint: str
    full: list[str]
    append: dict[str, list[str]]
    deleted: set[str]
    stakes: dict[str, float]
    stakes_changed: set[str]
    benchmark_changed: bool
    data: dict[str, str]  # era label → fingerprint of the files holding it
    era_ids: dict[str, str]  # every era (resolved or not) → fingerprint of its ids
    reread_all: bool
    previous_eras: dict[str, dict]


def effective_stakes(inputs: JobInputs) -> dict[str, float]:
    """The stake each model is scored with: the stakes file (missing → 0), or 1 for all without one."""
    if inputs.stakes is None:
        return {m: 1.0 for m in inputs.submissions}
    return {m: float(inputs.stakes.get(m, 0.0)) for m in inputs.submissions}


def era_fingerprints(storage: Storage, inputs: JobInputs) -> tuple[dict[str, str], dict[str, str]]:
    """Per resolved era the fingerprint of the data files holding it; per era (any) of its ids and of which of
    them have a resolved target: an era's cached predictions hold its resolved rows, so when those change the
    cache no longer fits the era and every submission is read again."""
    entries = {f.path: [storage.relative(f.path), f.size, f.version, f.stamp] for f in inputs.data_files}
    data = {era.label: digest([entries[p] for p in era.files]) for era in inputs.eras}
    index = inputs.index
    ids = {index.era_label(e): digest([index.ids_of(e).tolist(), np.packbits(index.resolved_of(e)).tobytes().hex()])
           for e in index.eras}
    return data, ids


def plan_refresh(storage: Storage, inputs: JobInputs, params: ScoringParams, state: dict | None) -> RefreshPlan:
    """Compare what storage holds now with the previous state: which models to read, which eras may change."""
    fingerprint = scoring_fingerprint(params, inputs.features)
    data, era_ids = era_fingerprints(storage, inputs)
    stakes = effective_stakes(inputs)
    files = {m: file_entries(storage, fs) for m, fs in inputs.submissions.items()}
    benchmark = file_entries(storage, [inputs.benchmark_file[1]]) if inputs.benchmark_file else None
    usable = state is not None and state["fingerprint"] == fingerprint
    old_ids = state["era_ids"] if usable else {}
    resolved_before = set(state["eras"]) if usable else set()
    reread_all = not usable or any(era_ids.get(label) != ids for label, ids in old_ids.items()) or any(
        label in old_ids and label not in resolved_before for label in data
    )
    index_grew = bool(set(era_ids) - set(old_ids))
    full, append = [], {}
    old_models = state["models"] if usable else {}
    for model, entries in sorted(files.items()):
        old = old_models.get(model)
        if reread_all or old is None or (old["files"] == entries and old["rejected"] and index_grew):
            full.append(model)
        elif old["files"] == entries:
            continue
        elif not old["rejected"] and entries[: len(old["files"])] == old["files"]:
            append[model] = [storage.path(e[0]) for e in entries[len(old["files"]):]]
        else:
            full.append(model)
    old_stakes = state["stakes"] if usable else {}
    return RefreshPlan(
        fingerprint=fingerprint,
        full=full,
        append=append,
        deleted=set(old_models) - set(files),
        stakes=stakes,
        stakes_changed={m for m in stakes if m in old_stakes and old_stakes[m] != stakes[m]},
        benchmark_changed=usable and state["benchmark"] != benchmark,
        data=data,
        era_ids=era_ids,
        reread_all=reread_all,
        previous_eras=state["eras"] if usable and not reread_all else {},
    )


# ---------------------------------------------------------------------- load


@dataclass(frozen=True)
class ChangedModels:
    """A batch of re-read models: their ranks by era in the refresh's scratch, and per model the eras replaced
    (None = all)."""

    batch: StagedBatch
    replaced: dict[str, frozenset[str] | None]


def appended_predictions(
    storage: Storage, model: str, appended: list[str], every_file: list[str], index: EraIndex,
    previous_eras: dict[str, dict],
) -> dict[str, np.ndarray] | None:
    """A model's ranked predictions for the eras its appended files touch, or None when only a full read can tell.

    1. read and merge the appended files: the eras they touch;
    2. when the model was already scored in one of those eras (a re-upload of
       part of it), merge all of its files instead: the cache holds ranks, to
       which part of an era cannot be applied; the earlier files are unchanged,
       so every other era keeps its cached ranks;
    3. cut by era and rank the touched eras.
    Any rejection, an unknown id or an incomplete era sends the model to a
    full read, where the same rules as a full run decide.
    """
    delta = merged_predictions(storage, model, appended, index)
    if delta is None:
        return None
    eras, _ = index.locate_rows(rows_in(delta, index))
    if np.any(eras < 0):
        return None
    touched = [index.eras[i] for i in np.unique(eras) if index.resolved_of(index.eras[i]).any()]
    if any(model in previous_eras.get(index.era_label(era), {}).get("models", ()) for era in touched):
        delta = merged_predictions(storage, model, every_file, index)
        if delta is None:
            return None
    by_era, problems = split_by_era(model, delta, index, files=[storage.label(p) for p in every_file])
    if problems:
        return None
    return {index.era_label(e): compact_ranks(by_era[e][None, :])[0] for e in touched if e in by_era}


def merged_predictions(storage: Storage, model: str, paths: list[str], index: EraIndex) -> Predictions | None:
    """The model's predictions from ``paths`` in order, or None when any file is rejected."""
    contents = storage.read_many(paths)
    merged, problems = merge_model_files(model, [(storage.label(p), contents[p]) for p in paths], index)
    return None if problems else merged


@returning_freed_memory
def load_changed_models(
    storage: Storage,
    full: list[ModelFiles],
    append: list[tuple[list[str], ModelFiles]],
    index: EraIndex,
    previous_eras: dict[str, dict],
    read_window_bytes: int,
    scratch: Storage,
    folder: str,
) -> ChangedModels:
    """Read a batch of changed models (one Dask task): appended files alone where that suffices; write their
    ranks to ``folder`` of ``scratch`` for the era tasks, as a full run's load tasks do.

    ``append`` holds (appended files, all the model's files); a model whose
    appended files do not suffice is read in full.
    """
    replaced: dict[str, frozenset[str] | None] = {}
    names: dict[str, list[str]] = {}
    arrays: dict[str, list[np.ndarray]] = {}
    for appended, every_file in append:
        by_era = appended_predictions(storage, every_file.model, appended, list(every_file.paths), index, previous_eras)
        if by_era is None:
            full = [*full, every_file]
            continue
        replaced[every_file.model] = frozenset(by_era)
        for label, values in by_era.items():
            names.setdefault(label, []).append(every_file.model)
            arrays.setdefault(label, []).append(values)
    full = sorted(full, key=lambda m: m.model)
    # Unwrapped, as in stage_model_batch: this task releases memory once, after the batch is written.
    loaded = load_model_batch.__wrapped__(storage, full, index, read_window_bytes)
    replaced.update({m.model: None for m in full})
    while loaded.by_era:  # each era's ranks held once: taken out of the loaded batch as they are joined
        label, (models, matrix) = loaded.by_era.popitem()
        names.setdefault(label, []).extend(models)
        arrays.setdefault(label, []).append(matrix)
    by_era = {label: (names[label], joined([np.atleast_2d(a) for a in arrays.pop(label)])) for label in names}
    return ChangedModels(stage_batch(ModelBatch(by_era, loaded.rejections), scratch, folder), replaced)


def changed_ranks(changed: ChangedModels) -> StagedBatch:
    """Where the changed models' ranks lie in the scratch (a small record every era task takes)."""
    return changed.batch


def replaced_models(changed: ChangedModels) -> dict[str, frozenset[str] | None]:
    return changed.replaced


# ---------------------------------------------------------------------- run


@dataclass
class RefreshOutcome:
    """What a refresh did: the published run (None when nothing changed) and the work it took."""

    run_folder: str | None
    result: JobResult | None
    eras_rescored: list[str]
    models_read: list[str]
    message: str


def refresh_once(
    client: Client,
    storage: Storage,
    out: Storage,
    params: ScoringParams,
    *,
    keep_runs: int = 10,
    lease_seconds: float = 2 * 3600.0,
    log: Callable[[str], None] = lambda _: None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RefreshOutcome:
    """One refresh under the output's lease: plan, read what changed, rescore what it invalidates, publish.

    ``on_progress`` hears how far reading the changed models and rescoring eras are (see ``run_job``).
    """
    lease = Lease(out, seconds=lease_seconds)
    try:
        lease.acquire()
    except OSError as error:  # the output's bucket missing, or not writable with these credentials
        raise StorageError(f"cannot take the refresh's lease in {out.display('lease')} ({describe_error(error)})"
                           ) from None
    try:
        return _refresh_under_lease(client, storage, out, params, lease, keep_runs, log, on_progress)
    finally:
        lease.release()


def _refresh_under_lease(
    client: Client,
    storage: Storage,
    out: Storage,
    params: ScoringParams,
    lease: Lease,
    keep_runs: int,
    log: Callable[[str], None],
    on_progress: Callable[[Progress], None] | None,
) -> RefreshOutcome:
    started = time.perf_counter()
    previous = read_previous(out)
    state = previous.state if previous else None
    inputs = discover(storage, params)
    plan = plan_refresh(storage, inputs, params, state)
    record = input_record(inputs)
    listing = [asdict(r) for r in inputs.rejections]
    payout = asdict(params.payout)
    if state is not None and not plan.reread_all and state["inputs"] == record and state["payout"] == payout \
            and state["listing_rejections"] == listing and set(state["eras"]) == set(plan.data):
        return RefreshOutcome(None, None, [], [], "nothing to do: no input or parameter changed since "
                              f"{previous.folder}")
    gone = missing_cache_files(out, state) if plan.previous_eras else []
    if gone:
        log(f"{counted(len(gone), 'cached file')} of {previous.folder} gone (e.g. {out.display(gone[0])}): "
            "scoring everything again")
        state = None
        plan = plan_refresh(storage, inputs, params, state)
    run_id = new_run_id()
    benchmark, benchmark_rejections = load_benchmark(storage, inputs)
    # Eras the benchmark covers now and did not, or the reverse, though its file is the same (rejected for ids
    # the data did not hold yet, and now does): their BMC changes.
    benchmark_moved = set(benchmark) ^ set(state["benchmark_eras"]) if plan.previous_eras else set()
    discovered = time.perf_counter()

    # Phase 1: read the changed models. Scattered data takes keys of this refresh's own (hash=False): under a key
    # hashed from its content, data scattered again while the previous refresh's release of that key is still on
    # its way is lost, and the tasks that need it are cancelled (dask/distributed#8576).
    index = client.scatter(inputs.index, broadcast=True, hash=False)
    work = [(m, "full") for m in plan.full] + [(m, "append") for m in sorted(plan.append)]
    with job_scratch(client, out, log) as job:
        batches = []
        counts = []
        for chunk in in_batches(work, params.models_per_task):  # as a full run's: read windows bound the memory
            counts.append(len(chunk))
            batches += job.track([client.submit(
                load_changed_models, storage,
                [ModelFiles.of(m, inputs.submissions[m]) for m, kind in chunk if kind == "full"],
                [(plan.append[m], ModelFiles.of(m, inputs.submissions[m])) for m, kind in chunk if kind == "append"],
                index, plan.previous_eras, params.read_window_bytes, out, job.folder, pure=False,
                retries=TASK_RETRIES,
            )])
        if on_progress is not None:
            follow([Phase("read and validate", "models", batches, counts)], on_progress)
        replaced: dict[str, frozenset[str] | None] = {}
        for part in client.gather(client.map(replaced_models, batches, pure=False)):
            replaced.update(part)
        log(f"read {counted(len(plan.full), 'model')} in full and {len(plan.append)} from appended files")

        # Phase 2: rescore the eras that changed. What every era takes travels once, not in each era's task: at
        # 600 eras × 2,376 feature names × 10,000 stakes, submitting and running took 3.2 s embedded, 1.3 s scattered.
        features, stakes = client.scatter([inputs.features, inputs.stakes], broadcast=True, hash=False)
        staged = client.map(changed_ranks, batches, pure=False)
        reuse: dict[str, dict] = {}
        futures = {}
        for era in inputs.eras:
            work_era = era_work(era, plan, replaced, bool(plan.full) or bool(plan.append), benchmark_moved)
            if work_era is None:
                reuse[era.label] = plan.previous_eras[era.label]
                continue
            keep, keep_scores = work_era
            before = plan.previous_eras.get(era.label)
            cache = None
            if before is not None and before.get("predictions") and keep:
                cache = EraCache(out, EraCacheFiles(before["predictions"], before["scores"]), tuple(keep),
                                 keep_scores and before["scores"] is not None)
            folder = era_directory(era.label)
            write = CacheWrite(out, EraCacheFiles(f"{folder}/{run_id}.ranks.parquet",
                                                  f"{folder}/{run_id}.scores.parquet"))
            futures[era.label] = client.submit(
                score_staged_era_task, storage, era, features, params, out, staged, stakes,
                benchmark.get(era.label), cache, write, pure=False, retries=TASK_RETRIES,
            )
        if on_progress is not None:
            follow([Phase("score", "eras", list(futures.values()))], on_progress)
        scored: dict[str, EraScores] = dict(zip(futures, client.gather(list(futures.values()))))
        raise_era_failure(scored.values())
        # Gathered while the scratch exists: a batch lost with a worker is read, and written there, again.
        fresh_rejections = [r for part in client.gather(client.map(batch_rejections, staged, pure=False))
                            for r in part]
    # What reading the files found (fresh, or carried for models not read again); the listing's and the
    # benchmark's rejections are found again by every run.
    read_rejections = fresh_rejections + carried_rejections(state, plan, replaced)
    rejections = inputs.rejections + read_rejections + benchmark_rejections  # in run_job's order
    computed = time.perf_counter()

    # Reduce: fresh tables plus the cached tables of untouched eras.
    reused_tables = {label: e["scores"] for label, e in reuse.items() if e.get("scores")}
    contents = out.read_many([out.path(p) for p in reused_tables.values()])
    tables = [pd.read_parquet(io.BytesIO(contents[out.path(p)])) for p in reused_tables.values()]
    tables += [r.table for r in scored.values() if r.skipped is None]
    skipped = {label: e["skipped"] for label, e in reuse.items() if e.get("skipped")}
    skipped |= {label: r.skipped for label, r in scored.items() if r.skipped is not None}
    timings = {"discover": discovered - started, "score": computed - discovered}
    result = job_result(storage, params, inputs, tables, skipped, rejections, timings,
                        previous=previous.leaderboard if previous else None)
    result.manifest["refresh"] = {"eras_rescored": sorted(scored), "models_read": sorted(replaced),
                                  "previous": previous.folder if previous else None}
    new_state = {
        "format": STATE_FORMAT,
        "fingerprint": plan.fingerprint,
        "inputs": record,
        "payout": payout,
        "listing_rejections": listing,
        "era_ids": plan.era_ids,
        "stakes": plan.stakes,
        "benchmark": file_entries(storage, [inputs.benchmark_file[1]]) if inputs.benchmark_file else None,
        "benchmark_eras": sorted(benchmark),
        "models": {m: {"files": file_entries(storage, fs), "rejected": m in set(result.rejections["model"])}
                   for m, fs in inputs.submissions.items()},
        "rejections": [asdict(r) for r in read_rejections if r.model in inputs.submissions],
        "eras": {**reuse, **{label: era_state(r, plan.data[label]) for label, r in scored.items()}},
    }
    result.prediction_correlation = prediction_correlations(client, storage, result)
    folder = publish_run(out, result, run_id, extra_files={STATE_FILE: json.dumps(new_state, default=str).encode()},
                         before_latest=lease.check)
    prune_history(out, keep_runs)
    return RefreshOutcome(folder, result, sorted(scored), sorted(replaced),
                          f"published {folder}: {counted(len(scored), 'era')} rescored, "
                          f"{counted(len(replaced), 'model')} read")


def cached_paths(state: dict) -> set[str]:
    """The era cache files a run's ``state`` names (relative to the output)."""
    return {path for era in state["eras"].values() for path in (era.get("predictions"), era.get("scores")) if path}


def missing_cache_files(out: Storage, state: dict) -> list[str]:
    """The era caches ``state`` names that ``out`` no longer holds (deleted by hand, or expired by a bucket's
    lifecycle rule): the eras they hold cannot be scored again from what changed, so everything is."""
    named = cached_paths(state)
    return sorted(named - set(out.relative_files(CACHE_FOLDER))) if named else []


def era_work(
    era: EraPlan, plan: RefreshPlan, replaced: dict[str, frozenset[str] | None], models_changed: bool,
    benchmark_moved: set[str],
) -> tuple[list[str], bool] | None:
    """Whether one era needs a task; if so which cached models it keeps and whether their own scores hold.
    ``benchmark_moved`` are the eras the benchmark now covers or no longer does."""
    before = plan.previous_eras.get(era.label)
    if before is None:
        return [], False
    data_changed = before["data"] != plan.data[era.label]
    touched = {m for m, eras in replaced.items() if eras is None or era.label in eras}
    cached = set(before["models"])
    cross_changed = (
        data_changed
        or bool(touched)
        or bool(cached & (plan.deleted | plan.stakes_changed))
        or plan.benchmark_changed
        or era.label in benchmark_moved
        or (before.get("skipped") is not None and models_changed)
    )
    if not cross_changed:
        return None
    return sorted(cached - plan.deleted - touched), not data_changed


def era_state(scores: EraScores, data_fingerprint: str) -> dict:
    return {
        "data": data_fingerprint,
        "models": list(scores.models),
        "predictions": scores.cache.predictions if scores.cache else None,
        "scores": scores.cache.scores if scores.cache else None,
        "skipped": scores.skipped,
    }


def carried_rejections(state: dict | None, plan: RefreshPlan, replaced: dict) -> list[Rejection]:
    """Rejections found reading the files of models that were not read again: they still hold."""
    if state is None or plan.reread_all:
        return []
    return [Rejection(**r) for r in state["rejections"]
            if r["model"] not in replaced and r["model"] not in plan.deleted]


def prune_history(out: Storage, keep_runs: int) -> None:
    """Keep the newest ``keep_runs`` runs (and the one ``latest.json`` names); drop caches none of them use."""
    out.fs.invalidate_cache()
    runs = sorted(p.rsplit("/", 1)[-1] for p in out.fs.ls(out.path("runs"), detail=False))
    latest = json.loads(out.read_bytes("latest.json"))["run_id"]
    kept = set(runs[-keep_runs:]) | {latest}
    for run in runs:
        if run not in kept:
            out.delete(f"runs/{run}")
    used = set()
    for run in kept:
        if out.exists(f"runs/{run}/{STATE_FILE}"):
            used |= cached_paths(json.loads(out.read_bytes(f"runs/{run}/{STATE_FILE}")))
    for path in out.relative_files(CACHE_FOLDER):
        if path not in used:
            out.fs.rm_file(out.path(path))


# ------------------------------------------------------------------ schedule


INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """``90s``, ``15m``, ``1h30m``, ``1d`` → seconds."""
    shape = f"takes an interval like 30s, 15m, 2h or 1d, got {text!r}"
    require(isinstance(text, str), "every", shape)
    parts = INTERVAL.findall(text.strip().lower())
    require(bool(parts) and not INTERVAL.sub("", text.strip().lower()).strip(), "every", shape)
    seconds = sum(float(n) * UNIT_SECONDS[u] for n, u in parts)
    require(seconds > 0, "every", f"must be a positive interval, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), UTC.

    Fields take ``*``, numbers, ranges ``a-b``, lists ``a,b`` and steps ``*/n``
    or ``a-b/n``; day-of-week 0 or 7 is Sunday. As in cron, when both day fields
    are restricted a day matching either fires.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        require(isinstance(expression, str) and len(expression.split()) == 5, "cron",
                f"takes five fields (minute hour day month weekday), like \"0 6 * * *\", got {expression!r}")
        fields = expression.split()
        limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
        values = [_cron_field(text, low, high, expression) for text, (low, high) in zip(fields, limits)]
        weekdays = frozenset(d % 7 for d in values[4])
        return cls(values[0], values[1], values[2], values[3], weekdays, fields[2] == "*", fields[4] == "*")

    def _day_matches(self, moment: dt.datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``moment`` (searches up to five years ahead)."""
        candidate = moment.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = candidate + dt.timedelta(days=5 * 366)
        while candidate < limit:
            if candidate.month not in self.months or not self._day_matches(candidate):
                candidate = (candidate + dt.timedelta(days=1)).replace(hour=0, minute=0)
            elif candidate.hour not in self.hours:
                candidate = (candidate + dt.timedelta(hours=1)).replace(minute=0)
            elif candidate.minute not in self.minutes:
                candidate += dt.timedelta(minutes=1)
            else:
                return candidate
        raise InvalidSetting("cron", "never fires (no matching minute in the next five years)")


def _cron_field(text: str, low: int, high: int, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else (1 if not step_text else None)
        if span == "*":
            start, stop = low, high
        elif re.fullmatch(r"\d+-\d+", span):
            start, stop = map(int, span.split("-"))
        elif span.isdigit():
            start = stop = int(span)
            if step_text:
                stop = high
        else:
            start = stop = None
        require(step is not None and start is not None and low <= start <= stop <= high, "cron",
                f"field {text!r} of {expression!r} is not valid (allowed {low}-{high})")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def run_on_schedule(
    refresh: Callable[[], object],
    seconds_until_next: Callable[[dt.datetime], float],
    stop: threading.Event,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> None:
    """Refresh, then wait for the next tick, until ``stop`` is set (SIGTERM sets it).

    A failed refresh is told to ``warn`` and the previous leaderboard stays
    published; the loop tries again at the next tick. A refresh under way when ``stop``
    is set finishes first: publishing is never cut in half.
    """
    while not stop.is_set():
        try:
            refresh()
        except Exception as error:  # the loop must outlive any one failed run
            warn(f"refresh failed: {type(error).__name__}: {error}; the previous leaderboard stays published")
        wait = max(seconds_until_next(dt.datetime.now(dt.timezone.utc)), 0.0)
        if not stop.is_set():
            log(f"next refresh in {wait:.0f} s")
        stop.wait(wait)
