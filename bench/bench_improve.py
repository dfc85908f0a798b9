"""Issue #8's study in one process: what lifts e5-small at 10,000 labelled NSMC reviews (one GPU, no Ray).

    python bench/bench_improve.py --out DIR                  # on a GPU: the stages below within --budget-s
    python bench/bench_improve.py --out DIR --smoke          # CPU, tiny model and data: checks the code path

Every stage trains with the library's own functions (``kosent.train.fit_local``: the training loop that
Ray Train workers run, here in this process; ``kosent.pretrain.fit_pretrain_local``; ``kosent.ensemble``)
on the same splits (10,000 train / 1,000 validation / 5,000 test by default, ``kosent.data.make_splits``),
picks each run's epoch on validation and scores the test split once. Independent runs share the GPU as
``--parallel`` worker processes (e5-small at batch 32 leaves an H100-class GPU mostly idle):

  phase 1  tfidf          TF-IDF character n-grams + logistic regression: the cheap model
           base           e5-small-ko, first-token pooling, lr 5e-5, 3 epochs, warm-up 0.1, batch 32
                          (and with other training seeds, ``--seeds``: how much a rerun moves the figures)
           ablation X     one change to the base recipe: mean pooling, layer-wise lr decay 0.8, lr 1e-4,
                          lr 2e-5, no warm-up, 5 epochs
           dapt           masked-LM pretraining on the NSMC texts outside validation and test (labels unread)
  phase 2  dapt+base      the base recipe from the DAPT encoder, and its ablations ("dapt ablation X")
  phase 3  ensemble       the better of base / dapt+base (by validation) + TF-IDF, log-odds average 0.5
           distill        the better start trained on the labelled rows + every unlabelled text (outside
                          train, validation and test) with the ensemble's probabilities as soft targets
           distill+tfidf  the student + TF-IDF

Writes ``OUT/results.jsonl`` (a row per run as it lands, so a run cut short keeps what finished) and
``OUT/results.md`` (the table), and prints both. Needs the NSMC file ($KOSENT_DATA/nsmc/ratings_train.txt)
and the offline model (``kosent pull``). A run that fails is recorded with its error; the others go on.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any


def _without_datasets() -> None:
    """Let kosent.data run where the ``datasets`` package cannot be imported (a bare GPU image): its splits
    then hold plain columns. Only this script does this; the library itself requires ``datasets``."""
    try:
        import datasets  # noqa: F401
    except Exception as e:  # noqa: BLE001 - missing, or present but broken against the image's pyarrow
        import types

        class Columns(dict):
            @classmethod
            def from_dict(cls, columns: dict[str, Any], features: Any = None) -> Columns:
                return cls({k: v.to_pylist() if hasattr(v, "to_pylist") else list(v) for k, v in columns.items()})

            def __len__(self) -> int:
                return len(next(iter(self.values()), []))

            def to_dict(self) -> dict[str, list]:
                return dict(self)

        shim = types.ModuleType("datasets")
        shim.Dataset, shim.Features, shim.Value = Columns, dict, lambda dtype: dtype
        sys.modules["datasets"] = shim
        print(f"[study] datasets unavailable ({type(e).__name__}: {e}); splits hold plain columns", flush=True)


_without_datasets()

ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("pooling=mean", {"pooling": "mean"}),
    ("layer_decay=0.8", {"layer_decay": 0.8}),
    ("lr=1e-4", {"lr": 1e-4}),
    ("lr=2e-5", {"lr": 2e-5}),
    ("warmup_ratio=0", {"warmup_ratio": 0.0}),
    ("epochs=5", {"epochs": 5, "patience": 5}),
]


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def _splits(data: Any) -> Any:
    from kosent.data import make_splits

    return make_splits(data)


def score_test_split(checkpoint: str | Path, splits: Any, device: str) -> dict[str, float]:
    """Accuracy and macro F1 of a checkpoint (plain or ensemble) on the test split, scored once."""
    from kosent.metrics import classification_metrics
    from kosent.predict import Predictor

    test = splits.test.to_dict()
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    if hasattr(predictor, "batch_size"):
        predictor.batch_size = 256
    m = classification_metrics(test["label"], predictor.predict_proba(test["text"]), splits.label_names, prefix="test_")
    return {"test_accuracy": round(m["test_accuracy"], 4), "test_macro_f1": round(m["test_macro_f1"], 4)}


def finetune_job(stage: str, cfg_dict: dict[str, Any], changes: dict[str, Any], out: str) -> dict[str, Any]:
    """One fine-tuning run, in a worker process of its own (several share the GPU): its results row."""
    import torch

    from kosent.config import TrainConfig, from_dict
    from kosent.distill import with_unlabelled
    from kosent.train import fit_local

    cfg = from_dict(TrainConfig, cfg_dict)
    t = time.perf_counter()
    splits = with_unlabelled(cfg, _splits(cfg.data))  # plus the texts a teacher scores (none without one)
    result = fit_local(cfg, splits, out_dir=Path(out) / stage.replace(" ", "_"))
    seconds = time.perf_counter() - t
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    return {
        "stage": stage, "start": Path(cfg.model).name, "changes": changes,
        "val_accuracy": round(result.metrics["val_accuracy"], 4), "val_macro_f1": round(result.metrics["val_macro_f1"], 4),
        **score_test_split(result.checkpoint, splits, device), "best_epoch": int(result.metrics["epoch"]),
        "seconds": round(seconds, 1), "median_step_seconds": round(result.history[0]["median_step_seconds"], 4),
        "train_rows": len(splits.train) + len(splits.unlabelled), "checkpoint": str(result.checkpoint),
    }


def pretrain_job(cfg_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """Domain-adaptive pretraining, in a worker process: the model folder and the corpus check."""
    from kosent.config import PretrainConfig, from_dict
    from kosent.pretrain import META_FILE, fit_pretrain_local

    cfg = from_dict(PretrainConfig, cfg_dict)
    t = time.perf_counter()
    folder = fit_pretrain_local(cfg, Path(out) / "dapt-model")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    return {
        "stage": "dapt", "start": cfg.model, "changes": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size},
        "corpus": meta["corpus"]["used"], "overlap": meta["corpus"]["overlap_with_validation_and_test"],
        "val_mlm_loss": [round(h["val_mlm_loss"], 4) for h in meta["history"]],
        "seconds": round(time.perf_counter() - t, 1), "checkpoint": str(folder),
    }


class Study:
    """The stages share the splits, the output folders and the results table; independent runs go to a
    pool of worker processes that share the one GPU (e5-small at batch 32 keeps a big GPU mostly idle)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from kosent.config import DataConfig, TrainConfig

        self.args = args
        self.out = Path(args.out)
        self.runs = Path(args.runs or self.out / "runs")
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.gpu = torch.cuda.is_available()
        self.device = "cuda" if self.gpu else "cpu"
        self.data = DataConfig(train_size=args.train_size, val_size=args.val_size, test_size=args.test_size)
        self.splits = _splits(self.data)
        self.base = TrainConfig(
            model=args.model, epochs=args.epochs, patience=args.epochs, lr=5e-5, warmup_ratio=0.1,
            batch_size=32, max_length=args.max_length, eval_batch_size=256, use_gpu=self.gpu, seed=args.seed,
            data=self.data, storage_path=str(self.runs), unlabelled_size=None, threads=args.threads,
        )
        self.rows: list[dict[str, Any]] = []
        self.hardware = hardware()
        (self.out / "results.jsonl").write_text("", encoding="utf-8")

    def log(self, msg: str) -> None:
        print(f"[study {time.perf_counter() - self.t0:6.0f}s] {msg}", flush=True)

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "hardware": self.hardware, "at_seconds": round(time.perf_counter() - self.t0)}
        self.rows.append(row)
        with open(self.out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (self.out / "results.md").write_text(table(self.rows), encoding="utf-8")
        shown = {k: v for k, v in row.items() if k not in ("hardware", "checkpoint")}
        self.log(f"RESULT {json.dumps(shown, ensure_ascii=False)}")
        return row

    def collect(self, future: Any) -> dict[str, Any] | None:
        """A worker's row, recorded; a failed run is recorded with its error and the study goes on."""
        try:
            return self.record(future.result())
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others' results
            self.record({"stage": getattr(future, "stage", "?"), "error": f"{type(e).__name__}: {e}"})
            return None

    def ensemble(self, stage: str, checkpoint: str) -> dict[str, Any]:
        from kosent.ensemble import build_ensemble

        t = time.perf_counter()
        out = self.runs / stage
        summary = build_ensemble(checkpoint, out, self.splits, device=self.device, progress=self.log)
        val, test = summary["validation"]["ensemble"], summary["test"]["ensemble"]
        return self.record({
            "stage": stage, "start": Path(checkpoint).parent.name, "changes": {"tfidf_weight": summary["tfidf_weight"]},
            "val_accuracy": round(val["val_accuracy"], 4), "val_macro_f1": round(val["val_macro_f1"], 4),
            "test_accuracy": round(test["test_accuracy"], 4), "test_macro_f1": round(test["test_macro_f1"], 4),
            "seconds": round(time.perf_counter() - t, 1), "checkpoint": str(out),
        })

    def run(self) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        from kosent.config import PretrainConfig, to_dict
        from kosent.train import fit_local

        a, runs = self.args, str(self.runs)
        self.log(f"{self.hardware}; splits {self.splits.sizes()}; {a.parallel} runs at a time")
        pool = ProcessPoolExecutor(max_workers=a.parallel, mp_context=get_context("spawn"))

        def submit(stage: str, fn: Any, *fn_args: Any) -> Any:
            future = pool.submit(fn, *fn_args)
            future.stage = stage
            return future

        def finetune(stage: str, cfg: Any, changes: dict[str, Any]) -> Any:
            return submit(stage, finetune_job, stage, to_dict(cfg), changes, runs)

        # Phase 1, all independent: the labelled-only baseline and its ablations, DAPT; TF-IDF here meanwhile.
        pcfg = PretrainConfig(
            model=a.model, epochs=a.dapt_epochs, max_length=64, batch_size=128, eval_batch_size=256, lr=1e-4,
            unlabelled_size=a.dapt_size or None, use_gpu=self.gpu, seed=a.seed, data=self.data, storage_path=runs,
            threads=a.threads,
        )
        dapt_f = submit("dapt", pretrain_job, to_dict(pcfg), runs) if a.dapt_epochs else None
        base_f = finetune("base", self.base, {})
        seed_fs = [finetune(f"base seed={seed}", dataclasses.replace(self.base, seed=seed), {"seed": seed})
                   for seed in a.seeds]
        ablation_fs = [finetune(f"ablation {name}", dataclasses.replace(self.base, **change), change)
                       for name, change in ABLATIONS[: a.ablations]]
        t = time.perf_counter()
        tfidf = fit_local(dataclasses.replace(self.base, model="tfidf"), self.splits, out_dir=self.runs / "tfidf")
        self.record({"stage": "tfidf", "start": "tfidf", "changes": {},
                     "val_accuracy": round(tfidf.metrics["val_accuracy"], 4),
                     "val_macro_f1": round(tfidf.metrics["val_macro_f1"], 4),
                     **score_test_split(tfidf.checkpoint, self.splits, "cpu"), "seconds": round(time.perf_counter() - t, 1)})
        starts = [r for r in [self.collect(base_f)] if r]
        dapt = self.collect(dapt_f) if dapt_f else None

        # Phase 2: the same recipe (and ablations) from the DAPT encoder.
        dapt_fs = []
        if dapt:
            dapt_cfg = dataclasses.replace(self.base, model=dapt["checkpoint"])
            dapt_fs = [finetune("dapt+base", dapt_cfg, {})] + [
                finetune(f"dapt ablation {name}", dataclasses.replace(dapt_cfg, **change), change)
                for name, change in ABLATIONS[: a.dapt_ablations]]
            starts += [r for r in [self.collect(dapt_fs[0])] if r]
        if not starts:
            raise SystemExit("no fine-tuning run finished; see the errors above")
        best = max(starts, key=lambda r: r["val_macro_f1"])
        start_model = self.base.model if best["stage"] == "base" else dapt["checkpoint"]
        self.log(f"better start by validation: {best['stage']} ({start_model})")

        # Phase 3: the ensemble teaches a student on the unlabelled texts; the student + TF-IDF.
        teacher = self.ensemble("ensemble", best["checkpoint"])["checkpoint"]
        distill_cfg = dataclasses.replace(
            self.base, model=start_model, teacher=teacher, unlabelled_size=a.distill_size or None,
            epochs=a.distill_epochs, patience=a.distill_epochs, batch_size=a.distill_batch_size)
        distill_f = finetune("distill", distill_cfg, {"teacher": "ensemble", "start": best["stage"],
                                                      "epochs": a.distill_epochs, "batch_size": a.distill_batch_size})
        for f in seed_fs + ablation_fs + dapt_fs[1:]:
            self.collect(f)
        student = self.collect(distill_f)
        if student:
            self.ensemble("distill+tfidf", student["checkpoint"])
        pool.shutdown()
        self.log(f"done in {time.perf_counter() - self.t0:.0f}s\n{table(self.rows)}")


def table(rows: list[dict[str, Any]]) -> str:
    head = ["stage", "start", "changes", "val acc", "val F1", "test acc", "test F1", "wall s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        note = r.get("skipped") or ""
        if "corpus" in r:
            note = f"corpus {r['corpus']:,} texts, overlap {r['overlap']}, val_mlm_loss {r['val_mlm_loss']}"
        elif "best_epoch" in r:
            note = f"best epoch {r['best_epoch']}, {r['train_rows']:,} rows, median step {r['median_step_seconds']}s"
        changes = ", ".join(f"{k}={v}" for k, v in (r.get("changes") or {}).items())
        cells = [r["stage"], r.get("start", ""), changes] + [
            f"{r[k]:.4f}" if isinstance(r.get(k), float) else "" for k in
            ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")
        ] + [f"{r['seconds']:.0f}" if "seconds" in r else "", note]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    hw = rows[0]["hardware"] if rows else ""
    return "\n".join(lines) + f"\n\nHardware: {hw}\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/bench_improve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for results.jsonl, results.md and the runs")
    p.add_argument("--model", default="e5-small-ko")
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--val-size", type=int, default=1_000)
    p.add_argument("--test-size", type=int, default=5_000)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the base recipe")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--runs", help="folder for the checkpoints (default OUT/runs)")
    p.add_argument("--parallel", type=int, default=8, help="runs sharing the GPU at a time")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    p.add_argument("--seeds", type=int, nargs="*", default=[],
                   help="also run the base recipe with these training seeds (the splits stay the same): the noise")
    p.add_argument("--dapt-epochs", type=int, default=1, help="0: no domain-adaptive pretraining")
    p.add_argument("--dapt-size", type=int, default=0, help="unlabelled texts for DAPT (0: all)")
    p.add_argument("--distill-size", type=int, default=0, help="unlabelled texts to distil on (0: all)")
    p.add_argument("--distill-epochs", type=int, default=1)
    p.add_argument("--distill-batch-size", type=int, default=64)
    p.add_argument("--ablations", type=int, default=len(ABLATIONS), help="how many ablations of the base recipe")
    p.add_argument("--dapt-ablations", type=int, default=len(ABLATIONS), help="how many of them from the DAPT encoder")
    p.add_argument("--smoke", action="store_true", help="tiny model and data on the CPU: checks the code path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.model, args.train_size, args.val_size, args.test_size = "tiny", 300, 100, 100
        args.epochs, args.max_length, args.dapt_size, args.distill_size = 1, 32, 400, 400
        args.ablations, args.dapt_ablations, args.parallel, args.threads = 2, 1, 2, 1
    Study(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
