"""Validation of prediction files, per the storage contract (v1).

A bad submission never stops the job: every problem becomes a :class:`Rejection`
naming the model, the file, the era where it matters, and a reason a person
understands. Three steps, each a pure function:

1. :func:`parse_prediction_file` — one file's bytes → ``id``/``prediction`` rows,
   or a :class:`SubmissionError` saying what is wrong with the file;
2. :func:`merge_model_files` — a model's files in lexicographic order, later
   rows replacing earlier ones for the same ids (a re-upload wins);
3. :func:`split_by_era` — the merged predictions cut into one array per resolved
   era (rows = the era's resolved ids, sorted), using an :class:`EraIndex` of the
   data so that thousands of models cost one hash lookup each, not a join each.
"""

from __future__ import annotations

import csv
import functools
import re
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from numerai_dask.wording import counted

EXAMPLES_SHOWN = 2
COLUMNS_SHOWN = 10
#: Fewer ids than the data's over this factor are looked up in a kept hash table (Arrow would hash all the data's).
SMALL_LOOKUP = 8
#: Ids are Arrow strings from file to era index: hashing and comparing them never touches Python objects.
ID_TYPE = pa.large_string()
#: File-name suffixes of compressed files: a ``model.csv.gz`` is rejected, not silently ignored.
COMPRESSION_SUFFIXES = {"gz": "gzip", "zip": "zip", "bz2": "bzip2", "xz": "xz", "zst": "zstd"}
#: Magic bytes of compressed data, to recognise a compressed file named ``.csv``.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                     b"\x28\xb5\x2f\xfd": "zstd"}
UTF16_32_MARKS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
#: Separators people use instead of commas, named for the rejection.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "'|'"}


class SubmissionError(Exception):
    """A prediction file cannot be used; the message is the reason shown to people."""


@dataclass(frozen=True)
class Rejection:
    """Why (part of) a model's submission is not scored.

    ``era`` is the era's label, or None when the problem is not about one era.
    """

    model: str
    file: str
    era: str | None
    reason: str


# ------------------------------------------------------------------ reading files


def redact(text: str) -> str:
    """``text`` with URL credentials (``user:pass@``) and HTTP query strings (signatures) removed.

    Error messages from storage end up in reports; they must never carry secrets. A ``?`` elsewhere
    (``s3://bucket/a?b``) is part of a key, and stays. (An ``s3://`` root with credentials in it is
    refused before anything names it: ``storage.refuse_credentials_in_url``.)
    """
    text = re.sub(r"(\w+://)[^/\s@]*@", r"\1", text)
    return re.sub(r"(https?://[^\s?]*)\?\S*", r"\1", text, flags=re.IGNORECASE)


def describe_error(error: BaseException) -> str:
    """A short, credential-free description of an exception raised while reading a file."""
    message = redact(str(error)).strip()
    if len(message) > 200:
        message = message[:200] + "…"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def file_kind(file_name: str) -> str | None:
    """``"csv"`` or ``"parquet"`` from the file name's extension (any case), else None."""
    lowered = file_name.lower()
    for kind in ("csv", "parquet"):
        if lowered.endswith("." + kind):
            return kind
    return None


def compressed_kind(file_name: str) -> str | None:
    """The compression a name like ``model.csv.gz`` announces (``"gzip"``…), else None."""
    stem, _, suffix = file_name.lower().rpartition(".")
    return COMPRESSION_SUFFIXES.get(suffix) if file_kind(stem) else None


def compressed_reason(compression: str) -> str:
    """The rejection of a compressed prediction file: what to upload instead."""
    return f"the file is {compression}-compressed; upload the plain .csv (or a .parquet file, which is compressed inside)"


def _compression_of(raw: bytes) -> str | None:
    """The compression format whose magic bytes start ``raw``, else None."""
    return next((name for magic, name in COMPRESSION_MAGIC.items() if raw.startswith(magic)), None)


