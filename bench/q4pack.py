"""Carry the offline e5 folder in a quarter of its size, bit for bit: pack / unpack its Q4_0 weights.

    python bench/q4pack.py pack FOLDER OUT.npz      # on the machine that built the folder (kosent pull)
    python bench/q4pack.py unpack OUT.npz FOLDER    # where it is needed (a GPU box with no PyPI access)

The folder's weights come from a 4-bit Q4_0 file (kosent.models.e5_offline): every 32 consecutive weights
of a matrix are ``(n - 8) * d`` with ``n`` in 0..15 and ``d`` one fp16 scale, and the weight of largest
magnitude in a block is ``-8 d``. So each block is stored back as 16 bytes of nibbles and one fp16 scale
(4.5 bits a weight instead of 32). Packing checks that unpacking gives back every fp32 value exactly; a
tensor for which that fails (biases, LayerNorms, position embeddings: never quantized) is kept as is.
The small files of the folder (config, tokenizer, kosent_source.json) travel inside the .npz unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

QK = 32


def _q4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(nibbles uint8 [blocks, 16], scales fp16 [blocks]) if ``w`` is exactly Q4_0-representable, else None."""
    if w.dtype != np.float32 or w.ndim != 2 or w.size % QK:
        return None
    blocks = w.reshape(-1, QK)
    ext = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = (-ext / 8).astype(np.float16)
    d32 = d.astype(np.float32)
    safe = np.where(d32 == 0, 1.0, d32)
    n = np.clip(np.rint(blocks / safe[:, None]) + 8, 0, 15).astype(np.uint8)
    n[d32 == 0] = 8
    if not np.array_equal((n.astype(np.float32) - 8) * d32[:, None], blocks):
        return None
    return (n[:, :16] | (n[:, 16:] << 4)).astype(np.uint8), d


def _unq4(nibbles: np.ndarray, d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32)
    return ((n - 8) * d.astype(np.float32)[:, None]).reshape(shape)


def pack(folder: Path, out: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    raw_bytes = packed = 0
    for name, w in load_file(str(folder / "model.safetensors")).items():
        raw_bytes += w.nbytes
        q = _q4_blocks(w)
        if q is None:
            arrays[f"raw/{name}"] = w
        else:
            arrays[f"q4n/{name}"], arrays[f"q4d/{name}"] = q
            arrays[f"shape/{name}"] = np.asarray(w.shape, dtype=np.int64)
            assert np.array_equal(_unq4(*q, w.shape), w)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != "model.safetensors":
            arrays[f"file/{f.name}"] = np.frombuffer(f.read_bytes(), dtype=np.uint8)
    np.savez(out, **arrays)
    packed = out.stat().st_size
    print(f"{folder} -> {out}: {raw_bytes / 2**20:.1f} MiB of fp32 weights in {packed / 2**20:.1f} MiB "
          f"({sum(k.startswith('q4n/') for k in arrays)} Q4 tensors, {sum(k.startswith('raw/') for k in arrays)} raw)")


def unpack(src: Path, folder: Path) -> None:
    z = np.load(src)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key in z.files:
        kind, name = key.split("/", 1)
        if kind == "raw":
            tensors[name] = z[key]
        elif kind == "q4n":
            tensors[name] = _unq4(z[key], z[f"q4d/{name}"], tuple(z[f"shape/{name}"]))
        elif kind == "file":
            (folder / name).write_bytes(z[key].tobytes())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    print(f"{src} -> {folder}: {len(tensors)} tensors, {sum(t.nbytes for t in tensors.values()) / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/q4pack.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    a = p.parse_args(argv)
    (pack if a.action == "pack" else unpack)(a.src, a.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
