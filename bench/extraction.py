"""Fact-detection quality: precision and recall of an extractor on the labelled set.

A message counts as detected when the extractor returns at least one candidate for it (rules
first, then the chat model, exactly as the chat does). Precision = detected facts / detected;
recall = detected facts / facts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.extraction_set import LABELLED


def measure(extract: Callable[[str], list], labelled: list[tuple[str, bool]] = LABELLED,
            progress: Callable[[int], None] | None = None) -> dict:
    """Run ``extract(message) -> candidates`` over ``labelled``; counts, precision, recall, per message."""
    rows, start = [], time.perf_counter()
    for message, is_fact in labelled:
        candidates = extract(message)
        rows.append({"message": message, "fact": is_fact, "detected": bool(candidates),
                     "candidates": [{"instruction": c.instruction, "query": c.query} for c in candidates]})
        if progress:
            progress(1)
    tp = sum(r["fact"] and r["detected"] for r in rows)
    fp = sum(not r["fact"] and r["detected"] for r in rows)
    fn = sum(r["fact"] and not r["detected"] for r in rows)
    tn = len(rows) - tp - fp - fn
    return {
        "messages": len(rows), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
        "seconds_per_message": (time.perf_counter() - start) / max(len(rows), 1), "results": rows,
    }


def format_report(report: dict) -> str:
    misses = [f"  {'missed fact' if r['fact'] else 'false alarm'}: {r['message']}"
              for r in report["results"] if r["fact"] != r["detected"]]
    return "\n".join([
        f"precision {report['precision']:.2f}  recall {report['recall']:.2f}  "
        f"(tp {report['tp']}, fp {report['fp']}, fn {report['fn']}, tn {report['tn']}; "
        f"{report['seconds_per_message']:.2f}s per message)", *misses])
