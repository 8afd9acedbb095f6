"""The command line: ``numerai-dask score | refresh | run | generate | demo``.

Exit status: 0 when the job finished (rejected submissions are listed, not
fatal), 1 with a one-line cause on stderr when the job itself failed, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from distributed import Client

from numerai_dask import clusters
from numerai_dask.leaderboard import PayoutRule, with_rank_change
from numerai_dask.pipeline import JobError, JobResult, Progress, ScoringParams, prediction_correlations, run_job
from numerai_dask.refresh import Cron, parse_interval, read_previous, refresh_once, run_on_schedule
from numerai_dask.report import new_run_id, publish_run, summary_table
from numerai_dask.settings import InvalidSetting, require, require_count, require_positive
from numerai_dask.storage import Storage, StorageError, is_credential_option
from numerai_dask.submissions import redact
from numerai_dask.wording import counted

REJECTIONS_SHOWN = 20
#: Models listed in the final summary (--json's top_models).
TOP_MODELS = 10
OUTPUT_MODES = ("text", "quiet", "json")
#: The tables and keys a job file may hold; [scoring] takes ScoringParams' fields, [scoring.payout] PayoutRule's.
JOB_FILE_KEYS = ("root", "out", "scoring", "cluster", "storage_options", "refresh")
REFRESH_KEYS = ("every", "cron", "keep_runs", "lease_seconds")
CLUSTER_KEYS = ("scheduler", "cluster", "workers")


@dataclass(frozen=True)
class JobSpec:
    """Everything one scoring job needs: from the command line or a job file in ``jobs/``."""

    root: str
    out: str | None = None
    scheduler: str | None = None
    cluster: str | None = None
    workers: int | None = None
    storage_options: dict = field(default_factory=dict)
    params: ScoringParams = field(default_factory=ScoringParams)

    def __post_init__(self) -> None:
        if self.workers is not None:
            require_count(self.workers, "workers")

    @property
    def out_url(self) -> str:
        return self.out or self.root.rstrip("/") + "/leaderboard"


def say(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Console:
    """Where the command's words go, by ``mode``.

    ``text``: messages and the final summary on stdout, progress on stderr.
    ``quiet``: nothing but errors. ``json``: one JSON object per published run
    (or per refresh) on stdout and nothing else there; messages and progress on
    stderr, for a scheduler's log.
    """

    mode: str = "text"

    def say(self, message: str) -> None:
        if self.mode == "text":
            say(message)
        elif self.mode == "json":
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A failure the command outlives (a scheduled refresh's): on stderr in every mode, and with ``--json``
        as ``{"status": "failed"}`` too."""
        print(message, file=sys.stderr, flush=True)
        self.document({"status": "failed", "error": message})

    def progress(self, progress: Progress) -> None:
        if self.mode != "quiet":
            print(progress_line(progress), file=sys.stderr, flush=True)

    def document(self, document: dict) -> None:
        if self.mode == "json":
            print(json.dumps(document, default=str), flush=True)


def duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h10m``: short enough for a progress line; tenths below ten seconds, where
    whole seconds would show a small job's stages as ``0s``."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(progress: Progress) -> str:
    """``score: 120/500 eras (24%) · 1m05s · ETA 3m26s``."""
    share = 100 * progress.done // progress.total if progress.total else 100
    eta = "" if progress.eta is None or progress.done == progress.total else f" · ETA {duration(progress.eta)}"
    return (f"{progress.phase}: {progress.done:,}/{progress.total:,} {progress.unit} ({share}%)"
            f" · {duration(progress.elapsed)}{eta}")


def connect(spec: JobSpec, log: Callable[[str], None] = say) -> contextlib.AbstractContextManager[Client]:
    """A client on the job's cluster: see :func:`numerai_dask.clusters.choose` for which one. Workers asked for
    a cluster the job does not start are said to be ignored."""
    chosen = clusters.choose(spec.scheduler, spec.cluster, spec.workers)
    if spec.workers is not None and chosen.kind != "local":
        where = chosen.options.get("address") or chosen.source
        log(f"note: the workers asked for ({spec.workers}) size a LocalCluster; this job uses the cluster of {where}")
    return clusters.connect(chosen, log=log)


