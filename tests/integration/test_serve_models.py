"""Every model kind kosent trains served through the same endpoint: BERT (tiny), a BERT + TF-IDF ensemble,
TF-IDF alone, the GRU and EmbeddingGemma (``gemma-ko``, a few steps with most layers frozen). Real Serve on the session cluster, real HTTP on 127.0.0.1, checkpoints trained
here on real NSMC reviews. Each kind answers ``POST /predict`` like the offline ``Predictor`` and
describes itself on ``GET /model``, including whether its forward passes run traced."""

from __future__ import annotations

import os

import pytest
import requests

pytestmark = pytest.mark.ray

PROBES = ["이 영화 정말 최고예요 배우들 연기가 좋았어요", "시간 낭비였다 다시는 안 본다"]
KINDS = ("tiny", "ensemble", "tfidf", "rnn", "gemma")


@pytest.fixture(scope="module")
def kind_checkpoints(serve_checkpoints, tmp_path_factory):
    """kind -> checkpoint folder: the session's tiny BERT ("a"), and an ensemble, a TF-IDF, a GRU and a
    gemma-ko trained here on the same splits."""
    from kosent.config import DataConfig, TrainConfig
    from kosent.data import make_splits
    from kosent.ensemble import build_ensemble
    from kosent.manifest import read_manifest
    from kosent.train import fit_local

    root = tmp_path_factory.mktemp("serve-kinds")
    data = DataConfig(train_size=1000, val_size=200, test_size=200)
    splits = make_splits(data)
    tiny = read_manifest(serve_checkpoints["a"])["checkpoint"]
    out = {"tiny": str(tiny)}
    out["tfidf"] = str(fit_local(TrainConfig(model="tfidf", data=data), splits=splits, out_dir=root / "tfidf").checkpoint)
    rnn = TrainConfig(model="rnn", epochs=1, max_steps=10, batch_size=32, lr=2e-3, max_length=64, data=data)
    out["rnn"] = str(fit_local(rnn, splits=splits, out_dir=root / "rnn").checkpoint)
    gemma = TrainConfig(model="gemma-ko", epochs=1, max_steps=2, batch_size=16, lr=5e-5, max_length=64,
                        frozen_layers=22, data=data)
    out["gemma"] = str(fit_local(gemma, splits=splits, out_dir=root / "gemma").checkpoint)
    out["ensemble"] = build_ensemble(tiny, root / "ensemble", splits, progress=lambda _: None)["checkpoint"]
    return out


@pytest.fixture(scope="module")
def kinds_url(ray_cluster, kind_checkpoints, free_port):
    from ray import serve

    from kosent.serve import app_builder

    port = free_port(int(os.environ.get("KOSENT_TEST_KINDS_PORT", "8126")))
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    models = {k: v for k, v in kind_checkpoints.items() if k != "tiny"}
    serve.run(app_builder({"checkpoint": kind_checkpoints["tiny"], "models": models, "num_cpus": 0.5,
                           "max_replicas": 1}), name="kinds", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_serves_predict_and_model(kinds_url, kind_checkpoints, kind):
    from kosent.predict import Predictor

    name = "default" if kind == "tiny" else kind
    expected = Predictor.from_checkpoint(kind_checkpoints[kind]).predict(PROBES)
    r = requests.post(kinds_url + "/predict", json={"texts": PROBES, "model": name}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == name
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["probability"] == pytest.approx(want.probability, abs=1e-4)
        assert got["label"] == want.label

    info = requests.get(kinds_url + "/model", params={"name": name}, timeout=120)
    assert info.status_code == 200, info.text
    info = info.json()
    assert info["model"] == name and info["checkpoint"] == kind_checkpoints[kind]
    assert info["label_names"] == ["negative", "positive"]
    model_type = {"tiny": "bert", "ensemble": "bert", "tfidf": "tfidf", "rnn": "kosent-rnn",
                  "gemma": "kosent-gemma-mean"}[kind]
    assert info["model_type"] == model_type, info["model_type"]
    # Forward passes run traced (no GIL held) wherever the trace matches the model; EmbeddingGemma's mask is
    # built with vmap, which the tracer cannot record, so it runs eager and says why.
    forward = {"tiny": "traced", "ensemble": "traced", "tfidf": "tfidf", "rnn": "traced", "gemma": "eager"}[kind]
    assert info["forward"] == forward, (info["forward"], info["forward_note"])
    assert (info["forward_note"] is not None) == (kind == "gemma"), info["forward_note"]
    if kind == "tfidf":
        assert info["max_length"] is None and info["limits"]["max_length_tokens"] is None  # characters, no tokens
    else:
        assert info["max_length"] == 64 and info["limits"]["max_length_tokens"] == 64
    assert requests.get(kinds_url + "/healthz", timeout=60).status_code == 200
