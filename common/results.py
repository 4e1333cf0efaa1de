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
    "timing": dict,
    "created": str,
    "schema_version": int,
}
RAW_ROOT = Path(__file__).resolve().parent.parent / "results" / "raw"


class RecordError(ValueError):
    """A result record misses a key, has a wrong type or a non-finite metric."""


# Metrics that measure speed rather than quality live in the record's "timing" field, so that the metrics of two
# identical runs are identical (timings differ from machine to machine and from load to load).
_TIMING_WORDS = ("throughput", "latency", "time_s", "eval_time", "wall_time", "seconds", "per_s", "it/s", "speed")


def is_timing(name: str) -> bool:
    low = name.lower().replace(" ", "_")
    return any(w in low for w in _TIMING_WORDS)


# Config keys that say where or how often things are written, not what is measured: two records whose configs
# differ only here are records of the same run.
IDENTITY_IGNORED = frozenset(
    {"out_dir", "results_dir", "log_every", "ckpt_every", "keep_ckpts", "trackers", "num_threads", "cache_dir"}
)


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
    timing: dict | None = None,
) -> dict:
    """Build and validate a record. Speed figures passed in ``metrics`` (see :func:`is_timing`) move to ``timing``."""
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
        "metrics": {k: float(v) for k, v in metrics.items() if not is_timing(k)},
        "protocol": protocol,
        "config": json.loads(json.dumps(cfg, default=str)),
        "git_commit": git_commit(),
        "wall_time_s": float(wall_time_s),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    timing = {**{k: float(v) for k, v in metrics.items() if is_timing(k)}, **(timing or {})}
    optional = dict(
        timing=timing or None,
        nfe=nfe,
        sampling_throughput=sampling_throughput,
        peak_memory_mb=peak_memory_mb,
        train_wall_time_s=train_wall_time_s,
        extra=extra,
    )
    rec.update({k: v for k, v in optional.items() if v is not None})
    return validate_record(rec)


def _safe(s) -> str:
    return str(s).replace("/", "_").replace(" ", "_")


def record_path(rec: dict, root=RAW_ROOT) -> Path:
    """``<paper>/<preset>/<method>-seed<seed>[--<run_name>].json``: a run with its own run_name has its own record."""
    run_name = rec.get("config", {}).get("run_name") or ""
    tag = f"--{_safe(run_name)}" if run_name else ""
    return (
        Path(root) / _safe(rec["paper"]) / _safe(rec["preset"]) / f"{_safe(rec['method'])}-seed{rec['seed']}{tag}.json"
    )


def config_differences(old: dict, new: dict) -> list[str]:
    keys = (set(old) | set(new)) - IDENTITY_IGNORED
    return sorted(k for k in keys if old.get(k) != new.get(k))


def write_record(rec: dict, root=RAW_ROOT, *, same_config: bool = True) -> Path:
    """Validate and write ``rec`` atomically.

    With ``same_config`` (the default) an existing record at the same path that came from a different config is
    not replaced: RecordError names the file and the keys that differ. Reference records whose metrics do not depend
    on the config that differs (e.g. the teacher measured inside a student's evaluation) pass ``same_config=False``.
    """
    validate_record(rec)
    path = record_path(rec, root)
    if same_config and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None  # an unreadable record is replaced
        if isinstance(old, dict) and isinstance(old.get("config"), dict):
            differ = config_differences(old["config"], rec["config"])
            if differ:
                raise RecordError(
                    f"{path} holds a record of a different config ({', '.join(differ[:6])} differ); "
                    "keep both with --set run_name=NAME, or delete the file to replace it"
                )
    return atomic_write_json(rec, path)


def check_record_slot(paper: str, preset: str, method: str, cfg, root=RAW_ROOT) -> None:
    """Before training: refuse early when the run's record would be refused by :func:`write_record`."""
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    rec = {"paper": paper, "preset": preset, "method": method, "seed": cfg.seed, "config": cfg_dict}
    path = record_path(rec, root)
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    differ = config_differences(old.get("config", {}), cfg_dict) if isinstance(old, dict) else []
    if differ:
        raise RecordError(
            f"{path} holds a record of a different config ({', '.join(differ[:6])} differ); "
            "keep both with --set run_name=NAME, or delete the file to replace it"
        )


def variant_label(label: str, cfg, presets: dict, keys=("task",)) -> str:
    """A preset's benchmark label, marked when ``--set`` changed what is measured (e.g. ``task=``)."""
    base = presets.get(getattr(cfg, "preset", ""), None)
    if base is None:
        return label
    changed = [f"{k}={getattr(cfg, k)}" for k in keys if hasattr(cfg, k) and getattr(cfg, k) != getattr(base, k)]
    return f"{label} [{', '.join(changed)}]" if changed else label


def load_records(root=RAW_ROOT) -> list[dict]:
    """Every record under ``root``; a malformed one raises RecordError that names its file."""
    root = Path(root)
    records = []
    for path in sorted(root.rglob("*.json")):
        try:
            rec = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(rec, dict):
                raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
            validate_record(rec)
        except UnicodeDecodeError:
            raise RecordError(f"{path}: not UTF-8 text; delete or re-create this record") from None
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); delete or re-create it") from None
        except RecordError as e:
            raise RecordError(f"{path}: {e}") from None
        rec["_path"] = str(path.relative_to(root))
        records.append(rec)
    return records
