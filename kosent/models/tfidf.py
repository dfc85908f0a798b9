"""TF-IDF character n-grams + logistic regression: the cheap baseline every BERT number is measured against.

Saved without pickle: the vocabulary and settings as JSON, the idf and weights as safetensors, so any
tool can read the model and loading it runs no code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from kosent.text import normalize


class TfidfClassifier:
    """Binary classifier; ``predict_proba`` returns P(label == 1) per text."""

    def __init__(self, ngram_range: tuple[int, int] = (1, 4), min_df: int = 2, c: float = 4.0) -> None:
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.c = c
        self.vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=ngram_range, min_df=min_df, sublinear_tf=True, max_features=300_000
        )
        self.clf = LogisticRegression(C=c, max_iter=2000)

    def fit(self, texts: list[str], labels: list[int]) -> TfidfClassifier:
        x = self.vectorizer.fit_transform([normalize(t) for t in texts])
        self.clf.fit(x, np.asarray(labels))
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        x = self.vectorizer.transform([normalize(t) for t in texts])
        return self.clf.predict_proba(x)[:, 1]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = {k: int(v) for k, v in self.vectorizer.vocabulary_.items()}
        settings = {"ngram_range": list(self.ngram_range), "min_df": self.min_df, "c": self.c, "vocabulary": vocab}
        (folder / "tfidf.json").write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        save_file(
            {
                "idf": self.vectorizer.idf_.astype(np.float64),
                "coef": self.clf.coef_.astype(np.float64),
                "intercept": self.clf.intercept_.astype(np.float64),
                "classes": self.clf.classes_.astype(np.int64),
            },
            str(folder / "tfidf.safetensors"),
        )

    @classmethod
    def load(cls, folder: str | Path) -> TfidfClassifier:
        folder = Path(folder)
        settings = json.loads((folder / "tfidf.json").read_text(encoding="utf-8"))
        arrays = load_file(str(folder / "tfidf.safetensors"))
        model = cls(tuple(settings["ngram_range"]), settings["min_df"], settings["c"])
        model.vectorizer.vocabulary_ = settings["vocabulary"]
        model.vectorizer.idf_ = arrays["idf"]
        model.clf.coef_ = arrays["coef"]
        model.clf.intercept_ = arrays["intercept"]
        model.clf.classes_ = arrays["classes"]
        return model
