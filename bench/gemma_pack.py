"""Carry ``gemma-ko`` to a machine that takes at most 64 MiB per command and has no package registry.

    python bench/gemma_pack.py pack OUT [--bits 8] [--part-mib 56]   # here, after `kosent pull gemma-ko`
    python bench/gemma_pack.py unpack OUT FOLDER                      # there: FOLDER is a gemma-ko folder
    python bench/gemma_pack.py probe [--bits 8 4] [--probe-rows 2000] # what the rounding costs, measured

Why: gemma-ko is 533 MiB of fp32 (139.8M parameters) and cannot be rebuilt where no registry is reached, and
the GPU machine of this project takes 64 MiB per command, the repository's tracked files included. Files
carried in one command stay there for the next while the machine is held, so a pack may come in parts.

``pack`` makes it small in two steps, each measured:

1. Vocabulary: :func:`kosent.models.gemma.prune` again, keeping only the pieces the NSMC + K-MHaS corpus
   uses (with the byte pieces, the special tokens and the merge closure: :func:`kosent.models.gemma.corpus_keep`).
   The tokenization of every corpus document is checked to be unchanged, as ``kosent pull`` does. Other Korean
   text still encodes (bytes), with more pieces than under gemma-ko: this folder is for the corpus runs only.
2. Weights: every matrix in blocks of 32 values, each block as ``bits``-bit integers times one fp16 scale
   (absmax, symmetric; 8 bits is llama.cpp's Q8_0), the norms as they are; then xz, then parts of at most
   ``--part-mib``. On the GPU, bf16 autocast rounds every weight a matmul reads to 8 significant bits, so
   8-bit blocks add an error of the same order as the one the GPU run makes anyway (``probe`` measures both).

``pack.json`` records every part's size and sha256, the sha256 of the weights as unpacked, the tokenization
check and the rounding error. ``unpack`` checks each part before it uses it and the weights after, and
writes an ordinary folder (fp32 safetensors, tokenizer, the Gemma license NOTICE and model card) that
``--model FOLDER`` loads like gemma-ko. Exit status 0, 1 when a check fails (the message says which file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import lzma
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("gemma_pack")

FORMAT = "kosent-gemma-pack/1"
BLOCK = 32  # values per scale, as in Q8_0 / Q4_0
MIB = 2**20
DEFAULT_PART_MIB = 56  # leaves room under the 64 MiB per command for the tracked files (2.4 MB) and the data
CARRIED_FILES = ("NOTICE", "README.md", "kosent_source.json")  # the license notice and model card travel too
PACK_FILE = "pack.json"
ARCHIVE = "weights.npz.xz"


class PackError(RuntimeError):
    """A part or the unpacked weights do not match pack.json; the message names the file."""


# ---------------------------------------------------------------------------------------------- the rounding
def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (fp32, size a multiple of ``BLOCK``) as (integers, fp16 scales): block ``b`` is ``q[b] * d[b]`` with
    ``|q| <= 2^(bits-1) - 1``. 4-bit values are stored two to a byte."""
    qmax = 2 ** (bits - 1) - 1
    blocks = w.reshape(-1, BLOCK)
    d = (np.abs(blocks).max(axis=1) / qmax).astype(np.float16)
    d32 = d.astype(np.float32)
    q = np.clip(np.rint(blocks / np.where(d32 == 0, 1.0, d32)[:, None]), -qmax, qmax).astype(np.int8)
    if bits == 4:
        u = (q + 8).astype(np.uint8)
        q = (u[:, : BLOCK // 2] | (u[:, BLOCK // 2 :] << 4)).astype(np.uint8)
    return q, d


def dequantize(q: np.ndarray, d: np.ndarray, shape: tuple[int, ...], bits: int) -> np.ndarray:
    if bits == 4:
        q = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.int8) - 8
    return (q.astype(np.float32) * d.astype(np.float32)[:, None]).reshape(shape)


def is_matrix(w: np.ndarray) -> bool:
    return w.dtype == np.float32 and w.ndim == 2 and w.size % BLOCK == 0


def round_trip(w: np.ndarray, fmt: str) -> np.ndarray:
    """What a weight becomes in ``fmt``: ``fp32`` (itself), ``bf16`` (the rounding of bf16 autocast, to
    nearest even), ``q8`` / ``q4`` (:func:`quantize`; only matrices, as :func:`pack` does)."""
    if fmt == "fp32":
        return w
    if fmt == "bf16":
        import torch

        return torch.from_numpy(w).to(torch.bfloat16).float().numpy()
    if not is_matrix(w):
        return w
    bits = int(fmt[1:])
    return dequantize(*quantize(w, bits), w.shape, bits)


def weights_sha256(tensors: dict[str, np.ndarray]) -> str:
    """A digest of the tensors themselves (names, shapes, fp32 bytes in name order), independent of how a
    safetensors version lays out its file."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name], dtype=np.float32)
        h.update(f"{name}{t.shape}".encode())
        h.update(t.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- pack / unpack
def prune_to_corpus(src: Path, dst: Path) -> dict:
    """gemma-ko over the corpus's own pieces, with the license NOTICE and model card; the pruning figures."""
    from kosent.models import gemma

    stats = gemma.prune(src, dst, keep=gemma.corpus_keep)
    for name in CARRIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return stats


def pack(src: Path, out: Path, bits: int = 8, part_mib: float = DEFAULT_PART_MIB, preset: int = 6) -> dict:
    """``src`` (a gemma-ko folder) as ``out/weights.npz.xz.NN`` parts and ``out/pack.json``; returns the record.
    ``preset`` is xz's level: 8-bit weights hardly compress (6 takes 5% off in about 100 s of CPU; 0 is quick)."""
    from safetensors.numpy import load_file

    from kosent.models.building import sha256_file

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kosent-gemma-pack-") as tmp:
        folder = Path(tmp) / "model"
        vocab = prune_to_corpus(src, folder)
        if vocab["verify"]["differing"]:
            raise PackError(f"{vocab['verify']['differing']} corpus documents tokenize differently after pruning")
        log.info("vocabulary: %d -> %d pieces, %.1fM -> %.1fM parameters (%.0f s)", vocab["pieces_before"],
                 vocab["pieces_after"], vocab["params_before"] / 1e6, vocab["params_after"] / 1e6,
                 time.perf_counter() - t0)
        state = load_file(str(folder / "model.safetensors"))
        arrays: dict[str, np.ndarray] = {}
        unpacked: dict[str, np.ndarray] = {}
        err2 = norm2 = 0.0
        for name, w in state.items():
            if is_matrix(w):
                q, d = quantize(w, bits)
                arrays[f"q/{name}"], arrays[f"d/{name}"] = q, d
                arrays[f"shape/{name}"] = np.asarray(w.shape, dtype=np.int64)
                unpacked[name] = dequantize(q, d, w.shape, bits)
                err2 += float(np.square(unpacked[name] - w, dtype=np.float64).sum())
                norm2 += float(np.square(w, dtype=np.float64).sum())
            else:
                arrays[f"raw/{name}"] = unpacked[name] = w
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix != ".safetensors":
                arrays[f"file/{f.name}"] = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        npz = Path(tmp) / "weights.npz"
        np.savez(npz, **arrays)
        t1 = time.perf_counter()
        xz = Path(tmp) / ARCHIVE
        with open(npz, "rb") as fin, lzma.open(xz, "wb", preset=preset) as fout:
            shutil.copyfileobj(fin, fout, MIB)
        log.info("weights: %.1f MiB of npz, %.1f MiB xz'd (%.0f s)", npz.stat().st_size / MIB,
                 xz.stat().st_size / MIB, time.perf_counter() - t1)
        for old in out.glob(f"{ARCHIVE}.*"):
            old.unlink()
        parts = []
        limit = int(part_mib * MIB)
        with open(xz, "rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(limit), b"")):
                part = out / f"{ARCHIVE}.{i:02d}"
                part.write_bytes(chunk)
                parts.append({"file": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
        record = {
            "format": FORMAT, "bits": bits, "block": BLOCK, "source": str(src),
            "source_weights_sha256": sha256_file(src / "model.safetensors"),
            "vocabulary": {k: vocab[k] for k in ("pieces_before", "pieces_after", "params_before", "params_after",
                                                 "kept_by", "verify")},
            "fp32_bytes": vocab["bytes_after"], "npz_bytes": npz.stat().st_size, "xz_bytes": xz.stat().st_size,
            "relative_rms_error": round((err2 / norm2) ** 0.5, 6) if norm2 else 0.0,
            "weights_sha256": weights_sha256(unpacked), "parts": parts, "seconds": round(time.perf_counter() - t0, 1),
        }
    (out / PACK_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return record


def repart(out: Path, first_bytes: int) -> dict:
    """Cut the xz stream of the pack in ``out`` again: a first part of ``first_bytes``, then the rest (so two
    commands can carry equal loads); every old part is checked first. Returns the updated record."""
    record = json.loads((out / PACK_FILE).read_text(encoding="utf-8"))
    data = b"".join(_checked_part(out / p["file"], p) for p in record["parts"])
    for p in record["parts"]:
        (out / p["file"]).unlink()
    record["parts"] = []
    for i, chunk in enumerate((data[:first_bytes], data[first_bytes:])):
        if chunk:
            (out / f"{ARCHIVE}.{i:02d}").write_bytes(chunk)
            record["parts"].append({"file": f"{ARCHIVE}.{i:02d}", "bytes": len(chunk),
                                    "sha256": hashlib.sha256(chunk).hexdigest()})
    (out / PACK_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return record


def _checked_part(path: Path, part: dict) -> bytes:
    data = path.read_bytes()
    if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
        raise PackError(f"{path}: {len(data):,} bytes whose sha256 differs from {PACK_FILE}'s "
                        f"({part['bytes']:,} bytes, {part['sha256']}): the copy is damaged or from another pack")
    return data


def unpack(src: Path, folder: Path, parts_dirs: list[Path] | None = None) -> dict:
    """The folder that ``pack`` packed, written to ``folder``. Parts are looked up in ``src`` and then in
    ``parts_dirs`` (parts that came in earlier commands may sit elsewhere); each is checked before use."""
    from safetensors.numpy import save_file

    record = json.loads((src / PACK_FILE).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise PackError(f"{src / PACK_FILE}: format {record.get('format')!r}, expected {FORMAT!r}")
    dirs = [src, *(parts_dirs or [])]
    t0 = time.perf_counter()
    decomp = lzma.LZMADecompressor()
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / "weights.npz.tmp"
    try:
        with open(npz, "wb") as fout:
            for part in record["parts"]:
                path = next((d / part["file"] for d in dirs if (d / part["file"]).is_file()), None)
                if path is None:
                    raise PackError(f"part {part['file']} is in none of {[str(d) for d in dirs]}")
                fout.write(decomp.decompress(_checked_part(path, part)))
        if not decomp.eof:
            raise PackError(f"the parts of {src} end before the xz stream does")
    except BaseException:
        npz.unlink(missing_ok=True)
        raise
    z = np.load(npz)
    bits = int(record["bits"])
    tensors: dict[str, np.ndarray] = {}
    for key in z.files:
        kind, name = key.split("/", 1)
        if kind == "raw":
            tensors[name] = z[key]
        elif kind == "q":
            tensors[name] = dequantize(z[key], z[f"d/{name}"], tuple(z[f"shape/{name}"]), bits)
        elif kind == "file":
            (folder / name).write_bytes(z[key].tobytes())
    npz.unlink()
    got = weights_sha256(tensors)
    if got != record["weights_sha256"]:
        raise PackError(f"weights unpacked from {src} hash to {got}, {PACK_FILE} says {record['weights_sha256']}")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / PACK_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("unpacked %d tensors (%.1fM parameters, %d-bit blocks) into %s in %.1f s", len(tensors),
             sum(t.size for t in tensors.values()) / 1e6, bits, folder, time.perf_counter() - t0)
    return record


# ---------------------------------------------------------------------------------------------- probe
def probe(formats: list[str], rows: int, threads: int) -> list[dict]:
    """Each format's cost, side by side in one run: the corpus-pruned folder's weights rounded as ``fmt``,
    frozen mean-pooled vectors of ``2 x rows`` NSMC reviews (seed 0), their cosine to the fp32 vectors of
    gemma-ko itself, and a logistic-regression probe (``rows`` train, ``rows`` scored; bench/bench_gemma.py)."""
    from bench_gemma import embed, nsmc_rows
    from bench_gemma import probe as lr_probe
    from safetensors.numpy import load_file, save_file

    from kosent.models import gemma

    sample = random.Random(0).sample(nsmc_rows(), 2 * rows)
    texts, y = [t for t, _ in sample], np.array([label for _, label in sample])
    base = embed(str(gemma.resolve("gemma-ko")), texts, threads)["mean"]
    results = [{"format": "gemma-ko (fp32, 49,864 pieces)", "probe_accuracy": lr_probe(base[:rows], y[:rows],
                                                                                       base[rows:], y[rows:])}]
    log.info("%s", results[-1])
    with tempfile.TemporaryDirectory(prefix="kosent-gemma-probe-") as tmp:
        pruned = Path(tmp) / "pruned"
        prune_to_corpus(gemma.resolve("gemma-ko"), pruned)
        state = load_file(str(pruned / "model.safetensors"))
        for fmt in formats:
            folder = Path(tmp) / fmt
            shutil.copytree(pruned, folder, ignore=shutil.ignore_patterns("*.safetensors"))
            save_file({k: round_trip(w, fmt) for k, w in state.items()}, str(folder / "model.safetensors"))
            vec = embed(str(folder), texts, threads)["mean"]
            cos = (vec * base).sum(1) / (np.linalg.norm(vec, axis=1) * np.linalg.norm(base, axis=1))
            results.append({"format": f"corpus pieces, {fmt}", "cosine_mean": round(float(cos.mean()), 6),
                            "cosine_min": round(float(cos.min()), 6),
                            "probe_accuracy": lr_probe(vec[:rows], y[:rows], vec[rows:], y[rows:])})
            log.info("%s", results[-1])
            shutil.rmtree(folder)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="bench/gemma_pack.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    pk = sub.add_parser("pack", help="gemma-ko as parts and pack.json")
    pk.add_argument("out", type=Path)
    pk.add_argument("--model", type=Path, help="the gemma-ko folder (default: the one `kosent pull gemma-ko` built)")
    pk.add_argument("--bits", type=int, choices=(4, 8), default=8)
    pk.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    up = sub.add_parser("unpack", help="the folder, from pack.json and its parts")
    up.add_argument("src", type=Path, help="the folder holding pack.json (and parts)")
    up.add_argument("folder", type=Path)
    up.add_argument("--parts", type=Path, nargs="*", default=[], help="other folders holding parts")
    pr = sub.add_parser("probe", help="what each rounding costs (frozen vectors, logistic-regression probe)")
    pr.add_argument("--formats", nargs="+", default=["fp32", "bf16", "q8", "q4"],
                    choices=["fp32", "bf16", "q8", "q4"])
    pr.add_argument("--probe-rows", type=int, default=2000)
    pr.add_argument("--threads", type=int, default=2)
    pr.add_argument("--json", type=Path, help="also write the rows here")
    a = p.parse_args(argv)
    try:
        if a.action == "pack":
            from kosent.models import gemma

            record = pack(a.model or gemma.resolve("gemma-ko"), a.out, a.bits, a.part_mib)
            print(json.dumps({k: v for k, v in record.items() if k != "vocabulary"}, indent=1))
        elif a.action == "unpack":
            unpack(a.src, a.folder, a.parts)
        else:
            rows = probe(a.formats, a.probe_rows, a.threads)
            if a.json:
                a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
            print(json.dumps(rows, indent=1))
    except (PackError, OSError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
