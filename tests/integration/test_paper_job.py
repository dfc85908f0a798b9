"""ray_jobs/paper.py end to end at a tiny size: its own local Ray cluster on 127.0.0.1, Ray Train runs, a Tune
scale sweep, Ray tasks for TF-IDF, evaluation reports, and the results document with its figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kosent.paper_report import BEGIN, END

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paper_job_runs_every_experiment_and_writes_the_document(tmp_path, nsmc_path, kmhas_valid_path):
    md = tmp_path / "docs" / "RESULTS.md"
    md.parent.mkdir()
    md.write_text(f"# Results\n\nby hand, on top\n\n{BEGIN}\nold generated text\n{END}\n\n"
                  "## Full-size runs measured earlier\n\n| e5-small-ko | 0.8436 |\n", encoding="utf-8")
    args = ["--train-size", "200", "--val-size", "100", "--test-size", "200",
            "--models", "tfidf", "tiny", "gemma-ko", "--frozen-layers", "gemma-ko=23",
            "--scale-models", "tiny", "tfidf", "--scales", "1", "2", "--kmhas-models", "tfidf", "--epochs", "1",
            "--kmhas-epochs", "1", "--max-steps", "4", "--max-length", "32", "--max-points", "60",
            "--storage-path", str(tmp_path / "runs"), "--name", "tiny-paper", "--results-md", str(md)]
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                        "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # its own local cluster, not the session fixture's
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "paper.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: the script and its Ray processes
        out, _ = proc.communicate()
        pytest.fail(f"ray_jobs/paper.py did not finish in 840 s:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-8000:]
    assert "[kosent.paper " in out and "started baselines/nsmc/tiny" in out and "scale: Tune sweep of tiny" in out

    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nby hand, on top\n\n" + BEGIN) and "old generated text" not in text
    assert text.endswith("## Full-size runs measured earlier\n\n| e5-small-ko | 0.8436 |\n")
    generated = text[text.index(BEGIN):text.index(END)]
    assert "**Reduced run on CPU**" in generated and "python ray_jobs/paper.py --train-size 200" in generated
    assert "failed" not in generated
    for needle in ("### 1. Baselines on NSMC", "### 2. Data scaling", "### 3. News comments: K-MHaS", "0.9656",
                   "gemma-ko with its lowest 23 layers frozen"):
        assert needle in generated

    figures = md.parent / "paper"
    doc = json.loads((figures / "results.json").read_text(encoding="utf-8"))
    keys = {r["experiment"] + "/" + r["variant"] + "/" + r["model"] for r in doc["records"]}
    assert keys == {"baselines/nsmc/tfidf", "baselines/nsmc/tiny", "baselines/nsmc/gemma-ko", "scale/x1/tiny",
                    "scale/x2/tiny", "scale/x1/tfidf", "scale/x2/tfidf", "kmhas/as_is/tfidf", "kmhas/resampled/tfidf"}
    for r in doc["records"]:
        assert not r["error"] and 0 <= r["metrics"]["test_macro_f1"] <= 1
        assert (Path(r["report_dir"]) / "report.json").is_file()
    resampled = next(r for r in doc["records"] if r["variant"] == "resampled")
    assert resampled["test_class_counts"]["hate"] == 170  # 85% of 200
    assert {r["train_rows"] for r in doc["records"] if r["experiment"] == "scale"} == {200, 400}
    for name in ("nsmc_confusion.png", "nsmc_roc.png", "nsmc_reliability.png", "nsmc_tiny_pca_2d.png",
                 "nsmc_tiny_tsne_2d.png", "nsmc_tiny_embeddings_3d.html", "nsmc_gemma-ko_pca_2d.png",
                 "scale_macro_f1.png", "kmhas_confusion.png"):
        assert (figures / name).is_file(), name
        assert f"(paper/{name})" in generated, name
