"""read_nsmc on the real NSMC training file (150,000 Naver movie reviews)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from kosent import data
from kosent.config import DataConfig
from kosent.text import normalize

NSMC_SHA256 = "e03b7d14e9e41be8d464a28057cd25d7396c53e67aa7fd5f7e552c59b0ee2940"
EMPTY_IDS = ["2172111", "6369843", "1034280", "5942978", "1034283"]
EMPTY_LINES = [25859, 55739, 110016, 126784, 140723]  # 1-based, the header is line 1


@pytest.fixture(scope="module")
def raw_lines(nsmc_path):
    return nsmc_path.read_text(encoding="utf-8").split("\n")


@pytest.fixture(scope="module")
def nsmc(nsmc_path):
    start = time.perf_counter()
    table = data.read_nsmc(nsmc_path)
    print(f"read_nsmc: {time.perf_counter() - start:.2f}s")
    return table


def test_rows_read_and_kept(nsmc):
    rep = nsmc.report
    assert rep.rows_read == 150_000
    assert rep.rows_kept == 149_995 == len(nsmc.texts) == len(nsmc.labels)
    assert rep.rows_read == rep.rows_kept + sum(rep.skipped.values())
    assert nsmc.label_names == ["negative", "positive"]
    assert nsmc.raw_sha256 == NSMC_SHA256


def test_five_empty_documents_reported_by_line(nsmc, raw_lines):
    rep = nsmc.report
    assert rep.skipped == {"empty_text": 5}
    assert rep.examples["empty_text"] == EMPTY_LINES
    # The reported line numbers really are the rows with those ids and an empty document.
    for lineno, review_id in zip(EMPTY_LINES, EMPTY_IDS, strict=True):
        rid, document, _ = raw_lines[lineno - 1].split("\t")
        assert (rid, document) == (review_id, "")
    assert not set(EMPTY_IDS) & set(nsmc.extra["id"])


def test_class_counts_before_and_after_skipping(nsmc, raw_lines):
    # Upstream: 75,173 negative and 74,827 positive rows; the 5 empty ones are subtracted.
    skipped_labels = Counter(int(raw_lines[n - 1].split("\t")[2]) for n in EMPTY_LINES)
    kept = nsmc.report.class_counts
    assert kept["negative"] + skipped_labels[0] == 75_173
    assert kept["positive"] + skipped_labels[1] == 74_827
    assert kept == {"negative": 75_170, "positive": 74_825}
    assert Counter(nsmc.labels) == {0: 75_170, 1: 74_825}


def test_double_quotes_kept_as_written(nsmc, raw_lines):
    with_quotes = [t for t in nsmc.texts if '"' in t]
    assert len(with_quotes) == 623
    # Line 167 (id 10122280) was CSV-quoted twice upstream; with quoting off it stays as written
    # (apart from normalize() capping the run of 7 quotes at 3).
    i = nsmc.extra["id"].index("10122280")
    raw_doc = raw_lines[166].split("\t")[1]
    assert raw_doc.startswith('"""영화 끝나갈때쯤에')
    assert nsmc.texts[i] == normalize(raw_doc)
    assert nsmc.texts[i].startswith('"""영화 끝나갈때쯤에') and '"ㅈ같다."' in nsmc.texts[i]


def test_ids_and_texts_stay_aligned(nsmc):
    assert len(nsmc.extra["id"]) == len(nsmc.texts)
    assert (nsmc.extra["id"][0], nsmc.texts[0], nsmc.labels[0]) == (
        "9976970",
        "아 더빙.. 진짜 짜증나네요 목소리",
        0,
    )
    assert (nsmc.extra["id"][-1], nsmc.labels[-1]) == ("9619869", 0)


def test_texts_are_normalized_and_non_empty(nsmc):
    assert all(nsmc.texts)
    sample = nsmc.texts[::97]
    assert sample == [normalize(t) for t in sample]
    assert not any("ㅋㅋㅋㅋ" in t or "  " in t for t in nsmc.texts)


def test_duplicates_and_conflicts(nsmc):
    rep = nsmc.report
    assert rep.duplicate_texts == len(nsmc.texts) - len(set(nsmc.texts))
    assert rep.duplicate_texts >= 3_813  # upstream: 3,817 repeated raw texts, 4 of them empty
    labels_of: dict[str, set[int]] = {}
    for text, label in zip(nsmc.texts, nsmc.labels, strict=True):
        labels_of.setdefault(text, set()).add(label)
    assert rep.conflicting_texts == sum(len(v) > 1 for v in labels_of.values()) == 158
    assert labels_of["굿"] == {0, 1}


def test_summary_names_everything(nsmc):
    text = nsmc.report.summary()
    print(text)
    assert "150,000" in text and "149,995" in text
    assert "empty_text: 5 (lines 25859, 55739, 110016, 126784, 140723)" in text
    assert "negative 75,170" in text and "158 texts" in text
    assert nsmc.report.to_dict()["examples"]["empty_text"] == EMPTY_LINES


def test_load_table_default_source_reads_the_same_file(nsmc, nsmc_path):
    table = data.load_table(DataConfig(source="nsmc", path=str(nsmc_path)))
    assert table.raw_sha256 == nsmc.raw_sha256 and table.texts == nsmc.texts


def test_missing_nsmc_file_says_where_to_put_it(tmp_path):
    missing = tmp_path / "nsmc" / "ratings_train.txt"
    with pytest.raises(data.DataError) as err:
        data.load_table(DataConfig(source="nsmc", path=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "raw.githubusercontent.com/e9t/nsmc" in msg and "KOSENT_DATA" in msg
