"""Storage layout and I/O over real filesystems: local folders, ``file://``, ``memory://`` and S3 over HTTP (moto)."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from dask.base import tokenize
from fsspec.implementations.local import LocalFileSystem

from numerai_dask import storage as storage_module
from numerai_dask.storage import DEEP_NESTING, FileInfo, Storage, StorageError, with_aws_environment
from numerai_dask.submissions import Rejection


@dataclass
class Root:
    """A storage root under test, plus a raw fsspec filesystem to lay files out independently of Storage."""

    url: str
    options: dict
    fs: fsspec.AbstractFileSystem
    base: str

    def put(self, relpath: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.base}/{relpath}", data)

    def storage(self) -> Storage:
        return Storage(self.url, self.options)


@pytest.fixture(params=["local", "file-url", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> Iterator[Root]:
    """The same tests on every kind of root the contract names."""
    kind = request.param
    if kind in ("local", "file-url"):
        url = str(tmp_path) if kind == "local" else f"file://{tmp_path}"
        yield Root(url, {}, LocalFileSystem(auto_mkdir=True), str(tmp_path))
    elif kind == "memory":
        yield from fresh_memory_root()
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        yield Root(f"{bucket}/tournament", server.storage_options, server.filesystem(),
                   f"{bucket.removeprefix('s3://')}/tournament")


def fresh_memory_root() -> Iterator[Root]:
    """A ``memory://`` root of its own, removed afterwards (the memory filesystem is process-wide)."""
    name = f"t{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    yield Root(f"memory://{name}", {}, fs, f"/{name}")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def memory_root() -> Iterator[Root]:
    """A fresh ``memory://`` root for tests that do not depend on the filesystem kind."""
    yield from fresh_memory_root()


def data_frame(eras: list, rows_per_era: int = 6, seed: int = 0) -> pd.DataFrame:
    """Tournament-like rows, shuffled: id, era, an int8 and a float feature, target (NaN in the last era)."""
    rng = np.random.default_rng(seed)
    n = len(eras) * rows_per_era
    frame = pd.DataFrame({
        "id": [f"n{i:05d}" for i in range(n)],
        "era": np.repeat(np.array(eras, dtype=object if isinstance(eras[0], str) else np.int64), rows_per_era),
        "feature_int": rng.integers(0, 5, n).astype(np.int8),
        "feature_float": rng.random(n),
        "target": rng.random(n),
        "target_other": rng.random(n),
    })
    frame.loc[frame["era"] == eras[-1], "target"] = np.nan
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def parquet_bytes(frame: pd.DataFrame, *, id_as_index: bool = False, row_group_size: int | None = None) -> bytes:
    table = pa.Table.from_pandas(frame.set_index("id") if id_as_index else frame, preserve_index=id_as_index)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def csv_bytes(rows: dict[str, float]) -> bytes:
    return pd.DataFrame({"id": list(rows), "prediction": list(rows.values())}).to_csv(index=False).encode()


def relative_paths(storage: Storage, files: list[FileInfo]) -> list[str]:
    return [storage.relative(f.path) for f in files]


# ------------------------------------------------------------------ paths


def test_path_joins_under_the_root_and_refuses_to_leave_it(memory_root: Root) -> None:
    storage = memory_root.storage()
    assert storage.path("data", "x.parquet") == f"{memory_root.base}/data/x.parquet"
    assert storage.relative(storage.path("runs/1/a.json")) == "runs/1/a.json"
    for escape in ("../evil", "submissions/../../etc", ".."):
        with pytest.raises(StorageError, match="leaves the root"):
            storage.path(escape)
    with pytest.raises(StorageError, match="not under"):
        storage.relative("/elsewhere/file")


def test_repr_and_display_url_never_show_credentials(s3_server, s3_bucket) -> None:
    storage = Storage(s3_bucket, s3_server.storage_options)
    assert storage.display_url == s3_bucket
    for text in (repr(storage), storage.display_url, storage.display("latest.json")):
        assert "testing-secret" not in text and "testing-key" not in text


# ---------------------------------------------------------------- listings


@pytest.mark.parametrize("folder", ["data", "benchmark"])
def test_a_folder_named_like_a_data_file_is_an_error_naming_it(root: Root, folder: str) -> None:
    """A dataset written in parts (``x.parquet/part-0.parquet``, as Spark and Dask write one) was left out
    without a word, and its eras' rows with it."""
    root.put(f"{folder}/a.parquet", parquet_bytes(data_frame(["0001"])))
    root.put(f"{folder}/parts.parquet/part-0.parquet", parquet_bytes(data_frame(["0002"])))
    storage = root.storage()
    listing = storage.list_data_files if folder == "data" else storage.find_benchmark
    with pytest.raises(StorageError, match=rf"{folder}/parts\.parquet is a folder, not a file \(a dataset written "
                                           rf"in parts\?\): write it as one file in "):
        listing()