@dataclass(frozen=True)
class RefreshSettings:
    """How a refresh repeats and keeps history: ``every`` (seconds) or ``cron``, or neither for one refresh."""

    every: float | None = None
    cron: str | None = None
    keep_runs: int = 10
    lease_seconds: float = 2 * 3600.0

    def __post_init__(self) -> None:
        require(self.every is None or self.cron is None, "cron", "a refresh repeats every interval or on cron, "
                "not both")
        if self.every is not None:
            require_positive(self.every, "every")
        if self.cron is not None:
            Cron.parse(self.cron).next_after(dt.datetime.now(dt.timezone.utc))
        require_count(self.keep_runs, "keep_runs")
        require_positive(self.lease_seconds, "lease_seconds")

    def seconds_until_next(self) -> Callable[[dt.datetime], float] | None:
        """The schedule as a function of the current time, or None for a single refresh."""
        if self.cron is not None:
            cron = Cron.parse(self.cron)
            return lambda now: (cron.next_after(now) - now).total_seconds()
        if self.every is not None:
            every = self.every
            return lambda _: every
        return None


def score(spec: JobSpec, console: Console = Console()) -> int:
    """Run one scoring job and publish it; print the short leaderboard and where the report is.

    When the output already holds a run, the leaderboard's ``rank_change`` is against it.
    """
    source = Storage(spec.root, spec.storage_options)
    out = Storage(spec.out_url, spec.storage_options)
    previous = read_previous(out)
    with connect(spec, console.say) as client:
        console.say(f"reading {source.display_url}: the data's eras and ids, submissions, stakes")
        result = run_job(client, source, spec.params, scratch=out, log=console.say, on_progress=console.progress)
        console.say("correlating the top models' predictions")
        result.prediction_correlation = prediction_correlations(client, source, result)
    if previous is not None and previous.leaderboard is not None:
        result.leaderboard = with_rank_change(result.leaderboard, previous.leaderboard)
        result.manifest["previous_run"] = previous.folder
    folder = publish_run(out, result, new_run_id())
    show_result(out, result, folder, console)
    return 0


def refresh(spec: JobSpec, settings: RefreshSettings, console: Console = Console()) -> int:
    """Refresh once, or on a schedule until SIGTERM/SIGINT (a refresh under way finishes first)."""
    source = Storage(spec.root, spec.storage_options)
    out = Storage(spec.out_url, spec.storage_options)
    schedule = settings.seconds_until_next()
    with connect(spec, console.say) as client:

        def once() -> None:
            outcome = refresh_once(client, source, out, spec.params, keep_runs=settings.keep_runs,
                                   lease_seconds=settings.lease_seconds, log=console.say,
                                   on_progress=console.progress)
            console.say(outcome.message)
            if outcome.result is not None:
                show_result(out, outcome.result, outcome.run_folder, console)
            else:
                console.document({"status": "unchanged", "message": outcome.message})

        if schedule is None:
            once()
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        run_on_schedule(once, schedule, stop, console.say, console.warn)
        console.say("stopped")
    return 0


def show_result(out: Storage, result: JobResult, folder: str, console: Console) -> None:
    """The final summary of the run published in ``folder``: top models, skipped eras, rejections, timings
    and where the outputs are. As text, or as one JSON document with ``--json``.
    """
    if console.mode == "json":
        console.document(result_document(out, result, folder))
        return
    console.say("")
    console.say(summary_table(result.leaderboard, TOP_MODELS))
    for era, reason in sorted(result.skipped_eras.items()):
        console.say(f"skipped era {era}: {reason}")
    rejections = result.rejections
    if len(rejections):
        console.say(f"\n{counted(len(rejections), 'rejection')}:")
        for row in rejections.head(REJECTIONS_SHOWN).itertuples(index=False):
            where = f" era {row.era}" if isinstance(row.era, str) else ""  # None, or NaN beside era rejections
            console.say(f"  {row.model} · {row.file}{where}: {row.reason}")  # names made printable already
        if len(rejections) > REJECTIONS_SHOWN:
            console.say(f"  … and {len(rejections) - REJECTIONS_SHOWN} more in rejections.parquet")
    waiting = result.manifest["models"].get("not_scored", [])
    if waiting:
        names = ", ".join(waiting[:REJECTIONS_SHOWN]) + (f", … {len(waiting) - REJECTIONS_SHOWN} more"
                                                         if len(waiting) > REJECTIONS_SHOWN else "")
        console.say(f"\n{len(waiting):,} not scored (every era they predict is unresolved or skipped): {names}")
    timings = result.manifest.get("timings_seconds", {})
    console.say(f"\n{counted(len(result.leaderboard), 'model')} scored over "
                f"{counted(len(result.manifest['eras']['scored']), 'era')} · "
                f"{counted(len(rejections), 'rejection')} · {counted(len(result.skipped_eras), 'era')} skipped · "
                f"{len(result.manifest['eras']['unresolved']):,} unresolved · "
                + " · ".join(f"{name} {duration(seconds)}" for name, seconds in timings.items()))
    console.say(f"outputs: {out.display(folder)}")
    console.say(f"report: {out.display(folder + '/report.html')}")


