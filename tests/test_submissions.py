"""Submission validation per the contract: every rule, with the reason a person reads."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from numerai_dask.submissions import (
    EraIndex,
    FixedWidthIds,
    Predictions,
    Rejection,
    RepeatedIds,
    StoredColumns,
    SubmissionError,
    as_arrow_ids,
    merge_model_files,
    parse_prediction_file,
    split_by_era,
)


def csv(text: str) -> bytes:
    return text.encode()


def parquet(frame: pd.DataFrame, *, index: bool = False) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=index), buffer)
    return buffer.getvalue()


def predictions_csv(rows: dict[str, float]) -> bytes:
    return pd.DataFrame({"id": list(rows), "prediction": list(rows.values())}).to_csv(index=False).encode()


# ----------------------------------------------------------- one file


def test_csv_and_parquet_give_string_ids_and_float_predictions() -> None:
    from_csv = parse_prediction_file("a.csv", csv("id,prediction,extra\n007,0.25,x\nn2,1,y\n")).frame()
    assert from_csv["id"].tolist() == ["007", "n2"]  # leading zeros survive: ids are text
    assert from_csv["prediction"].dtype == np.float64 and from_csv["prediction"].tolist() == [0.25, 1.0]
    assert list(from_csv.columns) == ["id", "prediction"]
    from_parquet = parse_prediction_file("b.PARQUET", parquet(pd.DataFrame({"id": [1, 2], "prediction": [0, 1]}))).frame()
    assert from_parquet["id"].tolist() == ["1", "2"] and from_parquet["prediction"].tolist() == [0.0, 1.0]


def test_csv_ids_that_spell_missing_value_words_are_ids_and_only_empty_ones_are_missing() -> None:
    parsed = parse_prediction_file("w.csv", csv("id,prediction\nNA,0.1\nnull,0.2\nnan,0.3\nN/A,0.4\n")).frame()
    assert parsed["id"].tolist() == ["NA", "null", "nan", "N/A"]
    with pytest.raises(SubmissionError, match="1 row has no id"):
        parse_prediction_file("e.csv", csv("id,prediction\n,0.1\nn2,0.2\n"))
    with pytest.raises(SubmissionError, match="1 row has a missing"):
        parse_prediction_file("n.csv", csv("id,prediction\nn1,nan\nn2,0.2\n"))


def test_parquet_ids_may_be_the_index() -> None:
    frame = pd.DataFrame({"prediction": [0.1, 0.9]}, index=pd.Index(["n1", "n2"], name="id"))
    parsed = parse_prediction_file("p.parquet", parquet(frame, index=True)).frame()
    assert parsed["id"].tolist() == ["n1", "n2"] and parsed["prediction"].tolist() == [0.1, 0.9]


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("e.csv", b"", "the file is empty"),
        ("e.csv", b"  \n", "the file is empty"),
        ("e.parquet", b"", "the file is empty"),
        ("h.csv", b"id,prediction\n", "the file has a header but no rows"),
        ("g.parquet", b"PAR1 this is not parquet", "unreadable as parquet: "),
        ("g.csv", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "unreadable as csv: "),
        ("x.txt", b"id,prediction\nn1,0.5\n", "unsupported file type: expected a .csv or .parquet file"),
        ("m.csv", b"id,pred\nn1,0.5\n", "missing column(s) 'prediction'; the file has columns 'id', 'pred'"),
        ("m.csv", b"ID,Prediction\nn1,0.5\n", "missing column(s) 'id', 'prediction'; the file has columns 'ID', 'Prediction'"),
        ("d.csv", b"id,prediction\nn2,0.1\nn1,0.2\nn2,0.3\nn1,0.4\nn3,0.5\n",
         "2 ids appear more than once in this file, e.g. 'n1', 'n2'"),
        ("i.csv", b"id,prediction\n,0.1\nn1,0.2\n", "1 row has no id"),
        ("t.csv", b"id,prediction\nn1,abc\nn2,0.5\nn3,high\n", "'prediction' is not numeric in 2 rows, e.g. 'abc', 'high'"),
        ("b.parquet", parquet(pd.DataFrame({"id": ["n1"], "prediction": [True]})), "true/false values, not numbers"),
        ("n.csv", b"id,prediction\nn1,\nn2,inf\nn3,-inf\nn4,0.5\nn5,nan\n",
         "4 rows have a missing (NaN) or infinite prediction"),
        ("r.csv", b"id,prediction\nn1,-0.25\nn2,0.5\nn3,1.5\n", "2 predictions are outside [0, 1] (min -0.25, max 1.5)"),
    ],
)
def test_each_bad_file_is_refused_with_a_reason_a_person_understands(name: str, raw: bytes, reason: str) -> None:
    with pytest.raises(SubmissionError) as refused:
        parse_prediction_file(name, raw)
    assert reason in str(refused.value)
    # Within a model: the rejection names the model and the file; the model's other files still count.
    bad_file, good_file = f"submissions/alice/{name}", "submissions/alice/z.csv"
    predictions, rejections = merge_model_files("alice", [(bad_file, raw), (good_file, predictions_csv({"n9": 0.5}))])
    assert predictions.series().to_dict() == {"n9": 0.5}
    [rejection] = rejections
    assert (rejection.model, rejection.file, rejection.era) == ("alice", bad_file, None)
    assert reason in rejection.reason


def test_pickled_objects_in_a_parquet_file_are_never_loaded() -> None:
    """pandas metadata may name object columns; reading ignores it, so nothing is unpickled."""
    table = pa.table({"id": ["n1"], "prediction": pa.array([b"\x80\x04K\x01."], pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with pytest.raises(SubmissionError, match="not numeric"):
        parse_prediction_file("p.parquet", buffer.getvalue())


def test_a_column_stored_as_one_decoded_before_is_not_decoded_again() -> None:
    """Same ids stored alike: the second file shares the first one's decoded ids (the same Arrow buffer) and keeps
    its own predictions. Other ids, another codec or an evicted column are decoded, each with its own values."""
    ids = [f"n{i:015x}" for i in range(1000)]

    def stored(ids: list[str], value: float, codec: str = "snappy") -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "prediction": [value] * len(ids)}), buffer, compression=codec)
        return buffer.getvalue()

    cache = StoredColumns(capacity=1)

    def read(raw: bytes) -> pa.Table:
        return cache.read(pq.ParquetFile(pa.BufferReader(raw)), raw, "id")

    def id_buffer(table: pa.Table) -> int:
        return table.column("id").chunk(0).buffers()[2].address

    first, again = read(stored(ids, 0.25)), read(stored(ids, 0.75))
    assert id_buffer(again) == id_buffer(first) and len(cache) == 1
    assert again.column("id").to_pylist() == ids and again.column("prediction").to_pylist() == [0.75] * 1000
    assert again.schema.names == ["id", "prediction"]
    other = read(stored([*ids[:-1], "n" + "f" * 15], 0.5))
    assert other.column("id").to_pylist()[-1] == "n" + "f" * 15 and id_buffer(other) != id_buffer(first)
    gzip = read(stored(ids, 0.5, "gzip"))
    assert gzip.column("id").to_pylist() == ids and id_buffer(gzip) != id_buffer(first)
    assert id_buffer(read(stored(ids, 0.5))) != id_buffer(first) and len(cache) == 1  # evicted by the gzip file

    cache = StoredColumns(capacity=2)  # two columns of one layout but other bytes are both kept
    shifted = [*ids[1:], ids[0]]
    a, b = read(stored(ids, 0.1)), read(stored(shifted, 0.2))
    assert id_buffer(read(stored(ids, 0.3))) == id_buffer(a) and id_buffer(read(stored(shifted, 0.4))) == id_buffer(b)
    assert read(stored(shifted, 0.4)).column("id").to_pylist() == shifted and len(cache) == 2

    cache = StoredColumns(capacity=0)  # keeps nothing
    kept, again = read(stored(ids, 0.1)), read(stored(ids, 0.2))
    assert id_buffer(again) != id_buffer(kept) and len(cache) == 0


def test_a_cached_id_column_is_found_by_its_stored_column_after_nested_ones() -> None:
    """A struct column stores one column per field: the id column's stored bytes are found by its own path, not
    by its position among the top-level columns (which pointed at the struct's first field, alike in both files,
    and gave the second file the first one's ids)."""
    rng = np.random.default_rng(6)
    ids = [f"n{i:015x}" for i in range(500)]

    def stored(order: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"meta": [{"a": 0, "b": 0}] * len(ids), "id": [ids[i] for i in order],
                                 "prediction": rng.random(len(ids))}), buffer)
        return buffer.getvalue()

    cache = StoredColumns(capacity=2)
    for order in (rng.permutation(len(ids)), rng.permutation(len(ids)), np.arange(len(ids))):
        raw = stored(order)
        table = cache.read(pq.ParquetFile(pa.BufferReader(raw)), raw, "id")
        assert table.column("id").to_pylist() == [ids[i] for i in order]
        assert table.schema.names == ["meta", "id", "prediction"]
    again = stored(np.arange(len(ids)))  # stored as the last one: its ids are shared, not decoded again
    shared = cache.read(pq.ParquetFile(pa.BufferReader(again)), again, "id").column("id")
    assert shared.to_pylist() == ids and shared.chunk(0).buffers()[2].address == table.column("id").chunk(0).buffers()[2].address


