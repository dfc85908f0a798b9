"""Models build, train a step, save as safetensors folders and reload with identical logits."""

from __future__ import annotations

import json

import pytest
import torch

from kosent.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from kosent.models import ModelError, load_model_and_tokenizer

LABELS = ["negative", "positive"]
TEXTS = ["이 영화 정말 재밌어요 최고!", "시간 아깝다... 최악의 영화", "그냥 그랬음"]


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


@pytest.mark.parametrize("name", ["tiny", "rnn", "birnn", "e5-small-ko"])
def test_save_and_reload_gives_identical_logits(tmp_path, name):
    model, tokenizer = load_model_and_tokenizer(name, LABELS)
    # One optimisation step so the saved weights are not just the initialisation.
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.train()
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=torch.tensor([1, 0, 0]))
    out.loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    before = _logits(model, tokenizer, TEXTS)

    save_checkpoint(tmp_path, model, tokenizer, label_names=LABELS, metrics={"val_macro_f1": 0.5},
                    config={"model": name}, data_fingerprint="abc")
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt")), "no pickle files"
    loaded, tok2, meta = load_checkpoint(tmp_path)
    assert meta["label_names"] == LABELS and meta["label2id"] == {"negative": 0, "positive": 1}
    assert torch.allclose(before, _logits(loaded, tok2, TEXTS), atol=1e-5)


def test_load_refuses_folder_without_label_map_or_fingerprint(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny", LABELS)
    save_checkpoint(tmp_path, model, tokenizer, label_names=LABELS, metrics={}, config={}, data_fingerprint="f")
    meta = json.loads((tmp_path / "kosent.json").read_text())
    del meta["data_fingerprint"]
    (tmp_path / "kosent.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing 'data_fingerprint'"):
        read_meta(tmp_path)
    (tmp_path / "kosent.json").unlink()
    with pytest.raises(CheckpointError, match="no kosent.json"):
        load_checkpoint(tmp_path)


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="unknown model 'bertt'.*e5-small-ko"):
        load_model_and_tokenizer("bertt", LABELS)


def test_hub_id_offline_fails_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face hub.*e5-small-ko"):
        load_model_and_tokenizer("klue/bert-base", LABELS)
