"""The Serve application for real: Serve on the session cluster, HTTP on 127.0.0.1, tiny checkpoints.

One Serve start per module (proxy on 127.0.0.1, port $KOSENT_TEST_SERVE_PORT or 8123, a free one if
that is taken); apps with different settings sit side by side under their own route prefixes:

    /         the default model (checkpoint a) and a second one, "b" (multiplexing)
    /auth     bearer-token auth on
    /tight    admission against a short deadline (X-Request-Timeout-S): overload answers 503 at once
    /slow     admission off, slow batches: the replica's own timeout answers 504
    /kinds    every model kind kosent trains (BERT, ensemble, TF-IDF, RNN) behind one endpoint
    /scale    autoscaling 1 -> 2 replicas under load
    /swap     deployed like `serve deploy` (declarative), hot-swapped through user_config
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from procs import decode, socket_inodes, tcp_rows  # tests/integration/procs.py

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
PROBE = "이 영화 정말 최고예요 배우들 연기가 좋았어요"


def _deploy(name: str, prefix: str, **args) -> None:
    from ray import serve

    from kosent.serve import app_builder

    serve.run(app_builder(args), name=name, route_prefix=prefix)


def _post(url: str, body=None, timeout: float = 30, **kw) -> requests.Response:
    return requests.post(url + "/predict", json=body, timeout=timeout, **kw)


def _nsmc_reviews(path: Path, n: int) -> list[str]:
    """The last ``n`` non-empty reviews of the real NSMC file, as written (no normalization)."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t")[1] for line in reversed(lines) if len(line.split("\t")) == 3 and line.split("\t")[1].strip()]
    return texts[:n]


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    return [decode(fields[1]) for fields in tcp_rows(pid, socket_inodes([pid])) if fields[3] == "0A"]  # 0A: LISTEN


@pytest.fixture(scope="module")
def base_url(ray_cluster, free_port):
    from ray import serve

    port = free_port(int(os.environ.get("KOSENT_TEST_SERVE_PORT", "8123")))
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def ckpt(serve_checkpoints):
    """name -> (manifest path, checkpoint folder)."""
    from kosent.manifest import read_manifest

    return {k: (str(m), read_manifest(m)["checkpoint"]) for k, m in serve_checkpoints.items()}


@pytest.fixture(scope="module")
def offline(ckpt):
    from kosent.predict import Predictor

    return {k: Predictor.from_checkpoint(c) for k, (_, c) in ckpt.items()}


@pytest.fixture(scope="module")
def main_url(base_url, ckpt):
    _deploy("main", "/", manifest=ckpt["a"][0], models={"b": ckpt["b"][0]}, num_cpus=0.5, max_replicas=1,
            max_batch_size=16, batch_wait_timeout_s=0.02, max_texts=64, max_text_chars=2000)
    return base_url