# -------------------------------------------------------- one model


def test_a_later_file_replaces_earlier_rows_for_the_same_ids() -> None:
    predictions, rejections = merge_model_files("alice", [
        ("submissions/alice.csv", predictions_csv({"n1": 0.1, "n2": 0.2, "n3": 0.3})),
        ("submissions/alice/1.csv", predictions_csv({"n3": 0.9, "n4": 0.4})),
        ("submissions/alice/2.parquet", parquet(pd.DataFrame({"id": ["n1"], "prediction": [0.7]}))),
    ])
    assert rejections == []
    assert predictions.series().to_dict() == {"n1": 0.7, "n2": 0.2, "n3": 0.9, "n4": 0.4}
    assert predictions.series().index.is_unique and predictions.values.dtype == np.float64


def test_a_bad_file_is_rejected_alone_and_the_others_still_apply() -> None:
    predictions, rejections = merge_model_files("bob", [
        ("submissions/bob/1.csv", predictions_csv({"n1": 0.1, "n2": 0.2})),
        ("submissions/bob/2.csv", predictions_csv({"n1": 7.0})),
    ])
    assert predictions.series().to_dict() == {"n1": 0.1, "n2": 0.2}
    assert rejections == [Rejection("bob", "submissions/bob/2.csv", None,
                                     "1 prediction is outside [0, 1] (min 7, max 7)")]


