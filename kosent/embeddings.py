"""Sentence embeddings as the classifier sees them, and their 2-D / 3-D projections (PCA, t-SNE).

The embedding of a text is the input of the model's classification head, captured with a forward
pre-hook in the same pass that produces the probabilities (one pass, no second model call):

- BERT-style models (``BertForSequenceClassification``: e5-small-ko, tiny, ...): the pooled first-token
  vector (``tanh(W h_[CLS])``) that ``classifier`` receives (dropout is off in eval mode).
- Mean-pooled heads (``--pooling mean``: BERT mean pooling, gemma-ko): the masked mean of the last layer
  over the real tokens, which is what their ``classifier`` receives.
- Heads that take the whole sequence (RoBERTa / XLM-R / ELECTRA ``ClassificationHead``): its first token.
- The GRU baselines: the masked mean of the GRU states that their ``classifier`` receives.
- TF-IDF: the sparse TF-IDF vector the logistic regression sees; projections reduce it with a
  truncated SVD first (PCA without centring, which would densify it).
- A BERT + TF-IDF ensemble checkpoint: the BERT part's vector (its probabilities are the mixed ones).

Projections cap the number of points (a stratified, seeded sample) so t-SNE stays fast on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from kosent import batches
from kosent.predict import Predictor, TfidfPredictor
from kosent.text import normalize

HEAD_NAMES = ("classifier", "score")  # attribute of the classification head, in the order tried
TSNE_INPUT_DIMS = 50  # t-SNE runs on the first PCA components: faster, and the usual practice
# Threads for PCA / t-SNE. OpenMP threads spin while they wait: on a machine shared with other jobs two
# threads made t-SNE of 120 points take 11 s instead of 0.6 s. One thread does 2,000 points in under a minute.
PROJECTION_THREADS = 1
PROGRESS_EVERY_S = 10.0  # a progress line at most this often while scoring


def _head(model: torch.nn.Module) -> torch.nn.Module:
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ValueError(
        f"{type(model).__name__}: no classification head named {' or '.join(HEAD_NAMES)}; "
        "cannot tell which vector the classifier sees"
    )


def forward(
    predictor: Predictor,
    texts: Sequence[str],
    with_embeddings: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | sp.csr_matrix | None]:
    """``(probs, embeddings)`` of ``texts`` in the order given: probabilities exactly as
    ``predictor.predict_proba`` computes them, and the classifier's input per text (``None`` when not
    asked for). ``progress`` gets a line every ``PROGRESS_EVERY_S`` seconds (scoring 5,000 texts with a
    transformer on a CPU takes minutes; fast models print nothing)."""
    texts = list(texts)
    if isinstance(predictor, TfidfPredictor):
        probs = predictor.predict_proba(texts)
        emb = None
        if with_embeddings:
            emb = predictor.tfidf.vectorizer.transform([normalize(t) for t in texts]).tocsr()
        return probs, emb
    n_labels = len(predictor.label_names)
    if not texts:
        return np.zeros((0, n_labels), dtype=np.float32), (np.zeros((0, 0), dtype=np.float32) if with_embeddings else None)
    model, tokenizer = predictor.model, predictor.tokenizer
    model.eval()
    captured: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        captured.append((x[:, 0] if x.dim() == 3 else x).detach().float().cpu())

    hook = _head(model).register_forward_pre_hook(grab) if with_embeddings else None
    enc = tokenizer([normalize(t) for t in texts], truncation=True, max_length=predictor.max_length)
    encoded = batches.Encoded(input_ids=list(enc["input_ids"]), labels=[0] * len(texts))
    probs = np.zeros((len(texts), n_labels), dtype=np.float32)
    emb: np.ndarray | None = None
    t0 = last = time.perf_counter()
    try:
        with torch.inference_mode():
            stream = batches.iterate(encoded, predictor.batch_size, tokenizer.pad_token_id, shuffle=False)
            for i, (idx, batch) in enumerate(stream):
                logits = model(input_ids=batch["input_ids"].to(predictor.device),
                               attention_mask=batch["attention_mask"].to(predictor.device)).logits
                probs[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                if hook is not None:
                    vectors = captured.pop().numpy()
                    if emb is None:
                        emb = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
                    emb[idx] = vectors
                now = time.perf_counter()
                if progress and now - last >= PROGRESS_EVERY_S:
                    done = min(len(texts), (i + 1) * predictor.batch_size)
                    progress(f"scored {done:,}/{len(texts):,} texts ({done / (now - t0):.0f} texts/s)")
                    last = now
    finally:
        if hook is not None:
            hook.remove()
    if getattr(predictor, "tfidf", None) is not None:
        # An ensemble checkpoint (kosent.ensemble) mixes in its TF-IDF model exactly as predict_proba does;
        # the embeddings stay the transformer's.
        from kosent.ensemble import mix

        probs = mix(probs, predictor.tfidf.predict_proba(texts), predictor.tfidf_weight).astype(np.float32)
    return probs, emb


def sample_indices(labels: Sequence[int], max_points: int | None, seed: int = 42) -> np.ndarray:
    """At most ``max_points`` indices, each label keeping its share (stratified, seeded), in ascending order."""
    y = np.asarray(labels)
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    if max_points is None or len(y) <= max_points:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * max_points).astype(int)
    for k in np.argsort(-(counts / len(y) * max_points - quota))[: max_points - quota.sum()]:
        quota[k] += 1  # largest remainders first, so the quotas add up to max_points
    picked = [rng.choice(np.flatnonzero(y == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def _reduce(x: np.ndarray | sp.spmatrix, n: int, seed: int) -> np.ndarray:
    """The first ``n`` principal components (a truncated SVD for sparse TF-IDF vectors)."""
    from sklearn.decomposition import PCA, TruncatedSVD

    if sp.issparse(x):
        n = min(n, x.shape[1] - 1, x.shape[0] - 1)
        return TruncatedSVD(n_components=max(1, n), random_state=seed).fit_transform(x)
    n = min(n, x.shape[1], x.shape[0])
    return PCA(n_components=n, random_state=seed).fit_transform(np.asarray(x, dtype=np.float64))


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Zero columns up to ``n`` (a 2-wide embedding still plots in 3-D)."""
    return x if x.shape[1] >= n else np.hstack([x, np.zeros((x.shape[0], n - x.shape[1]))])


