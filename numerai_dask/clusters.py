"""How a job gets its Dask cluster: a LocalCluster, an existing scheduler, SSH hosts, Kubernetes, a batch queue.

A *cluster spec* is a YAML file (``cluster/*.yaml``) with a ``kind`` and that
kind's options; :func:`choose` picks one from the command line, a job file and
the environment (in that order of precedence), :func:`connect` turns it into a
``Client`` through the backend library's own API. Backends beyond
``distributed`` (asyncssh, dask-kubernetes, dask-jobqueue) are optional extras,
imported only when a spec chooses them.

Every backend gives its workers the same settings, defined once here
(:class:`WorkerSettings`): one BLAS/OpenMP thread per task thread, a memory
limit, the spill thresholds as ``distributed.worker.memory.*`` config, and the
allocator settings the nannies give a worker before it starts
(:data:`PRE_SPAWN_ENVIRONMENT` and the trim threshold).
S3 credentials are never part of a spec, a worker command line or the dask
config (SSHCluster copies the config into a remote command line): the job
reads them where it is submitted and ships them with its tasks, and Kubernetes
workers take them from a Secret (``cluster/kubernetes/``).

``python -m numerai_dask.clusters worker-env`` prints the worker environment as
shell ``export`` lines: ``cluster/start-local.sh`` takes its settings from there.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dask.config
import yaml
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster
from distributed.versions import BOKEH_REQUIREMENT

from numerai_dask.settings import is_count, require_count
from numerai_dask.wording import counted

#: BLAS and OpenMP pools: one thread for each task thread, or the two levels of threads fight over cores.
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Arrow allocates from the C library, which gives freed memory back to the system. Its default pool
#: keeps what it freed, which Dask counts as unmanaged memory and spills (or pauses) to make room for.
ALLOCATOR_ENVIRONMENT = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
#: The nannies' variables for a worker's process that must be set before it starts: they set them
#: before they spawn it (in a started worker, glibc and NumPy have read them already).
PRE_SPAWN_KEY = "distributed.nanny.pre-spawn-environ"
#: What the nannies set that way, each measured on the 20-era benchmark in alternating pairs:
#: - MALLOC_ARENA_MAX=1: one C heap for all of a worker's threads. With glibc's default of one per
#:   thread (up to 8 a core), memory freed in one thread's heap cannot serve arrays another thread
#:   allocates. Peaks 453–474 MiB a worker against 478–527, half the page faults, the job
#:   7.39–7.58 s against 7.60–8.58 s (four pairs).
#: - MALLOC_MMAP_THRESHOLD_=32 MiB, glibc's highest: large blocks are mapped on their own only past
#:   it (glibc's dynamic threshold starts at 128 KiB and rises only as large blocks are freed). With
#:   the trim threshold of WorkerSettings, freed pages stay for the next task.
#: - NUMPY_MADVISE_HUGEPAGE=0: NumPy's arrays on ordinary pages, not transparent huge pages. A huge
#:   page is faulted in whole, and on a virtual machine that hands free memory back to its host,
#:   fresh huge pages are slow to get: 160 MB touched in 0.33 s against 0.06 s here. The job
#:   6.71–7.47 s against 6.91–7.60 s (faster in seven of eight pairs), the same peaks.
PRE_SPAWN_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                         "NUMPY_MADVISE_HUGEPAGE": "0"}
#: Set in a LocalCluster's workers when they fill this machine's cores (workers × threads): each pins
#: itself to the cores of its number (its value is the threads a worker has). Two pinned workers
#: ran the 20-era benchmark in 6.03 s against 6.21 s unpinned (medians, faster in four alternating
#: rounds of four), the scheduler and nannies moving between the cores as before; one worker on two
#: cores is left unpinned, as pinning it gained nothing (11.50 s against 11.36 s).
PIN_CORES_VARIABLE = "NUMERAI_DASK_PIN_CORES"
#: How often each scheduler, nanny and worker wakes its event loop to check that the loop still answers
#: (Dask's default is every 20 ms; a loop blocked past ``distributed.admin.tick.limit``, 3 s, is still
#: logged). On two cores, a LocalCluster of two workers sitting idle used 31–45 ms of CPU a second in
#: the client's process (scheduler and nannies) and 16–25 in each worker, 16 and 7.5 with a tick a
#: second. On the 20-era benchmark the job took 6.18 s against 6.42 s on two workers, where those
#: wake-ups come out of the tasks, and 11.11 s against 11.19 s on one (medians of four jobs each,
#: alternating fresh clusters).
EVENT_LOOP_CONFIG = {"distributed.admin.tick.interval": "1s"}
#: Where the nannies take the ``MALLOC_TRIM_THRESHOLD_`` they start workers with (see WorkerSettings).
TRIM_THRESHOLD_KEY = f"{PRE_SPAWN_KEY}.MALLOC_TRIM_THRESHOLD_"
#: The standard AWS environment the job's storage takes its S3 endpoint and credentials from.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                        "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
KINDS = ("local", "scheduler", "ssh", "kubernetes", "jobqueue")
#: The options each kind takes besides ``kind`` (and ``worker``, for the kinds in WORKER_KINDS).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "local": ("workers",),
    "scheduler": ("address", "scheduler_file"),
    "ssh": ("hosts", "workers_per_host", "connect_options", "remote_python", "scheduler_port", "dashboard_port"),
    "kubernetes": ("manifest", "namespace", "shutdown_on_close"),
    "jobqueue": ("system", "jobs", "options"),
}
#: Kinds whose workers this module starts, so a spec may set their ``worker`` settings. A scheduler's
#: workers were started elsewhere (cluster/start-local.sh); Kubernetes workers by the manifest.
WORKER_KINDS = ("local", "ssh", "jobqueue")
JOBQUEUE_SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
SCHEDULER_VARIABLE = "DASK_SCHEDULER_ADDRESS"


class ClusterSpecError(ValueError):
    """A cluster spec that cannot be used: the message says which file, which key and why."""


def config_variable(key: str) -> str:
    """The environment variable dask reads config ``key`` from: ``a.b-c`` → ``DASK_A__B_C``."""
    return "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))


def config_environment(config: Mapping[str, Any]) -> dict[str, str]:
    """Dask config as the environment variables dask reads it from.

    Dask lowercases variable names, so a key with capitals (an environment
    variable's name under ``pre-spawn-environ``) goes as a dict literal in its
    parent's variable, which dask merges into that parent.
    """
    environment: dict[str, str] = {}
    by_parent: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        parent, _, leaf = key.rpartition(".")
        if leaf == leaf.lower():
            environment[config_variable(key)] = str(value)
        else:
            by_parent.setdefault(parent, {})[leaf] = value
    return {**environment, **{config_variable(parent): repr(values) for parent, values in by_parent.items()}}


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker gets, whatever started it: threads, memory limit, spill thresholds.

    The thresholds are fractions of ``memory_limit``: above ``target`` a worker
    spills data to disk, above ``spill`` too (by measured process memory), above
    ``pause`` it stops running tasks, above ``terminate`` its nanny restarts it.

    ``malloc_trim_threshold`` is the ``MALLOC_TRIM_THRESHOLD_`` the nannies start
    workers with (None: unset, which with a fixed mmap threshold is glibc's
    128 KiB): glibc gives the top of its heap back once that much of it is
    free. Dask sets 65536, with which every task faulted its arrays in afresh.
    The default, 256 MiB, with the 32 MiB mmap threshold of
    ``PRE_SPAWN_ENVIRONMENT``, keeps a worker's freed pages for its next task:
    on the 20-era benchmark, against glibc's own dynamic thresholds, 43,000 page faults a worker instead of 125,000, 0.5–0.6 s of system time
    instead of 0.7–1.0, the job 7.13–7.54 s instead of 7.33–7.79 in four
    alternating pairs, the same peaks (466–478 MiB against 465–476). A worker
    near its memory thresholds gives its freed memory back when a task ends
    (``pipeline.release_memory``); glibc's thresholds stay as the worker started with them.

    ``profile_interval`` is how often Dask's statistical profiler samples a
    worker's threads (``distributed.worker.profile.interval``; None turns the
    profiler off). Dask samples every 10 ms, on the worker's event loop: on the
    20-era benchmark that loop then used 0.37 s of CPU a job, where every task
    is seconds long and a machine with no spare core takes that time from the
    tasks. At 100 ms, 0.22 s, the job 6.70 s against 7.09 s (medians of nine
    jobs each in alternating processes), and as fast as with no profiler. One
    worker gained as much, 11.21 against 11.84 s: sampling holds the GIL.
    """

    threads: int = 1
    memory_limit: str = "auto"
    target: float = 0.6
    spill: float = 0.7
    pause: float = 0.8
    terminate: float = 0.95
    malloc_trim_threshold: int | None = 256 * 2**20
    profile_interval: str | None = "100ms"

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ClusterSpecError(f"worker threads must be a positive integer, got {self.threads!r}")
        trim = self.malloc_trim_threshold
        if trim is not None and (not isinstance(trim, int) or isinstance(trim, bool) or trim < 0):
            raise ClusterSpecError(f"worker malloc_trim_threshold must be bytes (an integer ≥ 0) or null, got {trim!r}")
        if self.profile_interval is not None and not _is_duration(self.profile_interval):
            raise ClusterSpecError("worker profile_interval must be a duration (e.g. 100ms) or null, got "
                                   f"{self.profile_interval!r}")
        fractions = [self.target, self.spill, self.pause, self.terminate]
        if not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions) or fractions != sorted(fractions):
            raise ClusterSpecError("worker memory fractions must lie in (0, 1] with target ≤ spill ≤ pause ≤ "
                                   f"terminate, got {fractions}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str) -> WorkerSettings:
        """The ``worker:`` table of a spec; unknown keys are errors."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ClusterSpecError(f"{where}: unknown key(s) {unknown} in worker; known: {', '.join(known)}")
        try:
            return cls(**{key: str(value) if key == "memory_limit" else value for key, value in table.items()})
        except ClusterSpecError as error:
            raise ClusterSpecError(f"{where}: {error}") from error

    def dask_config(self) -> dict[str, float | str | bool | None]:
        """The spill thresholds, the nannies' allocator settings, the profiler and the event loops' tick as dask
        config, for clusters started from this process."""
        thresholds = {f"distributed.worker.memory.{name}": getattr(self, name)
                      for name in ("target", "spill", "pause", "terminate")}
        allocator = {f"{PRE_SPAWN_KEY}.{name}": value for name, value in PRE_SPAWN_ENVIRONMENT.items()}
        profiler = {"distributed.worker.profile.enabled": self.profile_interval is not None}
        if self.profile_interval is not None:
            profiler["distributed.worker.profile.interval"] = self.profile_interval
        return {**thresholds, **allocator, TRIM_THRESHOLD_KEY: self.malloc_trim_threshold, **profiler,  # None: unset
                **EVENT_LOOP_CONFIG}

    def process_environment(self) -> dict[str, str]:
        """One BLAS/OpenMP thread per task thread (each task thread runs its own BLAS calls), Arrow on the system allocator."""
        return {**dict.fromkeys(BLAS_VARIABLES, "1"), **ALLOCATOR_ENVIRONMENT}

    def environment(self) -> dict[str, str]:
        """BLAS threads, allocator and spill thresholds as environment variables: for workers started by a shell,
        a container or a batch job, which read their dask config from the environment."""
        return {**self.process_environment(), **config_environment(self.dask_config())}


@dataclass(frozen=True)
class ClusterSpec:
    """How to get a cluster: ``kind``, that kind's options, the worker settings, and where it came from.

    ``base`` is the folder relative paths in the options (``scheduler_file``,
    ``manifest``) are relative to: the spec file's own folder.
    """

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    source: str = "default"
    base: Path = field(default_factory=Path.cwd)

    def path(self, key: str) -> Path:
        """Option ``key`` as a path, relative to the spec file's folder."""
        return self.base / str(self.options[key])


def load_spec(path: str | os.PathLike) -> ClusterSpec:
    """Read and check a cluster spec file; every mistake is a :class:`ClusterSpecError` naming the file."""
    where = str(path)
    if where.endswith(".toml") and Path(path).is_file():
        raise ClusterSpecError(f"{where} is a job file, not a cluster spec (YAML, e.g. cluster/processes.yaml); "
                               f"run it with: numerai-dask run {where}")
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClusterSpecError(f"cannot read cluster spec {where}: {error}") from error
    if not isinstance(document, dict):
        raise ClusterSpecError(f"cluster spec {where} is not a YAML mapping")
    kind = document.get("kind")
    if kind not in KINDS:
        raise ClusterSpecError(f"cluster spec {where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = ("kind", *KIND_KEYS[kind], *(("worker",) if kind in WORKER_KINDS else ()))
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        raise ClusterSpecError(f"cluster spec {where}: unknown key(s) {unknown} for kind {kind}; "
                               f"known: {', '.join(allowed)}")
    options = {key: value for key, value in document.items() if key in KIND_KEYS[kind]}
    spec = ClusterSpec(kind, options, WorkerSettings.from_mapping(document.get("worker") or {}, where), where,
                       Path(path).resolve().parent)
    CHECKS[kind](spec)
    return spec


def _require(spec: ClusterSpec, condition: bool, message: str) -> None:
    if not condition:
        raise ClusterSpecError(f"cluster spec {spec.source}: {message}")


def _is_duration(value: Any) -> bool:
    """Whether ``value`` is a positive duration as dask config writes one (``"100ms"``, ``"1s"``)."""
    try:
        return isinstance(value, str) and parse_timedelta(value) > 0
    except (ValueError, KeyError, IndexError):  # dask's parser on a malformed number, an unknown unit, no text
        return False


def _check_local(spec: ClusterSpec) -> None:
    workers = spec.options.get("workers")
    _require(spec, workers is None or is_count(workers), f"workers must be a whole number of at least 1, got {workers!r}")


def _check_scheduler(spec: ClusterSpec) -> None:
    _require(spec, len(spec.options) == 1, "kind scheduler takes exactly one of address, scheduler_file")


def _check_ssh(spec: ClusterSpec) -> None:
    hosts = spec.options.get("hosts")
    _require(spec, isinstance(hosts, list) and len(hosts) >= 2 and all(isinstance(h, str) for h in hosts),
             "hosts must list the scheduler's host, then at least one worker host")
    _require(spec, is_count(spec.options.get("workers_per_host", 1)), "workers_per_host must be a positive integer")
    _require(spec, isinstance(spec.options.get("connect_options", {}), dict),
             "connect_options must be a mapping (asyncssh.connect's keyword arguments)")


def _check_kubernetes(spec: ClusterSpec) -> None:
    _require(spec, "manifest" in spec.options, "kind kubernetes needs manifest (a DaskCluster file)")
    _require(spec, spec.path("manifest").is_file(), f"manifest {spec.path('manifest')} does not exist")


def _check_jobqueue(spec: ClusterSpec) -> None:
    _require(spec, spec.options.get("system") in JOBQUEUE_SYSTEMS,
             f"system must be one of {', '.join(JOBQUEUE_SYSTEMS)}, got {spec.options.get('system')!r}")
    _require(spec, is_count(spec.options.get("jobs", 1)), "jobs must be a positive integer")
    options = spec.options.get("options", {})
    _require(spec, isinstance(options, dict) and is_count(options.get("cores")) and "memory" in options,
             "options must give at least cores (a positive integer) and memory (per job, e.g. 16GiB)")
    _require(spec, options["cores"] % spec.worker.threads == 0,
             f"options.cores ({options['cores']}) must be a multiple of worker threads ({spec.worker.threads})")
    _require(spec, spec.worker.memory_limit == "auto",
             "a jobqueue worker's memory limit is options.memory divided among its processes; "
             "leave worker.memory_limit out")
    _require(spec, not {"processes", "job_script_prologue", "env_extra"} & set(options),
             "processes and job_script_prologue are set from the worker settings; leave them out of options")


CHECKS: dict[str, Callable[[ClusterSpec], None]] = {
    "local": _check_local, "scheduler": _check_scheduler, "ssh": _check_ssh, "kubernetes": _check_kubernetes,
    "jobqueue": _check_jobqueue,
}


def choose(scheduler: str | None = None, cluster: str | None = None, workers: int | None = None,
           environ: Mapping[str, str] = os.environ) -> ClusterSpec:
    """The cluster a job uses, by precedence: a scheduler address or a spec file given with the job
    (not both), else ``DASK_SCHEDULER_ADDRESS`` from ``environ``, else a LocalCluster.

    ``workers`` sizes a LocalCluster the job starts: the default one, or a
    ``kind: local`` spec's (it wins over the spec's ``workers``).
    """
    if scheduler and cluster:
        raise ClusterSpecError(f"give a scheduler address or a cluster spec, not both (got {scheduler} and {cluster})")
    if workers is not None:
        require_count(workers, "workers")
    if scheduler:
        return ClusterSpec("scheduler", {"address": scheduler}, source="--scheduler")
    if cluster:
        spec = load_spec(cluster)
        if spec.kind == "local" and workers is not None:
            return ClusterSpec("local", {**spec.options, "workers": workers}, spec.worker, spec.source, spec.base)
        return spec
    if environ.get(SCHEDULER_VARIABLE):
        return ClusterSpec("scheduler", {"address": environ[SCHEDULER_VARIABLE]}, source=SCHEDULER_VARIABLE)
    return ClusterSpec("local", {"workers": workers})


# ------------------------------------------------------------------ each backend's own arguments


def local_cluster_arguments(spec: ClusterSpec) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments: single-threaded worker processes (one per usable core by default),
    each pinned to its own cores when together they fill them (:data:`PIN_CORES_VARIABLE`)."""
    cores = len(usable_cores())
    workers = spec.options.get("workers") or cores
    pinning = {PIN_CORES_VARIABLE: str(spec.worker.threads)} if workers * spec.worker.threads == cores else {}
    return {
        "n_workers": workers,
        "threads_per_worker": spec.worker.threads,
        "processes": True,
        "memory_limit": spec.worker.memory_limit,
        "dashboard_address": ":0",
        "env": {**spec.worker.process_environment(), **pinning},
        **local_preloads(),
    }


def usable_cores() -> list[int]:
    """The cores this process may run on (all of the machine's where the system cannot say), in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_to_cores(cores: set[int]) -> None:
    """Run every thread of this process on ``cores`` only; threads it starts later inherit that.

    Threads are listed again until no new one appears: one started by a
    thread not yet pinned inherits the old cores. Raises OSError where the
    system lists no threads (``/proc``) or refuses the cores.
    """
    pinned: set[str] = set()
    while new := set(os.listdir("/proc/self/task")) - pinned:
        for thread in new:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(thread), cores)
        pinned |= new


def local_preloads() -> dict[str, list]:
    """``LocalCluster`` arguments for its workers' preloads: those Dask's config names, then this module's
    (:func:`dask_setup`). Given explicitly, they replace the config's, so these are added to them; each keeps its
    own arguments (the config's ``preload-argv``: one list for all, or one per preload)."""
    preload = dask.config.get("distributed.worker.preload", None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    argv = dask.config.get("distributed.worker.preload-argv", None) or []
    per_preload = [list(argv)] * len(preload) if argv and isinstance(argv[0], str) else [list(a) for a in argv]
    return {"preload": [*preload, __name__], "preload_argv": [*(per_preload or [[]] * len(preload)), []]}


def ssh_cluster_arguments(spec: ClusterSpec) -> dict[str, Any]:
    """``distributed.SSHCluster`` keyword arguments: scheduler on the first host, workers on the others.

    The workers are nannies with the BLAS environment; the spill thresholds
    reach them through the dask config SSHCluster copies to the remote
    processes (see :func:`connect`). No credential goes on the remote command line.
    """
    options = spec.options
    scheduler_options: dict[str, Any] = {"port": options.get("scheduler_port", 8786)}
    scheduler_options["dashboard_address"] = f":{options.get('dashboard_port', 8787)}"
    arguments: dict[str, Any] = {
        "hosts": list(options["hosts"]),
        "connect_options": dict(options.get("connect_options", {})),
        "worker_options": {"n_workers": options.get("workers_per_host", 1), "nthreads": spec.worker.threads,
                           "memory_limit": spec.worker.memory_limit, "env": spec.worker.process_environment()},
        "scheduler_options": scheduler_options,
        "worker_class": "distributed.Nanny",
    }
    if "remote_python" in options:
        arguments["remote_python"] = options["remote_python"]
    return arguments


def kubernetes_cluster_arguments(spec: ClusterSpec) -> dict[str, Any]:
    """``dask_kubernetes.operator.KubeCluster`` keyword arguments: the DaskCluster manifest, as a mapping.

    The operator creates the cluster (or connects to the running one of that
    name); the manifest carries the number of workers, their environment and the Secret.
    """
    manifest = yaml.safe_load(spec.path("manifest").read_text())
    arguments: dict[str, Any] = {"custom_cluster_spec": manifest,
                                 "shutdown_on_close": spec.options.get("shutdown_on_close", True)}
    if "namespace" in spec.options:
        arguments["namespace"] = spec.options["namespace"]
    return arguments


def jobqueue_cluster_arguments(spec: ClusterSpec) -> tuple[str, dict[str, Any]]:
    """The dask-jobqueue class name and its keyword arguments.

    Each job runs ``cores / threads`` worker processes of ``threads`` threads;
    the job script exports the worker environment before it starts them.
    """
    options = dict(spec.options["options"])
    exports = [f"export {name}={shlex.quote(value)}" for name, value in spec.worker.environment().items()]
    options.update(processes=options["cores"] // spec.worker.threads, job_script_prologue=exports)
    return JOBQUEUE_SYSTEMS[spec.options["system"]], options


# ------------------------------------------------------------------ connecting


def _log_workers(client: Client, what: str, log: Callable[[str], None]) -> None:
    log(f"{what} ({counted(len(client.scheduler_info()['workers']), 'worker')}) · dashboard {client.dashboard_link}")


@contextlib.contextmanager
def connect(spec: ClusterSpec, log: Callable[[str], None] = print) -> Iterator[Client]:
    """A client on the cluster ``spec`` describes; clusters started here are stopped on exit."""
    if spec.kind == "scheduler":
        if "scheduler_file" in spec.options:
            scheduler_file = spec.path("scheduler_file")
            if not scheduler_file.is_file():  # Client would wait for it to appear, then time out
                raise ClusterSpecError(f"cluster spec {spec.source}: no scheduler file {scheduler_file}: is the "
                                       "cluster started (cluster/start-local.sh writes it to RUN_DIR)?")
            with Client(scheduler_file=str(scheduler_file)) as client:
                _log_workers(client, f"connected to {client.scheduler.address} (from {scheduler_file})", log)
                yield client
        else:
            with Client(spec.options["address"]) as client:
                _log_workers(client, f"connected to {spec.options['address']}", log)
                yield client
        return
    with dask.config.set(spec.worker.dask_config()), _start(spec) as cluster, Client(cluster) as client:
        if spec.kind == "local":
            log(f"started a LocalCluster of {counted(len(cluster.workers), 'worker')} · {local_dashboard(client)}")
        elif spec.kind == "jobqueue":
            jobs = counted(spec.options.get("jobs", 1), f"{spec.options['system']} job")
            log(f"submitted {jobs}; tasks start as their workers join · dashboard {client.dashboard_link}")
        else:
            if spec.kind == "ssh":  # started means "printed its address", not yet "joined the scheduler"
                client.wait_for_workers((len(spec.options["hosts"]) - 1) * spec.options.get("workers_per_host", 1))
            started = {"ssh": "an SSHCluster", "kubernetes": "a KubeCluster"}[spec.kind]
            _log_workers(client, f"started {started} from {spec.source}", log)
        yield client


def backend(module: str, extra: str) -> Any:
    """Import an optional backend library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ClusterSpecError(f"this cluster spec needs {module} ({error}); "
                               f"install it with: pip install 'numerai-dask[{extra}]'") from error


def local_dashboard(client: Client) -> str:
    """Where the dashboard of a cluster whose scheduler runs in this process is, or how to get one: Dask serves
    it only with bokeh installed, which the job itself does not need."""
    try:
        served = BOKEH_REQUIREMENT.specifier.contains(importlib.metadata.version("bokeh"), prereleases=True)
    except importlib.metadata.PackageNotFoundError:
        served = False
    if not served:
        return f"no dashboard (it needs {BOKEH_REQUIREMENT}: pip install 'numerai-dask[dashboard]')"
    return f"dashboard {client.dashboard_link}"


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[Callable[[], None]]:
    """A Ctrl-C (SIGINT) in the block is kept, and handed to the handler it was meant for (KeyboardInterrupt by
    default) when the function given is called or the block ends, so that a LocalCluster being started is
    first entered into the block that closes it. Outside the main thread, or with SIGINT ignored, nothing
    changes."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: None  # SIGINT ignored (or handled outside Python) stays so
        return
    kept: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _: kept.append(signum))
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            signal.signal(signal.SIGINT, previous)
            if kept:
                signal.raise_signal(signal.SIGINT)  # to the handler it was meant for: KeyboardInterrupt by default

    try:
        yield release
    finally:
        release()


def dask_setup(worker: Any) -> None:
    """Run by Dask in each worker of a LocalCluster the job starts (its ``preload``): the worker ignores Ctrl-C,
    and pins itself to the cores of its number when told to (:data:`PIN_CORES_VARIABLE`).

    The workers share the terminal's Ctrl-C with the command, which stops
    them itself; each printed a KeyboardInterrupt traceback, while the command
    said it was interrupted. Dask runs preloads once a worker has loaded its
    libraries: a Ctrl-C while the cluster starts still reaches the workers
    starting then, and each may print its traceback, unless (as the
    ``numerai-dask`` command's workers do, in :mod:`numerai_dask.__main__`) they
    ignore it from the start. A LocalCluster numbers its workers from 0, and
    a worker the nanny restarts keeps its number.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setting = os.environ.get(PIN_CORES_VARIABLE, "")
    threads = int(setting) if setting.isdigit() else 0
    if threads and isinstance(worker.name, int) and hasattr(os, "sched_setaffinity"):
        cores = usable_cores()[worker.name * threads:(worker.name + 1) * threads]
        if len(cores) == threads:  # not a worker added beyond the cores
            with contextlib.suppress(OSError):  # pinning only speeds the worker up: without it, it works
                pin_to_cores(set(cores))


@contextlib.contextmanager
def _start(spec: ClusterSpec) -> Iterator[Any]:
    """Start the cluster of a spec that is not a bare scheduler, through its library; close it on exit."""
    if spec.kind == "local":
        with ctrl_c_deferred() as release:
            with LocalCluster(**local_cluster_arguments(spec)) as local:
                release()  # a Ctrl-C while the workers started arrives here, and closes them on its way
                yield local
        return
    if spec.kind == "ssh":
        backend("asyncssh", "ssh")  # SSHCluster imports it only once it is starting, behind other errors
        from distributed import SSHCluster

        cluster: Any = SSHCluster(**ssh_cluster_arguments(spec))
    elif spec.kind == "kubernetes":
        cluster = backend("dask_kubernetes.operator", "kubernetes").KubeCluster(**kubernetes_cluster_arguments(spec))
    else:
        name, arguments = jobqueue_cluster_arguments(spec)
        cluster = getattr(backend("dask_jobqueue", "jobqueue"), name)(**arguments)
        cluster.scale(jobs=spec.options.get("jobs", 1))
    with cluster:
        yield cluster


def main(argv: list[str] | None = None) -> int:
    """``worker-env``: the worker environment as ``export`` lines, for shell scripts to ``eval``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["worker-env"]:
        print("usage: python -m numerai_dask.clusters worker-env", file=sys.stderr)
        return 2
    for name, value in WorkerSettings().environment().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