def _check_csv_text(raw: bytes) -> list[str]:
    """The header's column names of CSV bytes, or a SubmissionError for what a CSV reader would garble.

    Compressed bytes, parquet bytes, UTF-16/32 text, a header separated by ``;``, tab or ``|``
    instead of commas each get a reason that says what to change. A UTF-8 byte
    order mark is fine (it is not part of the first column's name).
    """
    compression = _compression_of(raw)
    if compression:
        raise SubmissionError(compressed_reason(compression))
    if raw.startswith(b"PAR1"):
        raise SubmissionError("the file holds parquet data but is named .csv; name it .parquet")
    if raw.startswith(UTF16_32_MARKS):
        raise SubmissionError("the file is UTF-16 or UTF-32 text; save it as UTF-8 (plain CSV)")
    end = raw.find(b"\n")
    first_line = raw[: end if end >= 0 else len(raw)].decode("utf-8-sig", errors="replace").rstrip("\r")
    try:
        header = next(csv.reader([first_line]), [])
    except csv.Error:  # not text at all: the CSV reader says what is wrong
        return []
    if len(header) == 1:
        for separator, name in OTHER_SEPARATORS.items():
            if separator in header[0]:
                raise SubmissionError(f"the columns are separated by {name}, not commas; save the file as "
                                      f"comma-separated CSV (header seen: {header[0][:60]!r})")
    return header


def _check_unique_columns(names: Sequence[str]) -> None:
    """A SubmissionError when ``id`` or ``prediction`` is the name of more than one column (which one counts?)."""
    for column in ("id", "prediction"):
        count = list(names).count(column)
        if count > 1:
            raise SubmissionError(f"the column {column!r} appears {count} times; which one to use is ambiguous")


def read_tabular(file_name: str, raw: bytes, text_column: str, number_column: str | None = None) -> pa.Table:
    """A csv or parquet file's rows as an Arrow table, ``text_column`` kept as text.

    Parquet index columns (pandas stores a named index as a column) come back as
    ordinary columns. Nothing is ever unpickled. Empty CSV fields are missing
    values; words such as ``NA`` are text (see :func:`_read_csv`). A CSV
    ``number_column`` is parsed straight to float64 when every value is a number,
    else read as the reader infers it (so the caller can say which rows are
    not numbers). Raises :class:`SubmissionError` when the bytes cannot be read
    as the format the extension names, are compressed, not UTF-8, not
    comma-separated, or name a key column twice.
    """
    kind = file_kind(file_name)
    if kind is None:
        raise SubmissionError("unsupported file type: expected a .csv or .parquet file")
    if not raw or raw.isspace():
        raise SubmissionError("the file is empty")
    try:
        if kind == "csv":
            _check_unique_columns(_check_csv_text(raw))
            table = _read_csv(raw, text_column, number_column)
            table.column_names  # noqa: B018 — the header is decoded here, so a binary file fails inside the try
            return table
        table = STORED_COLUMNS.read(pq.ParquetFile(pa.BufferReader(raw)), raw, text_column)
        _check_unique_columns(table.schema.names)
        return table
    except (ValueError, pa.ArrowException, UnicodeDecodeError) as error:
        raise SubmissionError(f"unreadable as {kind}: {describe_error(error)}") from None


