"""The storage layout of the contract (v1) and all I/O, over any fsspec URL.

A root is a local path, ``file://…``, ``s3://bucket/prefix`` (s3fs) or
``memory://…``. S3 endpoint and credentials come from explicit
``storage_options`` or else the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``…). The environment is read once, where the job starts,
and travels with the pickled :class:`Storage`, so Dask workers on other
machines need no AWS configuration of their own.

Paths handed out (:attr:`FileInfo.path`) are full paths without the protocol,
as the filesystem names them; ``relpath`` arguments are relative to the root.
Listings always ask storage afresh (no listing cache), because a later refresh
compares :attr:`FileInfo.version` to find what changed.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import fsspec
import fsspec.parquet
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.local import LocalFileSystem
from s3fs import S3FileSystem

from numerai_dask.submissions import (
    Rejection,
    SubmissionError,
    compressed_kind,
    compressed_reason,
    file_kind,
    leaf_index,
    python_scalar,
    read_tabular,
    redact,
)
from numerai_dask.wording import counted

MAX_MODEL_NAME = 64
MODEL_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_MODEL_NAME}}}")
MODEL_NAME_RULE = f"a model name is 1 to {MAX_MODEL_NAME} characters from A-Z, a-z, 0-9, '_' and '-'"
DEEP_NESTING = ("nested too deep: a model's files go directly in submissions/<model>/ "
                "('/' cannot be part of a model name)")
FOLDER_AS_FILE = "a folder where a prediction file should be; upload one .csv or .parquet file (not a folder of parts)"
NOT_A_FILE = ("not a regular file (a link to nothing, a pipe or a device) where a prediction file should be; "
              "upload the file itself")
#: Threads that read the files of a synchronous filesystem other than the local one (memory://…) together.
READ_THREADS = 16
#: Row groups that hold other eras too are decoded and filtered at most this many values at a time.
FILTER_READ_CELLS = 2**25
#: Reads that fail with a transient OSError are tried this many times in all.
READ_ATTEMPTS = 3
READ_BACKOFF_SECONDS = 0.05
#: Errors no retry can mend.
PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

T = TypeVar("T")


def retrying(read: Callable[[], T]) -> T:
    """``read()``, tried again after a short backoff when storage fails transiently (an OSError)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except PERMANENT_ERRORS:
            raise
        except OSError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(READ_BACKOFF_SECONDS * 2**attempt)
    raise AssertionError("unreachable")


class StorageError(Exception):
    """The storage root or one of its shared inputs (data, stakes, benchmark) cannot be used."""


@dataclass(frozen=True)
class FileInfo:
    """One stored file: full path (no protocol), size in bytes, a version that changes when it is rewritten,
    and a stamp that changes with its content where the version may not.

    ``version`` is the ETag on object stores, else the modification time as
    text. ``stamp`` is a local file's inode change time and inode (else empty):
    ``cp -p``, ``touch -r`` or an unpacked archive put the old modification
    time back on new content of the same size, and a refresh kept the old
    scores; any write or ``utime`` moves the change time, and a file replaced
    by a rename has another inode. Copying a tree (``cp -a``) changes them too,
    and a refresh of the copy rescores it.
    """

    path: str
    size: int
    version: str
    stamp: str = ""


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a valid model name: 1–64 characters from ``A–Z a–z 0–9 _ -``."""
    return MODEL_NAME.fullmatch(name) is not None


def model_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid model name, in words (None when it is valid)."""
    if is_model_name(name):
        return None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_MODEL_NAME:
        problem = f"it is {len(name)} characters long"
    elif ".." in name:
        problem = "it contains '..'"
    elif any(c.isspace() for c in name):
        problem = "it contains a space"
    elif not name.isascii():
        problem = "it contains non-ASCII characters"
    else:
        problem = f"it contains {next(c for c in name if not is_model_name(c))!r}"
    return f"invalid model name ({problem}): {MODEL_NAME_RULE}"


def printable(name: str) -> str:
    """A name from storage made safe to print: control and non-ASCII characters escaped."""
    return name.encode("unicode_escape").decode("ascii")