def test_data_files_are_listed_sorted_with_size_and_version(root: Root) -> None:
    root.put("data/b.parquet", parquet_bytes(data_frame(["0001"])))
    root.put("data/a.parquet", parquet_bytes(data_frame(["0002"])))
    root.put("data/features.json", b"{}")
    root.put("data/old/c.parquet", b"ignored: not directly in data/")
    storage = root.storage()
    files = storage.list_data_files()
    assert relative_paths(storage, files) == ["data/a.parquet", "data/b.parquet"]
    assert all(f.size > 0 and f.version for f in files)
    assert storage.info("data/a.parquet") == files[0]
    assert storage.info("data/missing.parquet") is None
    assert storage.info("data") is None  # a folder is not a file


def test_no_data_folder_means_no_data_files(root: Root) -> None:
    root.put("stakes.csv", b"model,stake\n")
    assert root.storage().list_data_files() == []


def test_feature_sets_are_read_when_present(root: Root) -> None:
    storage = root.storage()
    assert storage.read_feature_sets() == {}
    root.put("data/features.json", json.dumps({"feature_sets": {"small": ["feature_int"]}, "targets": []}).encode())
    assert storage.read_feature_sets() == {"small": ["feature_int"]}


@pytest.mark.parametrize(("document", "problem"), [
    (b"{not json", "is not valid JSON"),
    (b'{"feature_sets": ["feature_int"]}', '"feature_sets" must map names to lists of column names'),
    # the set at fault is named: any set given to --feature-set failed with the same words
    (b'{"feature_sets": {"small": ["feature_int"], "odd": "feature_int"}}',
     "feature set 'odd' must be a list of column names, got \"feature_int\""),
])
def test_malformed_feature_sets_are_a_storage_error(memory_root: Root, document: bytes, problem: str) -> None:
    memory_root.put("data/features.json", document)
    with pytest.raises(StorageError, match=f"^data/features.json.*{re.escape(problem)}"):
        memory_root.storage().read_feature_sets()


# -------------------------------------------------------------- data reads


@pytest.mark.parametrize("id_as_index", [False, True], ids=["id-column", "id-index"])
def test_data_columns_include_id_whether_column_or_index(root: Root, id_as_index: bool) -> None:
    root.put("data/train.parquet", parquet_bytes(data_frame(["0001", "0002"]), id_as_index=id_as_index))
    storage = root.storage()
    columns = storage.data_columns(storage.list_data_files()[0].path)
    assert columns[0] == "id"
    assert sorted(columns) == sorted(["id", "era", "feature_int", "feature_float", "target", "target_other"])


def test_data_without_id_is_a_storage_error(memory_root: Root) -> None:
    memory_root.put("data/train.parquet", parquet_bytes(data_frame(["0001"]).drop(columns="id")))
    storage = memory_root.storage()
    with pytest.raises(StorageError, match="no 'id' column or index"):
        storage.data_columns(storage.path("data/train.parquet"))


