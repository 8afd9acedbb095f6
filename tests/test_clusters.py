"""How a job gets its cluster (``--cluster SPEC``), and the deployments in ``cluster/`` that give it one.

The job through the shipped processes spec runs on a real multi-process
cluster started by ``cluster/start-local.sh`` and must equal the job on a
LocalCluster. Spec files, the Kubernetes manifests (against the operator's
CRDs), the batch job scripts dask-jobqueue writes and the Dockerfile are
checked without SSH servers, Kubernetes or a batch system, which do not exist
here; what each check covers is said in ``cluster/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask_jobqueue
import numpy as np
import pytest
import yaml
from conftest import _accepts_tcp, free_port, start_service, wait_until
from distributed import Client
from dask.utils import parse_bytes
from dask_kubernetes.operator import make_cluster_spec
from manifests import ManifestError, validate_builtin, validate_custom_resource
from packaging.specifiers import SpecifierSet
from script_cluster import is_running, read_pids, run_script, script_cluster, script_environment
from test_cli import DATASET, Run, assert_frames_close, run_cli, succeeded

from numerai_dask import clusters
from numerai_dask.cli import build_parser, main, spec_from_job_file
from numerai_dask.clusters import ClusterSpecError, WorkerSettings, choose, load_spec
from numerai_dask.pipeline import JobError, ScoringParams, run_job
from numerai_dask.settings import InvalidSetting
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
KUBERNETES = CLUSTER / "kubernetes"
AWS_SECRET = "numerai-dask-aws"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    generate(str(root), **DATASET)
    return root


#: What glibc and NumPy must find in a worker's environment when the process starts (Dask's trim threshold is 65536).
ALLOCATOR_START = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456",
                   "NUMPY_MADVISE_HUGEPAGE": "0"}


def process_environment(pid: int) -> dict[str, str]:
    """The environment a running process was started with."""
    entries = (Path("/proc") / str(pid) / "environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


# ------------------------------------------------------------------ the job through --cluster


def test_the_processes_spec_scores_on_the_scripts_cluster_exactly_as_a_local_cluster(dataset: Path,
                                                                                       tmp_path: Path) -> None:
    """The shipped processes spec, named in a job file's [cluster] (which wins over the environment), on a
    scheduler and one worker from start-local.sh plus one worker that start-local.sh adds to it (SCHEDULER=…);
    stop-local.sh stops every process either started. The reference: the shipped local spec's LocalCluster."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    spec = Path(shutil.copyfile(CLUSTER / "processes.yaml", folder / "processes.yaml"))  # next to its own run/
    job = tmp_path / "job.toml"
    job.write_text(f'root = "{dataset}"\nout = "{tmp_path / "processes"}"\n[cluster]\ncluster = "{spec}"\n')
    nowhere = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: choosing it would fail the job
    with script_cluster(folder / "run", workers=1) as cluster:
        joining = {**script_environment(tmp_path / "joining"), "SCHEDULER": cluster.address}
        run_script("start-local.sh", joining, "1")
        started = {**cluster.pids, "joined": read_pids(tmp_path / "joining")["worker-1"]}
        try:
            assert sorted(cluster.pids) == ["scheduler", "worker-1"] and all(map(is_running, started.values()))
            for pid in (started["worker-1"], started["joined"]):
                worker_env = process_environment(pid)
                assert {k: worker_env.get(k) for k in WorkerSettings().environment()} == WorkerSettings().environment()
            with Client(cluster.address) as client:
                names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
                assert list(client.nthreads().values()) == [1, 1]
                worker_pids = client.run(os.getpid).values()
            assert [{k: process_environment(pid).get(k) for k in ALLOCATOR_START} for pid in worker_pids] \
                == [ALLOCATOR_START] * 2
            joined = [name for name in names if name != "worker-1"]
            assert len(names) == 2 and joined[0].startswith(f"{socket.gethostname()}-") and joined[0].endswith(
                "-worker-1")  # unique on the scheduler: named after the host it runs on
            on_processes = Run.of(tmp_path / "processes", run_cli("run", str(job),
                                                                  env={"DASK_SCHEDULER_ADDRESS": nowhere}))
        finally:
            run_script("stop-local.sh", joining)
    assert not [name for name, pid in started.items() if is_running(pid)]
    assert not (folder / "run" / "pids").exists() and not (tmp_path / "joining" / "pids").exists()
    assert f"connected to {cluster.address} (from {folder / 'run' / 'scheduler.json'}) (2 workers)" \
        in on_processes.stdout

    messages: list[str] = []
    with clusters.connect(choose(None, str(CLUSTER / "local.yaml"), 2, {}), log=messages.append) as client:
        settings = client.run(lambda dask_worker: (
            {name: os.environ.get(name) for name in WorkerSettings().process_environment()}, dask_worker.state.nthreads,
            {key: dask.config.get(key) for key in WorkerSettings().dask_config()}))
        profiling = client.run(lambda dask_worker: dask_worker.periodic_callbacks["profile"].callback_time)
        ticks = client.run(lambda dask_worker: dask_worker.periodic_callbacks["tick"].callback_time)
        scheduler_tick = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time)
        local_environments = [process_environment(pid) for pid in client.run(os.getpid).values()]
        huge_pages = client.run(lambda: np._core.multiarray._get_madvise_hugepage())
        local = run_job(client, Storage(str(dataset)), ScoringParams())
    assert messages[0].startswith("started a LocalCluster of 2 workers · ")
    with_bokeh = importlib.util.find_spec("bokeh") is not None  # without it Dask serves no dashboard
    assert ("dashboard http" if with_bokeh else "no dashboard (it needs bokeh>=3.1.0: pip install 'numerai-dask[dashboard]')"
            ) in messages[0]
    assert list(settings.values()) == [(WorkerSettings().process_environment(), 1, WorkerSettings().dask_config())] * 2
    assert list(profiling.values()) == [100, 100]  # ms: the profiler samples at WorkerSettings' interval, not 10 ms
    assert list(ticks.values()) == [1000, 1000] and scheduler_tick == 1000  # ms: EVENT_LOOP_CONFIG's tick, not 20 ms
    assert [{k: env.get(k) for k in ALLOCATOR_START} for env in local_environments] == [ALLOCATOR_START] * 2
    assert list(huge_pages.values()) == [False, False]  # NumPy read its variable when the worker imported it
    assert_frames_close(on_processes.table("per_era"), local.per_era, ["era", "model"])
    assert_frames_close(on_processes.table("leaderboard"), local.leaderboard, ["model"])
    assert len(local.per_era) == DATASET["n_models"] * (DATASET["n_eras"] - DATASET["n_unresolved"])


