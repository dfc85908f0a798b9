"""The #8 training options on real NSMC reviews, in-process: layer-wise lr decay, mean pooling, distillation,
local domain-adaptive pretraining, and the exact carrier of the offline model (bench/q4pack.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from kosent.checkpoint import load_checkpoint
from kosent.config import DataConfig, PretrainConfig, TrainConfig
from kosent.data import make_splits
from kosent.distill import DistillError, soft_cross_entropy, with_unlabelled
from kosent.models import ModelError, load_model_and_tokenizer
from kosent.models.pooling import BertMeanPoolForSequenceClassification
from kosent.predict import Predictor
from kosent.train import _optimizer, fit_local, layer_depth

SMALL = DataConfig(train_size=320, val_size=200, test_size=200)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def splits(nsmc_path):
    return make_splits(SMALL)


def test_layer_decay_gives_each_depth_its_learning_rate():
    model, _ = load_model_and_tokenizer("tiny", ["negative", "positive"])  # 2 layers: depths 0..3
    opt = _optimizer(model, TrainConfig(lr=1e-3, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5**3)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.5**2)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-3)
    # Weight decay still skips biases and LayerNorms.
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(named["bert.encoder.layer.1.output.LayerNorm.weight"])] == 0.0
    assert wd_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == 0.01
    # Off (1.0): every parameter at the base rate, the two groups of before (old optimizer states still load).
    plain = _optimizer(model, TrainConfig(lr=1e-3))
    assert len(plain.param_groups) == 2 and {g["lr"] for g in plain.param_groups} == {1e-3}
    assert layer_depth("cls.predictions.transform.dense.weight", 12) == 13
    with pytest.raises(ValueError, match="layer_decay"):
        _optimizer(model, TrainConfig(layer_decay=0.0))


@pytest.mark.timeout(300)
def test_mean_pooling_trains_and_its_checkpoint_reloads(splits, tmp_path):
    cfg = TrainConfig(model="tiny", pooling="mean", layer_decay=0.9, epochs=1, batch_size=32, lr=2e-3,
                      max_length=48, data=SMALL)
    result = fit_local(cfg, splits, out_dir=tmp_path)
    model, _, meta = load_checkpoint(result.checkpoint)
    assert isinstance(model, BertMeanPoolForSequenceClassification)
    assert json.loads((result.checkpoint / "config.json").read_text())["model_type"] == "kosent-bert-mean"
    assert meta["config"]["pooling"] == "mean" and meta["config"]["layer_decay"] == 0.9
    texts = list(splits.test["text"][:16])
    p1 = Predictor.from_checkpoint(result.checkpoint).predict_proba(texts)
    p2 = Predictor.from_checkpoint(result.checkpoint).predict_proba(texts)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    # Padding must not change a text's score: the mean runs over real tokens only.
    one = Predictor.from_checkpoint(result.checkpoint).predict_proba(texts[:1])
    np.testing.assert_allclose(one[0], p1[0], atol=1e-5)


def test_mean_pooling_keeps_every_pretrained_encoder_weight():
    from kosent.models import e5_offline

    model, _ = load_model_and_tokenizer("e5-small-ko", ["negative", "positive"], pooling="mean")
    source = load_file(str(e5_offline.resolve("e5-small-ko") / "model.safetensors"))
    state = model.state_dict()
    for name, value in source.items():
        if not name.startswith("pooler."):
            assert torch.equal(state[f"bert.{name}"], torch.from_numpy(value)), name
    with pytest.raises(ModelError, match="pooling"):
        load_model_and_tokenizer("tiny", ["negative", "positive"], pooling="max")
    with pytest.raises(ModelError, match="baseline"):
        load_model_and_tokenizer("rnn", ["negative", "positive"], pooling="mean")


def test_soft_cross_entropy_is_cross_entropy_on_one_hot_targets():
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.timeout(400)
def test_distillation_trains_on_teacher_scored_unlabelled_texts(splits, tmp_path):
    teacher = fit_local(TrainConfig(model="tfidf", data=SMALL), splits, out_dir=tmp_path / "teacher").checkpoint
    cfg = TrainConfig(model="tiny", teacher=str(teacher), unlabelled_size=480, epochs=1, batch_size=32,
                      lr=2e-3, max_length=48, data=SMALL)
    filled = with_unlabelled(cfg, splits)
    assert len(filled.unlabelled) == 480
    held = set(splits.train["text"]) | set(splits.validation["text"]) | set(splits.test["text"])
    assert not held.intersection(filled.unlabelled)
    result = fit_local(cfg, splits, out_dir=tmp_path / "student")
    # One epoch covered the labelled and the unlabelled rows.
    assert result.history[0]["step"] == -(-(320 + 480) // 32)
    meta = json.loads((result.checkpoint / "kosent.json").read_text())
    assert meta["config"]["teacher"] == str(teacher)
    assert Predictor.from_checkpoint(result.checkpoint).predict(["정말 재밌다"])[0].label in splits.label_names


def test_a_teacher_with_other_labels_is_refused(splits, tmp_path):
    from kosent.checkpoint import write_meta

    teacher = fit_local(TrainConfig(model="tfidf", data=SMALL), splits, out_dir=tmp_path / "t").checkpoint
    meta = json.loads((teacher / "kosent.json").read_text())
    write_meta(teacher, model_type="tfidf", label_names=["bad", "good"], metrics=meta["metrics"],
               config=meta["config"], data_fingerprint=meta["data_fingerprint"])
    cfg = TrainConfig(model="tiny", teacher=str(teacher), unlabelled_size=64, epochs=1, data=SMALL)
    with pytest.raises(DistillError, match="predicts"):
        fit_local(cfg, splits, out_dir=tmp_path / "s")
    with pytest.raises(DistillError, match="not a loadable"):
        fit_local(TrainConfig(model="tiny", teacher=str(tmp_path / "nowhere"), unlabelled_size=64, data=SMALL),
                  splits, out_dir=tmp_path / "s2")


@pytest.mark.timeout(300)
def test_local_pretraining_writes_a_model_folder_training_accepts(nsmc_path, tmp_path):
    from kosent.pretrain import META_FILE, fit_pretrain_local

    cfg = PretrainConfig(model="tiny", unlabelled_size=400, holdout_size=50, batch_size=32, max_length=32,
                         data=SMALL, threads=1)
    folder = fit_pretrain_local(cfg, tmp_path / "dapt")
    doc = json.loads((folder / META_FILE).read_text())
    assert doc["corpus"]["used"] == 400 and doc["corpus"]["overlap_with_validation_and_test"] == 0
    assert (folder / "model.safetensors").is_file() and not (folder / "training_state").exists()
    assert not (tmp_path / ".dapt-epochs").exists()
    result = fit_local(TrainConfig(model=str(folder), epochs=1, batch_size=32, max_length=32, data=SMALL),
                       out_dir=tmp_path / "ft")
    assert result.history[0]["val_accuracy"] > 0


@pytest.mark.timeout(300)
def test_local_pretraining_stops_on_held_out_loss_and_delivers_its_best_epoch(nsmc_path, tmp_path, monkeypatch):
    """``--patience`` and the folder written follow val_mlm_loss (lower is better), as fine-tuning follows
    val_macro_f1. The held-out losses are scripted to rise after epoch 2; the training itself is real."""
    import kosent.pretrain as pretrain_mod

    losses = iter([4.0, 3.5, 3.6, 3.0])
    monkeypatch.setattr(pretrain_mod, "_holdout_loss", lambda *a, **k: next(losses))
    cfg = PretrainConfig(model="tiny", unlabelled_size=200, holdout_size=20, batch_size=32, max_length=32,
                         data=SMALL, threads=1, epochs=4, patience=1)
    folder = pretrain_mod.fit_pretrain_local(cfg, tmp_path / "dapt")
    doc = json.loads((folder / pretrain_mod.META_FILE).read_text())
    assert [h["val_mlm_loss"] for h in doc["history"]] == [4.0, 3.5, 3.6]  # stopped: one epoch without a fall
    assert [h["step"] for h in doc["history"]] == [7, 14, 21]
    # The folder is epoch 2's (``epoch`` is read from the copied folder's own history, which ends at its epoch).
    assert doc["epoch"] == 2 and (folder / "model.safetensors").is_file()
    assert not (tmp_path / ".dapt-epochs").exists() and not (folder / "training_state").exists()


def test_pretraining_refuses_settings_only_a_classifier_reads():
    """Masked-LM pretraining has no head to pool for, no adapters and no teacher: such settings are refused,
    from Python or YAML, and ``ray_jobs/pretrain.py`` offers no flag for them."""
    with pytest.raises(ValueError, match="frozen_layers 6, lora_rank 8: settings of fine-tuning a classifier"):
        PretrainConfig(frozen_layers=6, lora_rank=8)
    out = subprocess.run([sys.executable, "ray_jobs/pretrain.py", "--help"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert "--holdout-size" in out and "--epochs" in out
    assert not [flag for flag in ("--pooling", "--frozen-layers", "--lora-rank", "--teacher", "--score-on")
                if flag in out]


def test_q4pack_carries_the_offline_model_bit_for_bit(tmp_path):
    from kosent.models import e5_offline

    folder = e5_offline.resolve("e5-small-ko")
    packed, back = tmp_path / "e5.npz", tmp_path / "e5"
    for args in (["pack", str(folder), str(packed)], ["unpack", str(packed), str(back)]):
        subprocess.run([sys.executable, str(REPO / "bench" / "q4pack.py"), *args], check=True, timeout=120)
    assert packed.stat().st_size < (folder / "model.safetensors").stat().st_size / 4
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "kosent_source.json"):
        assert (folder / f).read_bytes() == (back / f).read_bytes()


@pytest.mark.timeout(600)
def test_improvement_study_smoke_run_records_every_stage(nsmc_path, tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_improve.py"), "--out", str(out), "--smoke"],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    stages = {r["stage"] for r in rows}
    assert {"tfidf", "base", "dapt", "dapt+base", "ensemble", "distill", "distill+tfidf"} <= stages
    assert not [r for r in rows if "error" in r]
    dapt = next(r for r in rows if r["stage"] == "dapt")
    assert dapt["overlap"] == 0
    distill = next(r for r in rows if r["stage"] == "distill")
    assert distill["train_rows"] == 300 + 400
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows if "test_accuracy" in r)
    assert "| distill+tfidf |" in (out / "results.md").read_text()


@pytest.mark.timeout(400)
def test_lora_trains_adapters_and_saves_merged_weights(splits, tmp_path):
    """LoRA (``lora_rank``) on the tiny BERT above its lowest layer: the checkpoint is a plain BERT folder whose
    adapted weights moved and whose other encoder weights did not; its saved adapters rebuild the same model."""
    from safetensors.torch import load_file as load_tensors

    from kosent.checkpoint import LORA_STATE_FILE, STATE_DIR
    from kosent.models import lora
    from kosent.train import seed_everything

    cfg = TrainConfig(model="tiny", lora_rank=4, lora_alpha=8, frozen_layers=1, epochs=1, batch_size=32, lr=5e-3,
                      max_length=48, data=SMALL)
    result = fit_local(cfg, splits, out_dir=tmp_path)
    saved = load_file(str(result.checkpoint / "model.safetensors"))
    assert not [k for k in saved if "lora" in k or "base_layer" in k]  # an ordinary checkpoint
    seed_everything(cfg.seed)  # the loop's initial model
    base, _ = load_model_and_tokenizer("tiny", splits.label_names)
    before = {k: v.numpy() for k, v in base.state_dict().items()}
    moved = {k for k in saved if not np.array_equal(saved[k], before[k])}
    assert "bert.encoder.layer.1.attention.self.query.weight" in moved  # B @ A merged in
    assert "bert.encoder.layer.1.output.dense.weight" in moved and "classifier.weight" in moved
    assert not {k for k in moved if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert "bert.encoder.layer.1.output.LayerNorm.weight" not in moved  # not a linear layer: frozen

    # Resuming: the pretrained weights plus the saved adapters and head are the checkpoint's model.
    seed_everything(cfg.seed)
    again, tokenizer = load_model_and_tokenizer("tiny", splits.label_names)
    again = lora.add_lora(again, 4, 8, frozen_layers=1)
    trainable = sum(p.numel() for p in again.parameters() if p.requires_grad)
    assert trainable < 0.2 * sum(p.numel() for p in again.parameters())
    lora.load_trainable_state(again, load_tensors(str(result.checkpoint / STATE_DIR / LORA_STATE_FILE)))
    texts = list(splits.test["text"][:8])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(again.eval()(**batch).logits, -1).numpy()
    np.testing.assert_allclose(Predictor.from_checkpoint(result.checkpoint).predict_proba(texts), expected, atol=1e-5)
    with pytest.raises(ModelError, match="does not fit"):
        lora.load_trainable_state(lora.add_lora(load_model_and_tokenizer("tiny", splits.label_names)[0], 8, 8),
                                  load_tensors(str(result.checkpoint / STATE_DIR / LORA_STATE_FILE)))


def test_lora_and_freezing_are_refused_where_they_mean_nothing(splits, tmp_path):
    from kosent.models import lora

    with pytest.raises(ModelError, match="LoRA is for BERT and Gemma"):
        lora.add_lora(load_model_and_tokenizer("rnn", splits.label_names)[0], 4, 8)
    with pytest.raises(ModelError, match="none would get adapters"):
        lora.add_lora(load_model_and_tokenizer("tiny", splits.label_names)[0], 4, 8, frozen_layers=2)
    with pytest.raises(ModelError, match="frozen_layers 3, lora_rank 8: settings of an encoder"):
        fit_local(TrainConfig(model="tfidf", frozen_layers=3, lora_rank=8, data=SMALL), splits, out_dir=tmp_path)