class StoredColumns:
    """Parquet columns decoded lately, found again by their stored bytes (a per-process cache).

    Files written by the same tool for the same ids store their id column byte
    for byte alike: decoding 100,000 text ids costs about 4 ms a file, comparing
    their 1.7 MB of stored bytes with a kept copy 0.07 ms. Decoding is
    deterministic, so a column stored identically (same bytes in every row
    group, same codec, encodings and type) decodes to the same values, which
    are shared. Holds the last ``capacity`` decoded columns with their stored
    bytes (an 80-era id column is about 8 MB decoded).
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._columns: list[tuple[tuple, tuple[bytes, ...], pa.ChunkedArray]] = []  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._columns)

    def read(self, parquet: pq.ParquetFile, raw: bytes, column: str) -> pa.Table:
        """Every column of ``parquet`` (whose bytes are ``raw``), ``column`` taken from the cache when stored as before."""
        names = parquet.schema_arrow.names
        others = [n for n in names if n != column]
        found_stored = _stored_column(parquet, raw, column) if names.count(column) == 1 and others else None
        if found_stored is None:
            return parquet.read()
        layout, stored = found_stored
        with self._lock:
            found = next((entry for entry in self._columns if entry[0] == layout and entry[1] == stored), None)
            if found is not None:
                self._columns.remove(found)
                self._columns.append(found)
        if found is None:
            table = parquet.read()
            with self._lock:
                self._columns.append((layout, stored, table.column(column)))
                del self._columns[:max(0, len(self._columns) - self.capacity)]
            return table
        return parquet.read(columns=others).add_column(names.index(column), parquet.schema_arrow.field(column), found[2])


def leaf_index(schema: pq.ParquetSchema, column: str) -> int | None:
    """The index among a Parquet file's stored (leaf) columns of the top-level column ``column``, None when it is
    not stored as one leaf of its own. A nested column stores one leaf per field, so after one the leaf indexes
    and the top-level ones part: column chunks and their statistics are found by the leaf index."""
    paths = [schema.column(i).path for i in range(len(schema))]
    return paths.index(column) if paths.count(column) == 1 else None


def _stored_column(parquet: pq.ParquetFile, raw: bytes, column: str) -> tuple[tuple, tuple[bytes, ...]] | None:
    """What decides the top-level column ``column``'s decoded values: its type and each row group's rows, codec and
    encodings; and each row group's stored bytes of it. None when it is not stored as one leaf column of its own.
    """
    leaf = leaf_index(parquet.schema, column)
    if leaf is None:
        return None
    metadata = parquet.metadata
    layout: list = [str(parquet.schema_arrow.field(column).type)]
    stored = []
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(leaf)
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        stored.append(bytes(raw[start : start + chunk.total_compressed_size]))
        layout.append((metadata.row_group(group).num_rows, chunk.compression, chunk.encodings))
    return tuple(layout), tuple(stored)


#: This process's decoded id columns (see :class:`StoredColumns`).
STORED_COLUMNS = StoredColumns()


def _read_csv(raw: bytes, text_column: str, number_column: str | None) -> pa.Table:
    """CSV bytes as a table: ``text_column`` as text, ``number_column`` as float64 if it parses so, else inferred.

    Only an empty field is missing. Arrow's default missing-value words (``NA``,
    ``null``, ``nan``…) are valid model names and could be ids; a number column
    still reads ``nan`` and ``inf`` as the floats they spell.
    """
    types = {text_column: ID_TYPE}
    if number_column is not None:
        try:
            return pa_csv.read_csv(pa.BufferReader(raw), convert_options=pa_csv.ConvertOptions(
                column_types={**types, number_column: pa.float64()}, null_values=[""], strings_can_be_null=True))
        except pa.ArrowInvalid:
            pass  # some value is not a number: read it as it is, for the caller to name the rows
    return pa_csv.read_csv(pa.BufferReader(raw), convert_options=pa_csv.ConvertOptions(
        column_types=types, null_values=[""], strings_can_be_null=True))


def _examples(values: Sequence) -> str:
    """The first couple of ``values`` quoted, for messages."""
    return ", ".join(repr(str(v)) for v in list(values[:EXAMPLES_SHOWN]))


def _column_list(columns: Sequence) -> str:
    shown = [repr(str(c)) for c in list(columns)[:COLUMNS_SHOWN]]
    more = len(columns) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "none"


def _numeric_predictions(column: pa.ChunkedArray) -> np.ndarray:
    """The prediction column as float64 (missing values NaN), or a SubmissionError naming the non-numeric rows."""
    if pa.types.is_boolean(column.type):
        raise SubmissionError("'prediction' holds true/false values, not numbers")
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        return np.asarray(column.to_numpy(), dtype=np.float64)
    values = column.to_pandas()
    coerced = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & coerced.isna()
    if bad.any():
        raise SubmissionError(
            f"'prediction' is not numeric in {counted(int(bad.sum()), 'row')}, e.g. {_examples(values[bad])}"
        )
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def _text_ids(column: pa.ChunkedArray) -> pa.Array:
    """The id column as one Arrow array of :data:`ID_TYPE` (numbers become their text)."""
    return pc.cast(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column, ID_TYPE)


def as_arrow_ids(ids: Sequence[str] | pd.Index | pa.Array) -> pa.Array:
    """Ids as one Arrow array of :data:`ID_TYPE`; Arrow-backed pandas ids convert without a copy."""
    if isinstance(ids, (pd.Index, pd.Series)) and isinstance(ids.array, pd.arrays.ArrowStringArray):
        ids = pa.array(ids.array)
    elif not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(np.asarray(ids, dtype=object), type=ID_TYPE)
    return _text_ids(ids)


def _repeated(ids: pa.Array) -> list[str]:
    """The ids that appear more than once, sorted."""
    counts = pc.value_counts(ids)
    return sorted(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())


def _all_distinct(ids: pa.Array) -> bool:
    """Whether no id appears twice (ids present on every row): Arrow's unique values, 2–3× faster than its
    ``count_distinct`` (0.58 against 1.82 s at 3,000,000 ids)."""
    return len(pc.unique(ids)) == len(ids)


@dataclass(frozen=True)
class Predictions:
    """One model's predictions, row for row: ids (Arrow text, unique) and values (float64).

    Arrow ids and a NumPy array are all the validation and the era split need;
    :meth:`frame` and :meth:`series` give the pandas forms people work with.
    ``rows``, when parsed against an :class:`EraIndex`, is each id's row there
    (-1: not in the data): re-uploads and the era split then need no id lookup.
    """

    ids: pa.Array
    values: np.ndarray
    rows: np.ndarray | None = None

    @classmethod
    def from_series(cls, series: pd.Series) -> Predictions:
        """From a Series of predictions indexed by id."""
        return cls(as_arrow_ids(series.index), series.to_numpy(dtype=np.float64))

    def frame(self) -> pd.DataFrame:
        """Columns ``id`` and ``prediction``, in row order."""
        return pd.DataFrame({"id": self.ids.to_pylist(), "prediction": self.values})

    def series(self) -> pd.Series:
        """The predictions indexed by id, in row order."""
        return pd.Series(self.values, index=pd.Index(self.ids.to_pylist(), name="id"), name="prediction")


def parse_prediction_file(file_name: str, raw: bytes, index: EraIndex | None = None) -> Predictions:
    """One prediction file → its ids (text) and predictions (float64), in file order.

    Raises :class:`SubmissionError` with a person-readable reason when the file is
    unreadable or empty, lacks ``id``/``prediction``, has rows without an id,
    repeats ids, has non-numeric, NaN or infinite predictions, or predictions
    outside [0, 1]. With the data's ``index``, each id's row is looked up once
    (see :meth:`EraIndex.rows_of`; a file listing the data's ids in data order
    costs one comparison of buffers) and repeats are found among the rows.
    """
    table = read_tabular(file_name, raw, "id", "prediction")
    missing = [c for c in ("id", "prediction") if c not in table.column_names]
    if missing:
        raise SubmissionError(
            f"missing column(s) {_column_list(missing)}; the file has columns {_column_list(table.column_names)}"
        )
    if table.num_rows == 0:
        raise SubmissionError("the file has a header but no rows")
    ids = _text_ids(table.column("id"))
    if ids.null_count:
        raise SubmissionError(f"{counted(ids.null_count, 'row has', 'rows have')} no id")
    rows = index.rows_of(ids) if index is not None else None
    if _has_repeats(ids, rows):
        repeated = _repeated(ids)
        raise SubmissionError(f"{counted(len(repeated), 'id appears', 'ids appear')} more than once in this file, "
                              f"e.g. {_examples(repeated)}")
    predictions = _numeric_predictions(table.column("prediction"))
    not_finite = ~np.isfinite(predictions)
    if not_finite.any():
        raise SubmissionError(f"{counted(int(not_finite.sum()), 'row has', 'rows have')} a missing (NaN) or infinite "
                              "prediction")
    outside = (predictions < 0.0) | (predictions > 1.0)
    if outside.any():
        raise SubmissionError(
            f"{counted(int(outside.sum()), 'prediction is', 'predictions are')} outside [0, 1] "
            f"(min {predictions.min():.6g}, max {predictions.max():.6g})"
        )
    return Predictions(ids, predictions, rows)


def _has_repeats(ids: pa.Array, rows: np.ndarray | None) -> bool:
    """Whether an id appears more than once: counted among the data's rows when known, else hashed by Arrow."""
    if rows is None:
        return not _all_distinct(ids)
    if rows.min(initial=0) >= 0:  # every id in the data, as usual: no copy of the rows to count them
        return bool(np.bincount(rows).max(initial=0) > 1)
    known = rows >= 0
    return np.bincount(rows[known]).max(initial=0) > 1 or _has_repeats(ids.filter(pa.array(~known)), None)


