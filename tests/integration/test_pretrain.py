"""Domain-adaptive pretraining: the corpus never holds a validation/test text, the Ray job writes an ordinary
model folder, and training accepts that folder as its starting model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import kosent.pretrain as pretrain_mod
from kosent.config import DataConfig, PretrainConfig, TrainConfig
from kosent.data import load_table, make_splits
from kosent.pretrain import fit_pretrain, mask_tokens, pretrain_loop, unlabelled_corpus
from kosent.train import Session, fit_local

DATA = DataConfig(train_size=300, val_size=100, test_size=200)


def test_corpus_excludes_every_validation_and_test_text(nsmc_path):
    corpus = unlabelled_corpus(PretrainConfig(data=DATA, unlabelled_size=0, holdout_size=300))
    splits = make_splits(DATA)
    held_out = set(splits.validation["text"]) | set(splits.test["text"])
    assert not held_out & set(corpus.texts) and not held_out & set(corpus.holdout)
    assert not set(corpus.texts) & set(corpus.holdout)
    assert corpus.report["overlap_with_validation_and_test"] == 0 and corpus.report["labels_read"] is False
    # Everything else is there: distinct texts minus the 300 validation + test texts minus the holdout.
    distinct = len(set(load_table(DATA).texts))
    assert corpus.report["distinct_texts"] == distinct and corpus.report["available_exact"]
    assert len(corpus.texts) + len(corpus.holdout) == distinct - len(held_out) == corpus.report["available"]
    assert len(corpus.texts) > 140_000
    # A capped corpus is the start of the same order (the holdout first), read in bounded memory.
    capped = unlabelled_corpus(PretrainConfig(data=DATA, unlabelled_size=2_000, holdout_size=300))
    assert capped.holdout == corpus.holdout and capped.texts == corpus.texts[:2_000]


def test_masking_follows_bert_proportions():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 128))
    ids[:, 0], ids[:, -1] = 0, 2  # special tokens at both ends
    attention = torch.ones_like(ids)
    attention[:, 100:] = 0
    inputs, labels = mask_tokens(ids, attention, torch.tensor([0, 1, 2]), 4, 1000, 0.15, gen)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 100:].any()  # never specials or padding
    assert 0.13 < chosen.float().sum().item() / (64 * 98) < 0.17
    masked = (inputs == 4) & chosen
    assert 0.75 < masked.sum().item() / chosen.sum().item() < 0.85
    assert torch.equal(labels[chosen], ids[chosen])


@pytest.mark.timeout(420)
def test_pretrain_job_output_is_a_starting_model_for_training(ray_cluster, tmp_path):
    cfg = PretrainConfig(model="tiny", data=DATA, unlabelled_size=600, holdout_size=100, batch_size=32,
                         max_length=48, epochs=2, lr=5e-4, num_workers=2, cpus_per_worker=1,
                         storage_path=str(tmp_path / "runs"), name="dapt")
    folder = fit_pretrain(cfg, out=tmp_path / "model")
    doc = json.loads((folder / "kosent_pretrain.json").read_text())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert doc["corpus"]["used"] == 600 and doc["corpus"]["overlap_with_validation_and_test"] == 0
    assert [h["epoch"] for h in doc["history"]] == [1, 2]
    # Each worker tokenizes and trains on its own 300-text shard of the corpus (a Ray Dataset, nothing of the
    # corpus in train_loop_config): ceil(300 / 32) = 10 steps an epoch.
    assert [h["step"] for h in doc["history"]] == [10, 20]
    assert doc["history"][-1]["val_mlm_loss"] < doc["history"][0]["val_mlm_loss"]  # it learned something
    assert doc["epoch"] == 2  # the folder written is the epoch of lowest val_mlm_loss

    result = fit_local(TrainConfig(model=str(folder), epochs=1, max_steps=5, batch_size=32, max_length=48,
                                   data=DATA), make_splits(DATA), out_dir=tmp_path / "ft")
    assert "val_macro_f1" in result.metrics
    # The classifier started from the adapted encoder: 5 small steps away from it, not a fresh random init.
    adapted = load_file(str(folder / "model.safetensors"))
    tuned = load_file(str(result.checkpoint / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert (tuned[key] - adapted[key]).abs().max().item() < 1e-2


class _Recorder(Session):
    """The in-process session, keeping the reported metrics instead of checkpoints."""

    def report(self, metrics, checkpoint_dir):
        self.reports = [*getattr(self, "reports", []), metrics]
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def test_head_warm_up_leaves_the_encoder_untouched(nsmc_path, monkeypatch):
    corpus = unlabelled_corpus(PretrainConfig(data=DATA, unlabelled_size=64, holdout_size=16))
    torch.manual_seed(0)
    cfg = PretrainConfig(model="tiny", data=DATA, batch_size=16, max_length=32, max_steps=4, lr=1e-3,
                         head_warmup_ratio=1.0, warmup_ratio=0.0)
    captured = {}
    real = pretrain_mod.load_mlm

    def keep(name, tokenizer):
        captured["model"] = real(name, tokenizer)
        captured["before"] = {n: p.detach().clone() for n, p in captured["model"].named_parameters()}
        return captured["model"]

    monkeypatch.setattr(pretrain_mod, "load_mlm", keep)  # to see the weights before and after, not a mock
    pretrain_loop(cfg, corpus, _Recorder())
    after = dict(captured["model"].named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), captured["before"][n])}
    assert changed and all(n.startswith("cls.") for n in changed), changed