def test_a_read_error_becomes_unreadable_without_leaking_secrets() -> None:
    error = PermissionError("denied: https://AKIDEXAMPLE:sup3rsecret@s3.example.com/b/k.csv?X-Amz-Signature=deadbeef")
    predictions, rejections = merge_model_files("carol", [("submissions/carol.csv", error)])
    assert predictions is None
    [rejection] = rejections
    assert (rejection.model, rejection.file, rejection.era) == ("carol", "submissions/carol.csv", None)
    assert rejection.reason.startswith("unreadable: PermissionError: denied: https://s3.example.com/b/k.csv")
    for secret in ("sup3rsecret", "AKIDEXAMPLE", "deadbeef", "Signature"):
        assert secret not in rejection.reason


def test_no_surviving_file_means_no_predictions() -> None:
    predictions, rejections = merge_model_files("dan", [("submissions/dan/a.csv", b""), ("submissions/dan/b.csv", b"x\n1\n")])
    assert predictions is None
    assert [(r.file, r.reason) for r in rejections] == [
        ("submissions/dan/a.csv", "the file is empty"),
        ("submissions/dan/b.csv", "missing column(s) 'id', 'prediction'; the file has columns 'x'"),
    ]


# --------------------------------------------------------- era index


def tournament(eras: list, sizes: list[int], unresolved: set = frozenset(), seed: int = 0) -> pd.DataFrame:
    """id, era, target rows (shuffled); eras in ``unresolved`` have an all-NaN target, others one NaN row."""
    rng = np.random.default_rng(seed)
    frames = []
    for era, size in zip(eras, sizes):
        target = rng.random(size)
        target[0 if era not in unresolved else slice(None)] = np.nan
        ids = [f"{era}-{i:03d}" for i in rng.permutation(size)]
        frames.append(pd.DataFrame({"id": ids, "era": era, "target": target}))
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed, ignore_index=True)