def project(
    x: np.ndarray | sp.spmatrix,
    seed: int = 42,
    progress: Callable[[str], None] | None = None,
    threads: int = PROJECTION_THREADS,
) -> dict[str, np.ndarray]:
    """``{"pca": (n, 3), "tsne_2d": (n, 2), "tsne_3d": (n, 3)}``.

    PCA's first two components are its best 2-D view, so one 3-component fit serves both plots; t-SNE
    is fitted separately in 2 and 3 dimensions (the first two axes of a 3-D t-SNE are not a 2-D t-SNE),
    on the first ``TSNE_INPUT_DIMS`` principal components. Needs at least 10 points.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = x.shape[0]
    if n < 10:
        raise ValueError(f"PCA / t-SNE views need at least 10 points, got {n}")
    with threadpool_limits(limits=threads):
        out = {"pca": _pad(_reduce(x, 3, seed), 3)}
        base = _reduce(x, TSNE_INPUT_DIMS, seed)
        perplexity = float(min(30.0, (n - 1) / 3))
        for dims in (2, 3):
            t0 = time.perf_counter()
            tsne = TSNE(n_components=dims, perplexity=perplexity, init="pca", learning_rate="auto",
                        random_state=seed)
            out[f"tsne_{dims}d"] = tsne.fit_transform(base)
            if progress:
                progress(f"t-SNE {dims}-D of {n} points in {time.perf_counter() - t0:.1f}s")
    return out


__all__ = ["forward", "project", "sample_indices"]
