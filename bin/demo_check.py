"""The demo's last step: ask the endpoint about two reviews whose labels are known, check the answers,
and print what a person wants to know at a glance (metrics, where the outputs are, the URL, how to stop).

    python bin/demo_check.py --run-dir runs/demo --url http://127.0.0.1:8000

Exits 0 only when the endpoint answers both reviews with the expected labels; 1 otherwise (the reason
is printed). ``--json FILE`` also writes the request's answer and the run's figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

#: Two unambiguous reviews and the label every model worth serving gives them.
SAMPLES = {
    "배우들 연기가 정말 좋았고 스토리도 탄탄했어요": "positive",
    "돈 아깝다. 시간 낭비였음": "negative",
}


def ask(url: str, texts: list[str], timeout_s: float, wait_s: float) -> dict[str, Any]:
    """POST /predict, retried while the endpoint is still coming up (connection refused, 503)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resp = requests.post(f"{url}/predict", json={"texts": texts}, timeout=timeout_s)
            if resp.status_code == 200:
                return resp.json()
            problem = f"HTTP {resp.status_code}: {resp.text[:300]}"
        except requests.RequestException as e:
            problem = str(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/predict did not answer: {problem}")
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the train job's run folder (summary.json, manifest.json)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the Serve endpoint")
    parser.add_argument("--stop", default=".venv/bin/ray stop", help="the command that ends everything")
    parser.add_argument("--json", help="also write the answer and the figures to this JSON file")
    parser.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the endpoint")
    args = parser.parse_args(argv)

    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    texts = list(SAMPLES)
    try:
        answer = ask(args.url, texts, timeout_s=30, wait_s=args.wait_s)
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    got = [p["label"] for p in answer.get("predictions", [])]
    wrong = [(t, SAMPLES[t], g) for t, g in zip(texts, got, strict=False) if g != SAMPLES[t]]
    if len(got) != len(texts):
        wrong.append(("(all)", f"{len(texts)} predictions", f"{len(got)}"))

    test = summary["test_metrics"]
    sizes = summary["data"]["sizes"]
    print("\nAnswer from the endpoint:")
    for text, pred in zip(texts, answer.get("predictions", []), strict=False):
        print(f"  {pred['label']:<9} p(positive)={pred['probability']:.3f}  {text}")
    print(
        f"\nkosent demo: {summary['config']['model']} trained on {sizes['train']:,} NSMC reviews in "
        f"{summary['wall_seconds']:.0f} s\n"
        f"  test accuracy {test['test_accuracy']:.4f}, macro F1 {test['test_macro_f1']:.4f} "
        f"({sizes['test']:,} test reviews)\n"
        f"  checkpoint  {summary['checkpoint']}\n"
        f"  curves      {run / 'curves.png'}\n"
        f"  summary     {run / 'summary.json'}\n"
        f"  manifest    {run / 'manifest.json'}\n"
        f"  endpoint    {args.url}/ (page), {args.url}/docs (API), {args.url}/predict\n"
        f"  stop with   {args.stop}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({
            "ok": not wrong, "answer": answer, "expected": SAMPLES,
            "test_accuracy": test["test_accuracy"], "test_macro_f1": test["test_macro_f1"],
            "checkpoint": summary["checkpoint"], "url": args.url,
        }, indent=2, ensure_ascii=False), encoding="utf-8")
    if wrong:
        for text, want, have in wrong:
            print(f"demo: wrong answer for {text!r}: expected {want}, got {have}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