def test_era_index_sorts_ids_as_python_sorts_text() -> None:
    """Any text, any length: each era's ids in the order of Python's ``sorted`` (code points), rows kept with them."""
    rng = np.random.default_rng(8)
    ids = sorted({"".join(rng.choice(list("aZ0_-é√日\U0001f600"), rng.integers(1, 6))) for _ in range(400)})
    data = pd.DataFrame({"id": rng.permutation(ids), "era": rng.choice(["b", "a", "c"], len(ids)),
                         "target": rng.random(len(ids))}).astype({"id": object})
    index = EraIndex.from_frame(data)
    assert index.eras == ["a", "b", "c"]
    for era in index.eras:
        assert index.ids_of(era).tolist() == sorted(data.loc[data["era"] == era, "id"])
    assert data["id"].to_numpy()[np.argsort(index.data_rows)].tolist() == index.ids.to_pylist()


@pytest.mark.parametrize("eras", [["0001", "0002", "0003"], [575, 576, 577]], ids=["str-eras", "int-eras"])
def test_era_index_knows_each_eras_sorted_ids_and_resolved_rows(eras: list) -> None:
    data = tournament(eras, [5, 4, 3], unresolved={eras[2]})
    index = EraIndex.from_frame(data)
    assert index.eras == eras
    assert all(type(e) is type(eras[0]) for e in index.eras)  # values as in the data (python scalars)
    assert index.resolved_eras() == eras[:2] and index.unresolved_eras() == [eras[2]]
    assert [index.era_label(e) for e in index.eras] == [str(e) for e in eras]
    for era in eras:
        rows = data[data["era"] == era].sort_values("id")
        assert index.ids_of(era).tolist() == rows["id"].tolist()
        assert index.resolved_of(era).tolist() == rows["target"].notna().tolist()
    numbers, positions = index.locate(pd.Index([f"{eras[1]}-002", "nope", f"{eras[0]}-000"]))
    assert numbers.tolist() == [1, -1, 0] and positions.tolist() == [2, -1, 0]
    all_numbers, all_positions = index.locate(data["id"])
    assert [index.ids_of(index.eras[n])[p] for n, p in zip(all_numbers, all_positions)] == data["id"].tolist()


def test_a_few_ids_are_located_like_many() -> None:
    """Lookups of a few ids go through a kept hash table, of many through Arrow: the same answers."""
    index = EraIndex.from_frame(tournament(["0001", "0002"], [60, 50]))
    few = ["0002-007", "nope", "0001-059"]
    many = [*few, *np.concatenate([index.ids_of(e) for e in index.eras]).tolist()]
    numbers, positions = index.locate(pd.Index(few))
    assert numbers.tolist() == [1, -1, 0] and positions.tolist() == [7, -1, 59]
    many_numbers, many_positions = index.locate(pd.Index(many))
    assert many_numbers[:3].tolist() == numbers.tolist() and many_positions[:3].tolist() == positions.tolist()


@pytest.mark.parametrize("width", [5, 8, 16, 17])
def test_ids_of_one_length_are_found_by_numpy_where_arrow_finds_them(width: int) -> None:
    """Ids of one length (Numerai's have 16 characters) are looked up in a sorted table of their hashed bytes:
    the rows Arrow's hash lookup gives, unknown ids of that length included. Other lengths are not its to answer."""
    rng = np.random.default_rng(width)
    alphabet = np.array(list("0123456789abcdef"))

    def random_ids(n: int) -> list[str]:
        return ["".join(chars) for chars in rng.choice(alphabet, size=(n, width))]

    ids = sorted(set(random_ids(3000)))
    index = EraIndex.from_frame(pd.DataFrame({"id": ids, "era": rng.integers(0, 4, len(ids)),
                                              "target": rng.random(len(ids))}))
    unknown = sorted(set(random_ids(500)) - set(ids))
    query = as_arrow_ids(rng.permutation([*rng.choice(ids, 1000, replace=False), *unknown]).tolist())
    expected = pc.index_in(query, value_set=index.ids).fill_null(-1).to_numpy()
    table = FixedWidthIds.of(index.ids)
    assert table is not None and (expected == -1).sum() == len(unknown)
    assert table.rows_of(query).tolist() == expected.tolist() == index.rows_of(query).tolist()
    assert table.rows_of(as_arrow_ids([ids[0] + "\0", ids[0][:-1]])) is None  # the same words once padded, or not
    assert FixedWidthIds.of(as_arrow_ids(["a", "bb"])) is None


