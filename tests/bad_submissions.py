"""A corpus of hostile submissions: each kind writes its bad file(s) into a dataset and says what a person should read.

:data:`KINDS` is the table: one :class:`Kind` per way a submission can be
wrong — a name, the file(s) it writes under ``submissions/`` (built from a
valid model's predictions by :class:`Corpus`), the model name the rejection
carries, the era when the problem is one era's, and a fragment of the reason.
:data:`TOLERATED` rewrites a good model's file in a form the job accepts
(extra columns, a UTF-8 byte order mark with CRLF line ends, ids as the parquet
index): that model's scores must not change.

Bad models that are wrong in one era predict only that era, so a rejected era
never leaves the model valid elsewhere, where it would (rightly) change the
meta model and the other models' MMC: the whole corpus is then expected to
leave every score of a run without it bit-identical.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: The size of the sparse "oversized" file: far over any limit, and never allocated on disk.
SPARSE_BYTES = 1 << 40


@dataclass
class Corpus:
    """Writes bad files under ``root/submissions`` from a valid model's ``predictions`` (id, prediction)."""

    root: Path
    predictions: pd.DataFrame
    era_ids: list[str]

    def put(self, relpath: str, data: bytes) -> None:
        path = self.root / "submissions" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def frame(self) -> pd.DataFrame:
        """A copy of the valid predictions of every id."""
        return self.predictions.copy()

    def with_values(self, *values: object) -> pd.DataFrame:
        """The valid predictions with the first rows' predictions replaced by ``values`` (as objects)."""
        frame = self.frame().astype({"prediction": object})
        frame.loc[: len(values) - 1, "prediction"] = list(values)
        return frame

    def one_era(self) -> pd.DataFrame:
        """The valid predictions of one resolved era's ids only."""
        return self.predictions[self.predictions["id"].isin(self.era_ids)].reset_index(drop=True)


def csv(frame: pd.DataFrame, **options: object) -> bytes:
    return frame.to_csv(index=False, **options).encode()


def parquet(frame: pd.DataFrame | pa.Table, *, index: bool = False) -> bytes:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=index)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def sparse(corpus: Corpus, relpath: str) -> None:
    """A file whose listed size is SPARSE_BYTES, created without writing them (reading it would exhaust memory)."""
    path = corpus.root / "submissions" / relpath
    with open(path, "wb") as handle:
        handle.truncate(SPARSE_BYTES)


def empty_folder(corpus: Corpus, relpath: str) -> None:
    (corpus.root / "submissions" / relpath).mkdir(parents=True)


def fifo(corpus: Corpus, relpath: str) -> None:
    """A named pipe: opening it for reading would wait for a writer for ever."""
    path = corpus.root / "submissions" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def dangling_link(corpus: Corpus, relpath: str) -> None:
    (corpus.root / "submissions" / relpath).symlink_to(corpus.root / "no-such-file.csv")


@dataclass(frozen=True)
class Kind:
    """One kind of bad submission: how to write it, and the rejection it must get."""

    name: str
    build: Callable[[Corpus], None]
    reason: str
    model: str = ""
    in_era: bool = False

    @property
    def rejected_model(self) -> str:
        return self.model or self.name


def _file(name: str, content: Callable[[Corpus], bytes], reason: str, *, ext: str = "csv",
          in_era: bool = False) -> Kind:
    """A kind that is one file ``submissions/<name>.<ext>``."""
    return Kind(name, lambda c: c.put(f"{name}.{ext}", content(c)), reason, in_era=in_era)


def _shifted_ids(c: Corpus) -> pd.DataFrame:
    frame = c.frame()
    extra = pd.DataFrame({"id": ["not-an-id-1", "not-an-id-2"], "prediction": [0.25, 0.75]})
    return pd.concat([frame, extra], ignore_index=True)


