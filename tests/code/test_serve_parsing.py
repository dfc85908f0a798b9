"""The request parser and the settings of the Serve application, without Ray: every rule a 4xx follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kosent.serve.parsing import DEADLINE_HEADER, ApiError, parse_deadline, parse_predict_body
from kosent.serve.settings import ServeArgs

JSON = "application/json"


def parse(raw: bytes | str, content_type: str | None = JSON, max_texts: int = 64, max_chars: int = 2000):
    return parse_predict_body(raw.encode() if isinstance(raw, str) else raw, content_type, max_texts, max_chars)


def refused(raw: bytes | str, content_type: str | None = JSON, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(raw, content_type, **kw)
    err = info.value
    assert err.detail and err.status in (400, 413, 415, 422)
    return err


def test_one_text_several_texts_and_a_model():
    assert parse('{"text": "좋아요"}') == (["좋아요"], None)
    assert parse('{"texts": ["최고", "별로"], "model": "b"}') == (["최고", "별로"], "b")
    assert parse('{"text": "좋아요"}', "application/json; charset=utf-8") == (["좋아요"], None)
    assert parse('{"text": "좋아요"}', "application/vnd.kosent+json") == (["좋아요"], None)


@pytest.mark.parametrize(("raw", "content_type", "status", "code", "field"), [
    ('{"text": "abc"', JSON, 400, "malformed_json", "body"),
    (b'{"text": "\xff\xfe"}', JSON, 400, "malformed_json", "body"),
    ("[" * 200_000, JSON, 400, "malformed_json", "body"),  # deep nesting under the size limit
    ('{"a":' * 60_000 + "1" + "}" * 60_000, JSON, 400, "malformed_json", "body"),
    ("좋아요", "text/plain", 415, "unsupported_media_type", "Content-Type"),
    ('{"text": "abc"}', None, 415, "unsupported_media_type", "Content-Type"),
    ('["좋아요"]', JSON, 422, "invalid_body", "body"),
    ("{}", JSON, 422, "missing_text", "text"),
    ('{"text": "a", "texts": ["b"]}', JSON, 422, "conflicting_fields", "text"),
    ('{"txt": "좋아요"}', JSON, 422, "unknown_field", "txt"),
    ('{"text": ""}', JSON, 422, "empty_text", "text"),
    ('{"text": " \\n\\t\u3000"}', JSON, 422, "empty_text", "text"),
    ('{"text": 5}', JSON, 422, "invalid_type", "text"),
    ('{"texts": "좋아요"}', JSON, 422, "invalid_type", "texts"),
    ('{"texts": []}', JSON, 422, "empty_list", "texts"),
    ('{"texts": ["좋아요", null]}', JSON, 422, "invalid_type", "texts[1]"),
    ('{"texts": ["좋아요", "싫어요", "  "]}', JSON, 422, "empty_text", "texts[2]"),
    (json.dumps({"texts": ["좋아요"] * 65}), JSON, 413, "too_many_texts", "texts"),
    (json.dumps({"text": "가" * 2001}), JSON, 413, "text_too_long", "text"),
    (json.dumps({"texts": ["좋아요", "나" * 2001]}), JSON, 413, "text_too_long", "texts[1]"),
    ('{"text": "좋아요", "model": 3}', JSON, 422, "invalid_type", "model"),
    ('{"text": "좋아요", "model": ""}', JSON, 422, "invalid_type", "model"),
])
def test_bad_bodies_get_the_status_code_and_field(raw, content_type, status, code, field):
    err = refused(raw, content_type)
    assert (err.status, err.code, err.field) == (status, code, field), err.detail


def test_body_size_limit_follows_the_text_limits():
    err = refused(json.dumps({"text": "가" * 100}), max_texts=1, max_chars=10)
    assert err.status == 413 and err.code == "text_too_long"
    big = json.dumps({"text": "a"}) + " " * (1 * 10 * 4 + 65536)
    err = refused(big, max_texts=1, max_chars=10)
    assert (err.status, err.code, err.field) == (413, "body_too_large", "body")


def test_texts_at_the_limits_are_accepted():
    texts, _ = parse(json.dumps({"texts": ["가" * 2000] * 64}, ensure_ascii=False))
    assert len(texts) == 64


def test_error_response_is_json_naming_the_field():
    err = refused('{"texts": ["좋아요", null]}')
    resp = err.response()
    assert resp.status_code == 422
    assert json.loads(resp.body) == {"error": "invalid_type", "field": "texts[1]", "detail": err.detail}


def test_deadline_header_shortens_but_never_lengthens():
    assert parse_deadline(None, 30.0) == 30.0
    assert parse_deadline("", 30.0) == 30.0
    assert parse_deadline("2.5", 30.0) == 2.5
    assert parse_deadline(" 120 ", 30.0) == 30.0
    for bad in ("soon", "0", "-1", "nan", "inf"):
        with pytest.raises(ApiError) as info:
            parse_deadline(bad, 30.0)
        assert (info.value.status, info.value.code, info.value.field) == (400, "invalid_header", DEADLINE_HEADER)


def test_settings_defaults_leave_room_for_refusals():
    args = ServeArgs(checkpoint="/nonexistent")
    assert args.ongoing_limit() == 64 and args.admission
    assert 0 < args.admitted_limit() < args.ongoing_limit()
    assert ServeArgs(checkpoint="/x", max_batch_size=32).ongoing_limit() == 128
    assert ServeArgs(checkpoint="/x", max_ongoing_requests=2).admitted_limit() == 1
    with pytest.raises(ValueError, match="max_replicas"):
        ServeArgs(checkpoint="/x", min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="no model"):
        ServeArgs()


def test_old_import_path_is_the_package(monkeypatch):
    import kosent.serve

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # `serve/` sits at the repository root
    import serve.app

    assert serve.app.app_builder is kosent.serve.app_builder
    assert serve.app.ServeArgs is kosent.serve.ServeArgs


def test_page_is_a_static_file_of_the_package():
    from kosent.serve.page import PAGE_FILE, render_page

    assert PAGE_FILE.is_file()
    html = render_page("/a<b", 'x"y', ['x"y', "b"], auth=False)
    assert "__ROOT__" not in html and "__OPTIONS__" not in html
    assert '"/a\\u003cb"' in html  # the route prefix cannot close the script
    assert '<option value="x&quot;y" selected>x&quot;y</option>' in html
    assert 'id="token-label" hidden' in html
    assert "http://" not in html and "https://" not in html


def test_config_yaml_imports_the_package_and_its_args_validate():
    import importlib

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve" / "config.yaml").read_text(encoding="utf-8"))
    (app,) = cfg["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert module == "kosent.serve"
    assert callable(getattr(importlib.import_module(module), attr))
    args = ServeArgs(**app["args"])
    assert args.admission and args.request_timeout_s == 30 and args.max_queued_requests == 64
    assert cfg["http_options"]["host"] == "127.0.0.1"
