"""Result records: one validated JSON object per evaluated run, the only source of the tables.

A record is written by a paper's eval step under ``results/raw/<paper>/<preset>/<method>-seed<seed>.json``
(atomically); ``python -m results.build`` turns all records into results/README.md. Required keys follow
ARCHITECTURE.md rule 7; ``benchmark`` names the table the record belongs to, ``protocol`` says how the metrics were
measured (sample count, feature network, NFE, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from common.checkpoint import atomic_write_json

SCHEMA_VERSION = 1
REQUIRED = {
    "paper": str,
    "preset": str,
    "method": str,
    "seed": int,
    "benchmark": str,
    "dataset": str,
    "metrics": dict,
    "protocol": dict,
    "config": dict,
    "git_commit": str,
    "wall_time_s": (int, float),
}
OPTIONAL = {
    "nfe": (int, float),
    "sampling_throughput": (int, float),
    "peak_memory_mb": (int, float),
    "train_wall_time_s": (int, float),
    "extra": dict,
    "created": str,
    "schema_version": int,
}
RAW_ROOT = Path(__file__).resolve().parent.parent / "results" / "raw"


class RecordError(ValueError):
    """A result record misses a key, has a wrong type or a non-finite metric."""


def validate_record(rec: dict) -> dict:
    for key, tp in REQUIRED.items():
        if key not in rec:
            raise RecordError(f"record misses required key {key!r}")
        if not isinstance(rec[key], tp) or isinstance(rec[key], bool):
            raise RecordError(f"record key {key!r} must be {tp}, got {type(rec[key]).__name__}")
    for key, value in rec.items():
        if key in REQUIRED:
            continue
        if key not in OPTIONAL:
            raise RecordError(f"unknown record key {key!r}; allowed: {sorted(REQUIRED) + sorted(OPTIONAL)}")
        if value is not None and not isinstance(value, OPTIONAL[key]):
            raise RecordError(f"record key {key!r} must be {OPTIONAL[key]}, got {type(value).__name__}")
    for name in ("paper", "preset", "method", "benchmark"):
        if not rec[name]:
            raise RecordError(f"record key {name!r} is empty")
    if not rec["metrics"]:
        raise RecordError("record has no metrics")
    for name, value in rec["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"metric {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RecordError(f"metric {name!r} is not finite ({value}); refusing to record it")
    return rec


def make_record(
    *,
    paper: str,
    preset: str,
    method: str,
    seed: int,
    benchmark: str,
    dataset: str,
    metrics: dict,
    protocol: dict,
    config,
    wall_time_s: float,
    nfe: float | None = None,
    sampling_throughput: float | None = None,
    peak_memory_mb: float | None = None,
    train_wall_time_s: float | None = None,
    extra: dict | None = None,
) -> dict:
    from common.launch import git_commit

    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    rec = {
        "schema_version": SCHEMA_VERSION,
        "paper": paper,
        "preset": preset,
        "method": method,
        "seed": int(seed),
        "benchmark": benchmark,
        "dataset": dataset,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "protocol": protocol,
        "config": json.loads(json.dumps(cfg, default=str)),
        "git_commit": git_commit(),
        "wall_time_s": float(wall_time_s),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    optional = dict(
        nfe=nfe,
        sampling_throughput=sampling_throughput,
        peak_memory_mb=peak_memory_mb,
        train_wall_time_s=train_wall_time_s,
        extra=extra,
    )
    rec.update({k: v for k, v in optional.items() if v is not None})
    return validate_record(rec)


def record_path(rec: dict, root=RAW_ROOT) -> Path:
    safe = lambda s: str(s).replace("/", "_").replace(" ", "_")  # noqa: E731
    return Path(root) / safe(rec["paper"]) / safe(rec["preset"]) / f"{safe(rec['method'])}-seed{rec['seed']}.json"


def write_record(rec: dict, root=RAW_ROOT) -> Path:
    validate_record(rec)
    return atomic_write_json(rec, record_path(rec, root))


def load_records(root=RAW_ROOT) -> list[dict]:
    root = Path(root)
    records = []
    for path in sorted(root.rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
            validate_record(rec)
        except (json.JSONDecodeError, RecordError) as e:
            raise RecordError(f"{path}: {e}") from None
        rec["_path"] = str(path.relative_to(root))
        records.append(rec)
    return records