@pytest.mark.timeout(900)
def test_health_model_docs_and_page(main_url, ckpt):
    r = requests.get(main_url + "/healthz", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["model"] == "default"

    info = requests.get(main_url + "/model", timeout=30).json()
    assert info["model"] == "default" and info["checkpoint"] == ckpt["a"][1]
    assert info["manifest"] == ckpt["a"][0]
    assert info["label_names"] == ["negative", "positive"] and info["label2id"] == {"negative": 0, "positive": 1}
    assert "val_accuracy" in info["metrics"] and info["created_at"]
    assert {m["name"]: m["default"] for m in info["models"]} == {"default": True, "b": False}

    assert requests.get(main_url + "/docs", timeout=30).status_code == 200
    spec = requests.get(main_url + "/openapi.json", timeout=30).json()
    assert "/predict" in spec["paths"] and "/healthz" in spec["paths"]
    page = requests.get(main_url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"/predict"' in page.text or 'ROOT + "/predict"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no external assets


@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/net/tcp").is_file(), reason="reads listening sockets from /proc (Linux)")
def test_replica_and_proxy_listen_on_loopback_only(main_url):
    pid = requests.get(main_url + "/stats", timeout=30).json()["pid"]
    replica = _listening(pid)
    assert replica, "the replica listens on its Ray ports"
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in replica), replica
    port = int(main_url.rsplit(":", 1)[1])
    proxy = [(ip, p) for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
             for ip, p in [decode(line.split()[1])] if p == port and line.split()[3] == "0A"]
    assert proxy and all(ipaddress.ip_address(ip).is_loopback for ip, _ in proxy), proxy


@pytest.mark.timeout(300)
def test_same_labels_as_offline_predictor_on_200_nsmc_reviews(main_url, offline, nsmc_path):
    texts = _nsmc_reviews(nsmc_path, 200)
    assert len(texts) == 200
    chunks = [texts[i : i + 10] for i in range(0, len(texts), 10)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda chunk: _post(main_url, {"texts": chunk}), chunks))
    served = []
    for chunk, r in zip(chunks, answers, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "default"
        assert [p["text"] for p in body["predictions"]] == chunk
        served.extend(body["predictions"])
    expected = offline["a"].predict(texts)
    mismatched = []
    for s, e in zip(served, expected, strict=True):
        assert s["probability"] == pytest.approx(e.probability, abs=1e-4)
        assert s["scores"] == pytest.approx(e.scores, abs=1e-4)
        # Padding differs between the two batchings; a label can only flip on a tie at 0.5.
        if s["label"] != e.label and abs(e.probability - 0.5) > 1e-4:
            mismatched.append((s, e))
    assert not mismatched


@pytest.mark.timeout(300)
def test_concurrent_requests_are_batched(main_url):
    before = requests.get(main_url + "/stats", timeout=30).json()
    barrier = threading.Barrier(24)

    def one(i: int) -> int:
        barrier.wait(timeout=30)
        return _post(main_url, {"text": f"{PROBE} {i}"}).status_code

    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(24)))
    assert codes == [200] * 24
    after = requests.get(main_url + "/stats", timeout=30).json()
    # Only single-text requests were sent since `before`: a new batch of more than one text holds texts
    # from different requests.
    new = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    grouped = {k: v for k, v in new.items() if v > 0}
    print(f"batch sizes of 24 concurrent requests: {grouped}")
    assert sum(k * v for k, v in grouped.items()) == 24
    assert max(grouped) > 1, grouped
    assert after["max_batch_size"] == 16