def _file_info(entry: dict) -> FileInfo:
    """A FileInfo from an fsspec info/ls/find entry (s3fs: ETag; local: mtime, and for the stamp fsspec's
    ``created``, on Linux the inode's change time, and the inode; memory: created).

    Times become POSIX seconds as text: fsspec's memory filesystem gives a datetime
    from ``info`` but a float from ``find``, and both must give the same version.
    """
    version = entry.get("ETag") or entry.get("mtime") or entry.get("created") or ""
    if isinstance(version, datetime):
        version = version.timestamp()
    stamp = f"{entry.get('created')}:{entry['ino']}" if "ino" in entry and "mtime" in entry else ""
    return FileInfo(path=entry["name"], size=int(entry.get("size") or 0), version=str(version).strip('"'),
                    stamp=stamp)


def _change_time(entry: dict) -> float | None:
    """An fsspec entry's modification time in POSIX seconds (s3fs: LastModified; local: mtime; memory: created)."""
    when = entry.get("LastModified") or entry.get("mtime") or entry.get("created")
    if isinstance(when, datetime):
        return when.timestamp()
    return float(when) if isinstance(when, (int, float)) else None


#: Standard AWS variables → s3fs options, for settings not given explicitly.
AWS_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"}


#: s3fs's credential options, taken as written, never as numbers (see :func:`is_credential_option`).
CREDENTIAL_TEXT_OPTIONS = ("key", "secret", "token", "profile")


def is_credential_option(name: str) -> bool:
    """Whether a storage option (its last dotted part) is a credential, whose value may look like a number and
    must stay text: s3fs's own, or botocore's (``aws_secret_access_key``…) given through ``client_kwargs``."""
    return name in CREDENTIAL_TEXT_OPTIONS or name.startswith("aws_")


def chooses_credentials(options: Mapping) -> bool:
    """Whether storage options name whole credentials: a key and its secret, a profile, or anonymous access."""
    return ("key" in options and "secret" in options) or "profile" in options or options.get("anon") is True


def with_aws_environment(url: str, storage_options: dict) -> dict:
    """``storage_options`` completed, for ``s3://`` roots, from the standard AWS environment variables.

    Options that choose whole credentials take none from the environment: its
    session token was sent with other, explicit keys, and its keys beat an
    explicit profile. Otherwise what the options lack comes from there (a key
    in a job file, its secret in the environment).
    """
    if not url.startswith(("s3://", "s3a://")):
        return storage_options
    options = dict(storage_options)
    if not chooses_credentials(options):
        for variable, option in AWS_ENVIRONMENT.items():
            if os.environ.get(variable) and option not in options:
                options[option] = os.environ[variable]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = dict(options.get("client_kwargs", {}))
    if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
        options["client_kwargs"] = {**client_kwargs, "endpoint_url": endpoint}
    return options


def start_s3_session(fs: S3FileSystem, shown: str) -> None:
    """Open ``fs``'s botocore session and client now, so that options neither takes (a misspelled storage
    option) are refused before the job starts, not by the first request of a task. Nothing is asked of the
    bucket; without explicit keys, finding credentials may ask the machine's metadata service, as the first
    request would."""
    try:
        fs.connect()
    except TypeError as error:  # botocore's own words name the option: "got an unexpected keyword argument 'x'"
        raise StorageError(f"{shown}: a storage option that S3 does not take ({error}); "
                           "see s3fs's S3FileSystem for the options") from None