def test_repeated_ids_are_found_among_the_data_rows_as_without_them() -> None:
    """Against the data's index a file's repeats are counted among its rows; ids outside the data still count."""
    index = EraIndex.from_frame(tournament(["0001"], [20]))
    known = index.ids_of("0001").tolist()
    for ids in ([known[3], known[5], known[3]], ["nope-001", known[1], "nope-001"], ["nope", known[1], "nope"]):
        raw = csv("id,prediction\n" + "".join(f"{i},0.5\n" for i in ids))
        with pytest.raises(SubmissionError) as without_index:
            parse_prediction_file("r.csv", raw)
        with pytest.raises(SubmissionError) as with_index:
            parse_prediction_file("r.csv", raw, index)
        assert str(with_index.value) == str(without_index.value) == (
            f"1 id appears more than once in this file, e.g. '{ids[0]}'")
    parsed = parse_prediction_file("r.csv", csv(f"id,prediction\nnope-001,0.5\n{known[2]},0.5\n"), index)
    assert parsed.rows.tolist() == [-1, index.rows_of(as_arrow_ids([known[2]]))[0]]


def test_a_reupload_applies_alike_through_data_rows_and_through_ids() -> None:
    index = EraIndex.from_frame(tournament(["0001", "0002"], [30, 30]))
    ids = np.random.default_rng(1).permutation(index.ids.to_pylist())
    files = [("m/a.csv", predictions_csv(dict.fromkeys(ids[:40], 0.25))),
             ("m/b.csv", predictions_csv(dict.fromkeys(ids[30:50], 0.75)))]
    by_row, _ = merge_model_files("m", files, index)
    by_id, _ = merge_model_files("m", files)
    assert by_id.rows is None and by_row.series().to_dict() == by_id.series().to_dict()
    assert by_row.ids.equals(by_id.ids) and by_row.rows.tolist() == index.rows_of(by_row.ids).tolist()


def test_an_era_index_travels_without_its_derived_state() -> None:
    """Workers get ids, starts, resolved and data order; Arrow ids, usual ids and hash tables are rebuilt there."""
    index = EraIndex.from_frame(tournament(["0001", "0002"], [60, 50]))
    index.locate(pd.Index(["0002-007"]))  # builds the kept hash table
    state = index.__getstate__()
    assert sorted(state) == ["data_rows", "eras", "ids", "resolved", "starts"]
    copy = pickle.loads(pickle.dumps(index))
    assert copy.usual_ids.equals(index.usual_ids) and copy.resolved_eras() == index.resolved_eras()
    ids = pd.Index(np.concatenate([index.ids_of(e) for e in index.eras])[::-1])
    assert [a.tolist() for a in copy.locate(ids)] == [a.tolist() for a in index.locate(ids)]


def test_duplicate_and_missing_ids_in_the_data_are_refused() -> None:
    data = pd.DataFrame({"id": ["b", "a", "a", "b", "c"], "era": ["1", "2", "1", "2", "2"], "target": [0.5] * 5})
    with pytest.raises(RepeatedIds, match="2 ids appear more than once in the data, e.g. 'a', 'b'") as raised:
        EraIndex.from_frame(data)
    assert raised.value.repeated == ["a", "b"]
    copy = pickle.loads(pickle.dumps(raised.value))
    assert copy.repeated == ["a", "b"] and str(copy) == str(raised.value)
    missing = pd.DataFrame({"id": pd.array(["a", None, None, "b"], dtype="string[pyarrow]"), "era": ["1"] * 4,
                            "target": [0.5] * 4})
    with pytest.raises(ValueError, match="2 rows of the data have no id"):
        EraIndex.from_frame(missing)


# ------------------------------------------------------- split by era


@pytest.fixture
def index() -> EraIndex:
    """Eras 0001 (6 ids), 0002 (5 ids), 0003 (4 ids, unresolved); one unresolved row in each resolved era."""
    return EraIndex.from_frame(tournament(["0001", "0002", "0003"], [6, 5, 4], unresolved={"0003"}))