def test_the_command_line_wins_over_the_job_file_and_the_environment(dataset: Path, dask_cluster: str,
                                                                      tmp_path: Path) -> None:
    nowhere = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: choosing it fails the job
    spec = tmp_path / "shared.yaml"
    spec.write_text(f"kind: scheduler\naddress: {dask_cluster}\n")
    job = tmp_path / "job.toml"
    job.write_text(f'root = "{dataset}"\nout = "{tmp_path / "out"}"\n[cluster]\nscheduler = "{nowhere}"\n')
    done = succeeded(run_cli("run", str(job), "--cluster", str(spec), env={"DASK_SCHEDULER_ADDRESS": nowhere}))
    assert f"connected to {dask_cluster} (2 workers)" in done.stdout


def test_workers_asked_for_beside_a_scheduler_are_said_to_be_unused(dataset: Path, dask_cluster: str,
                                                                     tmp_path: Path) -> None:
    """--workers sizes only a LocalCluster the job starts: beside --scheduler it was ignored without a word."""
    done = succeeded(run_cli("score", str(dataset), "--scheduler", dask_cluster, "--workers", "3",
                             "--out", str(tmp_path / "out")))
    assert (f"note: the workers asked for (3) size a LocalCluster; this job uses the cluster of {dask_cluster}"
            in done.stdout.splitlines())
    assert f"connected to {dask_cluster} (2 workers)" in done.stdout


def spec_file(folder: Path, text: str, name: str = "spec.yaml") -> str:
    (folder / name).write_text(text)
    return str(folder / name)


