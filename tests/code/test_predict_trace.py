"""A Predictor's traced forward (what a Serve replica runs by default): the eager model's probabilities on real
NSMC reviews for every model kind that traces; a model or an input that cannot be traced says why and the
predictor stays eager, unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kosent.models import load_model_and_tokenizer
from kosent.predict import Predictor
from kosent.serve.models import WARMUP_TEXTS

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def reviews(nsmc_path) -> list[str]:
    """200 real reviews, 1 to 140 characters: many batch shapes, padded and not."""
    lines = nsmc_path.read_text(encoding="utf-8").splitlines()[1:201]
    return [line.split("\t")[1] for line in lines]


def _predictor(name: str) -> Predictor:
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(name, LABELS)
    return Predictor(model.eval(), tokenizer, {"label_names": LABELS}, max_length=64, batch_size=16)


@pytest.mark.parametrize("name", ["tiny", "rnn", "birnn", "e5-small-ko"])
def test_traced_forward_gives_the_eager_probabilities(name, reviews):
    predictor = _predictor(name)
    eager = predictor.predict_proba(reviews)
    one = predictor.predict_proba(reviews[:1])

    assert predictor.trace(WARMUP_TEXTS) is None
    assert predictor.forward_mode == "traced"
    assert isinstance(predictor._logits, torch.jit.ScriptModule)
    np.testing.assert_allclose(predictor.predict_proba(reviews), eager, atol=1e-4)
    np.testing.assert_allclose(predictor.predict_proba(reviews[:1]), one, atol=1e-4)  # a batch of one, unpadded
    assert [p.label for p in predictor.predict(reviews[:20])] == [LABELS[int(k)] for k in eager[:20].argmax(1)]


class _LengthBranch(torch.nn.Module):
    """A model whose Python branches on the sequence length: a trace records one branch only."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        return SimpleNamespace(logits=logits if input_ids.shape[1] > 8 else -logits)


def test_a_trace_that_differs_from_the_model_is_refused(reviews):
    predictor = _predictor("tiny")
    predictor.model = _LengthBranch(predictor.model).eval()
    eager = predictor.predict_proba(reviews)

    why = predictor.trace(WARMUP_TEXTS)
    assert why is not None and why.startswith("the trace differs from the model by"), why
    assert predictor.forward_mode == "eager"
    np.testing.assert_array_equal(predictor.predict_proba(reviews), eager)


def test_untraceable_inputs_and_models_say_why(reviews, tmp_path):
    predictor = _predictor("tiny")
    assert predictor.trace(["같은 길이", "같은 길이"]) == "the tracing texts must have different lengths (a padded batch)"
    assert predictor.forward_mode == "eager"

    from kosent.config import DataConfig, TrainConfig
    from kosent.train import fit_local

    cfg = TrainConfig(model="tfidf", data=DataConfig(train_size=300, val_size=64, test_size=64))
    tfidf = Predictor.from_checkpoint(fit_local(cfg, out_dir=tmp_path).checkpoint)
    assert tfidf.trace(WARMUP_TEXTS) == "no torch model (TF-IDF)" and tfidf.forward_mode == "tfidf"
