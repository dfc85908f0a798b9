"""read_kmhas on the real K-MHaS files (Naver news comments, multi-label hate speech)."""

from __future__ import annotations

from collections import Counter

import pytest

from kosent import data
from kosent.config import DataConfig

VALID_SHA256 = "cb0df9e3cd665125b554d4c5e6f48b0801d5535ead51269134de5b85ae469c18"


@pytest.fixture(scope="module")
def kmhas_valid(kmhas_valid_path):
    return data.read_kmhas(kmhas_valid_path)


def test_valid_rows_and_classes(kmhas_valid):
    rep = kmhas_valid.report
    assert rep.rows_read == rep.rows_kept == 8_776
    assert rep.skipped == {}
    assert kmhas_valid.label_names == ["hate", "not_hate"]
    assert rep.class_counts == {"hate": 3_889, "not_hate": 4_887}
    assert Counter(kmhas_valid.labels) == {1: 4_887, 0: 3_889}
    assert kmhas_valid.raw_sha256 == VALID_SHA256


def test_original_label_strings_kept(kmhas_valid):
    raw = kmhas_valid.extra["kmhas_labels"]
    assert len(raw) == len(kmhas_valid.texts)
    counts = Counter(raw)
    assert counts["8"] == 4_887 and counts["1,3"] == 138 and counts["3"] == 727
    # label 1 (not hate) exactly where the original ids are "8"
    assert all((lab == 1) == (ids == "8") for lab, ids in zip(kmhas_valid.labels, raw, strict=True))


def test_csv_quoting_is_undone(kmhas_valid, kmhas_valid_path):
    # Line 4 is `"미친돼지새끼 육갑떠네 ㅡㅡ"<TAB>1,3`: standard CSV quoting, so the quotes are not text.
    line = kmhas_valid_path.read_text(encoding="utf-8").split("\n")[3]
    assert line == '"미친돼지새끼 육갑떠네 ㅡㅡ"\t1,3'
    i = kmhas_valid.texts.index("미친돼지새끼 육갑떠네 ㅡㅡ")
    assert (kmhas_valid.labels[i], kmhas_valid.extra["kmhas_labels"][i]) == (0, "1,3")
    # Only line 509, `"""조현병이지만 남녀가려서 찔러"""`, keeps quotes: the doubled "" are real quote marks.
    quoted = [t for t in kmhas_valid.texts if t.startswith('"') and t.endswith('"')]
    assert quoted == ['"조현병이지만 남녀가려서 찔러"']


def test_test_file(kmhas_test_path):
    table = data.read_kmhas(kmhas_test_path)
    assert table.report.rows_kept == 21_939
    assert table.report.class_counts == {"hate": 10_120, "not_hate": 11_819}


def test_load_table_concatenates_valid_and_test(kmhas_valid_path, kmhas_test_path):
    table = data.load_table(DataConfig(source="kmhas", path=str(kmhas_valid_path.parent)))
    rep = table.report
    assert rep.rows_read == rep.rows_kept == 8_776 + 21_939 == len(table.texts)
    assert rep.class_counts == {"hate": 3_889 + 10_120, "not_hate": 4_887 + 11_819}
    assert [p["rows_kept"] for p in rep.parts] == [8_776, 21_939]
    assert len(table.extra["kmhas_labels"]) == len(table.texts)
    summary = rep.summary()
    print(summary)
    assert "30,715" in summary and "kmhas_valid.txt" in summary and "kmhas_test.txt" in summary


def test_missing_kmhas_file_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_table(DataConfig(source="kmhas", path=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "kmhas_valid.txt") in msg and "adlnlp/K-MHaS" in msg