def test_choose_follows_the_documented_precedence(tmp_path: Path) -> None:
    local = spec_file(tmp_path, "kind: local\nworkers: 3\n")
    environment = {"DASK_SCHEDULER_ADDRESS": "tcp://from-env:8786"}
    given = choose("tcp://given:8786", None, None, environment)
    assert (given.kind, dict(given.options), given.source) == ("scheduler", {"address": "tcp://given:8786"},
                                                               "--scheduler")
    from_spec = choose(None, local, None, environment)
    assert (from_spec.kind, from_spec.options["workers"]) == ("local", 3)
    assert choose(None, local, 5, environment).options["workers"] == 5  # --workers sizes a local spec too
    from_env = choose(None, None, 5, environment)
    assert (from_env.kind, from_env.options["address"]) == ("scheduler", "tcp://from-env:8786")
    default = choose(None, None, 5, {})
    assert (default.kind, default.options["workers"], default.worker) == ("local", 5, WorkerSettings())
    with pytest.raises(ClusterSpecError, match="not both"):
        choose("tcp://given:8786", local, None, {})
    for workers in (0, -1, "2", True):  # --workers 0 started the default cluster; a job file's "2" was a traceback
        with pytest.raises(InvalidSetting, match=f"workers: must be a whole number of at least 1, got {workers!r}"):
            choose(None, None, workers, {})


def test_scheduler_and_cluster_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["score", str(tmp_path), "--scheduler", "tcp://x:1", "--cluster", "cluster/local.yaml"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    job = tmp_path / "job.toml"
    job.write_text('root = "r"\n[cluster]\nscheduler = "tcp://x:1"\ncluster = "cluster/local.yaml"\n')
    with pytest.raises(JobError, match="scheduler or cluster, not both"):
        spec_from_job_file(str(job))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("kind: local\nworkerz: 2\n", "unknown key(s) ['workerz'] for kind local; known: kind, workers, worker"),
        ("kind: scheduler\nscheduler_file: run/scheduler.json\n",
         "no scheduler file {folder}/run/scheduler.json: is the cluster started"),
    ],
    ids=["unknown-key", "cluster-not-started"],
)
def test_a_bad_spec_fails_the_job_with_one_line(text: str, complaint: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    spec = spec_file(tmp_path, text)
    assert main(["score", str(tmp_path), "--cluster", spec]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"numerai-dask: error: cluster spec {spec}: ")
    assert complaint.format(folder=tmp_path) in err[0]


# ------------------------------------------------------------------ spec files


def test_every_shipped_spec_loads_and_every_kind_has_one() -> None:
    specs = {path.name: load_spec(path) for path in sorted(CLUSTER.glob("*.yaml"))}
    assert {spec.kind for spec in specs.values()} == set(clusters.KINDS)
    assert specs["processes.yaml"].path("scheduler_file") == CLUSTER / "run" / "scheduler.json"
    assert specs["local.yaml"].worker == WorkerSettings()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("kind: yarn\n", "kind must be one of local, scheduler, ssh, kubernetes, jobqueue, got 'yarn'"),
        ("- kind: local\n", "is not a YAML mapping"),
        ("kind: local\nworkers: 0\n", "workers must be a whole number of at least 1, got 0"),
        ("kind: local\nworker: {thread: 2}\n", "unknown key(s) ['thread'] in worker"),
        ("kind: local\nworker: {spill: 0.5}\n", "target ≤ spill ≤ pause ≤ terminate, got [0.6, 0.5, 0.8, 0.95]"),
        ("kind: local\nworker: {malloc_trim_threshold: 64KiB}\n", "malloc_trim_threshold must be bytes (an integer"),
        ("kind: local\nworker: {profile_interval: 100}\n", "profile_interval must be a duration (e.g. 100ms) or null"),
        ("kind: local\nworker: {profile_interval: 0ms}\n", "profile_interval must be a duration (e.g. 100ms) or null"),
        ("kind: local\nworker: {profile_interval: fortnightly}\n", "profile_interval must be a duration"),
        ("kind: scheduler\naddress: tcp://a:1\nscheduler_file: s.json\n", "exactly one of address, scheduler_file"),
        ("kind: scheduler\naddress: tcp://a:1\nworker: {threads: 1}\n", "unknown key(s) ['worker'] for kind scheduler"),
        ("kind: ssh\nhosts: [only-one]\n", "hosts must list the scheduler's host, then at least one worker host"),
        ("kind: kubernetes\nmanifest: missing.yaml\n", "missing.yaml does not exist"),
        ("kind: jobqueue\nsystem: lsf\n", "system must be one of slurm, pbs, got 'lsf'"),
        ("kind: jobqueue\nsystem: slurm\noptions: {memory: 8GiB}\n", "options must give at least cores"),
        ("kind: jobqueue\nsystem: slurm\noptions: {cores: 6, memory: 8GiB}\nworker: {threads: 4}\n",
         "options.cores (6) must be a multiple of worker threads (4)"),
        ("kind: jobqueue\nsystem: slurm\noptions: {cores: 4, memory: 8GiB, processes: 2}\n",
         "processes and job_script_prologue are set from the worker settings"),
    ],
)
def test_spec_mistakes_are_errors_naming_the_file(tmp_path: Path, text: str, complaint: str) -> None:
    spec = spec_file(tmp_path, text)
    with pytest.raises(ClusterSpecError) as raised:
        load_spec(spec)
    assert spec in str(raised.value) and complaint in str(raised.value)