KINDS: list[Kind] = [
    _file("empty_file", lambda c: b"", "the file is empty"),
    _file("blank_lines", lambda c: b"\n  \n\n", "the file is empty"),
    _file("header_only", lambda c: b"id,prediction\n", "the file has a header but no rows"),
    _file("no_rows_parquet", lambda c: parquet(c.frame().iloc[:0]), "the file has a header but no rows", ext="parquet"),
    _file("no_prediction_column", lambda c: csv(c.frame().rename(columns={"prediction": "pred"})),
          "missing column(s) 'prediction'; the file has columns 'id', 'pred'"),
    _file("no_id_column", lambda c: csv(c.frame()[["prediction"]]), "missing column(s) 'id'"),
    _file("wrong_case_columns", lambda c: csv(c.frame().rename(columns=str.upper)),
          "missing column(s) 'id', 'prediction'; the file has columns 'ID', 'PREDICTION'"),
    _file("prediction_twice", lambda c: csv(c.frame().assign(p2=0.5).rename(columns={"p2": "prediction"})),
          "the column 'prediction' appears 2 times"),
    _file("rows_without_id", lambda c: csv(c.frame().assign(id=lambda f: f["id"].where(f.index > 1))),
          "2 rows have no id"),
    _file("non_numeric", lambda c: csv(c.with_values("high", "0.5x")), "'prediction' is not numeric in 2 rows"),
    _file("true_false", lambda c: parquet(c.frame().assign(prediction=True)), "true/false values, not numbers",
          ext="parquet"),
    _file("bytes_column", lambda c: parquet(pa.table({"id": c.frame()["id"],
                                                      "prediction": pa.array([b"\x80\x04K\x01."] * len(c.frame()))})),
          "'prediction' is not numeric", ext="parquet"),
    _file("nan_values", lambda c: csv(c.with_values(np.nan, "")), "2 rows have a missing (NaN) or infinite prediction"),
    _file("positive_inf", lambda c: csv(c.with_values(np.inf)), "1 row has a missing (NaN) or infinite prediction"),
    _file("negative_inf", lambda c: parquet(c.with_values(-np.inf).astype({"prediction": float})),
          "1 row has a missing (NaN) or infinite prediction", ext="parquet"),
    _file("above_one", lambda c: csv(c.with_values(1.5, 37)), "2 predictions are outside [0, 1] (min"),
    _file("below_zero", lambda c: csv(c.with_values(-0.001)), "1 prediction is outside [0, 1] (min -0.001"),
    _file("percentages", lambda c: csv(c.frame().assign(prediction=lambda f: f["prediction"] * 100)),
          "predictions are outside [0, 1]"),
    _file("constant_in_an_era", lambda c: csv(c.one_era().assign(prediction=0.5)),
          "constant: every prediction on the era's scored rows is 0.5", in_era=True),
    _file("incomplete_era", lambda c: csv(c.one_era().iloc[3:]), "incomplete: 3 of the era's", in_era=True),
    _file("duplicate_ids", lambda c: csv(pd.concat([c.frame(), c.frame().iloc[:3]])),
          "3 ids appear more than once in this file"),
    _file("unknown_ids", lambda c: csv(_shifted_ids(c)), "ids are not in the data, e.g. 'not-an-id-1'"),
    _file("truncated_parquet", lambda c: parquet(c.frame())[:-100], "unreadable as parquet", ext="parquet"),
    _file("corrupt_parquet", lambda c: b"PAR1" + os.urandom(2000) + b"PAR1", "unreadable as parquet", ext="parquet"),
    _file("parquet_named_csv", lambda c: parquet(c.frame()), "the file holds parquet data but is named .csv"),
    _file("ragged_csv", lambda c: csv(c.frame()) + b"n_extra,0.5,surprise\n", "unreadable as csv"),
    _file("semicolons", lambda c: csv(c.frame(), sep=";", decimal=","), "separated by semicolons, not commas"),
    _file("tabs", lambda c: csv(c.frame(), sep="\t"), "separated by tabs, not commas"),
    _file("utf16_text", lambda c: csv(c.frame()).decode().encode("utf-16"), "UTF-16 or UTF-32 text"),
    _file("gzip_bytes", lambda c: gzip.compress(csv(c.frame())), "the file is gzip-compressed"),
    _file("zip_bytes", lambda c: zipped("p.csv", csv(c.frame())), "the file is zip-compressed"),
    _file("gzip_name", lambda c: gzip.compress(csv(c.frame())), "the file is gzip-compressed", ext="csv.gz"),
    _file("html_page", lambda c: b"<html><body>Access denied</body></html>\n", "missing column(s) 'id', 'prediction'"),
    Kind("oversized", lambda c: sparse(c, "oversized.csv"), "bytes for a prediction file (max_submission_bytes); "
                                                            "it was not read"),
    Kind("dot_dot", lambda c: c.put("...csv", csv(c.frame())), "invalid model name (it contains '..')", model=".."),
    Kind("slash", lambda c: c.put("team/model/p.csv", csv(c.frame())), "nested too deep", model="team/model"),
    Kind("space", lambda c: c.put("my model.csv", csv(c.frame())), "invalid model name (it contains a space)",
         model="my model"),
    Kind("non_ascii", lambda c: c.put("modèle.csv", csv(c.frame())), "invalid model name (it contains non-ASCII",
         model="mod\\xe8le"),
    Kind("too_long", lambda c: c.put("m" * 65 + ".csv", csv(c.frame())), "invalid model name (it is 65 characters long)",
         model="m" * 65),
    Kind("dot_in_name", lambda c: c.put("v1.2.csv", csv(c.frame())), "invalid model name (it contains '.')",
         model="v1.2"),
    Kind("empty_folder", lambda c: empty_folder(c, "folder_model.csv"), "a folder where a prediction file should be",
         model="folder_model.csv"),
    Kind("folder_of_parts", lambda c: c.put("dask_model.parquet/part.0.parquet", parquet(c.frame())),
         "a folder where a prediction file should be", model="dask_model.parquet"),
    Kind("named_pipe", lambda c: fifo(c, "pipe_model.csv"), "not a regular file", model="pipe_model.csv"),
    Kind("pipe_in_folder", lambda c: fifo(c, "model_003/zz_pipe.csv"), "not a regular file", model="model_003"),
    Kind("dangling_link", lambda c: dangling_link(c, "gone_model.csv"), "not a regular file", model="gone_model.csv"),
    Kind("bad_reupload", lambda c: c.put("model_002/zz_reupload.csv", csv(c.with_values(2.0))),
         "1 prediction is outside [0, 1]", model="model_002"),
    Kind("undecodable_name", lambda c: c.put("model_006/zz_late\udcff.csv", csv(c.with_values(2.0, 3.0))),
         "2 predictions are outside [0, 1]", model="model_006"),  # the name's byte 0xff is not UTF-8
]


@dataclass(frozen=True)
class Tolerated:
    """A good model's file rewritten in a form the job accepts: its scores must not change."""

    name: str
    model_file: str
    encode: Callable[[pd.DataFrame], bytes]


TOLERATED: list[Tolerated] = [
    Tolerated("extra_columns", "model_001.csv",
              lambda f: csv(f.assign(era="x", data_type="validation", note="<b>ignored</b>"))),
    Tolerated("utf8_bom_crlf", "model_004.csv", lambda f: b"\xef\xbb\xbf" + csv(f, lineterminator="\r\n")),
    Tolerated("id_as_parquet_index", "model_005.parquet", lambda f: parquet(f.set_index("id"), index=True)),
]