def merge_model_files(
    model: str, files: list[tuple[str, bytes | Exception]], index: EraIndex | None = None
) -> tuple[Predictions | None, list[Rejection]]:
    """Parse a model's files in the given (lexicographic) order and apply re-uploads.

    Each bad file is rejected on its own; the good ones are applied in order, a
    later file's rows replacing earlier rows for the same ids. Returns the
    merged predictions (None when no file survived) and the rejections.
    ``index`` as for :func:`parse_prediction_file`.
    """
    parsed: list[Predictions] = []
    rejections: list[Rejection] = []
    for name, content in files:
        try:
            if isinstance(content, Exception):
                raise SubmissionError(f"unreadable: {describe_error(content)}")
            parsed.append(parse_prediction_file(name, content, index))
        except SubmissionError as error:
            rejections.append(Rejection(model, name, None, str(error)))
        except Exception as error:  # noqa: BLE001 — a file no rule foresaw must not stop the job
            rejections.append(Rejection(model, name, None, f"unreadable: {describe_error(error)}"))
    if not parsed:
        return None, rejections
    merged = parsed[0]
    for later in parsed[1:]:
        merged = apply_reupload(merged, later)
    return merged, rejections


def apply_reupload(base: Predictions, later: Predictions) -> Predictions:
    """``base`` with ``later``'s rows replacing its rows of the same ids, and ``later``'s new ids appended.

    1. find each base id among the later file's ids: through their data rows
       when both files' ids are all in the data, else a hash of the later file
       (re-uploads are usually the smaller file);
    2. replace the predictions of the ids found;
    3. append the later rows whose ids the base did not have.
    The base's row order is kept, so a first file in data order stays in data order.
    """
    if _all_known(base) and _all_known(later):
        return _apply_reupload_by_row(base, later)
    found = pc.index_in(base.ids, value_set=later.ids).fill_null(-1).to_numpy().astype(np.int64)
    hit = found >= 0
    values = base.values.copy()
    values[hit] = later.values[found[hit]]
    new = np.ones(len(later.ids), dtype=bool)
    new[found[hit]] = False
    if not new.any():
        return Predictions(base.ids, values)
    return Predictions(pa.concat_arrays([base.ids, later.ids.filter(pa.array(new))]),
                       np.concatenate([values, later.values[new]]))