def result_document(out: Storage, result: JobResult, folder: str) -> dict:
    """The ``--json`` summary of the run published in ``folder``: id, output paths, top models, counts, timings.
    Every run's top models have the same keys: a first run's ``rank_change`` is null."""
    columns = ["model", "payout_rank", "payout_mean", "corr_mean", "mmc_mean", "tc_mean", "rank_change"]
    top = result.leaderboard.head(TOP_MODELS).reindex(columns=columns)
    files = ("report.html", "leaderboard.parquet", "leaderboard.csv", "per_era.parquet", "rejections.parquet",
             "manifest.json")
    return {
        "status": "published",
        "run_id": folder.rsplit("/", 1)[-1],
        "outputs": {"folder": out.display(folder), **{name: out.display(f"{folder}/{name}") for name in files},
                    "latest": out.display("latest.json")},
        "models_scored": len(result.leaderboard),
        "eras_scored": len(result.manifest["eras"]["scored"]),
        "eras_skipped": dict(sorted(result.skipped_eras.items())),
        "eras_unresolved": result.manifest["eras"]["unresolved"],
        "rejections": len(result.rejections),
        "models_not_scored": result.manifest["models"].get("not_scored", []),
        "top_models": [{c: json_value(v) for c, v in zip(columns, row)} for row in top[columns].itertuples(index=False)],
        "previous_run": result.manifest.get("previous_run") or result.manifest.get("refresh", {}).get("previous"),
        "timings_seconds": result.manifest.get("timings_seconds", {}),
    }