def _thread_cores(dask_worker) -> tuple[Any, set[tuple[int, ...]]]:
    """A worker's number and the core sets its threads may run on."""
    cores = set()
    for thread in os.listdir("/proc/self/task"):
        try:
            cores.add(tuple(sorted(os.sched_getaffinity(int(thread)))))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return dask_worker.name, cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(clusters.usable_cores()) < 2,
                    reason="needs two cores and core affinity")
def test_local_workers_that_fill_the_cores_each_run_on_their_own() -> None:
    """Held to two cores: two workers pin every thread to one core each, by worker number; one worker is left free."""
    allowed = clusters.usable_cores()
    two = allowed[:2]
    clusters.pin_to_cores(set(two))  # every thread of this process, so the processes it starts inherit it
    try:
        with clusters.connect(clusters.ClusterSpec("local", {"workers": 2}), log=lambda _: None) as client:
            pinned = sorted(client.run(_thread_cores).values())
        with clusters.connect(clusters.ClusterSpec("local", {"workers": 1}), log=lambda _: None) as client:
            free = list(client.run(_thread_cores).values())
    finally:
        clusters.pin_to_cores(set(allowed))
    assert pinned == [(0, {(two[0],)}), (1, {(two[1],)})]
    assert free == [(0, {tuple(two)})]