def _all_known(predictions: Predictions) -> bool:
    return predictions.rows is not None and bool(np.all(predictions.rows >= 0))


def _apply_reupload_by_row(base: Predictions, later: Predictions) -> Predictions:
    """:func:`apply_reupload` through the data rows both files' ids were found at (no string is compared)."""
    position = np.full(max(base.rows.max(), later.rows.max()) + 1, -1)
    position[base.rows] = np.arange(len(base.rows))
    at = position[later.rows]
    hit = at >= 0
    values = base.values.copy()
    values[at[hit]] = later.values[hit]
    if hit.all():
        return Predictions(base.ids, values, base.rows)
    new = ~hit
    return Predictions(pa.concat_arrays([base.ids, later.ids.filter(pa.array(new))]),
                       np.concatenate([values, later.values[new]]), np.concatenate([base.rows, later.rows[new]]))


# ---------------------------------------------------------------- era index


class RepeatedIds(ValueError):
    """Ids on more than one row of the data (``repeated``, sorted): an era index needs each id once."""

    def __init__(self, repeated: list[str]) -> None:
        super().__init__(f"{counted(len(repeated), 'id appears', 'ids appear')} more than once in the data, "
                         f"e.g. {_examples(repeated)}")
        self.repeated = repeated

    def __reduce__(self) -> tuple:
        return type(self), (self.repeated,)  # raised in a task, it reaches the client whole