def json_value(value: object) -> object:
    """A leaderboard cell as JSON: NaN/NA become null, numpy numbers Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


# ------------------------------------------------------------------ arguments


def parse_storage_options(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs, nested keys with dots; ``true``/``false`` and numbers written as Python writes them
    are converted. Credentials stay as written (a secret ``0123`` is not the number 123)."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        require(bool(sep and key), "storage_option", f"takes KEY=VALUE, got {pair!r}")
        *parents, leaf = key.split(".")
        value: object = raw
        if not is_credential_option(leaf):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
            with contextlib.suppress(ValueError):
                number = float(raw) if "." in raw else int(raw)
                value = number if str(number) == raw else value
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="where to publish (default ROOT/leaderboard)")
    add_cluster_arguments(parser)
    parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    parser.add_argument("--target", default="target", help="the scoring target column (default: target)")
    parser.add_argument("--extra-target", action="append", default=[], metavar="NAME",
                        help="another target column to report corr_<NAME> for (repeatable)")
    parser.add_argument("--feature-set", help="a feature set from data/features.json (default: every feature)")
    parser.add_argument("--neutralization", type=float, default=1.0, metavar="P",
                        help="proportion of feature neutralization for FNC (default 1.0)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option (repeatable), e.g. client_kwargs.endpoint_url=http://…")
    parser.add_argument("--payout-corr-weight", type=float, default=PayoutRule.corr_weight, metavar="W",
                        help="corr's weight in the per-era payout clip(W·corr + M·mmc, ±C) (default 0.5)")
    parser.add_argument("--payout-mmc-weight", type=float, default=PayoutRule.mmc_weight, metavar="M",
                        help="mmc's weight in the payout (default 2)")
    parser.add_argument("--payout-clip", type=float, default=PayoutRule.clip, metavar="C",
                        help="the payout's clip, above 0 (default 0.05)")
    parser.add_argument("--models-per-task", type=int, default=ScoringParams.models_per_task,
                        help="models read and validated per Dask task")
    parser.add_argument("--max-submission-bytes", type=int, metavar="N",
                        help="reject larger prediction files unread (default: 100 bytes per data row + 1 MiB)")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    output.add_argument("--json", action="store_true",
                        help="print one JSON object per run on stdout (run id, outputs, top models, rejections, "
                             "timings) and nothing else there; progress and messages go to stderr")


def console_from_arguments(args: argparse.Namespace) -> Console:
    return Console("json" if args.json else "quiet" if args.quiet else "text")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scheduler`` or ``--cluster``: either wins over a job file's [cluster] and DASK_SCHEDULER_ADDRESS."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of an existing Dask scheduler "
                                           "(default: DASK_SCHEDULER_ADDRESS, else a LocalCluster)")
    where.add_argument("--cluster", metavar="SPEC",
                       help="a cluster spec file saying how to get a cluster, e.g. cluster/processes.yaml")


#: The option of each setting whose option is not ``--`` and its key with dashes (see :func:`option_of`).
OPTIONS_OF_KEYS = {"extra_targets": "--extra-target", "corr_weight": "--payout-corr-weight",
                   "mmc_weight": "--payout-mmc-weight", "clip": "--payout-clip", "n_eras": "--eras",
                   "n_features": "--features", "n_models": "--models", "n_unresolved": "--unresolved"}


def option_of(key: str) -> str:
    """The command-line option that gives setting ``key`` (``models_per_task`` → ``--models-per-task``)."""
    return OPTIONS_OF_KEYS.get(key, "--" + key.replace("_", "-"))


def spec_from_arguments(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        root=args.root,
        out=args.out,
        scheduler=args.scheduler,
        cluster=args.cluster,
        workers=args.workers,
        storage_options=parse_storage_options(args.storage_option),
        params=ScoringParams(
            target=args.target,
            extra_targets=tuple(args.extra_target),
            feature_set=args.feature_set,
            neutralization=args.neutralization,
            payout=PayoutRule(args.payout_corr_weight, args.payout_mmc_weight, args.payout_clip),
            models_per_task=args.models_per_task,
            max_submission_bytes=args.max_submission_bytes,
        ),
    )


def spec_from_job_file(path: str) -> JobSpec:
    """A job file in ``jobs/``: TOML with ``root`` and optional ``out``, ``[scoring]``, ``[cluster]``, ``[storage_options]``.

    Unknown keys are errors, not ignored: a misspelt setting would otherwise
    silently score with the default.
    """
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise JobError(f"cannot read job file {path}: {error}") from error
    if "root" not in document:
        raise JobError(f"job file {path} has no 'root'")
    for key in ("root", "out"):
        if not (isinstance(document.get(key, "-"), str) and document.get(key, "-")):
            raise JobError(f"job file {path}: {key} must be a text (a folder or URL), got {document[key]!r}")
    for key in ("scoring", "cluster", "storage_options", "refresh"):
        if not isinstance(document.get(key, {}), dict):
            raise JobError(f"job file {path}: {key} must be a table ([{key}]), got {document[key]!r}")
    scoring = dict(document.get("scoring", {}))
    payout = scoring.pop("payout", {})
    if not isinstance(payout, dict):
        raise JobError(f"job file {path}: [scoring] payout must be a table ([scoring.payout]), got {payout!r}")
    cluster = document.get("cluster", {})
    for key, what in (("scheduler", "a scheduler's address"), ("cluster", "a cluster spec file")):
        if not (isinstance(cluster.get(key, "-"), str) and cluster.get(key, "-")):
            raise JobError(f"job file {path}: [cluster] {key} must be a text ({what}), got {cluster[key]!r}")
    score_fields = [f.name for f in dataclasses.fields(ScoringParams) if f.name != "payout"]
    for table, allowed, where in ((document, JOB_FILE_KEYS, "at the top"), (cluster, CLUSTER_KEYS, "in [cluster]"),
                                  (scoring, [*score_fields, "payout"], "in [scoring]"),
                                  (payout, [f.name for f in dataclasses.fields(PayoutRule)], "in [scoring.payout]")):
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise JobError(f"job file {path}: unknown key(s) {unknown} {where}; known: {', '.join(allowed)}")
    if cluster.get("scheduler") and cluster.get("cluster"):
        raise JobError(f"job file {path}: [cluster] takes scheduler or cluster, not both")
    extra = scoring.get("extra_targets")
    if extra is not None:  # a list of names, or one name (not its letters)
        if not (isinstance(extra, str) or (isinstance(extra, list) and all(isinstance(t, str) for t in extra))):
            raise JobError(f"job file {path}: [scoring] extra_targets must be a name or a list of names, got {extra!r}")
        scoring["extra_targets"] = (extra,) if isinstance(extra, str) else tuple(extra)
    with settings_of(path, "scoring.payout"):
        rule = PayoutRule(**payout)
    with settings_of(path, "scoring"):
        params = ScoringParams(payout=rule, **scoring)
    with settings_of(path, "cluster"):
        return JobSpec(
            root=document["root"],
            out=document.get("out"),
            scheduler=cluster.get("scheduler"),
            cluster=cluster.get("cluster"),
            workers=cluster.get("workers"),
            storage_options=dict(document.get("storage_options", {})),
            params=params,
        )


def refresh_settings_from_job_file(path: str) -> RefreshSettings | None:
    """The ``[refresh]`` table of a job file (``every``, ``cron``, ``keep_runs``, ``lease_seconds``), if any."""
    table = tomllib.loads(Path(path).read_text()).get("refresh")
    if table is None:
        return None
    unknown = sorted(set(table) - set(REFRESH_KEYS))
    if unknown:
        raise JobError(f"job file {path}: unknown key(s) {unknown} in [refresh]; known: {', '.join(REFRESH_KEYS)}")
    with settings_of(path, "refresh"):
        return RefreshSettings(
            every=parse_interval(table["every"]) if "every" in table else None,
            cron=table.get("cron"),
            keep_runs=table.get("keep_runs", RefreshSettings.keep_runs),
            lease_seconds=table.get("lease_seconds", RefreshSettings.lease_seconds),
        )


@contextlib.contextmanager
def settings_of(path: str, table: str) -> Iterator[None]:
    """A setting of job file ``path``'s ``[table]`` found wrong within: the job's error, naming file, table and key."""
    try:
        yield
    except InvalidSetting as error:
        raise JobError(f"job file {path}: [{table}] {error.key}: {error.problem}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numerai-dask", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    score_parser = commands.add_parser("score", help="score every submission under ROOT and publish a leaderboard")
    score_parser.add_argument("root", help="root URL: a folder, file://…, s3://bucket/prefix, memory://…")
    add_scoring_arguments(score_parser)

    refresh_parser = commands.add_parser(
        "refresh", help="rescore only what changed since the last run; once, or --every/--cron until SIGTERM")
    refresh_parser.add_argument("root", help="root URL: a folder, file://…, s3://bucket/prefix, memory://…")
    add_scoring_arguments(refresh_parser)
    schedule = refresh_parser.add_mutually_exclusive_group()
    schedule.add_argument("--every", metavar="INTERVAL", help="refresh every INTERVAL (30s, 15m, 2h, 1d)")
    schedule.add_argument("--cron", metavar="EXPR", help='refresh on a cron schedule, UTC ("0 * * * *")')
    refresh_parser.add_argument("--keep-runs", type=int, default=RefreshSettings.keep_runs,
                                help="runs kept in OUT/runs (default 10)")
    refresh_parser.add_argument("--lease-seconds", type=float, default=RefreshSettings.lease_seconds,
                                help="how long a refresh's lease on OUT lasts (default 7200)")

    run_parser = commands.add_parser("run", help="run a job file (see jobs/); a [refresh] table makes it a refresh")
    run_parser.add_argument("job_file", help="a TOML job file, e.g. jobs/local.toml")
    add_cluster_arguments(run_parser)
    add_output_arguments(run_parser)

    generate_parser = commands.add_parser("generate", help="write a synthetic Numerai-shaped dataset to ROOT")
    generate_parser.add_argument("root", help="where to write: a folder, file://…, s3://bucket/prefix")
    add_generator_arguments(generate_parser)
    generate_parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                                 help="fsspec storage option (repeatable), as for score")

    demo_parser = commands.add_parser("demo", help="generate a dataset in a local folder and score it")
    demo_parser.add_argument("--dir", default="demo-data", help="folder for the demo data (default demo-data)")
    demo_parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    add_generator_arguments(demo_parser)
    for command in (score_parser, refresh_parser, run_parser, generate_parser, demo_parser):
        command.set_defaults(command_parser=command)  # whose usage a bad option value is told with
    return parser


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eras", type=int, default=24, help="eras, the unresolved ones included (default 24)")
    parser.add_argument("--rows-per-era", type=int, default=500, help="stocks per era (default 500)")
    parser.add_argument("--features", type=int, default=60, help="feature columns, int8 0-4 (default 60)")
    parser.add_argument("--models", type=int, default=40, help="models with prediction files (default 40)")
    parser.add_argument("--unresolved", type=int, default=2, help="newest eras left without a target (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything generated (default 0)")


def generate(root: str, args: argparse.Namespace, storage_options: dict) -> None:
    from numerai_dask.synthetic import generate as write_dataset

    dataset = write_dataset(root, n_eras=args.eras, rows_per_era=args.rows_per_era, n_features=args.features,
                            n_models=args.models, n_unresolved=args.unresolved, seed=args.seed,
                            storage_options=storage_options)
    say(f"wrote {counted(len(dataset.eras), 'era')} ({len(dataset.unresolved_eras)} unresolved), "
        f"{counted(args.features, 'feature')}, {counted(len(dataset.models), 'model')} to {root}")
    storage = Storage(root, storage_options)
    earlier = sorted(set(storage.list_submissions()[0]) - set(dataset.models))
    if earlier:  # a demo run again with fewer models scored the earlier run's too, without a word
        shown = ", ".join(earlier[:REJECTIONS_SHOWN]) + ("…" if len(earlier) > REJECTIONS_SHOWN else "")
        say(f"note: {storage.display('submissions')} also holds {counted(len(earlier), 'model')} written before "
            f"({shown}), which a job scores with these; generate into an empty folder for this dataset alone")


def one_line(error: BaseException) -> str:
    """An exception's message on one line, without URL credentials: the CLI's promise is a one-line cause."""
    return " ".join(redact(str(error)).split())


def prepared(args: argparse.Namespace, console: Console) -> Callable[[], int]:
    """The command ``args`` ask for, its settings checked, ready to run: a setting found wrong here is a usage
    error (:class:`InvalidSetting`), one found while it runs the job's failure."""
    if args.command == "score":
        spec = spec_from_arguments(args)
        return lambda: score(spec, console)
    if args.command == "refresh":
        spec = spec_from_arguments(args)
        settings = RefreshSettings(every=parse_interval(args.every) if args.every else None, cron=args.cron,
                                   keep_runs=args.keep_runs, lease_seconds=args.lease_seconds)
        return lambda: refresh(spec, settings, console)
    if args.command == "run":
        spec, schedule = spec_from_job_file(args.job_file), refresh_settings_from_job_file(args.job_file)
        if args.scheduler or args.cluster:  # the command line wins over the file's [cluster]
            spec = dataclasses.replace(spec, scheduler=args.scheduler, cluster=args.cluster)
        return lambda: score(spec, console) if schedule is None else refresh(spec, schedule, console)
    check_generator_arguments(args)
    if args.command == "generate":
        options = parse_storage_options(args.storage_option)

        def write() -> int:
            generate(args.root, args, options)
            return 0

        return write
    root = str(Path(args.dir).resolve())
    demo = JobSpec(root=root, workers=args.workers, params=ScoringParams(extra_targets=("target_jerome",)))

    def generate_and_score() -> int:
        generate(root, args, {})
        return score(demo)

    return generate_and_score