def test_local_workers_ignore_ctrl_c_and_keep_the_preloads_dask_config_names(tmp_path: Path, monkeypatch) -> None:
    """The project's preload (workers leave Ctrl-C to the command) is added to the config's, not put in their place,
    with each preload's own arguments."""
    (tmp_path / "user_preload.py").write_text("def dask_setup(worker):\n    worker.user_preload_ran = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this process's sys.path
    with dask.config.set({"distributed.worker.preload": ["user_preload"], "distributed.worker.preload-argv": [[]]}):
        with clusters.connect(choose(None, None, 1, {}), log=lambda _: None) as client:
            seen = client.run(lambda dask_worker: (getattr(dask_worker, "user_preload_ran", False),
                                                   signal.getsignal(signal.SIGINT) == signal.SIG_IGN))
    assert list(seen.values()) == [(True, True)]


def test_a_job_file_given_as_a_cluster_spec_says_how_to_run_it() -> None:
    with pytest.raises(ClusterSpecError, match=r"jobs/local.toml is a job file, not a cluster spec .*"
                                               r"run it with: numerai-dask run jobs/local.toml"):
        load_spec("jobs/local.toml")


def test_a_missing_backend_library_names_the_extra_that_installs_it() -> None:
    assert clusters.backend("dask_jobqueue", "jobqueue") is dask_jobqueue
    with pytest.raises(ClusterSpecError, match=r"needs no_such_backend .*pip install 'numerai-dask\[ssh\]'"):
        clusters.backend("no_such_backend", "ssh")


@pytest.mark.parametrize("profile_interval", ["250ms", None])
def test_worker_environment_is_what_dask_reads_back(profile_interval: str | None) -> None:
    """The environment form of the spill thresholds and the profiler means the same config to a worker that reads it."""
    settings = WorkerSettings(target=0.5, spill=0.6, pause=0.7, terminate=0.9, malloc_trim_threshold=65536,
                              profile_interval=profile_interval)
    code = ("import dask.config, distributed, json; print(json.dumps({k: dask.config.get(k) for k in "
            f"{list(settings.dask_config())!r}}}))")
    read = subprocess.run([sys.executable, "-c", code], env={**settings.environment(), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    assert yaml.safe_load(read.stdout) == settings.dask_config()
    assert {k: settings.environment()[k] for k in clusters.BLAS_VARIABLES} == dict.fromkeys(clusters.BLAS_VARIABLES,
                                                                                           "1")


def test_worker_env_command_prints_the_environment_for_the_scripts() -> None:
    printed = subprocess.run([sys.executable, "-m", "numerai_dask.clusters", "worker-env"], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert printed == [f"export {k}={shlex.quote(v)}" for k, v in WorkerSettings().environment().items()]


# ------------------------------------------------------------------ ssh, jobqueue: each library's own arguments


@pytest.fixture(scope="module")
def ssh_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real SSH server (asyncssh's, tests/ssh_server.py) on 127.0.0.1; stopped by process group at the end."""
    port = free_port()
    server = start_service("ssh-server", [sys.executable, str(Path(__file__).parent / "ssh_server.py"), str(port)],
                           tmp_path_factory.mktemp("ssh"))
    try:
        wait_until(lambda: _accepts_tcp(port), [server], f"SSH server on port {port}")
        yield port
    finally:
        server.stop()


def test_ssh_spec_starts_a_cluster_over_ssh_whose_workers_have_the_worker_settings(
        dataset: Path, dask_cluster: str, ssh_port: int, tmp_path: Path) -> None:
    """SSHCluster through a real SSH connection to 127.0.0.1 (scheduler and worker host are the same machine)."""
    spec = spec_file(tmp_path, f"kind: ssh\nhosts: [127.0.0.1, 127.0.0.1]\n"
                               f"connect_options: {{port: {ssh_port}, known_hosts: null, username: tester}}\n"
                               f"remote_python: {sys.executable}\nscheduler_port: 0\ndashboard_port: 0\n"
                               "worker: {memory_limit: 1GiB, spill: 0.75}\n")
    messages: list[str] = []
    with clusters.connect(load_spec(spec), log=messages.append) as client:
        blas = client.run(lambda: {name: os.environ.get(name) for name in WorkerSettings().process_environment()})
        memory = client.run(lambda dask_worker: (dask_worker.memory_manager.memory_limit,
                                                 dask.config.get("distributed.worker.memory.spill")))
        on_ssh = run_job(client, Storage(str(dataset)), ScoringParams())
    assert messages[0].startswith(f"started an SSHCluster from {spec} (1 worker)")
    assert list(blas.values()) == [WorkerSettings().process_environment()]
    assert list(memory.values()) == [(parse_bytes("1GiB"), 0.75)]
    with Client(dask_cluster) as client:
        expected = run_job(client, Storage(str(dataset)), ScoringParams())
    assert_frames_close(on_ssh.per_era, expected.per_era, ["era", "model"])


def test_ssh_spec_gives_sshcluster_the_hosts_and_the_worker_settings() -> None:
    spec = load_spec(CLUSTER / "ssh.yaml")
    arguments = clusters.ssh_cluster_arguments(spec)
    assert arguments["hosts"] == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    assert arguments["worker_options"] == {"n_workers": 8, "nthreads": 1, "memory_limit": "6GiB",
                                           "env": WorkerSettings().process_environment()}
    assert arguments["scheduler_options"] == {"port": 8786, "dashboard_address": ":8787"}
    assert arguments["connect_options"]["username"] == "numerai"
    assert arguments["remote_python"] == "/opt/numerai-dask/.venv/bin/python"
    assert not [value for value in map(str, arguments.values()) if "AWS" in value]


@pytest.mark.parametrize(("name", "directive"), [("slurm.yaml", "#SBATCH -A numerai"), ("pbs.yaml", "#PBS -A numerai")])
def test_jobqueue_spec_writes_a_job_script_with_the_worker_environment(name: str, directive: str) -> None:
    """dask-jobqueue writes the batch script itself (it needs no batch system for that)."""
    spec = load_spec(CLUSTER / name)
    class_name, arguments = clusters.jobqueue_cluster_arguments(spec)
    arguments.pop("interface")  # ib0 exists on the cluster, not here; the scheduler binds to the default
    with getattr(dask_jobqueue, class_name)(**arguments, scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
    assert directive in script
    for variable, value in WorkerSettings().environment().items():
        assert f"export {variable}={shlex.quote(value)}\n" in script
    command = script.splitlines()[-1]
    for option in ("--nthreads 1 ", "--nworkers 32 ", "--memory-limit 4.00GiB "):  # 128 GiB shared by 32 processes
        assert option in command
    assert script.index("export OMP_NUM_THREADS=1") < script.index(command)


# ------------------------------------------------------------------ Kubernetes


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / name).read_text())


def worker_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker containers of a DaskCluster or a DaskJob's cluster."""
    spec = resource["spec"]["cluster"]["spec"] if resource["kind"] == "DaskJob" else resource["spec"]
    return spec["worker"]["spec"]["containers"]


def secret_refs(container: dict[str, Any]) -> list[str]:
    return [source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source]


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_operator_manifests_fit_the_operator_crds(name: str) -> None:
    validate_custom_resource(manifest(name))


@pytest.mark.parametrize("name", ["cronjob.yaml", "secret.example.yaml"])
def test_builtin_manifests_build_into_the_kubernetes_models(name: str) -> None:
    assert type(validate_builtin(manifest(name))).__name__ == f"V1{manifest(name)['kind']}"


def test_the_crd_check_accepts_what_the_operator_itself_generates() -> None:
    validate_custom_resource(make_cluster_spec(name="probe", n_workers=2, env={"A": "1"}))


def edit(name: str, change: Any) -> dict[str, Any]:
    document = manifest(name)
    change(document)
    return document


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (edit("daskcluster.yaml", lambda d: d["spec"]["worker"].update(replica=4)), "'replica' was unexpected"),
        (edit("daskcluster.yaml", lambda d: d["spec"]["worker"].update(replicas="four")),
         "'four' is not of type 'integer'"),
        (edit("daskcluster.yaml", lambda d: d.update(apiVersion="kubernetes.dask.org/v2")), "apiVersion"),
        (edit("daskjob.yaml", lambda d: d["spec"]["job"]["spec"]["containers"][0].pop("name")),
         "'name' is a required property"),
        (edit("daskjob.yaml", lambda d: worker_containers(d)[0]["env"][0].update(value=1)),
         "1 is not of type 'string'"),
        (edit("cronjob.yaml", lambda d: d["spec"].pop("schedule")), "schedule"),
        (edit("cronjob.yaml", lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
              .update(envfrom=[])), "unknown field(s) ['envfrom'] for V1Container"),
        (edit("secret.example.yaml", lambda d: d.update(stringData=["AWS_ACCESS_KEY_ID"])), "expected a mapping"),
    ],
    ids=["misspelt-field", "wrong-type", "unknown-version", "missing-required", "env-value-not-string",
         "cronjob-without-schedule", "cronjob-misspelt-field", "secret-data-not-a-mapping"],
)
def test_an_invalid_manifest_fails_validation(document: dict[str, Any], complaint: str) -> None:
    validate = validate_builtin if document["apiVersion"] in ("v1", "batch/v1") else validate_custom_resource
    with pytest.raises(ManifestError) as raised:
        validate(document)
    assert complaint in str(raised.value)


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_kubernetes_workers_get_the_one_worker_environment_and_the_secret(name: str) -> None:
    settings = WorkerSettings()
    for container in worker_containers(manifest(name)):
        assert {e["name"]: e["value"] for e in container["env"]} == settings.environment()
        args = container["args"]
        assert args[args.index("--nthreads") + 1] == str(settings.threads)
        assert parse_bytes(args[args.index("--memory-limit") + 1]) == parse_bytes(container["resources"]["limits"]
                                                                                  ["memory"])
        assert secret_refs(container) == [AWS_SECRET]


def test_job_and_refresh_pods_take_credentials_from_the_secret_and_run_valid_commands() -> None:
    secret = manifest("secret.example.yaml")
    assert secret["metadata"]["name"] == AWS_SECRET
    assert set(secret["stringData"]) <= set(clusters.CREDENTIAL_VARIABLES)

    job = manifest("daskjob.yaml")["spec"]["job"]["spec"]["containers"][0]
    assert secret_refs(job) == [AWS_SECRET]
    assert job["args"][:2] == ["numerai-dask", "run"]
    job_file = spec_from_job_file(str(REPO / job["args"][2]))  # the image's copy of the repository's jobs/
    assert job_file.scheduler is None and job_file.cluster is None  # so the operator's DASK_SCHEDULER_ADDRESS is used

    cron = manifest("cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert secret_refs(cron) == [AWS_SECRET]
    assert cron["args"][:2] == ["numerai-dask", "refresh"]
    refresh = build_parser().parse_args(cron["args"][1:])
    assert refresh.every is None and refresh.cron is None  # one refresh per CronJob run
    long_lived = manifest("daskcluster.yaml")["metadata"]
    address = {e["name"]: e["value"] for e in cron["env"]}["DASK_SCHEDULER_ADDRESS"]
    assert address.startswith(f"tcp://{long_lived['name']}-scheduler.{long_lived['namespace']}.")


def test_kubernetes_spec_gives_kubecluster_the_daskcluster_manifest() -> None:
    spec = load_spec(CLUSTER / "kubernetes.yaml")
    arguments = clusters.kubernetes_cluster_arguments(spec)
    assert arguments["custom_cluster_spec"] == manifest("daskcluster.yaml")
    assert arguments["namespace"] == manifest("daskcluster.yaml")["metadata"]["namespace"]


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    text = (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def pip_install_targets(command: str) -> list[str]:
    """What each ``pip install`` in a shell command installs (flags and ``-e`` dropped), in order."""
    targets = []
    for part in command.replace("&&", ";").replace("\n", ";").split(";"):
        words = part.split()
        if "pip" in words and "install" in words:
            targets += [w.strip("'\"") for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return targets


def test_the_dockerfile_installs_what_the_readme_installs_and_its_context_builds(tmp_path: Path) -> None:
    """Statically: the same ``pip install`` of the project as ``make install`` (what the README runs), on a
    Python the project allows; then the install step's files, copied as the Dockerfile copies them, build
    the package with pip. No image is built (no base image can be pulled here)."""
    instructions = dockerfile_instructions()
    base = next(arguments for instruction, arguments in instructions if instruction == "FROM")
    image, tag = base.split(":")
    python = tag.split("-")[0]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert image == "python" and f"{python}.0" in SpecifierSet(project["requires-python"])

    makefile = (REPO / "Makefile").read_text().split("$(VENV)/.installed: pyproject.toml")[1].split("\n\n")[0]
    docker_installs = [target for instruction, arguments in instructions if instruction == "RUN"
                       for target in pip_install_targets(arguments) if target != "pip"]
    assert docker_installs == pip_install_targets(makefile) == ["."]

    context = tmp_path / "context"
    install_step = next(i for i, (_, arguments) in enumerate(instructions) if "install ." in arguments)
    for instruction, arguments in instructions[:install_step]:
        if instruction == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                target = context / destination / (Path(source).name if destination.endswith("/") else "")
                target.parent.mkdir(parents=True, exist_ok=True)
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copyfile(REPO / source, target)
    assert (context / project["readme"]).is_file()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "w"),
                    str(context)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "w").glob("numerai_dask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"numerai_dask/{p.name}" for p in (REPO / "numerai_dask").glob("*.py")} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "numerai-dask = numerai_dask.__main__:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