@dataclass(eq=False)
class EraIndex:
    """Which ids make up each era of the data, and which of them have a resolved target.

    Rows are held era by era (eras in sorted order), ids sorted within an era:
    era ``k`` is ``ids[starts[k]:starts[k + 1]]``, ``ids`` being Arrow text (any
    sequence of ids given is converted: Python strings would take three times the
    memory on every worker). ``resolved`` marks rows whose
    target is not NaN; ``resolved_numbers`` (derived) are the numbers of the eras
    with at least one resolved row. ``data_rows[i]`` is the row of the data's
    ``i``-th id in data order (empty when unknown); ``usual_ids`` (derived) are the
    ids in that order. Built once per job and shipped to every load task, it
    turns "which era and position is this id?" into one comparison of buffers
    for a submission listing the data's ids in data order (how predictions are
    usually written), and one Arrow hash lookup otherwise.
    """

    eras: list
    ids: pa.Array
    starts: np.ndarray
    resolved: np.ndarray
    data_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    usual_ids: pa.Array | None = field(init=False, repr=False, compare=False)
    _number: dict = field(init=False, repr=False, compare=False)
    resolved_numbers: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = as_arrow_ids(self.ids)
        if self.ids.null_count:
            raise ValueError(f"{counted(self.ids.null_count, 'row of the data has', 'rows of the data have')} "
                             "no id")
        if not _all_distinct(self.ids):
            raise RepeatedIds(_repeated(self.ids))
        self._derive()

    def _derive(self) -> None:
        self.usual_ids = self.ids.take(pa.array(self.data_rows)) if len(self.data_rows) else None
        self._number = {era: k for k, era in enumerate(self.eras)}
        counts = np.add.reduceat(self.resolved.astype(np.int64), self.starts[:-1]) if len(self.eras) else np.zeros(0)
        self.resolved_numbers = np.flatnonzero(counts > 0)

    def __getstate__(self) -> dict:
        """Only the given fields travel to workers; the usual ids and era numbers are derived again there."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def __setstate__(self, state: dict) -> None:
        """Derive again what does not travel; the ids were checked for repeats where the index was built (that
        check was two thirds of an unpickling: 19 of 26–30 ms at 100,000 ids, in each worker's event loop)."""
        self.__dict__.update(state)
        self._derive()

    @property
    def nbytes(self) -> int:
        """The size of what travels to workers (see ``__getstate__``), the era labels aside."""
        return self.ids.nbytes + self.starts.nbytes + self.resolved.nbytes + self.data_rows.nbytes

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> EraIndex:
        """Build from a DataFrame with columns ``id``, ``era`` (no missing value) and ``target`` (NaN = unresolved).

        Rows are sorted by era, then id, by Arrow (UTF-8 byte order is code
        point order, as Python sorts text): an index of 100,000 rows with its
        checks is built in 27 ms, against 71 ms sorting Python strings in pandas.
        """
        ids = as_arrow_ids(frame["id"].astype(str))
        eras = pa.array(frame["era"])
        order = pc.sort_indices(pa.table({"era": eras, "id": ids}),
                                sort_keys=[("era", "ascending"), ("id", "ascending")]).to_numpy()
        n = len(order)
        data_rows = np.empty(n, dtype=np.int64)
        data_rows[order] = np.arange(n)
        sorted_eras = eras.take(order)
        starts = np.zeros(1, dtype=np.int64)
        if n:
            changes = pc.not_equal(sorted_eras.slice(1), sorted_eras.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            starts = np.concatenate([[0], np.flatnonzero(changes) + 1, [n]]).astype(np.int64)
        return cls(
            eras=sorted_eras.take(starts[:-1]).to_pylist(),
            ids=ids.take(order),
            starts=starts,
            resolved=frame["target"].notna().to_numpy()[order],
            data_rows=data_rows,
        )

    @staticmethod
    def era_label(era: Hashable) -> str:
        """The era as text, for tables and messages (``"0575"`` stays ``"0575"``, 575 becomes ``"575"``)."""
        return str(era)

    def resolved_eras(self) -> list:
        """Eras with at least one resolved target, in order: the ones that are scored."""
        return [self.eras[k] for k in self.resolved_numbers]

    def unresolved_eras(self) -> list:
        """Eras whose target is NaN on every row: skipped, not scored as zero."""
        resolved = set(self.resolved_numbers.tolist())
        return [era for k, era in enumerate(self.eras) if k not in resolved]

    def ids_of(self, era: Hashable) -> np.ndarray:
        """The era's ids, sorted (as Python strings: for checks and digests, not for lookups)."""
        k = self._number[era]
        return self.ids.slice(self.starts[k], self.starts[k + 1] - self.starts[k]).to_numpy(zero_copy_only=False)

    def resolved_of(self, era: Hashable) -> np.ndarray:
        """Which of :meth:`ids_of` have a resolved target (a boolean mask in the same order)."""
        k = self._number[era]
        return self.resolved[self.starts[k] : self.starts[k + 1]]

    def rows_of(self, ids: Sequence[str] | pd.Index | pa.Array) -> np.ndarray:
        """For each id, its row (era ``k``'s rows are ``starts[k]:starts[k + 1]``); -1 if unknown."""
        ids = as_arrow_ids(ids)
        if self.usual_ids is not None and ids.equals(self.usual_ids):
            return self.data_rows
        if ids.equals(self.ids):
            return np.arange(len(self.ids))
        if self._fixed_width is not None:
            rows = self._fixed_width.rows_of(ids)
            if rows is not None:
                return rows
        if len(ids) * SMALL_LOOKUP < len(self.ids):  # a few ids: probe a hash table built once, not a new one
            return self._hashed.get_indexer(ids.to_numpy(zero_copy_only=False)).astype(np.int64)
        return pc.index_in(ids, value_set=self.ids).fill_null(-1).to_numpy().astype(np.int64)

    @functools.cached_property
    def _fixed_width(self) -> FixedWidthIds | None:
        """The ids as a NumPy lookup table when they all have one byte length (Numerai's do), built on first lookup."""
        return FixedWidthIds.of(self.ids)

    @functools.cached_property
    def _hashed(self) -> pd.Index:
        """The ids as a pandas Index: its hash table is built on first lookup and kept with this object."""
        return pd.Index(self.ids.to_numpy(zero_copy_only=False), dtype=object)

    def locate(self, ids: Sequence[str] | pd.Index | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """For each id: its era's number (position in :attr:`eras`) and its position in that era; -1, -1 if unknown."""
        return self.locate_rows(self.rows_of(ids))

    def locate_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`locate` for ids whose rows are known already (see :meth:`rows_of`)."""
        known = rows >= 0
        numbers = np.where(known, np.searchsorted(self.starts, rows, side="right") - 1, -1)
        positions = np.where(known, rows - self.starts[np.maximum(numbers, 0)], -1)
        return numbers, positions


@dataclass(frozen=True)
class FixedWidthIds:
    """Unique ids of one byte length as 64-bit words, sorted by a hash of their words: NumPy looks ids up in
    it with a binary search, with no hash table to build per lookup and no Python string.

    Each found id is compared word for word, so a hash shared by an id outside
    the table only means "not found"; a table whose own ids share a hash is not
    built (the caller falls back to Arrow's lookup).
    """

    width: int  # every id's length in bytes
    words: np.ndarray  # (n, w) uint64: each id's bytes, zero-padded to whole words, in row order
    keys: np.ndarray  # (n,) the ids' hashes, sorted
    order: np.ndarray  # (n,) the row of each sorted key

    @classmethod
    def of(cls, ids: pa.Array) -> FixedWidthIds | None:
        """The table of ``ids`` (unique), or None when their lengths differ or two of them share a hash."""
        width = id_width(ids)
        if width is None:
            return None
        words = id_words(ids, width)
        hashes = _hash_words(words)
        order = np.argsort(hashes)
        keys = hashes[order]
        if np.any(keys[1:] == keys[:-1]):
            return None
        return cls(width, words, keys, order)

    def rows_of(self, ids: pa.Array) -> np.ndarray | None:
        """Each id's row (-1: not in the table), or None when ``ids`` are not all of the table's length."""
        if id_width(ids) != self.width:
            return None
        words = id_words(ids, self.width)
        hashes = _hash_words(words)
        by_hash = np.argsort(hashes)  # a binary search for keys in order stays in cache
        at = np.empty_like(by_hash)
        at[by_hash] = np.minimum(np.searchsorted(self.keys, hashes[by_hash]), len(self.keys) - 1)
        rows = self.order[at]
        found = self.keys[at] == hashes
        for column, table_column in zip(words.T, self.words.T):
            found &= table_column[rows] == column
        return np.where(found, rows, -1)


def id_width(ids: pa.Array) -> int | None:
    """The byte length every id of ``ids`` (:data:`ID_TYPE`) has; None when some id is missing or lengths differ."""
    if ids.null_count or not len(ids):
        return None
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64, count=len(ids) + 1, offset=8 * ids.offset)
    width = int(offsets[1] - offsets[0])
    return width if width > 0 and np.all(np.diff(offsets) == width) else None


def id_words(ids: pa.Array, width: int) -> np.ndarray:
    """Ids of :data:`ID_TYPE`, each ``width`` bytes (see :func:`id_width`), as an (n, w) uint64 array of
    their bytes zero-padded to whole words."""
    start = int(np.frombuffer(ids.buffers()[1], dtype=np.int64, count=1, offset=8 * ids.offset)[0])
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8, count=width * len(ids), offset=start)
    words = np.zeros((len(ids), -(-width // 8) * 8), dtype=np.uint8)
    words[:, :width] = data.reshape(len(ids), width)
    return words.view(np.uint64)


def _hash_words(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of uint64 words (FNV-style multiply and xor-shift; overflow wraps by design)."""
    hashes = np.full(len(words), 0xCBF29CE484222325, dtype=np.uint64)
    for column in words.T:
        hashes ^= column
        hashes *= np.uint64(0x100000001B3)
        hashes ^= hashes >> np.uint64(29)
    return hashes


def python_scalar(value: Hashable) -> Hashable:
    """A numpy scalar as the equivalent Python value (eras then hash, print and convert to Arrow alike)."""
    return value.item() if isinstance(value, np.generic) else value


def rows_in(predictions: Predictions, index: EraIndex) -> np.ndarray:
    """Each prediction's row in ``index`` (-1: not in the data): found while parsing against it, else looked up now."""
    return predictions.rows if predictions.rows is not None else index.rows_of(predictions.ids)


def split_by_era(
    model: str, predictions: Predictions, index: EraIndex, *, files: Sequence[str] = ()
) -> tuple[dict[Hashable, np.ndarray], list[Rejection]]:
    """Cut one model's merged predictions into one float64 array per resolved era.

    Each array holds the predictions for the era's resolved rows in sorted-id
    order. Any id unknown to the data rejects the whole model. An era the model
    covers only partly, or where its predictions on the resolved rows are
    constant, is rejected for that era only; an era the model did not predict at
    all is simply not scored for it, and unresolved eras are skipped silently.
    ``files`` names where the predictions came from, for the rejections.
    Predictions parsed against an index must be split by that same index.
    """
    source = ", ".join(files)
    rows = rows_in(predictions, index)
    unknown = rows < 0
    if unknown.any():
        examples = _examples(sorted(predictions.ids.filter(pa.array(unknown)).to_pylist()))
        reason = (f"{int(unknown.sum())} of {len(rows)} ids {'is' if unknown.sum() == 1 else 'are'} not in the "
                  f"data, e.g. {examples}; "
                  "the model is not scored until its ids match the data")
        return {}, [Rejection(model, source, None, reason)]
    values = np.full(len(index.ids), np.nan)
    values[rows] = predictions.values
    eras = index.resolved_numbers
    if not len(eras):
        return {}, []
    sizes = np.diff(index.starts)[eras]
    covered = np.add.reduceat((~np.isnan(values)).astype(np.int64), index.starts[:-1])[eras]
    resolved_rows = np.flatnonzero(index.resolved)
    resolved_values = values[resolved_rows]
    bounds = np.searchsorted(resolved_rows, index.starts)
    lows = np.minimum.reduceat(resolved_values, bounds[eras])
    highs = np.maximum.reduceat(resolved_values, bounds[eras])
    by_era: dict[Hashable, np.ndarray] = {}
    rejections: list[Rejection] = []
    for k, size, have, low, high in zip(eras, sizes, covered, lows, highs):
        era = index.eras[k]
        if have == 0:
            continue
        if have < size:
            rejections.append(Rejection(model, source, index.era_label(era),
                                        f"incomplete: {size - have} of the era's {size} ids "
                                        f"{'has' if size - have == 1 else 'have'} no prediction"))
        elif low == high:
            rejections.append(Rejection(model, source, index.era_label(era),
                                        f"constant: every prediction on the era's scored rows is {low:.6g}"))
        else:
            by_era[era] = resolved_values[bounds[k] : bounds[k + 1]].copy()
    return by_era, rejections