def check_generator_arguments(args: argparse.Namespace) -> None:
    """The sizes ``generate`` and ``demo`` take must describe a dataset that can be written and scored, with a
    seed NumPy takes (:func:`numerai_dask.synthetic.check_parameters`, the generator's own check)."""
    from numerai_dask.synthetic import check_parameters

    check_parameters(args.eras, args.rows_per_era, args.features, args.models, args.unresolved, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would tell them with the top-level usage, which does not list the command's options
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    console = console_from_arguments(args) if args.command in ("score", "refresh", "run") else Console()
    try:
        try:
            command = prepared(args, console)
        except InvalidSetting as error:  # a usage error, told as argparse tells its own, with the command's usage
            args.command_parser.error(f"argument {option_of(error.key)}: {error.problem}")
        return command()
    except KeyboardInterrupt:
        print("numerai-dask: interrupted", file=sys.stderr)
        console.document({"status": "interrupted"})
        return 130
    except (JobError, StorageError, clusters.ClusterSpecError, InvalidSetting) as error:
        return failed(one_line(error), console)
    except (OSError, TimeoutError, ValueError, ImportError, BotoCoreError, ClientError) as error:
        # Unreachable scheduler or storage (S3's errors come from botocore, and are none of the others), unknown
        # protocol, unreadable data file, bad generator sizes…
        return failed(f"{type(error).__name__}: {one_line(error)}", console)


def failed(cause: str, console: Console) -> int:
    """Exit status 1: the cause on one stderr line (and, with ``--json``, as ``{"status": "failed"}`` on stdout)."""
    print(f"numerai-dask: error: {cause}", file=sys.stderr)
    console.document({"status": "failed", "error": cause})
    return 1


if __name__ == "__main__":
    sys.exit(main())