@pytest.mark.timeout(300)
def test_multiplexed_models_by_body_and_header(main_url, offline, ckpt):
    a = offline["a"].predict([PROBE])[0].probability
    b = offline["b"].predict([PROBE])[0].probability
    assert abs(a - b) > 1e-4, "the two test checkpoints must answer differently"

    r = _post(main_url, {"text": PROBE, "model": "b"})
    assert r.status_code == 200 and r.json()["model"] == "b"
    assert r.json()["predictions"][0]["probability"] == pytest.approx(b, abs=1e-4)
    r = _post(main_url, {"text": PROBE}, headers={"serve_multiplexed_model_id": "b"})
    assert r.status_code == 200 and r.json()["model"] == "b"
    assert r.json()["predictions"][0]["probability"] == pytest.approx(b, abs=1e-4)
    r = _post(main_url, {"text": PROBE})
    assert r.json()["model"] == "default"
    assert r.json()["predictions"][0]["probability"] == pytest.approx(a, abs=1e-4)
    r = _post(main_url, {"text": PROBE, "model": "default"})
    assert r.json()["model"] == "default"

    r = _post(main_url, {"text": PROBE, "model": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "model" and "nope" in r.json()["detail"]
    r = _post(main_url, {"text": PROBE, "model": "b"}, headers={"serve_multiplexed_model_id": "default"})
    assert r.status_code == 422 and r.json()["field"] == "model"

    info = requests.get(main_url + "/model", timeout=30).json()
    models = {m["name"]: m for m in info["models"]}
    assert models["b"]["loaded"] and models["b"]["checkpoint"] == ckpt["b"][1]
    info_b = requests.get(main_url + "/model", params={"name": "b"}, timeout=30).json()
    assert info_b["model"] == "b" and info_b["checkpoint"] == ckpt["b"][1]
    r = requests.get(main_url + "/model", params={"name": "nope"}, timeout=30)
    assert r.status_code == 404 and r.json()["field"] == "name"


BAD_INPUTS = [
    # (description, kwargs for requests.post, status, field)
    ("malformed JSON", {"data": b'{"text": "abc"', "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("deeply nested JSON, 200 KB", {"data": b"[" * 200_000, "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("nested objects", {"data": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                        "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("deadline header not a number", {"json": {"text": "좋아요"}, "headers": {"X-Request-Timeout-S": "soon"}}, 400,
     "X-Request-Timeout-S"),
    ("not UTF-8", {"data": b'{"text": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("text/plain", {"data": "좋아요", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("form-encoded", {"data": {"text": "좋아요"}}, 415, "Content-Type"),
    ("no content type", {"data": b'{"text": "abc"}'}, 415, "Content-Type"),
    ("a JSON list", {"json": ["좋아요"]}, 422, "body"),
    ("no text", {"json": {}}, 422, "text"),
    ("both text and texts", {"json": {"text": "a", "texts": ["b"]}}, 422, "text"),
    ("unknown field", {"json": {"txt": "좋아요"}}, 422, "txt"),
    ("empty text", {"json": {"text": ""}}, 422, "text"),
    ("whitespace text", {"json": {"text": " \n\t　"}}, 422, "text"),
    ("number as text", {"json": {"text": 5}}, 422, "text"),
    ("texts not a list", {"json": {"texts": "좋아요"}}, 422, "texts"),
    ("empty texts", {"json": {"texts": []}}, 422, "texts"),
    ("null in texts", {"json": {"texts": ["좋아요", None]}}, 422, "texts[1]"),
    ("empty string in texts", {"json": {"texts": ["좋아요", "싫어요", "  "]}}, 422, "texts[2]"),
    ("too many texts", {"json": {"texts": ["좋아요"] * 65}}, 413, "texts"),
    ("over-long text", {"json": {"text": "가" * 2001}}, 413, "text"),
    ("over-long text in texts", {"json": {"texts": ["좋아요", "나" * 2001]}}, 413, "texts[1]"),
    ("model not a string", {"json": {"text": "좋아요", "model": 3}}, 422, "model"),
    ("unknown model", {"json": {"text": "좋아요", "model": "gpt"}}, 404, "model"),
]


@pytest.mark.timeout(300)
def test_bad_inputs_get_4xx_naming_the_field_and_the_server_keeps_serving(main_url):
    failures = []
    for what, kwargs, status, field in BAD_INPUTS:
        r = requests.post(main_url + "/predict", timeout=30, **kwargs)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != status or body.get("field") != field or not body.get("detail"):
            failures.append(f"{what}: {r.status_code} {r.text[:200]}")
    r = requests.get(main_url + "/predict", timeout=30)
    if r.status_code != 405 or r.json().get("error") != "method_not_allowed":
        failures.append(f"GET /predict: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)

    # Texts at the character limit are accepted and truncated to the model's max_length tokens.
    r = _post(main_url, {"texts": ["정말 재미있어요 " * 222, "좋아요"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    r = _post(main_url, {"texts": ["좋아요"] * 64})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 64
    assert requests.get(main_url + "/healthz", timeout=30).status_code == 200


@pytest.mark.timeout(600)
def test_bearer_token_auth_on_and_off(base_url, main_url, ckpt):
    from ray import serve

    _deploy("auth", "/auth", checkpoint=ckpt["a"][1], auth_token="s3cret-token", num_cpus=0.25, max_replicas=1)
    url = base_url + "/auth"
    try:
        r = _post(url, {"text": PROBE})
        assert r.status_code == 401 and r.json()["field"] == "Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        assert _post(url, {"text": PROBE}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert _post(url, {"text": PROBE}, headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        r = _post(url, {"text": PROBE}, headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("negative", "positive")
        assert requests.get(url + "/model", timeout=30).status_code == 401
        assert requests.get(url + "/stats", timeout=30).status_code == 401
        ok = requests.get(url + "/model", headers={"Authorization": "Bearer s3cret-token"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["auth"] is True
        assert requests.get(url + "/healthz", timeout=30).status_code == 200  # stays open
        page = requests.get(url + "/", timeout=30)
        assert page.status_code == 200 and '"/auth"' in page.text  # the page posts to /auth/predict
        # auth off (the main app): no token needed
        assert _post(main_url, {"text": PROBE}).status_code == 200
        assert requests.get(main_url + "/model", timeout=30).json()["auth"] is False
    finally:
        serve.delete("auth")


@pytest.mark.timeout(600)
def test_overload_is_refused_at_once_and_admitted_work_answered_in_time(base_url, ckpt, nsmc_path):
    from ray import serve

    _deploy("tight", "/tight", checkpoint=ckpt["a"][1], num_cpus=0.25, max_replicas=1, max_batch_size=16)
    url = base_url + "/tight"
    try:
        texts = _nsmc_reviews(nsmc_path, 64)
        assert _post(url, {"texts": texts}).status_code == 200  # warm: routing table known, live rate measured
        rate = requests.get(url + "/model", timeout=30).json()["admission"]["texts_per_s"]
        assert rate and rate > 0
        # A deadline of at least 1 s, and about three deadlines' worth of work arriving at once.
        deadline = max(1.0, 3 * 64 / rate)
        n = min(48, max(16, round(3 * deadline * rate / 64)))
        barrier = threading.Barrier(n)

        def one(i: int) -> tuple[int, float, dict, dict]:
            barrier.wait(timeout=30)
            t0 = time.perf_counter()
            r = _post(url, {"texts": texts}, timeout=60, headers={"X-Request-Timeout-S": f"{deadline:.3f}"})
            return r.status_code, time.perf_counter() - t0, r.headers, r.json()

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n)))
        codes = sorted(c for c, *_ in results)
        print(f"{n} x 64 texts at {rate:.0f} texts/s with a {deadline:.2f}s deadline: {codes}, "
              f"seconds {[round(s, 2) for _, s, *_ in results]}")
        assert set(codes) <= {200, 503}, "no 504: admitted work is answered in time"
        refused = [(s, h, b) for c, s, h, b in results if c == 503]
        answered = [s for c, s, *_ in results if c == 200]
        assert len(refused) >= 6 and answered
        assert max(s for s, _, _ in refused) < 1.0, "503 must come at once, not after waiting"
        for _, headers, body in refused:
            assert int(headers["Retry-After"]) >= 1
            assert body["error"] == "overloaded" and "deadline" in body["detail"]
        assert max(answered) < deadline + 1.0
        stats = requests.get(url + "/stats", timeout=30).json()
        assert stats["refused"] == len(refused) and stats["timeouts"] == 0
        assert _post(url, {"text": PROBE}).status_code == 200  # still serving
    finally:
        serve.delete("tight")


@pytest.mark.timeout(600)
def test_request_timeout_answers_504_and_the_replica_keeps_serving(base_url, ckpt):
    from ray import serve

    # Admission off (it would refuse this request at once): a lone text waits 2 s for its batch to fill
    # (adaptive wait off), longer than the 0.5 s request timeout; the replica's backstop answers 504.
    _deploy("slow", "/slow", checkpoint=ckpt["a"][1], num_cpus=0.25, max_replicas=1, request_timeout_s=0.5,
            max_batch_size=8, batch_wait_timeout_s=2.0, adaptive_batch_wait=False, admission=False)
    url = base_url + "/slow"
    try:
        t0 = time.perf_counter()
        r = _post(url, {"text": PROBE})
        took = time.perf_counter() - t0
        assert r.status_code == 504 and r.json()["error"] == "timeout", r.text
        assert took < 1.8
        assert requests.get(url + "/healthz", timeout=30).status_code == 200
        assert requests.get(url + "/stats", timeout=30).json()["timeouts"] == 1
    finally:
        serve.delete("slow")


@pytest.mark.timeout(600)
def test_autoscaling_from_one_to_two_replicas_under_load(base_url, ckpt):
    from ray import serve

    # Each request waits up to 0.25 s for a batch to fill, so 8 looping clients keep ~8 requests ongoing
    # against a target of 1 per replica.
    _deploy("scale", "/scale", checkpoint=ckpt["a"][1], num_cpus=0.25, min_replicas=1, max_replicas=2,
            target_ongoing_requests=1, upscale_delay_s=0, downscale_delay_s=600, max_batch_size=64,
            batch_wait_timeout_s=0.25, adaptive_batch_wait=False, autoscaling={"metrics_interval_s": 0.5, "look_back_period_s": 2})
    url = base_url + "/scale"

    def running() -> int:
        dep = serve.status().applications["scale"].deployments["KosentServer"]
        return dep.replica_states.get("RUNNING", 0)

    try:
        assert running() == 1
        stop, codes, lock = threading.Event(), [], threading.Lock()

        def client() -> None:
            while not stop.is_set() and len(codes) < 4000:
                code = _post(url, {"text": PROBE}, timeout=60).status_code
                with lock:
                    codes.append(code)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        t0, replicas = time.monotonic(), 1
        try:
            while time.monotonic() - t0 < 150 and replicas < 2:
                time.sleep(1)
                replicas = running()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        print(f"autoscaling: {replicas} replicas after {time.monotonic() - t0:.0f}s, {len(codes)} requests")
        assert replicas == 2
        assert codes and set(codes) == {200}
    finally:
        serve.delete("scale")


def _serve_deploy(config: dict, path: Path) -> None:
    """What `serve deploy config.yaml` does, for real: the CLI against the dashboard's REST API."""
    import ray._private.worker

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    address = "http://" + ray._private.worker.get_dashboard_url()
    env = dict(os.environ, RAY_AUTH_MODE="token")  # the CLI sends the cluster token only when asked
    done = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "deploy", str(path), "--address", address],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(600)
def test_hot_swap_through_user_config_with_no_failed_request(base_url, ckpt, offline, tmp_path):
    from ray import serve

    app = {"name": "swap", "route_prefix": "/swap", "import_path": "kosent.serve:app_builder",
           "args": {"manifest": ckpt["a"][0], "num_cpus": 0.25, "max_replicas": 1}}
    url = base_url + "/swap"
    a = offline["a"].predict([PROBE])[0].probability
    b = offline["b"].predict([PROBE])[0].probability
    _serve_deploy({"applications": [app]}, tmp_path / "swap.yaml")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = serve.status().applications.get("swap")
            if st is not None and st.status == "RUNNING":
                break
            time.sleep(1)
        assert requests.get(url + "/healthz", timeout=30).status_code == 200
        before = requests.get(url + "/stats", timeout=30).json()

        stop, seen, lock = threading.Event(), [], threading.Lock()

        def client() -> None:
            while not stop.is_set() and len(seen) < 5000:
                try:
                    r = _post(url, {"text": PROBE}, timeout=60)
                    item = (r.status_code, r.json()["predictions"][0]["probability"] if r.ok else r.text[:200])
                except requests.RequestException as e:
                    item = ("error", repr(e))
                with lock:
                    seen.append(item)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            # Same args, a user_config override for the deployment: Serve reconfigures running replicas.
            swapped = dict(app, deployments=[{"name": "KosentServer", "user_config": {"manifest": ckpt["b"][0]}}])
            _serve_deploy({"applications": [swapped]}, tmp_path / "swap.yaml")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                with lock:
                    last = seen[-1] if seen else None
                if last and last[0] == 200 and abs(last[1] - b) < 1e-4:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        failed = [s for s in seen if s[0] != 200]
        probs = [s[1] for s in seen if s[0] == 200]
        first_b = next((i for i, p in enumerate(probs) if abs(p - b) < 1e-4), None)
        print(f"hot swap: {len(seen)} requests, {len(failed)} failed, model b answered from request {first_b} "
              f"after {time.monotonic() - t0:.1f}s")
        assert not failed, failed[:5]
        assert first_b is not None and first_b > 0
        assert all(abs(p - a) < 1e-4 for p in probs[:first_b])
        # One replica: once the new model answered, the old one never did again.
        assert all(abs(p - b) < 1e-4 for p in probs[first_b:])

        after = requests.get(url + "/stats", timeout=30).json()
        assert after["swaps"] == 1 and after["pid"] == before["pid"], "swapped in place, not restarted"
        info = requests.get(url + "/model", timeout=30).json()
        assert info["checkpoint"] == ckpt["b"][1] and info["manifest"] == ckpt["b"][0]
    finally:
        serve.delete("swap")