def full_predictions(index: EraIndex, seed: int = 1) -> pd.Series:
    ids = np.concatenate([index.ids_of(e) for e in index.eras])
    return pd.Series(np.random.default_rng(seed).random(len(ids)), index=pd.Index(ids, name="id")).sort_index()


def test_each_resolved_era_gets_the_predictions_of_its_resolved_rows_in_id_order(index: EraIndex) -> None:
    predictions = full_predictions(index)
    by_era, rejections = split_by_era("alice", Predictions.from_series(predictions), index)
    assert rejections == []
    assert list(by_era) == ["0001", "0002"]  # the unresolved era is skipped silently
    for era, values in by_era.items():
        scored_ids = index.ids_of(era)[index.resolved_of(era)]
        np.testing.assert_array_equal(values, predictions.loc[scored_ids].to_numpy())
        assert values.dtype == np.float64


def test_int_eras_are_keys_as_in_the_data() -> None:
    index = EraIndex.from_frame(tournament([575, 576], [4, 4]))
    by_era, rejections = split_by_era("alice", Predictions.from_series(full_predictions(index)), index)
    assert rejections == [] and list(by_era) == [575, 576]


def test_ids_unknown_to_the_data_reject_the_whole_model(index: EraIndex) -> None:
    predictions = pd.concat([full_predictions(index), pd.Series({"zz-9": 0.5, "zz-1": 0.5, "zz-5": 0.5})])
    by_era, rejections = split_by_era("bob", Predictions.from_series(predictions.sort_index()), index,
                                      files=["submissions/bob.csv"])
    assert by_era == {}
    [rejection] = rejections
    assert (rejection.model, rejection.file, rejection.era) == ("bob", "submissions/bob.csv", None)
    assert rejection.reason.startswith("3 of 18 ids are not in the data, e.g. 'zz-1', 'zz-5'")


def test_an_incomplete_era_is_rejected_for_that_era_only(index: EraIndex) -> None:
    predictions = full_predictions(index)
    missing = index.ids_of("0002")[:2]
    by_era, rejections = split_by_era("carol", Predictions.from_series(predictions.drop(missing)), index,
                                      files=["submissions/carol/1.csv", "submissions/carol/2.csv"])
    assert list(by_era) == ["0001"]
    assert rejections == [Rejection("carol", "submissions/carol/1.csv, submissions/carol/2.csv", "0002",
                                    "incomplete: 2 of the era's 5 ids have no prediction")]


def test_an_era_the_model_did_not_predict_at_all_is_not_scored_nor_rejected(index: EraIndex) -> None:
    predictions = full_predictions(index)
    only_first = predictions[predictions.index.isin(index.ids_of("0001"))]
    by_era, rejections = split_by_era("dora", Predictions.from_series(only_first), index)
    assert list(by_era) == ["0001"] and rejections == []


def test_constant_predictions_on_an_eras_scored_rows_are_rejected(index: EraIndex) -> None:
    predictions = full_predictions(index)
    era_ids = index.ids_of("0001")
    predictions[era_ids[index.resolved_of("0001")]] = 0.5
    predictions[era_ids[~index.resolved_of("0001")]] = 0.9  # unscored rows do not make it vary
    by_era, rejections = split_by_era("erin", Predictions.from_series(predictions), index)
    assert list(by_era) == ["0002"]
    assert rejections == [Rejection("erin", "", "0001", "constant: every prediction on the era's scored rows is 0.5")]


def test_problems_in_unresolved_eras_are_skipped_silently(index: EraIndex) -> None:
    predictions = full_predictions(index)
    unresolved_ids = index.ids_of("0003")
    predictions[unresolved_ids] = 0.5  # constant …
    incomplete = Predictions.from_series(predictions.drop(unresolved_ids[:1]))  # … and incomplete
    by_era, rejections = split_by_era("fay", incomplete, index)
    assert list(by_era) == ["0001", "0002"] and rejections == []


def test_a_ragged_csv_is_unreadable_and_says_where() -> None:
    with pytest.raises(SubmissionError, match="unreadable as csv: .*Expected 2 columns, got 3"):
        parse_prediction_file("r.csv", b"id,prediction\nn1,0.5\nn2,0.5,oops\n")
