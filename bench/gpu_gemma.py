"""Issue #18's GPU run: gemma-ko fine-tuned on one GPU with bf16 autocast, at 10,000 labels and on all of NSMC.

    python bench/gpu_gemma.py prepare                  # here: the pack in two carry folders, and the two calls
    bash bench/gpu_gemma.sh                            # on the GPU machine, in the second call
    bash bench/gpu_gemma.sh --allow-cpu --out /tmp/g   # the CPU rehearsal: the same path at tiny sizes

How gemma-ko gets there. The GPU machine reaches no registry and takes 64 MiB per command, the tracked files
included; gemma-ko is 533 MiB of fp32. ``prepare`` packs it with ``bench/gemma_pack.py`` (vocabulary pruned to
the NSMC + K-MHaS pieces with their tokenization checked, matrices in 8-bit blocks, xz) into two carry folders
of about 58 MiB each, ``artifacts/gemma-pack-a`` (pack.json and the first part) and ``artifacts/gemma-pack-b``
(the rest, the NSMC file xz'd, and the pydantic wheels kosent's config needs: the image lacks them). Carried files stay on the machine while it is held, so the first call
carries folder a and returns at once, and the second, within the machine's idle time, carries folder b and
runs this script; it checks every part's sha256 and the unpacked weights' digest before training.

No Ray: the GPU machine has none, and Ray's wheels (bench/gpu_bundle.py) do not fit beside the model. The
runs use the library's own loop in worker processes that share the GPU (``kosent.train.fit_local``: the loop
Ray Train workers run; bf16 autocast on a GPU that has it), as ``bench/bench_improve.py`` does. Stages, all
submitted at once, the longest first:

  full      the recipe on every NSMC review outside validation and test (139,828), ``full_epochs`` epochs
  recipe    the recipe at 10,000 labelled reviews (``kosent train --model gemma-ko --frozen-layers 12
            --epochs 2``), one run per seed; validation keeps the epoch, test is scored once
  ensemble  each finished run + TF-IDF, log-odds average 0.5 (``kosent ensemble``)

Every row goes to ``OUT/figures.json`` the moment it lands, with the mean and spread over the seeds, so a run
cut off by its time limit still returns what finished. Exit status 0 when every run that started finished,
1 when one failed, 2 when the run could not start (no GPU without ``--allow-cpu``, a missing or damaged part).
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_improve import finetune_job, hardware  # noqa: E402  (bench/bench_improve.py)
from gemma_pack import PackError, pack, repart, unpack  # noqa: E402  (bench/gemma_pack.py)
from gpu_bundle import DEPENDENCIES, BundleError, download, tracked_bytes  # noqa: E402  (bench/gpu_bundle.py)
from gpu_ray import Figures  # noqa: E402  (bench/gpu_ray.py)

log = logging.getLogger("gpu_gemma")

CARRY_ROOT = REPO / "artifacts"  # git-ignored: what is carried there is named in the call
PACK_A, PACK_B = "gemma-pack-a", "gemma-pack-b"
DATA_FILE = "nsmc/ratings_train.txt"
CARRY_LIMIT_MIB = 64
# What kosent's training path imports beyond the GPU machine's image (kosent.config's pydantic), pinned as in
# bench/gpu_bundle.py, which checked them against the image's versions; installed by bench/gpu_gemma.sh.
WHEELS = tuple(d for d in DEPENDENCIES if d.split("==")[0] in
               ("pydantic", "pydantic-core", "annotated-types", "typing-inspection"))

# The recipe (docs/IMPROVING.md) and the run's sizes on the GPU; the CPU rehearsal shrinks them.
RECIPE: dict[str, Any] = {"frozen_layers": 12, "epochs": 2, "patience": 2, "lr": 5e-5, "batch_size": 32,
                          "max_length": 128, "eval_batch_size": 256}
GPU_SIZES: dict[str, Any] = {
    "seeds": [51, 52, 53, 54, 55], "train_size": 10_000, "val_size": 1_000, "test_size": 5_000,
    "full_train_size": 139_828, "full_epochs": 1, "full_batch_size": 64, "parallel": 6, "ensemble": True,
}
CPU_SIZES: dict[str, Any] = {
    "seeds": [51], "train_size": 48, "val_size": 32, "test_size": 32,
    "full_train_size": 96, "full_epochs": 1, "full_batch_size": 16, "parallel": 2, "ensemble": True,
    "max_length": 32,
}


# ---------------------------------------------------------------------------------------------- here
def prepare(model: Path | None, cache: Path, root: Path = CARRY_ROOT) -> dict[str, Any]:
    """Pack gemma-ko (once; ``cache`` keeps it), lay out the two carry folders under ``root``; what each of
    the two calls carries, and its size with the tracked files."""
    from kosent.config import data_home
    from kosent.models import gemma
    from kosent.models.building import sha256_file

    src = model or gemma.resolve("gemma-ko")
    record_file = cache / "pack.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    if record.get("source_weights_sha256") != sha256_file(src / "model.safetensors") or not all(
            (cache / p["file"]).is_file() for p in record["parts"]):
        record = pack(src, cache, bits=8)
    else:
        log.info("reusing the pack in %s (made from this gemma-ko)", cache)
    pack_a, pack_b = root / PACK_A, root / PACK_B
    for folder in (pack_a, pack_b):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    wheels = pack_b / "wheels"
    wheels.mkdir()
    for wheel in download(list(WHEELS), cache / "wheels", python_version="3.12"):
        shutil.copy2(wheel, wheels / wheel.name)
    data = pack_b / "data" / (DATA_FILE + ".xz")
    data.parent.mkdir(parents=True)
    with open(data_home() / DATA_FILE, "rb") as fin, lzma.open(data, "wb", preset=9) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    tracked = tracked_bytes()
    # Two parts that even out the calls: the first call carries pack.json and part 1, the second the rest of
    # the weights with the data and the wheels.
    extra_b = sum(f.stat().st_size for f in pack_b.rglob("*") if f.is_file())
    record = repart(cache, (record["xz_bytes"] + extra_b + 1) // 2)
    first, rest = record["parts"]
    shutil.copy2(record_file, pack_a / "pack.json")
    shutil.copy2(cache / first["file"], pack_a / first["file"])
    shutil.copy2(cache / rest["file"], pack_b / rest["file"])

    def mib(folder: Path) -> float:
        return round((sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) + tracked) / 2**20, 1)

    def carried(folder: Path) -> str:
        return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)

    calls = {
        "call_1": {"carry": [carried(pack_a)], "travel_mib": mib(pack_a),
                   "command": f"nvidia-smi -L; ls -l {carried(pack_a)}"},
        "call_2": {"carry": [carried(pack_b)], "travel_mib": mib(pack_b),
                   "command": "bash bench/gpu_gemma.sh --budget-s 540"},
    }
    over = [k for k, c in calls.items() if c["travel_mib"] > CARRY_LIMIT_MIB]
    if over:
        raise PackError(f"{over} would carry more than {CARRY_LIMIT_MIB} MiB: {calls}")
    return {"pack": {k: record[k] for k in ("bits", "xz_bytes", "relative_rms_error", "weights_sha256")},
            "vocabulary": {k: record["vocabulary"][k] for k in ("pieces_before", "pieces_after", "params_after")},
            **calls}


# ---------------------------------------------------------------------------------------------- there
def install_missing(root: Path) -> dict[str, Any] | None:
    """pydantic from the carried wheels when this Python lacks it (the GPU machine's image does), into a
    temporary folder put on the path of this process and of the workers it spawns."""
    import importlib.util

    if importlib.util.find_spec("pydantic") is not None:
        return None
    wheels = sorted((root / PACK_B / "wheels").glob("*.whl"))
    if not wheels:
        raise PackError(f"this Python has no pydantic and {root / PACK_B / 'wheels'} holds no wheels")
    site = tempfile.mkdtemp(prefix="kosent-site-")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--disable-pip-version-check", "--target", site, *map(str, wheels)], check=True)
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    return {"wheels": [w.name for w in wheels], "seconds": round(time.perf_counter() - t0, 1)}


def unpack_all(work: Path, root: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The model folder and the data folder, from the carry folders under ``root`` (every part checked)."""
    t0 = time.perf_counter()
    pack_a, pack_b = root / PACK_A, root / PACK_B
    if not (pack_a / "pack.json").is_file():
        raise PackError(f"{pack_a}/pack.json is missing: the first call (carrying {PACK_A}) did not reach this "
                        "machine, or the machine was given back before the second call")
    model = work / "gemma-ko-pack"
    record = unpack(pack_a, model, [pack_b])
    data = work / "data"
    packed = pack_b / "data" / (DATA_FILE + ".xz")
    if packed.is_file():
        (data / DATA_FILE).parent.mkdir(parents=True)
        with lzma.open(packed, "rb") as fin, open(data / DATA_FILE, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    else:  # a rehearsal without the data in the pack: the project's own
        from kosent.config import data_home

        data = data_home()
    return model, data, {"seconds": round(time.perf_counter() - t0, 1), "bits": record["bits"],
                         "pieces": record["vocabulary"]["pieces_after"], "weights_sha256": record["weights_sha256"]}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd and range of test accuracy / macro F1 over the rows (the seeds)."""
    out: dict[str, Any] = {"runs": len(rows)}
    for key in ("test_accuracy", "test_macro_f1"):
        values = [r[key] for r in rows]
        if values:
            out[key] = {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values),
                        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}
    return out


def ensemble_row(checkpoint: str, out: Path, splits: Any, device: str) -> dict[str, Any]:
    from kosent.ensemble import build_ensemble

    t = time.perf_counter()
    summary = build_ensemble(checkpoint, out, splits, device=device)
    val, test = summary["validation"]["ensemble"], summary["test"]["ensemble"]
    return {"val_macro_f1": round(val["val_macro_f1"], 4), "test_accuracy": round(test["test_accuracy"], 4),
            "test_macro_f1": round(test["test_macro_f1"], 4), "tfidf_weight": summary["tfidf_weight"],
            "seconds": round(time.perf_counter() - t, 1)}


def run(args: argparse.Namespace, sizes: dict[str, Any], cuda: bool, figures: Figures) -> bool:
    from kosent.config import DataConfig, TrainConfig, to_dict
    from kosent.data import make_splits

    work = Path(tempfile.mkdtemp(prefix="kosent-gpu-gemma-"))
    model, data, unpacked = unpack_all(work, args.root)
    figures.set("unpack", unpacked)
    os.environ["KOSENT_DATA"] = str(data)
    runs = work / "runs"
    recipe = {**RECIPE, **{k: sizes[k] for k in ("max_length",) if k in sizes}}
    data_cfg = DataConfig(train_size=sizes["train_size"], val_size=sizes["val_size"], test_size=sizes["test_size"])

    def cfg(**changes: Any) -> dict[str, Any]:
        fields = {"data": data_cfg, **recipe, **changes}
        return to_dict(TrainConfig(model=str(model), use_gpu=cuda, threads=2, storage_path=str(runs), **fields))

    jobs: dict[Future, tuple[str, int | None]] = {}
    ok, recipe_rows, ensemble_rows = True, [], []
    pool = ProcessPoolExecutor(max_workers=sizes["parallel"], mp_context=get_context("spawn"))
    try:
        full_data = DataConfig(train_size=sizes["full_train_size"], val_size=sizes["val_size"],
                               test_size=sizes["test_size"])
        jobs[pool.submit(finetune_job, "full", cfg(data=full_data, epochs=sizes["full_epochs"],
                                                   patience=sizes["full_epochs"], seed=sizes["seeds"][0],
                                                   batch_size=sizes["full_batch_size"]),
                         {"train_size": sizes["full_train_size"]}, str(runs))] = ("full", None)
        for seed in sizes["seeds"]:
            jobs[pool.submit(finetune_job, f"recipe seed={seed}", cfg(seed=seed), {"seed": seed}, str(runs))] = (
                "recipe", seed)
        splits = make_splits(data_cfg) if sizes["ensemble"] else None
        pending = set(jobs)
        while pending:
            left = args.deadline - time.monotonic()
            done, pending = wait(pending, timeout=max(left, 0), return_when=FIRST_COMPLETED)
            if not done:
                figures.set("cut", f"the budget ran out with {len(pending)} run(s) unfinished")
                log.warning("budget spent: %d run(s) unfinished", len(pending))
                ok = False
                break
            for future in done:
                stage, seed = jobs[future]
                try:
                    row = future.result()
                except Exception as e:  # one failed run is recorded; the others go on
                    log.exception("%s seed %s failed", stage, seed)
                    figures.stage(f"{stage} {seed or ''}".strip(), error=f"{type(e).__name__}: {e}")
                    ok = False
                    continue
                log.info("%s seed %s: test %.4f / %.4f in %.0f s", stage, seed, row["test_accuracy"],
                         row["test_macro_f1"], row["seconds"])
                if stage == "full":
                    figures.stage("full", **row)
                    continue
                recipe_rows.append(row)
                figures.stage("recipe", rows=recipe_rows, **summarize(recipe_rows))
                if splits is not None and args.deadline - time.monotonic() > 30:
                    erow = {"seed": seed, **ensemble_row(row["checkpoint"], runs / f"ensemble-{seed}", splits,
                                                         "cuda" if cuda else "cpu")}
                    ensemble_rows.append(erow)
                    figures.stage("ensemble", rows=ensemble_rows, **summarize(ensemble_rows))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers()
        shutil.rmtree(work, ignore_errors=True)
    return ok


def stop_workers() -> None:
    """End the pool's processes: a run cut off by the budget must not hold the GPU (or this process, which
    waits for its workers at exit) past the call's time limit."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/gpu_gemma.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=["prepare", "run"], default="run")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-gemma"),
                   help="where figures.json and the log go (default $OUT, else runs/gpu-gemma)")
    p.add_argument("--budget-s", type=float, default=540.0, help="the run's wall time (default 540 s)")
    p.add_argument("--allow-cpu", action="store_true", help="without a CUDA GPU, rehearse on the CPU at tiny sizes")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON", help="override a size (keys of GPU_SIZES)")
    p.add_argument("--model", type=Path, help="prepare: the gemma-ko folder (default: `kosent pull gemma-ko`'s)")
    p.add_argument("--root", type=Path, default=CARRY_ROOT,
                   help="the folder holding the carry folders gemma-pack-a and -b (default artifacts/)")
    p.add_argument("--cache", type=Path, default=CARRY_ROOT / "gemma-pack",
                   help="prepare: where the whole pack is kept between runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.action == "prepare":
        try:
            print(json.dumps(prepare(args.model, args.cache, args.root), indent=1))
        except (PackError, BundleError, OSError) as e:
            log.error("%s", e)
            return 2
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        log.error("no CUDA GPU here (torch %s): this run is for the GPU machine; --allow-cpu rehearses it", torch.__version__)
        return 2
    sizes = dict(GPU_SIZES if cuda else CPU_SIZES)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in GPU_SIZES:
            log.error("--set %r: expected KEY=JSON with KEY one of %s", item, ", ".join(GPU_SIZES))
            return 2
        sizes[key] = json.loads(value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger().addHandler(logging.FileHandler(out / "gpu_gemma.log"))
    args.deadline = time.monotonic() + args.budget_s
    figures = Figures(out / "figures.json", {"hardware": hardware(), "sizes": sizes, "recipe": RECIPE,
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    t0 = time.monotonic()
    try:
        figures.set("installed", install_missing(args.root))
        ok = run(args, sizes, cuda, figures)
    except (PackError, subprocess.CalledProcessError) as e:
        log.error("%s", e)
        figures.set("error", str(e))
        return 2
    except Exception as e:  # recorded in figures.json, which is what comes back from the machine
        log.exception("the run failed")
        figures.set("error", f"{type(e).__name__}: {e}")
        return 1
    finally:
        figures.set("wall_seconds", round(time.monotonic() - t0, 1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