@pytest.mark.parametrize("id_as_index", [False, True], ids=["id-column", "id-index"])
def test_read_data_returns_id_and_only_the_requested_columns_with_int8_kept(root: Root, id_as_index: bool) -> None:
    frame = data_frame(["0001", "0002", "0003"])
    root.put("data/train.parquet", parquet_bytes(frame, id_as_index=id_as_index, row_group_size=5))
    storage = root.storage()
    rows = storage.read_data(storage.path("data/train.parquet"), ["feature_int", "target"])
    assert list(rows.columns) == ["id", "feature_int", "target"]
    assert rows["feature_int"].dtype == np.int8
    assert pd.api.types.is_string_dtype(rows["id"])
    expected = frame[["id", "feature_int", "target"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


@pytest.mark.parametrize("eras", [["0001", "0002", "0003", "0004"], [575, 576, 577, 578]], ids=["str-eras", "int-eras"])
def test_era_filter_reads_only_the_requested_eras(root: Root, eras: list) -> None:
    # sorted by era, three rows per row group: eras straddle row groups
    frame = data_frame(eras, rows_per_era=7).sort_values(["era", "id"], ignore_index=True)
    root.put("data/train.parquet", parquet_bytes(frame, row_group_size=3))
    storage = root.storage()
    path = storage.path("data/train.parquet")
    wanted = [eras[1]]
    rows = storage.read_data(path, ["era", "feature_int"], eras=wanted)
    assert set(rows["era"]) == set(wanted)
    assert sorted(rows["id"]) == sorted(frame.loc[frame["era"] == eras[1], "id"])
    assert rows["feature_int"].dtype == np.int8
    two = storage.read_data(path, ["target"], eras=[np.array(eras)[0], eras[3]])  # numpy scalars are fine
    assert list(two.columns) == ["id", "target"]
    assert sorted(two["id"]) == sorted(frame.loc[frame["era"].isin([eras[0], eras[3]]), "id"])
    assert storage.read_data(path, ["era"], eras=[eras[0] + ("9" if isinstance(eras[0], str) else 9)]).empty


@pytest.mark.parametrize("id_as_index", [False, True], ids=["id-column", "id-index"])
def test_a_row_group_of_many_eras_is_filtered_a_few_columns_at_a_time(root: Root, id_as_index: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # pandas' default layout: every era in one row group, ids in any order
    frame = data_frame(["0001", "0002", "0003", "0004"], rows_per_era=9)
    for j in range(5):
        frame[f"feature_{j}"] = np.arange(len(frame), dtype=np.int8) % (j + 2)
    root.put("data/train.parquet", parquet_bytes(frame, id_as_index=id_as_index))
    storage = root.storage()
    path = storage.path("data/train.parquet")
    columns = ["feature_int", *[f"feature_{j}" for j in range(5)], "target"]
    whole = storage.read_data(path, columns, eras=["0002", "0004"])
    monkeypatch.setattr(storage_module, "FILTER_READ_CELLS", 2 * len(frame))  # two columns per read
    in_slices = storage.read_data(path, columns, eras=["0002", "0004"])
    expected = frame.loc[frame["era"].isin(["0002", "0004"]), ["id", *columns]].reset_index(drop=True)
    for rows in (whole, in_slices):
        pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
        assert rows["feature_0"].dtype == np.int8
    assert storage.read_data(path, columns, eras=["0009"]).empty


def test_categorical_eras_are_read_and_filtered_by_their_values(memory_root: Root) -> None:
    """pandas writes a categorical era column dictionary-encoded; it is read back as plain values, filtered alike."""
    frame = data_frame(["0001", "0002", "0003"], rows_per_era=5)
    memory_root.put("data/train.parquet", parquet_bytes(frame.astype({"era": "category"})))  # one row group
    storage = memory_root.storage()
    path = storage.path("data/train.parquet")
    rows = storage.read_data(path, ["era", "target"], eras=["0002"])
    assert rows["era"].tolist() == ["0002"] * 5 and not isinstance(rows["era"].dtype, pd.CategoricalDtype)
    assert sorted(rows["id"]) == sorted(frame.loc[frame["era"] == "0002", "id"])
    assert set(storage.read_data(path, ["era"])["era"]) == {"0001", "0002", "0003"}


def test_the_era_filter_finds_the_era_statistics_after_a_nested_column(memory_root: Root) -> None:
    """A struct column stores one leaf column per field: the era's statistics are those of its own leaf (by the
    top-level position they were the struct's second field's, and an era with rows read none)."""
    frame = data_frame(["0001", "0002", "0003"], rows_per_era=4).sort_values(["era", "id"], ignore_index=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.add_column(0, "meta", pa.array([{"a": 0, "b": "zzzz"}] * len(frame)))
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=4)  # one era a row group: its statistics decide
    memory_root.put("data/train.parquet", buffer.getvalue())
    storage = memory_root.storage()
    rows = storage.read_data(storage.path("data/train.parquet"), ["era", "target"], eras=["0002"])
    assert sorted(rows["id"]) == sorted(frame.loc[frame["era"] == "0002", "id"])


def test_era_filter_with_the_wrong_era_type_says_so(memory_root: Root) -> None:
    memory_root.put("data/train.parquet", parquet_bytes(data_frame([575, 576])))
    storage = memory_root.storage()
    with pytest.raises(StorageError, match="era column's type int64"):
        storage.read_data(storage.path("data/train.parquet"), ["target"], eras=["575"])


def test_reading_a_missing_column_names_it(memory_root: Root) -> None:
    memory_root.put("data/train.parquet", parquet_bytes(data_frame(["0001"])))
    storage = memory_root.storage()
    with pytest.raises(StorageError, match="target_nope"):
        storage.read_data(storage.path("data/train.parquet"), ["target_nope"])


# ------------------------------------------------------------- submissions


def test_submissions_in_both_layouts_in_application_order(root: Root) -> None:
    root.put("submissions/alice.csv", csv_bytes({"n1": 0.1}))
    root.put("submissions/alice/2.csv", csv_bytes({"n1": 0.3}))
    root.put("submissions/alice/10.parquet", b"lexicographic: 10 before 2")
    root.put("submissions/bob.parquet", b"single-file layout")
    root.put("submissions/carol/round1.csv", csv_bytes({"n1": 0.5}))
    root.put("submissions/carol/readme.md", b"ignored: other extension")
    root.put("submissions/notes.txt", b"ignored")
    root.put("submissions/dave/old/x.csv", b"rejected: too deep")
    root.put("submissions/Upper-case_OK.CSV", csv_bytes({"n1": 0.5}))
    storage = root.storage()
    by_model, rejections = storage.list_submissions()
    assert rejections == [Rejection("dave/old", "submissions/dave/old/x.csv", None, DEEP_NESTING)]
    assert {m: relative_paths(storage, files) for m, files in by_model.items()} == {
        "Upper-case_OK": ["submissions/Upper-case_OK.CSV"],
        "alice": ["submissions/alice.csv", "submissions/alice/10.parquet", "submissions/alice/2.csv"],
        "bob": ["submissions/bob.parquet"],
        "carol": ["submissions/carol/round1.csv"],
    }
    assert all(isinstance(f, FileInfo) and f.size > 0 for files in by_model.values() for f in files)


def test_no_submissions_folder_means_no_models(root: Root) -> None:
    assert root.storage().list_submissions() == ({}, [])


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_invalid_model_names_are_rejected_and_never_become_paths(request, kind: str) -> None:
    if kind == "memory":
        target: Root = request.getfixturevalue("memory_root")
    else:
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        target = Root(bucket, server.storage_options, server.filesystem(), bucket.removeprefix("s3://"))
    long_name = "x" * 65
    target.put("submissions/../evil.csv", csv_bytes({"n1": 0.5}))
    target.put("submissions/a b.csv", csv_bytes({"n1": 0.5}))
    target.put("submissions/a b/1.csv", csv_bytes({"n1": 0.5}))
    target.put(f"submissions/{long_name}.csv", csv_bytes({"n1": 0.5}))
    expected = {"..", "a b", long_name}
    if kind == "memory":  # moto's HTTP layer refuses keys with a newline; real S3 accepts them
        target.put("submissions/new\nline.csv", csv_bytes({"n1": 0.5}))
        expected.add("new\\nline")  # escaped for printing
    target.put("submissions/ok_name.csv", csv_bytes({"n1": 0.5}))
    by_model, rejections = target.storage().list_submissions()
    assert list(by_model) == ["ok_name"]
    assert {r.model for r in rejections} == expected
    assert len(rejections) == len(expected)  # one per name, however many files it holds
    for rejection in rejections:
        assert isinstance(rejection, Rejection) and rejection.era is None
        assert rejection.file.startswith("submissions/")
        assert "invalid model name" in rejection.reason and "1 to 64 characters" in rejection.reason
    assert all("evil" not in f.path for files in by_model.values() for f in files)


# ------------------------------------------------------------------ reads


def test_read_many_returns_bytes_and_errors_per_path(root: Root) -> None:
    for i in range(5):
        root.put(f"submissions/m{i}.csv", f"file {i}".encode())
    storage = root.storage()
    paths = [storage.path(f"submissions/m{i}.csv") for i in range(5)] + [storage.path("submissions/missing.csv")]
    contents = storage.read_many(paths)
    assert [contents[p] for p in paths[:5]] == [f"file {i}".encode() for i in range(5)]
    assert isinstance(contents[paths[5]], FileNotFoundError)
    assert storage.read_many([]) == {}


@pytest.mark.timeout(30)  # a stalled open fails here, not at the suite's 10 minutes
def test_local_reads_prefetch_without_stalling_on_what_is_not_a_file(tmp_path) -> None:
    """The page-cache hint opens every path first: a FIFO (whose plain open waits for a writer),
    a folder or a missing path must neither stall nor fail it, and the reads still report them."""
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "a.csv").write_bytes(b"id,prediction\n")
    os.mkfifo(tmp_path / "submissions" / "pipe.csv")
    (tmp_path / "submissions" / "folder.csv").mkdir()
    storage = Storage(str(tmp_path))
    paths = [storage.path("submissions", name) for name in ("a.csv", "pipe.csv", "folder.csv", "missing.csv")]
    storage_module.prefetch_local(paths)
    contents = storage.read_many([paths[0], *paths[2:]])
    assert contents[paths[0]] == b"id,prediction\n"
    assert isinstance(contents[paths[2]], IsADirectoryError)
    assert isinstance(contents[paths[3]], FileNotFoundError)


def test_read_many_reads_hundreds_of_small_s3_objects_concurrently(s3_server, s3_bucket) -> None:
    fs = s3_server.filesystem()
    bucket = s3_bucket.removeprefix("s3://")
    files = {f"{bucket}/submissions/model_{i:03d}.csv": csv_bytes({f"n{i}": i / 200}) for i in range(200)}
    fs.pipe(files)  # one concurrent batch of PUTs
    storage = Storage(s3_bucket, s3_server.storage_options)
    by_model, _ = storage.list_submissions()
    assert len(by_model) == 200
    paths = [f.path for files_ in by_model.values() for f in files_]
    assert storage.read_many(paths) == files


def test_s3_version_is_the_etag_and_changes_when_rewritten(s3_server, s3_bucket) -> None:
    fs = s3_server.filesystem()
    key = f"{s3_bucket.removeprefix('s3://')}/stakes.csv"
    fs.pipe_file(key, b"model,stake\nalice,1\n")
    storage = Storage(s3_bucket, s3_server.storage_options)
    first = storage.info("stakes.csv")
    fs.invalidate_cache()
    assert first == FileInfo(key, 20, fs.info(key)["ETag"].strip('"'))
    fs.pipe_file(key, b"model,stake\nalice,2\n")
    second = storage.find_stakes()
    assert second.size == first.size and second.version != first.version


def test_a_local_file_rewritten_with_its_old_size_and_time_has_a_new_stamp(tmp_path) -> None:
    """Content rewritten at the same size, its modification time put back (``cp -p``, ``touch -r``, an unpacked
    archive), looked unchanged: a refresh kept the old file's scores. The version stays the modification time
    (the manifest's, as the contract has it); the stamp tells the files apart."""
    stakes = tmp_path / "stakes.csv"
    stakes.write_bytes(b"model,stake\nalice,1\n")
    storage = Storage(str(tmp_path))
    first = storage.find_stakes()
    before = stakes.stat()
    stakes.write_bytes(b"model,stake\nalice,2\n")
    os.utime(stakes, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = Storage(str(tmp_path)).find_stakes()
    assert second.size == first.size and stakes.stat().st_mtime_ns == before.st_mtime_ns
    assert second.version == first.version and second.stamp != first.stamp
    assert Storage(str(tmp_path)).find_stakes() == second  # and a file left alone keeps its stamp


def test_s3_endpoint_and_credentials_come_from_the_aws_environment(s3_server, s3_bucket, monkeypatch) -> None:
    """botocore reads AWS_ENDPOINT_URL itself: no storage options needed."""
    s3_server.filesystem().pipe_file(f"{s3_bucket.removeprefix('s3://')}/data/x.parquet", b"PAR1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made under another environment must not be reused
    try:
        storage = Storage(s3_bucket)
        assert [storage.relative(f.path) for f in storage.list_data_files()] == ["data/x.parquet"]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_storage_pickles_for_dask_tasks(s3_server, s3_bucket) -> None:
    storage = Storage(s3_bucket, s3_server.storage_options)
    storage.write_text("hello.txt", "hi")
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.read_bytes("hello.txt") == b"hi" and copy.url == storage.url
    assert tokenize(copy) == tokenize(storage) != tokenize(Storage(f"{s3_bucket}/other", s3_server.storage_options))


# ---------------------------------------------------------------- stakes


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_stakes_are_read_as_floats_by_model(root: Root, kind: str) -> None:
    frame = pd.DataFrame({"model": ["alice", "007", "NA", "null"], "stake": [10, 0, 1, 2]})  # valid model names
    if kind == "csv":
        root.put("stakes.csv", frame.to_csv(index=False).encode())
    else:
        root.put("stakes.parquet", frame.to_parquet(index=False))
    storage = root.storage()
    assert storage.relative(storage.find_stakes().path) == f"stakes.{kind}"
    stakes = storage.read_stakes()
    assert stakes.to_dict() == {"alice": 10.0, "007": 0.0, "NA": 1.0, "null": 2.0}
    assert stakes.dtype == np.float64 and stakes.index.name == "model"


def test_stakes_with_the_model_as_parquet_index(memory_root: Root) -> None:
    memory_root.put("stakes.parquet", pd.DataFrame({"stake": [1.5]}, index=pd.Index(["alice"], name="model")).to_parquet())
    assert memory_root.storage().read_stakes().to_dict() == {"alice": 1.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"model,stake\nalice,-1\n", r"1 stake is not a finite number ≥ 0, e.g. alice=-1"),
        (b"model,stake\nalice,-1\nbob,-2\n", r"2 stakes are not finite numbers ≥ 0, e.g. alice=-1, bob=-2"),
        (b"model,stake\nalice,inf\nbob,1\n", r"not a finite number ≥ 0, e.g. alice=inf"),
        (b"model,stake\nalice,\n", r"not a finite number ≥ 0"),
        (b"model,stake\nalice,lots\n", r"not a finite number ≥ 0, e.g. alice='lots'"),
        (b"model,stake\nalice,1e308\nbob,1e308\n",
         r"the stakes add up to more than a float holds \(the largest is 1e\+308\)"),
        (b"name,amount\nalice,1\n", r"missing column\(s\) \['model', 'stake'\]; it has \['name', 'amount'\]"),
        (b"model,stake\nalice,1\nalice,2\n", r"1 model appears more than once, e.g. \['alice'\]"),
        (b"", r"the file is empty"),
    ],
)
def test_bad_stakes_are_a_storage_error_that_says_what_is_wrong(memory_root: Root, content: bytes, message: str) -> None:
    memory_root.put("stakes.csv", content)
    with pytest.raises(StorageError, match=rf"^stakes\.csv: .*{message}"):
        memory_root.storage().read_stakes()


def test_stakes_in_two_formats_are_ambiguous(memory_root: Root) -> None:
    storage = memory_root.storage()
    assert storage.find_stakes() is None
    memory_root.put("stakes.csv", b"model,stake\nalice,1\n")
    memory_root.put("stakes.parquet", pd.DataFrame({"model": ["alice"], "stake": [1.0]}).to_parquet())
    with pytest.raises(StorageError, match="both stakes.csv and stakes.parquet"):
        storage.find_stakes()


# ------------------------------------------------------------- benchmark


def test_benchmark_is_optional_and_unique(root: Root) -> None:
    storage = root.storage()
    assert storage.find_benchmark() is None
    root.put("benchmark/readme.txt", b"ignored")
    root.put("benchmark/v5_lgbm.parquet", b"predictions")
    name, info = storage.find_benchmark()
    assert name == "v5_lgbm" and storage.relative(info.path) == "benchmark/v5_lgbm.parquet"
    root.put("benchmark/other.csv", b"id,prediction\n")
    with pytest.raises(StorageError, match="exactly one prediction file, found 2: other.csv, v5_lgbm.parquet"):
        storage.find_benchmark()


# ---------------------------------------------------------------- writes


def test_writes_reads_and_deletes(root: Root) -> None:
    storage = root.storage()
    storage.write_bytes("runs/r1/a.bin", b"\x00\x01")
    storage.write_text("runs/r1/b.json", '{"ok": true}')
    storage.write_parquet("runs/r1/c.parquet", pd.DataFrame({"model": ["alice"], "corr": [0.01]}))
    assert storage.read_bytes("runs/r1/a.bin") == b"\x00\x01"
    assert json.loads(storage.read_bytes("runs/r1/b.json")) == {"ok": True}
    assert pq.read_table(io.BytesIO(storage.read_bytes("runs/r1/c.parquet"))).column_names == ["model", "corr"]
    storage.write_text("latest.json", '{"run_id": "r0"}')
    storage.write_text("latest.json", '{"run_id": "r1"}')  # overwrite in place
    assert json.loads(storage.read_bytes("latest.json")) == {"run_id": "r1"}
    assert storage.exists("runs/r1/a.bin") and storage.exists("runs/r1")
    storage.delete("runs/r1")
    storage.delete("runs/never-written")
    assert not storage.exists("runs/r1/a.bin")
    assert storage.exists("latest.json")


def test_delete_takes_a_root_with_pattern_characters_as_it_is(root: Root) -> None:
    """fsspec's rm reads *, ? and [] in a path as a pattern: under a root named ``out[1]*`` it removed nothing
    and failed, and it would have removed a sibling root's folder the pattern matched (``out1``)."""
    for relpath in ("out[1]*/runs/r1/a.bin", "out[1]*/runs/r1/sub/b.bin", "out[1]*/runs/r2/c.bin",
                    "out1/runs/r1/kept.bin"):
        root.put(relpath, b"x")
    storage = Storage(f"{root.url}/out[1]*", root.options)
    storage.delete("runs/r1")
    storage.delete("runs/r2/c.bin")
    storage.delete("runs/never-written")
    root.fs.invalidate_cache()
    assert not root.fs.exists(f"{root.base}/out[1]*/runs/r1/a.bin")
    assert not root.fs.exists(f"{root.base}/out[1]*/runs/r1/sub/b.bin")
    assert not root.fs.exists(f"{root.base}/out[1]*/runs/r1")
    assert not root.fs.exists(f"{root.base}/out[1]*/runs/r2/c.bin")
    assert root.fs.cat_file(f"{root.base}/out1/runs/r1/kept.bin") == b"x"


@pytest.mark.parametrize(("given", "taken"), [
    ({}, {"key": "env-key", "secret": "env-secret", "token": "env-token"}),
    ({"profile": "good"}, {"profile": "good"}),
    ({"key": "k", "secret": "s"}, {"key": "k", "secret": "s"}),
    ({"anon": True}, {"anon": True}),
    # a key in a job file, its secret (and token) in the environment
    ({"key": "k"}, {"key": "k", "secret": "env-secret", "token": "env-token"}),
    ({"anon": False}, {"anon": False, "key": "env-key", "secret": "env-secret", "token": "env-token"}),
])
def test_credentials_come_whole_from_the_options_or_the_environment(given: dict, taken: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment filled in each credential the options lacked, even beside whole credentials: its keys
    beat an explicit profile, and its session token was sent with other, explicit keys (S3 refused both)."""
    for variable, value in (("AWS_ACCESS_KEY_ID", "env-key"), ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                            ("AWS_SESSION_TOKEN", "env-token")):
        monkeypatch.setenv(variable, value)
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    assert with_aws_environment("s3://bucket/root", given) == taken
    assert with_aws_environment("memory://root", given) == given


def test_a_question_mark_in_a_root_is_part_of_its_paths(root: Root) -> None:
    """Paths were shown cut at a ``?`` (as if it began an HTTP query string): ``--json``'s outputs named files
    that do not exist."""
    storage = Storage(f"{root.url}/q?x", root.options)
    storage.write_text("latest.json", "{}")
    assert storage.display("latest.json").endswith("/q?x/latest.json")
    assert root.fs.cat_file(f"{root.base}/q?x/latest.json") == b"{}"


def test_write_columns_writes_plain_columns_that_read_back_with_their_types(root: Root) -> None:
    storage = root.storage()
    ids = np.array(["n003", "n001", "n002"], dtype=object)
    ranks = {"alice": np.array([3, 1, 5], np.uint16), "bob": np.array([2, 2, 4], np.uint16)}
    storage.write_columns("cache/eras/0001/r1.ranks.parquet", {"row id": ids, **ranks})
    raw = storage.read_bytes("cache/eras/0001/r1.ranks.parquet")
    table = pq.read_table(pa.BufferReader(raw))
    assert table.column_names == ["row id", "alice", "bob"]
    assert table.schema.field("alice").type == pa.uint16()
    assert table.column("row id").to_pylist() == list(ids)
    for name, values in ranks.items():
        np.testing.assert_array_equal(table.column(name).to_numpy(), values)
    chunks = pq.ParquetFile(pa.BufferReader(raw)).metadata.row_group(0)
    encodings = {e for i in range(chunks.num_columns) for e in chunks.column(i).encodings}
    assert not encodings & {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}, encodings


def test_writes_make_their_folders_on_a_filesystem_with_folders_that_is_not_the_local_one(tmp_path) -> None:
    """A synchronous fsspec filesystem with real folders (the tests' faulty one over a local folder) needs a file's
    folder made before the file: a job's first write into its new scratch folder is a heartbeat's ``write_bytes``."""
    import faulty_filesystem  # registers faulty://

    storage = Storage(f"faulty://{tmp_path}/out", {"state": str(tmp_path / "state")})
    assert isinstance(storage.fs, faulty_filesystem.FaultyFileSystem)
    storage.write_bytes("scratch/heartbeat", b"alive")
    storage.write_parts("ranks/batch.ranks", [b"12", memoryview(b"34")])
    assert (tmp_path / "out/scratch/heartbeat").read_bytes() == b"alive"
    assert (tmp_path / "out/ranks/batch.ranks").read_bytes() == b"1234"


def test_local_writes_leave_no_temporary_files(tmp_path) -> None:
    storage = Storage(str(tmp_path / "out"))
    storage.write_text("latest.json", "{}")
    storage.write_text("latest.json", '{"run_id": "x"}')
    assert os.listdir(tmp_path / "out") == ["latest.json"]


def test_write_parts_past_the_block_size_is_an_s3_multipart_upload_read_back_whole_and_in_ranges(
    s3_server, s3_bucket
) -> None:
    """A job's scratch file at Numerai scale is hundreds of MB: s3fs uploads it in parts of its block size.

    With 5 MiB blocks (S3's smallest part), 12 MiB written as four uneven parts
    must become one object of several parts (its ETag ends in ``-<parts>``) whose
    bytes, and ranges across the part boundaries, read back exactly.
    """
    block = 5 * 2**20
    storage = Storage(s3_bucket, {**s3_server.storage_options, "default_block_size": block})
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, size, dtype=np.uint8) for size in (3 * 2**20, 4 * 2**20, 2**20 + 7, 4 * 2**20)]
    storage.write_parts("scratch/batch.ranks", (memoryview(part) for part in parts))
    whole = np.concatenate(parts).tobytes()
    etag = s3_server.filesystem().info(f"{s3_bucket.removeprefix('s3://')}/scratch/batch.ranks")["ETag"]
    assert re.fullmatch(r'"?[0-9a-f]{32}-([2-9]|\d\d+)"?', etag), f"not a multipart upload: ETag {etag}"
    assert storage.read_bytes("scratch/batch.ranks") == whole
    starts, ends = [0, block - 3, 2 * block - 1, len(whole) - 10], [5, block + 3, 2 * block + 1, len(whole)]
    assert storage.read_ranges(["scratch/batch.ranks"] * 4, starts, ends) == [
        whole[start:end] for start, end in zip(starts, ends)
    ]


# ----------------------------------------------------------- real cluster


def test_dask_cluster_fixture_has_two_worker_processes_that_read_s3(dask_cluster, s3_server, s3_bucket) -> None:
    from distributed import Client

    storage = Storage(s3_bucket, s3_server.storage_options)
    storage.write_text("hello.txt", "from s3")
    with Client(dask_cluster, timeout="30s") as client:
        workers = sorted(client.scheduler_info()["workers"])
        assert len(workers) == 2
        pids = client.gather([client.submit(os.getpid, workers=[w], pure=False) for w in workers])
        contents = client.gather([
            client.submit(storage.read_bytes, "hello.txt", workers=[w], pure=False) for w in workers
        ])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert contents == [b"from s3", b"from s3"]


def test_era_filter_never_fetches_the_other_eras_row_groups(root: Root) -> None:
    """The other eras' column chunks are overwritten with garbage: reading them would fail."""
    eras = ["0001", "0002", "0003", "0004"]
    frame = data_frame(eras, rows_per_era=6).sort_values(["era", "id"], ignore_index=True)
    raw = bytearray(parquet_bytes(frame, row_group_size=6))  # one era per row group
    metadata = pq.read_metadata(io.BytesIO(bytes(raw)))
    for group in (0, 2, 3):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
            raw[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    root.put("data/train.parquet", bytes(raw))
    storage = root.storage()
    path = storage.path("data/train.parquet")
    with pytest.raises((OSError, pa.ArrowException)):  # garbage pages do not decode
        storage.read_data(path, ["feature_int"])
    rows = storage.read_data(path, ["feature_int", "target"], eras=["0002"])
    expected = frame.loc[frame["era"] == "0002", ["id", "feature_int", "target"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


def test_files_over_the_size_limit_are_rejected_unread_and_a_models_other_files_count(memory_root: Root) -> None:
    memory_root.put("submissions/alice.csv", csv_bytes({"n1": 0.1}))
    memory_root.put("submissions/alice/2_huge.csv", b"x" * 100)
    memory_root.put("submissions/bob.parquet", b"y" * 100)
    storage = memory_root.storage()
    by_model, rejections = storage.list_submissions(max_bytes=50)
    assert {m: relative_paths(storage, files) for m, files in by_model.items()} == {"alice": ["submissions/alice.csv"]}
    assert [(r.model, r.file) for r in rejections] == [("alice", "submissions/alice/2_huge.csv"),
                                                       ("bob", "submissions/bob.parquet")]
    assert all(r.reason == "the file is 100 bytes, over the limit of 50 bytes for a prediction file "
                           "(max_submission_bytes); it was not read" for r in rejections)
    assert storage.list_submissions()[1] == []  # no limit given, nothing rejected
