"""The rules every 4xx follows: parsing a ``POST /predict`` body and its headers into texts, a model name and
a deadline, or an :class:`ApiError` naming the field at fault. Pure functions, no Ray: unit-tested directly.
"""

from __future__ import annotations

import json
import math

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from kosent.text import normalize

#: The request header that shortens a request's deadline below the server's ``request_timeout_s``.
DEADLINE_HEADER = "X-Request-Timeout-S"


class ApiError(Exception):
    """A 4xx/5xx answer: ``{"error": code, "field": field, "detail": message}``."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field, self.headers = status, code, detail, field, headers

    def response(self) -> JSONResponse:
        body = {"error": self.code, "field": self.field, "detail": self.detail}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class PredictRequest(BaseModel):
    """Body of ``POST /predict`` (documentation; parsing is done by :func:`parse_predict_body`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "이 영화 정말 재미있어요"},
                                                              {"texts": ["최고의 영화", "시간 낭비"], "model": "default"}]})
    text: str | None = Field(None, description="one text (or use 'texts')")
    texts: list[str] | None = Field(None, description="several texts, answered in order")
    model: str | None = Field(None, description="a multiplexed model name; default model if omitted")


class PredictionOut(BaseModel):
    text: str
    label: str
    probability: float = Field(description="probability of the positive label (id 1)")
    scores: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]
    model: str


def parse_predict_body(raw: bytes, content_type: str | None, max_texts: int,
                       max_text_chars: int) -> tuple[list[str], str | None]:
    """(texts, model name or None) from a request body, or an :class:`ApiError` naming the field."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON with 'Content-Type: application/json' (got {content_type or 'no Content-Type'})",
                       "Content-Type")
    limit = max_texts * max_text_chars * 4 + 65536
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"request body is {len(raw)} bytes; the limit is {limit}", "body")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, "malformed_json", f"body is not UTF-8 ({e.reason} at byte {e.start})", "body") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       "body") from e
    except RecursionError:  # [[[[...]]]]: Python's parser gives up on deep nesting
        raise ApiError(400, "malformed_json", "body is nested too deeply to be a predict request; send "
                       '{"text": "..."} or {"texts": [...]}', "body") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_body", f'body must be a JSON object like {{"text": "..."}}, got {type(doc).__name__}',
                       "body")
    unknown = sorted(set(doc) - {"text", "texts", "model"})
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s) {', '.join(unknown)}; allowed: text, texts, model",
                       unknown[0])
    if ("text" in doc) == ("texts" in doc):
        raise ApiError(422, "missing_text" if "text" not in doc else "conflicting_fields",
                       "give exactly one of 'text' (a string) or 'texts' (a list of strings)", "text")
    if "text" in doc:
        texts, names = [doc["text"]], ["text"]
    else:
        texts = doc["texts"]
        if not isinstance(texts, list):
            raise ApiError(422, "invalid_type", f"'texts' must be a list of strings, got {type(texts).__name__}", "texts")
        if not texts:
            raise ApiError(422, "empty_list", "'texts' is empty; send at least one text", "texts")
        if len(texts) > max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts in one request; the limit is {max_texts}", "texts")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, value in zip(names, texts, strict=True):
        if not isinstance(value, str):
            raise ApiError(422, "invalid_type", f"'{name}' must be a string, got {type(value).__name__}", name)
        if len(value) > max_text_chars:
            raise ApiError(413, "text_too_long", f"'{name}' has {len(value)} characters; the limit is {max_text_chars} "
                           "(texts under the limit are truncated to the model's max_length tokens)", name)
        if not normalize(value):
            raise ApiError(422, "empty_text", f"'{name}' is empty (or only whitespace)", name)
    model = doc.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ApiError(422, "invalid_type", "'model' must be a non-empty string naming a model", "model")
    return texts, model



def parse_deadline(header: str | None, request_timeout_s: float) -> float:
    """Seconds this request may take: ``request_timeout_s``, or less when the client's
    ``X-Request-Timeout-S`` header asks for less (a longer one is capped: the server's limit holds)."""
    if header is None or not header.strip():
        return request_timeout_s
    try:
        value = float(header.strip())
    except ValueError:
        raise ApiError(400, "invalid_header", f"{DEADLINE_HEADER} must be a number of seconds, got {header[:40]!r}",
                       DEADLINE_HEADER) from None
    if not math.isfinite(value) or value <= 0:
        raise ApiError(400, "invalid_header", f"{DEADLINE_HEADER} must be a positive number of seconds, got {value}",
                       DEADLINE_HEADER)
    return min(value, request_timeout_s)