def refuse_credentials_in_url(url: str) -> None:
    """A StorageError, which never repeats the URL, for an ``s3://`` URL whose bucket holds ``:`` or ``@``,
    which no bucket name does: credentials written into it (``s3://KEY:SECRET@bucket``, which S3 does not
    take). botocore's error quoted them, and a secret with a ``/`` (half of AWS's have one) escaped redaction."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() in ("s3", "s3a") and any(mark in rest.split("/", 1)[0] for mark in ":@"):
        raise StorageError("the s3:// root's bucket name holds ':' or '@' (credentials written into the URL?): "
                           "give credentials through the AWS environment or --storage-option key=… secret=…")


class Storage:
    """One storage root and the contract's layout under it.

    Picklable (Dask tasks carry it to workers); ``repr`` shows the root without
    credentials.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        refuse_credentials_in_url(url)
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **with_aws_environment(url, storage_options or {}))
        self.root = root.rstrip("/")
        if isinstance(self.fs, S3FileSystem):
            start_s3_session(self.fs, self.display_url)

    def __repr__(self) -> str:
        return f"Storage({self.display_url!r})"

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.url, self.fs.__dask_tokenize__())

    # ------------------------------------------------------------------ paths

    @property
    def display_url(self) -> str:
        """The root as a person would type it, without credentials."""
        return self._display_path(self.root)

    def display(self, relpath: str) -> str:
        """A path under the root as a person would type it, without credentials."""
        return f"{self.display_url.rstrip('/')}/{relpath}"

    def _display_path(self, path: str) -> str:
        """A full path of the filesystem as a person would type it, without credentials."""
        if isinstance(self.fs, LocalFileSystem):
            return path or "/"
        return redact(self.fs.unstrip_protocol(path))

    def what_is_missing(self, relpath: str) -> str | None:
        """What to tell someone who finds nothing at ``relpath``: the highest folder on the way there (on S3 the
        bucket first) that does not exist, as a person would type it, and that it does not; None when every
        one exists. Remote storage also answers "no" for what these credentials may not see."""
        parts = self.path(relpath).split("/")
        for prefix in ("/".join(parts[:depth]) for depth in range(1, len(parts) + 1)):
            if prefix and not retrying(lambda: self.fs.exists(prefix)):
                hidden = "" if isinstance(self.fs, LocalFileSystem) else " (or is hidden from these credentials)"
                return f"{self._display_path(prefix)} does not exist{hidden}"
        return None

    def path(self, *parts: str) -> str:
        """The full path of ``parts`` joined under the root; ``..`` segments are refused."""
        segments = [s for part in parts for s in part.split("/") if s]
        if ".." in segments:
            raise StorageError(f"refusing a path that leaves the root: {printable('/'.join(parts))!r}")
        return "/".join([self.root, *segments])

    def relative(self, path: str) -> str:
        """A full path (as in :attr:`FileInfo.path`) relative to the root."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise StorageError(f"{printable(path)!r} is not under {self.display_url}")
        return path[len(prefix) :]

    def label(self, path: str) -> str:
        """A full path relative to the root, made printable (:func:`printable`): how rejections name a file. A
        name that is not valid UTF-8 (a surrogate-escaped byte) could not be written to the outputs otherwise."""
        return printable(self.relative(path))

    # -------------------------------------------------------------- listings

    def info(self, relpath: str) -> FileInfo | None:
        """The file at ``relpath``, or None when there is no file there."""
        self.fs.invalidate_cache()
        try:
            entry = retrying(lambda: self.fs.info(self.path(relpath)))
        except FileNotFoundError:
            return None
        return _file_info(entry) if entry.get("type") == "file" else None

    def _files(self, relpath: str, with_folders: bool = False) -> list[dict]:
        """Every file (and folder, if asked) below ``relpath``, any depth, sorted by path; [] when there is none."""
        self.fs.invalidate_cache()
        try:
            found = retrying(lambda: self.fs.find(self.path(relpath), detail=True, withdirs=with_folders))
        except FileNotFoundError:
            return []
        base = self.path(relpath).rstrip("/")
        return [entry for name, entry in sorted(found.items())
                if name.rstrip("/") != base and (with_folders or entry.get("type") == "file")]

    def relative_files(self, relpath: str) -> list[str]:
        """Every file below ``relpath`` (any depth, sorted), relative to the root; [] when there is none."""
        return [self.relative(entry["name"]) for entry in self._files(relpath)]

    def top_folders(self, prefix: str) -> list[str]:
        """Names of the folders directly under the root that start with ``prefix``, sorted (one listing, not a walk:
        the root holds every submission below it)."""
        self.fs.invalidate_cache()
        try:
            entries = retrying(lambda: self.fs.ls(self.path(), detail=True))
        except FileNotFoundError:
            return []
        names = (posixpath.basename(entry["name"].rstrip("/")) for entry in entries if entry.get("type") == "directory")
        return sorted(name for name in names if name.startswith(prefix))

    def newest_change(self, relpath: str) -> float | None:
        """When the most recently written file below ``relpath`` was written (POSIX seconds, the storage's clock);
        None when there is no file there or the filesystem tells no times."""
        times = [_change_time(entry) for entry in self._files(relpath)]
        known = [t for t in times if t is not None]
        return max(known) if known and len(known) == len(times) else None

    def _direct_files(self, relpath: str, kinds: tuple[str, ...]) -> list[FileInfo]:
        """Files directly in folder ``relpath`` whose extension is one of ``kinds``, sorted by path. A folder
        there named like such a file is a StorageError: a dataset written in parts (``x.parquet/part-0.parquet``,
        as Spark and Dask write one), whose rows were left out without a word."""
        folder = self.path(relpath) + "/"
        direct = []
        for entry in self._files(relpath, with_folders=True):
            name = entry["name"].rstrip("/")[len(folder) :]
            if "/" in name or file_kind(name) not in kinds:
                continue
            if entry.get("type") == "directory":
                raise StorageError(f"{self.display(f'{relpath}/{name}')} is a folder, not a file (a dataset written "
                                   f"in parts?): write it as one file in {self.display(relpath)}")
            direct.append(_file_info(entry))
        return direct

    def list_data_files(self) -> list[FileInfo]:
        """The tournament data files, ``data/*.parquet``, sorted by path."""
        return self._direct_files("data", ("parquet",))

    def list_submissions(self, max_bytes: int | None = None) -> tuple[dict[str, list[FileInfo]], list[Rejection]]:
        """Every model's prediction files in the order they apply, and the rejected names and files.

        Both layouts count: ``submissions/<model>.csv|.parquet`` and
        ``submissions/<model>/*.csv|*.parquet``. A model's single files come first,
        then its folder's files, each group in lexicographic file-name order — so
        files added to the folder later (re-uploads) win over the single file.
        Files with other extensions are ignored. Rejected, each with its reason
        and never used to build a path: an invalid model name (escaped for
        printing), files nested deeper than ``submissions/<model>/``, a folder
        named like a file (``<model>.parquet/``), a pipe, device or dangling
        link named like a prediction file (never opened), a compressed file
        (``<model>.csv.gz``), and — without being read — a file larger than
        ``max_bytes``; a model's other files still count.
        """
        folder = self.path("submissions") + "/"
        singles: dict[str, list[FileInfo]] = {}
        nested: dict[str, list[FileInfo]] = {}
        bad: dict[str, tuple[str, str, str]] = {}
        for entry in self._files("submissions", with_folders=True):
            relative = entry["name"][len(folder) :]
            found = _submission_entry(relative, entry, max_bytes)
            if found is None:
                continue
            name, problem, once_per = found
            if problem is None:
                (singles if "/" not in relative else nested).setdefault(name, []).append(_file_info(entry))
            else:
                bad.setdefault(once_per, (name, "submissions/" + relative, problem))
        by_model = {
            model: sorted(singles.get(model, []), key=_file_name) + sorted(nested.get(model, []), key=_file_name)
            for model in sorted(singles.keys() | nested.keys())
        }
        rejections = [Rejection(printable(name), printable(where), None, reason)
                      for name, where, reason in sorted(bad.values(), key=lambda v: v[1])]
        return by_model, rejections

    def find_stakes(self) -> FileInfo | None:
        """``stakes.csv`` or ``stakes.parquet`` if present; both at once is ambiguous (StorageError)."""
        found = [info for info in (self.info("stakes.csv"), self.info("stakes.parquet")) if info is not None]
        if len(found) > 1:
            raise StorageError("both stakes.csv and stakes.parquet exist; keep one so the stakes are unambiguous")
        return found[0] if found else None

    def find_benchmark(self) -> tuple[str, FileInfo] | None:
        """The benchmark's name and file (``benchmark/<name>.csv|.parquet``), None without one."""
        found = self._direct_files("benchmark", ("csv", "parquet"))
        if len(found) > 1:
            names = ", ".join(printable(_file_name(f)) for f in found)
            raise StorageError(f"benchmark/ must hold exactly one prediction file, found {len(found)}: {names}")
        if not found:
            return None
        return _file_name(found[0]).rsplit(".", 1)[0], found[0]

    # ----------------------------------------------------------------- reads

    def read_bytes(self, relpath: str) -> bytes:
        """The whole file at ``relpath``."""
        path = self.path(relpath)
        return retrying(lambda: self.fs.cat_file(path))

    def exists(self, relpath: str) -> bool:
        """Whether anything (file or folder) is at ``relpath``."""
        self.fs.invalidate_cache()
        return self.fs.exists(self.path(relpath))

    def read_many(self, paths: list[str]) -> dict[str, bytes | Exception]:
        """Read many small files (full paths), fetched together; a failed read maps to its exception.

        Async filesystems (s3fs) issue the requests together on their event loop.
        Local files are read one by one after the kernel is asked to fetch them
        all (:func:`prefetch_local`): a file already in the page cache is one
        copy, which a thread pool only slows when another process is busy
        beside it (250 cached files: 0.08 s in one thread against 0.20–0.25 s
        with 2–16), while files on disk still arrive together (0.42–0.45 s cold,
        as with 16 threads). Other filesystems use a thread pool. Paths are
        taken literally (no glob expansion).
        """
        if not paths:
            return {}
        if isinstance(self.fs, AsyncFileSystem):
            contents = self.fs.cat_ranges(paths, None, None, on_error="return")
            contents = [self._read_or_error(p) if isinstance(c, Exception) else c for p, c in zip(paths, contents)]
        elif isinstance(self.fs, LocalFileSystem):
            prefetch_local(paths)
            contents = [self._read_or_error(p) for p in paths]
        else:
            with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(paths))) as pool:
                contents = list(pool.map(self._read_or_error, paths))
        return dict(zip(paths, contents))

    def _read_or_error(self, path: str) -> bytes | Exception:
        try:
            return retrying(lambda: self.fs.cat_file(path))
        except Exception as error:  # noqa: BLE001 — the caller turns it into a rejection
            return error

    def read_feature_sets(self) -> dict[str, list[str]]:
        """The named feature sets of ``data/features.json`` ({} when the file is absent)."""
        if self.info("data/features.json") is None:
            return {}
        try:
            document = json.loads(self.read_bytes("data/features.json"))
        except ValueError as error:
            raise StorageError(f"data/features.json is not valid JSON: {error}") from None
        sets = document.get("feature_sets", {}) if isinstance(document, dict) else None
        if not isinstance(sets, dict):
            raise StorageError('data/features.json: "feature_sets" must map names to lists of column names')
        for name, columns in sets.items():
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise StorageError(f'data/features.json: feature set {name!r} must be a list of column names, '
                                   f"got {json.dumps(columns)[:80]}")
        return sets

    def read_stakes(self) -> pd.Series:
        """Stakes per model (index ``model``, float ``stake``), validated: finite and ≥ 0, one row per model."""
        found = self.find_stakes()
        if found is None:
            raise StorageError("no stakes file (stakes.csv or stakes.parquet)")
        name = self.relative(found.path)
        try:
            frame = read_tabular(name, retrying(lambda: self.fs.cat_file(found.path)), "model").to_pandas(ignore_metadata=True)
        except SubmissionError as error:
            raise StorageError(f"{name}: {error}") from None
        return _validated_stakes(name, frame)

    def _metadata(self, path: str) -> pq.FileMetaData:
        def read() -> pq.FileMetaData:
            with self.fs.open(path, "rb") as handle:
                return pq.read_metadata(handle)

        with self._naming_bad_parquet(path):
            return retrying(read)

    @contextlib.contextmanager
    def _naming_bad_parquet(self, path: str) -> Iterator[None]:
        """Turn pyarrow's complaint about a corrupt file into a StorageError that names the file."""
        try:
            yield
        except pa.ArrowInvalid as error:
            raise StorageError(f"{self.display(self.relative(path))} is not a readable parquet file: {error}") from None

    def data_columns(self, path: str) -> list[str]:
        """The columns of a data file (schema only): ``id`` first, whether stored as a column or as the index."""
        schema = self._metadata(path).schema.to_arrow_schema()
        index_columns = _pandas_index_columns(schema)
        if "id" not in schema.names:
            raise StorageError(f"{self.display(self.relative(path))}: no 'id' column or index")
        return ["id"] + [n for n in schema.names if n != "id" and n not in index_columns]

    def read_data(self, path: str, columns: list[str], eras: list | None = None) -> pd.DataFrame:
        """Rows of a data file: ``id`` (str) plus ``columns``, dtypes as stored (int8 stays int8).

        Only the named columns are fetched. With ``eras``, only row groups whose
        era statistics may hold one of them are fetched, and their rows are
        filtered unless the statistics show that only those eras are there (see
        :func:`_filtered_rows`); era values must have the file's era type (str or
        int; numpy scalars are fine).
        """
        local = self._local_parquet(path)
        metadata = local.metadata if local is not None else self._metadata(path)
        schema = metadata.schema.to_arrow_schema()
        wanted = ["id", *[c for c in columns if c != "id"]]
        present = set(schema.names)  # a fresh list on every access: look up in one set
        missing = [c for c in wanted if c not in present]
        if missing:
            raise StorageError(f"{self.display(self.relative(path))}: no column(s) {missing}")
        groups, keep = list(range(metadata.num_row_groups)), None
        if eras is not None:
            values = self._era_values(path, schema, eras)
            leaf = leaf_index(metadata.schema, "era")
            groups, only_wanted = _row_groups_with(metadata, leaf, values) if leaf is not None else (groups, False)
            keep = None if only_wanted else values
        with self._naming_bad_parquet(path):
            table = retrying(lambda: self._read_row_groups(path, groups, wanted, local, keep))
        if "era" in table.column_names and pa.types.is_dictionary(table.schema.field("era").type):
            era = table.column("era")
            table = table.set_column(table.column_names.index("era"), "era", era.cast(era.type.value_type))
        frame = table.to_pandas(ignore_metadata=True)
        frame["id"] = frame["id"].astype(str)
        return frame

    def _local_parquet(self, path: str) -> pq.ParquetFile | None:
        """A local parquet file opened by pyarrow itself (its footer parsed once), else None."""
        if not isinstance(self.fs, LocalFileSystem):
            return None
        with self._naming_bad_parquet(path):
            return retrying(lambda: pq.ParquetFile(path))

    def _read_row_groups(self, path: str, groups: list[int], columns: list[str],
                         local: pq.ParquetFile | None = None, eras: pa.Array | None = None) -> pa.Table:
        if local is not None:
            # pyarrow reads only these row groups and columns itself; fsspec's byte-range
            # planner would cost a Python loop over every column chunk for nothing.
            return _filtered_rows(local, groups, columns, eras)
        fetched = columns if eras is None or "era" in columns else [*columns, "era"]
        with fsspec.parquet.open_parquet_file(
            path, fs=self.fs, columns=fetched, row_groups=groups, engine="pyarrow"
        ) as handle:
            return _filtered_rows(pq.ParquetFile(handle), groups, columns, eras)

    def _era_values(self, path: str, schema: pa.Schema, eras: list) -> pa.Array:
        if "era" not in schema.names:
            raise StorageError(f"{self.display(self.relative(path))}: no 'era' column to filter on")
        era_type = schema.field("era").type
        if pa.types.is_dictionary(era_type):  # pandas' categorical eras: compared by their values
            era_type = era_type.value_type
        values = [python_scalar(e) for e in eras]
        try:
            return pa.array(values, type=era_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise StorageError(
                f"{self.display(self.relative(path))}: era values {values[:3]!r} do not have the era column's type {era_type}"
            ) from None

    # ---------------------------------------------------------------- writes

    def write_bytes(self, relpath: str, data: bytes, content_type: str | None = None) -> None:
        """Write one object in one request (a single PUT on object stores), so readers never see it half-written.

        Locally the bytes go to a temporary sibling first, then replace the target atomically.
        ``content_type`` is stored with an object (a browser then shows an HTML report rather than download it).
        """
        target = self.path(relpath)
        if isinstance(self.fs, LocalFileSystem):
            self._replace_local(target, [data])
            return
        self._make_folder_of(target)
        self.fs.pipe_file(target, data, **({"ContentType": content_type} if content_type else {}))

    def write_parts(self, relpath: str, parts: Iterable[bytes | memoryview]) -> None:
        """Write one object from consecutive parts, never joined in memory (a multipart upload on object stores).

        Locally, as :meth:`write_bytes`, the parts go to a temporary sibling that then replaces the target.
        """
        target = self.path(relpath)
        if isinstance(self.fs, LocalFileSystem):
            self._replace_local(target, parts)
            return
        self._make_folder_of(target)
        with self.fs.open(target, "wb") as handle:
            for part in parts:
                handle.write(part)

    def _make_folder_of(self, target: str) -> None:
        """Make ``target``'s folder on filesystems with folders (object stores' filesystems, asynchronous, have none)."""
        if not isinstance(self.fs, AsyncFileSystem):
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)

    def _replace_local(self, target: str, parts: Iterable[bytes | memoryview]) -> None:
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                for part in parts:
                    handle.write(part)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def read_ranges(self, relpaths: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        """Byte ranges ``[start, end)`` of files under the root, fetched together (one request each on object stores)."""
        paths = [self.path(relpath) for relpath in relpaths]
        return retrying(lambda: self.fs.cat_ranges(paths, list(starts), list(ends), on_error="raise"))

    def write_text(self, relpath: str, text: str) -> None:
        """Write UTF-8 text as one object."""
        self.write_bytes(relpath, text.encode("utf-8"))

    def create_exclusive(self, relpath: str, data: bytes) -> None:
        """Create ``relpath`` only if nothing is there (a hard link locally, a conditional PUT on S3).

        Raises FileExistsError when it exists: of two writers racing, exactly one
        succeeds, and no reader ever sees the file empty. Locally the bytes go to
        a temporary sibling first, then ``os.link`` creates the name atomically,
        complete (an O_EXCL create would be visible before its bytes are written).
        """
        path = self.path(relpath)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            temporary = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(temporary, "wb") as handle:
                handle.write(data)
            try:
                os.link(temporary, path)
            finally:
                os.remove(temporary)
            return
        with self.fs.open(path, "xb") as handle:
            handle.write(data)

    def write_parquet(self, relpath: str, frame: pd.DataFrame) -> None:
        """Write a DataFrame's columns (not its index) as one parquet object."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.write_bytes(relpath, buffer.getvalue())

    def write_columns(self, relpath: str, columns: Mapping[str, np.ndarray]) -> None:
        """Write named arrays as one parquet object of plain-encoded columns, without pandas.

        For an era's ids and ranks, of thousands of distinct values a column,
        where dictionary pages, Parquet's default, cost time and save nothing.
        An era of 5,000 ids and 500 models' ranks: 92 ms through pandas with
        them, 77 ms through Arrow with them, 13 ms so; the file 29 % smaller.
        """
        buffer = io.BytesIO()
        pq.write_table(pa.table(dict(columns)), buffer, use_dictionary=False)
        self.write_bytes(relpath, buffer.getvalue())

    def delete(self, relpath: str) -> None:
        """Remove the file or folder at ``relpath``; nothing there is not an error.

        The path is taken as it is. fsspec's ``rm`` reads ``*``, ``?`` and
        ``[…]`` in a path as a pattern, and a root may hold them: under
        ``s3://bucket/out[1]`` it found nothing to remove and failed, and under
        a root with ``*`` it would remove whatever the pattern matched.
        """
        target = self.path(relpath)
        self.fs.invalidate_cache()
        if not self.fs.exists(target):
            return
        if not glob.has_magic(target):
            self.fs.rm(target, recursive=True)  # S3 deletes a folder's objects a thousand to a request
            return
        if self.fs.isfile(target):
            self.fs.rm_file(target)
            return
        found = self.fs.find(target, withdirs=True, detail=True)
        for path, entry in found.items():
            if entry["type"] != "directory":
                self.fs.rm_file(path)
        self.fs.invalidate_cache()
        for folder in sorted((p for p, e in found.items() if e["type"] == "directory"), key=len, reverse=True):
            if self.fs.exists(folder):  # object storage has no folders left once their files are gone
                self.fs.rmdir(folder)


def prefetch_local(paths: Sequence[str]) -> None:
    """Ask the kernel to start reading local files into its page cache, all at once.

    Only a hint (``posix_fadvise`` WILLNEED, where the system has it): a path
    that cannot be opened is left for the read itself to report. Opened
    without blocking, so a FIFO cannot stall it.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _file_name(info: FileInfo) -> str:
    return posixpath.basename(info.path)


def _submission_entry(relative: str, entry: dict, max_bytes: int | None) -> tuple[str, str | None, str] | None:
    """What one listing entry under ``submissions/`` is: None to ignore it, else (model, problem, key).

    ``problem`` is None for a usable prediction file, else the rejection's
    reason; ``key`` groups entries that deserve one rejection between them
    (every file of one badly named model, every file of one too-deep folder).
    """
    parts = relative.split("/")
    if entry.get("type") == "directory":
        if len(parts) == 1 and file_kind(relative):
            return relative, FOLDER_AS_FILE, relative
        return None
    if entry.get("type") != "file":  # never opened: a pipe's read would wait for a writer for ever
        if len(parts) <= 2 and file_kind(parts[-1]):
            return (relative if len(parts) == 1 else parts[0]), NOT_A_FILE, relative
        return None
    compression = compressed_kind(parts[-1])
    if file_kind(parts[-1]) is None and compression is None:
        return None
    if len(parts) > 2:
        return "/".join(parts[:-1]), DEEP_NESTING, "/".join(parts[:-1])
    name = parts[0].rsplit(".", 2 if compression else 1)[0] if len(parts) == 1 else parts[0]
    problem = model_name_problem(name)
    if problem is not None:
        return name, problem, name
    if compression is not None:
        return name, compressed_reason(compression), relative
    size = int(entry.get("size") or 0)
    if max_bytes is not None and size > max_bytes:
        return name, (f"the file is {size:,} bytes, over the limit of {max_bytes:,} bytes for a prediction "
                      "file (max_submission_bytes); it was not read"), relative
    return name, None, relative


def _pandas_index_columns(schema: pa.Schema) -> set[str]:
    """Columns that pandas stored for its index (RangeIndex entries are not columns)."""
    metadata = schema.pandas_metadata or {}
    return {c for c in metadata.get("index_columns", []) if isinstance(c, str)}


def _filtered_rows(file: pq.ParquetFile, groups: list[int], columns: list[str], eras: pa.Array | None) -> pa.Table:
    """The rows of these row groups whose ``era`` is one of ``eras`` (every row when None).

    Beyond FILTER_READ_CELLS values, the columns are decoded and filtered a few
    at a time, so a row group holding many eras is never decoded whole: pandas
    and pyarrow write up to 1,048,576 rows per group, which at Numerai's 2,376
    int8 features is 2.5 GB decoded to keep one era's 5,000 rows.
    """
    if eras is None:
        return file.read_row_groups(groups, columns=columns)
    rows = sum(file.metadata.row_group(g).num_rows for g in groups)
    at_once = max(1, FILTER_READ_CELLS // max(rows, 1))
    wanted = pc.is_in(file.read_row_groups(groups, columns=["era"]).column("era"), value_set=eras)
    if at_once >= len(columns):
        return file.read_row_groups(groups, columns=columns).filter(wanted)
    parts = [file.read_row_groups(groups, columns=columns[i:i + at_once]).filter(wanted)
             for i in range(0, len(columns), at_once)]
    return pa.Table.from_arrays([c for part in parts for c in part.columns],
                                names=[name for part in parts for name in part.column_names])


def _row_groups_with(metadata: pq.FileMetaData, column: int, values: pa.Array) -> tuple[list[int], bool]:
    """Row groups whose era column's (leaf column ``column``) min/max statistics may contain one of ``values`` (all
    when unknown), and whether the statistics show that every row of them holds one of ``values`` (no row to
    filter out)."""
    wanted = values.to_pylist()
    groups = []
    only_wanted = True
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        known = stats is not None and stats.has_min_max
        if not known or any(stats.min <= v <= stats.max for v in wanted):
            groups.append(group)
            only_wanted &= (known and stats.has_null_count and stats.null_count == 0 and stats.min == stats.max
                            and stats.min in wanted)
    return groups, only_wanted


def _validated_stakes(name: str, frame: pd.DataFrame) -> pd.Series:
    """The stakes table as a Series, or a StorageError saying exactly what is wrong with it."""
    missing = [c for c in ("model", "stake") if c not in frame.columns]
    if missing:
        raise StorageError(f"{name}: missing column(s) {missing}; it has {list(frame.columns)[:10]}")
    if frame["model"].isna().any():
        raise StorageError(f"{name}: {counted(int(frame['model'].isna().sum()), 'row has', 'rows have')} no model name")
    models = frame["model"].astype(str)
    repeated = sorted(models[models.duplicated()].unique())
    if repeated:
        raise StorageError(f"{name}: {counted(len(repeated), 'model appears', 'models appear')} more than once, "
                           f"e.g. {repeated[:2]}")
    stakes = pd.to_numeric(frame["stake"], errors="coerce").astype(np.float64)
    bad = ~np.isfinite(stakes) | (stakes < 0)
    if bad.any():
        examples = ", ".join(f"{printable(m)}={s!r}" for m, s in zip(models[bad][:2], frame["stake"][bad][:2]))
        problem = counted(int(bad.sum()), "stake is not a finite number", "stakes are not finite numbers")
        raise StorageError(f"{name}: {problem} ≥ 0, e.g. {examples}")
    with np.errstate(over="ignore"):
        total = stakes.sum()
    if not np.isfinite(total):  # the meta model divides by it: it overflowed, and every MMC was wrong
        raise StorageError(f"{name}: the stakes add up to more than a float holds (the largest is "
                           f"{stakes.max():.3g}); write them in a larger unit")
    return pd.Series(stakes.to_numpy(), index=pd.Index(models.to_numpy(), name="model"), name="stake")
