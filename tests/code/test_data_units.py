"""Unit tests of kosent.text and kosent.data on small files written to tmp_path (no real data needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
import unicodedata
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kosent import data
from kosent.config import DataConfig
from kosent.data.selection import KeyWindow, UnseenWindow, text_key
from kosent.text import normalize


def col(ds, name: str) -> list:
    """One column of a datasets.Dataset as a list (to_dict is Arrow-fast; iterating a Column is not)."""
    return ds.to_dict()[name]


# ---------------------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ㅋㅋㅋㅋㅋ", "ㅋㅋㅋ"),
        ("ㅋㅋㅋ", "ㅋㅋㅋ"),
        ("재밌다!!!!!!! ㅎㅎㅎㅎ", "재밌다!!! ㅎㅎㅎ"),
        ("  너무\t\t좋아요 \n 최고\u00a0\u3000다  ", "너무 좋아요 최고 다"),
        ("......", "..."),
        ("", ""),
        (" \t\n ", ""),
        ("aaaa    bbbb", "aaa bbb"),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalize_composes_hangul():
    decomposed = unicodedata.normalize("NFD", "한국어 영화")
    assert decomposed != "한국어 영화"
    assert normalize(decomposed) == "한국어 영화"


def test_normalize_is_idempotent_and_refuses_non_strings():
    for text in ["ㅋㅋㅋㅋ  ㅋㅋㅋㅋ", "a\u0301\u0301\u0301\u0301", "!!!! !!!!", " x "]:
        assert normalize(normalize(text)) == normalize(text)
    with pytest.raises(TypeError):
        normalize(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- helpers


def write(path, content: str | bytes):
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


NSMC_HEADER = "id\tdocument\tlabel\n"


# ---------------------------------------------------------------------------------------- NSMC format


def test_read_nsmc_counts_every_bad_row_with_its_line(tmp_path):
    path = write(
        tmp_path / "ratings_bad.txt",
        NSMC_HEADER.encode()
        + b"1\tgood movie\t1\n"  # line 2
        + b"2\ttoo\tmany\t0\n"  # line 3: wrong field count
        + b"3\tbad label\t7\n"  # line 4: unknown label
        + b"4\t\xff\xfe broken\t1\n"  # line 5: not UTF-8
        + b"5\t   \t0\n"  # line 6: empty text
        + b"\n"  # line 7: blank
        + b'6\t"quoted" text\t0\n',  # line 8: kept as written
    )
    table = data.read_nsmc(path)
    rep = table.report
    assert table.texts == ["good movie", '"quoted" text'] and table.labels == [1, 0]
    assert table.extra == {"id": ["1", "6"]}
    assert rep.skipped == {
        "wrong_field_count": 1,
        "unknown_label": 1,
        "undecodable_bytes": 1,
        "empty_text": 1,
        "blank_line": 1,
    }
    assert rep.examples == {
        "wrong_field_count": [3],
        "unknown_label": [4],
        "undecodable_bytes": [5],
        "empty_text": [6],
        "blank_line": [7],
    }
    assert rep.rows_read == 7 == rep.rows_kept + sum(rep.skipped.values())
    assert table.raw_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "undecodable_bytes: 1 (lines 5)" in rep.summary()


def test_read_nsmc_crlf_and_header_problems(tmp_path):
    crlf = write(tmp_path / "ratings_crlf.txt", "id\tdocument\tlabel\r\n1\t좋아\t1\r\n2\t싫어\t0\r\n")
    assert data.read_nsmc(crlf).labels == [1, 0]
    wrong = write(tmp_path / "ratings_wrong.txt", "id\ttext\tlabel\n1\tx\t1\n")
    with pytest.raises(
        data.DataError, match=r"ratings_wrong\.txt: no column 'document'; columns are: id, text, label"
    ):
        data.read_nsmc(wrong)
    only_header = write(tmp_path / "ratings_header.txt", NSMC_HEADER)
    with pytest.raises(data.DataError, match=r"ratings_header\.txt: no usable rows.*no data rows"):
        data.read_nsmc(only_header)


def test_empty_and_missing_files(tmp_path):
    for name in ("empty.csv", "ratings_empty.txt", "empty.jsonl", "kmhas_empty.txt"):
        path = write(tmp_path / name, "")
        with pytest.raises(data.DataError, match=rf"{name}: file is empty"):
            data.read_path(path)
    with pytest.raises(data.DataError, match=r"nothere\.csv: file not found"):
        data.read_table(tmp_path / "nothere.csv")
    with pytest.raises(data.DataError, match=r"unsupported file type '\.xlsx'"):
        data.read_table(write(tmp_path / "a.xlsx", "x"))


def test_all_rows_bad_is_an_error_naming_file_lines_and_values(tmp_path):
    path = write(tmp_path / "words.csv", "text,label\n좋아,pos\n싫어,neg\n")
    with pytest.raises(data.DataError) as err:
        data.read_table(path)
    msg = str(err.value)
    assert "words.csv: no usable rows" in msg and "unknown_label 2 (lines 2, 3)" in msg
    assert "'pos'" in msg and "label_map" in msg


def test_cp949_file_gets_an_encoding_hint(tmp_path):
    body = "text\tlabel\n" + "".join(f"정말 재미있는 영화 {i}\t1\n" for i in range(4))
    path = write(tmp_path / "cp949.tsv", b"text\tlabel\n" + body.split("\n", 1)[1].encode("cp949"))
    with pytest.raises(data.DataError) as err:
        data.read_table(path)
    msg = str(err.value)
    assert "cp949.tsv" in msg and "undecodable_bytes 4 (lines 2, 3, 4, 5)" in msg and "iconv" in msg


# ---------------------------------------------------------------------------------------- K-MHaS format


def test_read_kmhas_labels_and_quoting(tmp_path):
    path = write(
        tmp_path / "kmhas_small.txt",
        "document\tlabel\n"
        "좋은 기사네요\t8\n"  # 2: not hate
        '"따옴표 ""안"" 댓글"\t1,3\n'  # 3: CSV-quoted, hate
        '"닫히지 않은 따옴표\t8\n'  # 4: unbalanced quote
        "모순\t8,1\n"  # 5: 8 with a hate id -> unknown
        "없는 번호\t9\n"  # 6: unknown id
        "빈 라벨\t\n"  # 7: unknown
        "탭\t이\t많음\n"  # 8: wrong field count
        "욕설\t 0,5 \n",  # 9: hate, spaces tolerated
    )
    table = data.read_kmhas(path)
    assert table.texts == ["좋은 기사네요", '따옴표 "안" 댓글', "욕설"]
    assert table.labels == [1, 0, 0]
    assert table.label_names == ["hate", "not_hate"]
    assert table.extra["kmhas_labels"] == ["8", "1,3", " 0,5 "]
    assert table.report.skipped == {"unbalanced_quote": 1, "unknown_label": 3, "wrong_field_count": 1}
    assert table.report.examples["unknown_label"] == [5, 6, 7]
    assert table.report.examples["unbalanced_quote"] == [4]


# ---------------------------------------------------------------------------------------- read_table


def test_csv_with_label_map_multiline_and_extra_columns(tmp_path):
    path = write(
        tmp_path / "reviews.csv",
        'text,label,user\n"여러 줄\n리뷰",pos,a\n"쉼표, 포함",neg,b\n별로,maybe,c\n짧음,pos\n좋다,pos,d\n',
    )
    table = data.read_table(path, label_map={"neg": 0, "pos": 1})
    assert table.texts == ["여러 줄 리뷰", "쉼표, 포함", "좋다"]
    assert table.labels == [1, 0, 1]
    assert table.label_names == ["neg", "pos"]
    assert table.extra == {"user": ["a", "b", "d"]}
    assert table.report.examples == {"unknown_label": [5], "wrong_field_count": [6]}  # line of the record


def test_tsv_and_txt_with_named_columns(tmp_path):
    content = "review\tscore\n좋다\t1\n나쁘다\t0\n"
    for name in ("x.tsv", "x.txt"):
        table = data.read_table(write(tmp_path / name, content), text_column="review", label_column="score")
        assert (table.texts, table.labels, table.label_names) == (
            ["좋다", "나쁘다"],
            [1, 0],
            ["negative", "positive"],
        )


def test_missing_column_names_file_and_columns(tmp_path):
    path = write(tmp_path / "x.csv", "a,b\n1,2\n")
    with pytest.raises(data.DataError, match=r"x\.csv: no column 'text'; columns are: a, b"):
        data.read_table(path)
    path = write(tmp_path / "y.tsv", "document\tlabel\n좋다\t1\n")
    with pytest.raises(data.DataError, match=r"y\.tsv: no column 'text'.*text_column='document'"):
        data.read_table(path)
    path = write(tmp_path / "z.csv", "text,sentiment\n좋다,1\n")
    with pytest.raises(data.DataError, match=r"z\.csv: no column 'label'; columns are: text, sentiment"):
        data.read_table(path)


def test_jsonl_and_json_array(tmp_path):
    lines = [
        {"text": "좋아요", "label": "pos", "id": 1},
        {"text": "싫어요", "label": "neg", "id": 2},
        "not an object",
        {"label": "pos"},
        {"text": None, "label": "neg"},
    ]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{broken json\n", encoding="utf-8"
    )
    table = data.read_table(jsonl, label_map={"neg": 0, "pos": 1})
    assert (table.texts, table.labels, table.extra) == (["좋아요", "싫어요"], [1, 0], {"id": [1, 2]})
    assert table.report.examples == {"invalid_json": [3, 6], "missing_field": [4], "empty_text": [5]}
    array = tmp_path / "x.json"
    array.write_text(json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}, 5]), encoding="utf-8")
    table = data.read_table(array)
    assert table.labels == [1, 0] and table.report.examples == {"invalid_json": [3]}
    assert table.report.unit == "row" and "invalid_json: 1 (rows 3)" in table.report.summary()


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])
def test_a_json_array_streams_element_by_element_across_chunk_boundaries(tmp_path, monkeypatch, chunk_bytes):
    """One line of JSON (as json.dump writes it) read a few bytes at a time: elements, strings, numbers and
    multi-byte Hangul split at every boundary still parse; a field first seen late becomes a column."""
    from kosent.data import lines as lines_module

    monkeypatch.setattr(lines_module, "CHUNK_BYTES", chunk_bytes)
    rows = [{"text": f"정말 좋은 영화 {i}" + "번째" * (i % 5), "label": i % 2, "score": 12345.5 * i} for i in range(40)]
    rows[30]["late"] = "늦게"
    path = tmp_path / "one-line.json"
    path.write_bytes(b"\xef\xbb\xbf \n" + json.dumps(rows, ensure_ascii=False).encode("utf-8"))
    table = data.read_table(path)
    assert table.texts == [r["text"] for r in rows] and table.labels == [r["label"] for r in rows]
    assert table.extra["score"] == [r["score"] for r in rows]
    assert table.extra["late"] == [None] * 30 + ["늦게"] + [None] * 9
    assert table.raw_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.read_table(path).report.rows_kept == 40  # read again: the same file, the same rows


@pytest.mark.parametrize(("body", "problem"), [
    ('[{"text": "a", "label": 1}, {"text": "b", "label": 0}', r"after element 2, expected , or \] but found "
                                                             r"'the end of the file' \(line 1\)"),
    ('[{"text": "a", "label": 1},\n {"text": "b" "label": 0}]', r"element 2: Expecting ',' delimiter \(line 2\)"),
    ('[{"text": "a", "label": 1},\n\n]', r"element 2: Expecting value \(line 3\)"),
    ('[{"text": "a", "label": 1}] [', r"more data after its closing \] \(line 1\)"),
    ('[{"text": "a", "label": 1} {"text": "b", "label": 0}]', r"after element 1, expected , or \] but found '\{'"),
])
def test_a_broken_json_array_names_the_element_and_line(tmp_path, monkeypatch, body, problem):
    from kosent.data import lines as lines_module

    monkeypatch.setattr(lines_module, "CHUNK_BYTES", 5)
    path = tmp_path / "broken.json"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(data.DataError, match=r"broken\.json: not a valid JSON array: " + problem):
        data.read_table(path)


def test_parquet_with_label_map(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(
        pa.table(
            {"review": ["좋아요", "별로", None, "음"], "sent": ["pos", "neg", "pos", "??"], "n": [1, 2, 3, 4]}
        ),
        path,
    )
    table = data.read_table(path, text_column="review", label_column="sent", label_map={"neg": 0, "pos": 1})
    assert (table.texts, table.labels, table.extra) == (["좋아요", "별로"], [1, 0], {"n": [1, 2]})
    assert table.report.examples == {"empty_text": [3], "unknown_label": [4]}
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, 1, 2]}), ints)
    table = data.read_table(ints)
    assert table.labels == [0, 1] and table.report.skipped == {"unknown_label": 1}
    with pytest.raises(data.DataError, match=r"x\.parquet: no column 'text'; columns are: review, sent, n"):
        data.read_table(path)


def test_lines_read_in_small_chunks_are_the_files_lines(tmp_path, monkeypatch):
    """Chunk edges fall inside CRLF pairs and multi-byte Korean characters; the lines, line numbers and hash
    are those of the whole file."""
    from kosent.data import lines as lines_mod

    content = (NSMC_HEADER.replace("\n", "\r\n").encode() + "1\t정말 재밌는 영화\t1\r\n".encode()
               + b"2\t\xff broken\t0\n" + "\n3\t배우 연기가 별로\t0".encode())  # a blank line; no final LF
    path = write(tmp_path / "ratings_chunks.txt", content)
    whole = data.read_nsmc(path)
    for chunk in (1, 2, 3, 5, 7, 64):
        monkeypatch.setattr(lines_mod, "CHUNK_BYTES", chunk)
        assert list(lines_mod.LineReader(path)) == [line.removesuffix(b"\r") for line in content.split(b"\n")]
        table = data.read_nsmc(path)
        assert (table.texts, table.labels, table.report.examples) == (whole.texts, whole.labels, whole.report.examples)
        assert table.raw_sha256 == hashlib.sha256(content).hexdigest()
    assert whole.texts == ["정말 재밌는 영화", "배우 연기가 별로"]
    assert whole.report.examples == {"undecodable_bytes": [3], "blank_line": [4]}
    reader = lines_mod.LineReader(path)
    next(iter(reader))  # a reader that stops early still hashes the whole file
    assert reader.sha256 == hashlib.sha256(content).hexdigest()


def test_parquet_is_read_in_batches_with_row_numbers_across_them(tmp_path, monkeypatch):
    from kosent.data import readers

    path = tmp_path / "many.parquet"
    texts = [f"리뷰 {i}" if i % 4 else "" for i in range(1, 11)]  # rows 4 and 8 are empty
    pq.write_table(pa.table({"text": texts, "label": [i % 2 for i in range(1, 11)]}), path, row_group_size=4)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 3)
    table = data.read_table(path)
    assert table.report.examples == {"empty_text": [4, 8]} and len(table) == 8
    assert table.texts == [t for t in texts if t] and table.raw_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    write(tmp_path / "empty.parquet", b"")
    with pytest.raises(data.DataError, match=r"empty\.parquet: file is empty"):
        data.read_table(tmp_path / "empty.parquet")
    write(tmp_path / "broken.parquet", b"PAR1 not really")
    with pytest.raises(data.DataError, match=r"broken\.parquet: cannot read as parquet"):
        data.read_table(tmp_path / "broken.parquet")


def test_label_map_validation(tmp_path):
    path = write(tmp_path / "x.csv", "text,label\na,1\n")
    with pytest.raises(data.DataError, match="class ids 0..n-1"):
        data.read_table(path, label_map={"neg": 0, "pos": 2})
    with pytest.raises(data.DataError, match="must be an integer"):
        data.read_table(path, label_map={"neg": "0", "pos": 1})
    table = data.read_table(path, label_map={"0": 0, "1": 1, "yes": 1})
    assert table.label_names == ["0", "1"] and table.labels == [1]


# ---------------------------------------------------------------------------------------- read_hf


def test_read_hf_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(data.DataError) as err:
        data.read_hf("e9t/nsmc")
    assert time.perf_counter() - start < 60
    msg = str(err.value)
    assert "hf:e9t/nsmc" in msg and "hub is unreachable" in msg and "local file" in msg
    assert err.value.__cause__ is not None  # the underlying exception is kept


def test_read_hf_unreachable_host_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(data.DataError, match="hub is unreachable.*local file"):
        data.read_hf("e9t/nsmc")
    assert time.perf_counter() - start < 10


def test_load_table_hf_source(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError, match=r"hf:some/dataset \(split 'test'\)"):
        data.load_table(DataConfig(source="hf:some/dataset:test"))


# ---------------------------------------------------------------------------------------- read_url


def nsmc_file(tmp_path, name="ratings_small.txt"):
    return write(tmp_path / name, NSMC_HEADER + '1\t"인용" 좋다\t1\n2\t별로\t0\n')


def test_read_url_verifies_sha256_and_caches(tmp_path):
    (tmp_path / "src").mkdir()
    src = nsmc_file(tmp_path / "src")
    url = src.as_uri()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    table = data.read_url(url, sha256=sha, cache_dir=cache)
    assert table.texts == ['"인용" 좋다', "별로"]  # ratings_*.txt -> NSMC reader, quoting off
    assert table.report.source == url and table.raw_sha256 == sha
    assert (cache / sha / "ratings_small.txt").read_bytes() == src.read_bytes()
    src.unlink()  # a cache hit must not download
    again = data.read_url(url, sha256=sha.upper(), cache_dir=cache)
    assert again.texts == table.texts


def test_read_url_sha256_mismatch_shows_both_hashes(tmp_path):
    src = nsmc_file(tmp_path)
    wrong = "0" * 64
    actual = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(data.DataError) as err:
        data.read_url(src.as_uri(), sha256=wrong, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert wrong in msg and actual in msg and src.as_uri() in msg
    assert not list((tmp_path / "cache").rglob("ratings_small.txt"))  # nothing bad left in the cache
    with pytest.raises(data.DataError, match="64 hex digits"):
        data.read_url(src.as_uri(), sha256="abc", cache_dir=tmp_path / "cache")


def test_read_url_default_cache_and_dispatch(tmp_path, monkeypatch):
    monkeypatch.setenv("KOSENT_HOME", str(tmp_path / "home"))
    kmhas = write(tmp_path / "kmhas_x.txt", 'document\tlabel\n"좋다"\t8\n나쁨\t2\n')
    table = data.read_url(kmhas.as_uri())
    assert table.labels == [1, 0] and table.extra["kmhas_labels"] == ["8", "2"]
    cached = list((tmp_path / "home" / "data").glob("url-*/kmhas_x.txt"))
    assert len(cached) == 1
    plain = write(tmp_path / "plain.csv", "text,label\n좋다,1\n")
    assert data.read_url(plain.as_uri()).texts == ["좋다"]
    with pytest.raises(data.DataError, match="download failed"):
        data.read_url((tmp_path / "missing.csv").as_uri())


def test_load_table_url_and_local_sources(tmp_path):
    src = nsmc_file(tmp_path)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    cfg = DataConfig(source=src.as_uri(), sha256=sha)
    assert data.load_table(cfg).report.rows_kept == 2
    assert data.load_table(DataConfig(source=str(src))).report.rows_kept == 2
    with pytest.raises(data.DataError, match="sha256 mismatch"):
        data.load_table(DataConfig(source=str(src), sha256="1" * 64))
    with pytest.raises(data.DataError, match=r"data file not found: .*nope\.csv"):
        data.load_table(DataConfig(source=str(tmp_path / "nope.csv")))
    folder = tmp_path / "folder"
    folder.mkdir()
    write(folder / "notes.txt", "id\tdocument\tlabel\n1\tx\t1\n")
    with pytest.raises(data.DataError, match=r"folder: a folder with no \.parquet/\.jsonl/.* file in it"):
        data.load_table(DataConfig(source=str(folder)))
    write(folder / "a.csv", "text,label\n좋아,1\n")
    assert data.load_table(DataConfig(source=str(folder))).texts == ["좋아"]
    with pytest.raises(data.DataError, match="a folder source has one per file"):
        data.load_table(DataConfig(source=str(folder), sha256=sha))


def test_load_table_missing_real_data_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KOSENT_DATA", str(tmp_path))
    with pytest.raises(data.DataError) as err:
        data.load_table(DataConfig(source="nsmc"))
    msg = str(err.value)
    assert str(tmp_path / "nsmc" / "ratings_train.txt") in msg and "e9t/nsmc" in msg
    with pytest.raises(data.DataError, match=r"kmhas_valid\.txt.*K-MHaS"):
        data.load_table(DataConfig(source="kmhas"))


# ---------------------------------------------------------------------------------------- splits


def synthetic_table(n_neg=600, n_pos=300) -> data.Table:
    texts = [f"부정 {i}" for i in range(n_neg)] + [f"긍정 {i}" for i in range(n_pos)]
    labels = [0] * n_neg + [1] * n_pos
    # duplicates (same label) and a conflicting text (both labels)
    texts += ["부정 1", "부정 2", "긍정 1", "애매", "애매", "애매"]
    labels += [0, 0, 1, 0, 1, 0]
    report = data.DataReport(source="synthetic", rows_read=len(texts), rows_kept=len(texts))
    return data.Table(texts, labels, ["negative", "positive"], report, "0" * 64, {})


def test_make_splits_dedups_stratifies_and_nests():
    table = synthetic_table()
    cfg = DataConfig(source="synthetic", train_size=90, val_size=60, test_size=150, split_seed=7)
    small = data.make_splits(cfg, table)
    big = data.make_splits(dataclasses.replace(cfg, scale=6), table)
    assert small.sizes() == {"train": 90, "validation": 60, "test": 150}
    assert big.sizes()["train"] == 540
    assert col(big.train, "text")[:90] == col(small.train, "text")
    assert col(big.test, "text") == col(small.test, "text") and col(big.validation, "text") == col(
        small.validation, "text"
    )
    assert small.report.dedup == {
        "rows_in": 906,
        "duplicate_rows_removed": 3,
        "conflicting_texts_removed": 1,
        "conflicting_rows_removed": 3,
        "pool": 900,
        "exact": True,
    }
    for splits in (small, big):
        everything = [*col(splits.train, "text"), *col(splits.validation, "text"), *col(splits.test, "text")]
        assert len(everything) == len(set(everything)) and "애매" not in everything
        for ds in (splits.train, splits.validation, splits.test):
            assert abs(sum(col(ds, "label")) / len(ds) - 1 / 3) <= 1 / len(ds) + 1e-9
    with pytest.raises(
        data.DataError, match=r"only 690 are available.*largest scale for this train_size is 7"
    ):
        data.make_splits(dataclasses.replace(cfg, scale=8), table)


def test_fingerprint_depends_on_every_setting():
    table = synthetic_table()
    cfg = DataConfig(source="synthetic", train_size=50, val_size=20, test_size=30)
    base = data.make_splits(cfg, table).fingerprint
    variants = [
        dataclasses.replace(cfg, split_seed=1),
        dataclasses.replace(cfg, scale=2),
        dataclasses.replace(cfg, train_size=51),
        dataclasses.replace(cfg, val_size=21),
        dataclasses.replace(cfg, test_size=31),
        dataclasses.replace(cfg, source="other"),
    ]
    prints = {data.make_splits(v, table).fingerprint for v in variants}
    assert base not in prints and len(prints) == len(variants)
    changed = dataclasses.replace(table, raw_sha256="1" * 64)
    assert data.make_splits(cfg, changed).fingerprint != base
    assert data.make_splits(cfg, table).fingerprint == base


def test_bad_split_settings():
    table = synthetic_table()
    with pytest.raises(ValueError, match="train_size"):  # the config itself refuses it
        DataConfig(train_size=0)
    with pytest.raises(data.DataError, match="leave no training rows"):
        data.make_splits(DataConfig(train_size=1, val_size=500, test_size=500), table)


def _window(rows, want, seed=3, classes=("a", "b", "c"), **kw) -> KeyWindow:
    window = KeyWindow(want, seed, **kw)
    window.start(list(classes))
    for text, label in rows:
        window.add(text, label)
    return window


THREE_CLASSES = [(f"text {i}", 0) for i in range(7_000)] + [(f"text {i}", 1) for i in range(7_000, 9_000)] + [
    (f"text {i}", 2) for i in range(9_000, 10_000)
]


def test_key_window_prefixes_are_balanced_and_do_not_depend_on_row_order():
    chosen = _window(THREE_CLASSES, 1_000).finish("t")
    labels = chosen.labels
    assert len(chosen.texts) == 1_000 == len(set(chosen.texts))
    for m in (10, 50, 333, 1_000):
        counts = Counter(labels[:m].tolist())
        for c, share in ((0, 0.7), (1, 0.2), (2, 0.1)):
            assert abs(counts[c] - m * share) <= 1.5
    shuffled = THREE_CLASSES[:]
    random.Random(0).shuffle(shuffled)
    for rows in (shuffled, THREE_CLASSES[::-1]):  # sorted by label, reversed: the same choice
        assert _window(rows, 1_000).finish("t").texts == chosen.texts
    # Within a class the texts come in key order: the seed, not the file, decides.
    keys = [text_key(t, 3) for t, label in zip(chosen.texts, labels, strict=True) if label == 0]
    assert keys == sorted(keys)
    assert _window(THREE_CLASSES, 1_000, seed=4).finish("t").texts != chosen.texts


def test_key_window_holds_bounded_texts_and_estimates_beyond_its_exact_keys():
    two = [(f"text {i}", int(i >= 14_000)) for i in range(20_000)]
    rows = two + two[:3_000] + [("text 5", 1), ("text 15000", 0)]  # repeats, and two texts with both labels
    exact = _window(rows, 200, classes="ab").finish("t")
    assert exact.exact and (exact.pool, exact.conflicting_texts, exact.distinct_texts) == (19_998, 2, 20_000)
    assert exact.duplicate_rows == 3_000 - 1  # "text 5" repeats too: its rows count as conflicting
    window = _window(rows, 200, classes="ab", exact_keys=3_000)
    assert len(window.keys) <= 3_000 + window.hold
    assert sum(map(len, window.texts)) <= 2 * 2 * window.hold
    sketched = window.finish("t")
    assert not sketched.exact
    assert abs(sketched.pool - 19_998) / 19_998 < 0.1  # a k-minimum-values estimate from 3,000 keys
    assert abs(sketched.pool_counts[0] / sketched.pool - 0.7) < 0.02
    assert len(sketched.texts) == 200 == len(set(sketched.texts))
    assert sketched.texts == _window(two[::-1] + rows, 200, classes="ab", exact_keys=3_000).finish("t").texts
    assert "text 5" not in sketched.texts and "text 15000" not in sketched.texts
    # The first rows (test, validation) stay put when the training share grows past the exact keys.
    bigger = _window(rows, 5_000, classes="ab", exact_keys=3_000).finish("t")
    assert bigger.texts[:200] == sketched.texts and bigger.pool == sketched.pool


def _pool(rows, excluded, limit, seed=3) -> UnseenWindow:
    window = UnseenWindow(excluded, seed, limit)
    window.start(["a", "b"])
    for text, label in rows:
        window.add(text, label)
    return window


def test_unseen_pool_is_a_nested_hash_order_without_the_excluded_texts():
    rows = [(f"text {i}", i % 2) for i in range(20_000)]
    rows += rows[:2_000]  # repeats count once
    excluded = {f"text {i}" for i in range(0, 20_000, 7)}
    whole = _pool(rows, excluded, None)
    everything = whole.finish()
    assert whole.available_exact and whole.available == len(everything) == 20_000 - len(excluded)
    assert not excluded.intersection(everything) and len(set(everything)) == len(everything)
    assert whole.rows == 22_000
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert _pool(shuffled, excluded, None).finish() == everything  # the seed orders it, not the file
    # A cap keeps the first texts of that order, so a larger cap contains a smaller one, in bounded memory.
    capped = _pool(rows, excluded, 1_000)
    assert capped.finish() == everything[:1_000] and len(capped.held) <= 2 * 1_000 + 1_024
    assert not capped.available_exact and abs(capped.available - len(everything)) / len(everything) < 0.1
    assert _pool(rows, excluded, 3_000).finish()[:1_000] == everything[:1_000]
    # Its own order, not the split order of the same seed.
    assert everything[:50] != sorted(everything, key=lambda t: text_key(t, 3))[:50]
    assert _pool(rows, excluded, None, seed=4).finish() != everything


def test_splits_save_load_round_trip(tmp_path):
    splits = data.make_splits(
        DataConfig(source="synthetic", train_size=100, val_size=50, test_size=50), synthetic_table()
    )
    splits.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "splits.json").read_text(encoding="utf-8"))
    assert meta["fingerprint"] == splits.fingerprint and meta["label_names"] == ["negative", "positive"]
    loaded = data.Splits.load(tmp_path / "s")
    assert col(loaded.train, "text") == col(splits.train, "text") and col(loaded.test, "label") == col(
        splits.test, "label"
    )
    assert loaded.report.to_dict() == splits.report.to_dict()
    with pytest.raises(data.DataError, match="no splits.json"):
        data.Splits.load(tmp_path)


def test_report_round_trip_and_summary():
    rep = data.DataReport(source="x.csv")
    for line in (3, 5, 8, 9, 10, 11, 12):
        rep.skip("empty_text", line)
    assert rep.skipped == {"empty_text": 7} and rep.examples == {"empty_text": [3, 5, 8, 9, 10]}
    assert rep.rows_read == 7
    assert data.DataReport.from_dict(json.loads(json.dumps(rep.to_dict()))) == rep
    assert "skipped empty_text: 7 (lines 3, 5, 8, 9, 10, ...)" in rep.summary()


def test_load_table_kmhas_concatenates_and_keeps_per_file_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("KOSENT_DATA", str(tmp_path))
    (tmp_path / "kmhas").mkdir()
    write(tmp_path / "kmhas" / "kmhas_valid.txt", "document\tlabel\n좋다\t8\n\t3\n")
    write(tmp_path / "kmhas" / "kmhas_test.txt", "document\tlabel\n나쁘다\t2\n좋다\t8\n모름\tx\n")
    table = data.load_table(DataConfig(source="kmhas"))
    rep = table.report
    assert table.texts == ["좋다", "나쁘다", "좋다"] and table.labels == [1, 0, 1]
    assert table.extra == {"kmhas_labels": ["8", "2", "8"]}
    assert (rep.rows_read, rep.rows_kept, rep.duplicate_texts) == (5, 3, 1)
    assert rep.skipped == {"empty_text": 1, "unknown_label": 1}
    assert rep.examples == {"kmhas_valid.txt:empty_text": [3], "kmhas_test.txt:unknown_label": [4]}
    assert "unknown_label: 1 (kmhas_test.txt lines 4)" in rep.summary()
    assert [p["rows_read"] for p in rep.parts] == [2, 3]
