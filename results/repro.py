"""Reproduction check: this machine's fresh records against the committed ones and the paper's numbers.

    python -m results.repro runs/embedded/raw            # table on stdout and in runs/embedded/REPRO.md

For every fresh record with committed records of the same (paper, benchmark, method, preset), each headline metric
(results/headline.toml) is shown as: this machine | committed mean ± std (n) | paper (where paper_numbers.toml maps
one) | verdict:
- *identical*: equal to a committed seed's value to 1e-9 (same seed, same machine type and thread count);
- *within spread*: inside mean ± 2 std of the committed seeds (n ≥ 2);
- *outside spread*: beyond it; *no spread (n=1)*: a single committed seed that differs.
Committed records are never written by this check. Bit-identical results need the same CPU type, thread count and
library versions; across CPUs, float reductions differ and only "within spread" can be expected.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tomllib
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.results import RAW_ROOT, load_records
from results.build import HEADLINE, PAPER_NUMBERS, _group, fmt, headline_metrics, mean_std, natural_key


def verdict(value: float, committed: list[float]) -> str:
    if any(abs(value - c) <= 1e-9 * max(1.0, abs(c)) for c in committed):
        return "identical"
    if len(committed) < 2:
        return "no spread (n=1)"
    m, s = statistics.fmean(committed), statistics.stdev(committed)
    return "within spread" if abs(value - m) <= 2 * s else "outside spread"


def paper_value(numbers: dict, paper: str, benchmark: str, method: str, metric: str) -> str:
    for e in numbers.get(paper, []):
        if (
            e.get("ours_benchmark") == benchmark
            and e.get("ours_method", e["method"]) == method
            and e.get("ours_metric", e["metric"]) == metric
        ):
            return f"{fmt(e['value'])} ({e.get('source', '')})"
    return "—"


def compare(fresh_root, committed_root=RAW_ROOT) -> tuple[str, dict]:
    fresh = load_records(fresh_root)
    committed = load_records(committed_root)
    headline = tomllib.loads(Path(HEADLINE).read_text()) if Path(HEADLINE).exists() else {}
    numbers = tomllib.loads(Path(PAPER_NUMBERS).read_text()) if Path(PAPER_NUMBERS).exists() else {}
    by_bench = _group(committed)
    lines = [
        "| benchmark | method | metric | this machine | committed (mean ± std, n) | paper | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    for r in sorted(fresh, key=lambda r: natural_key((r["benchmark"], r["method"]))):
        key = (r["paper"], r["method"], r["preset"])
        rows = by_bench.get(r["benchmark"], {})
        recs = rows.get(key, [])
        metrics, _ = headline_metrics(r["benchmark"], {key: [r]}, headline)
        for m in metrics:
            vals = [c["metrics"][m] for c in recs if m in c["metrics"]]
            v = verdict(r["metrics"][m], vals) if vals else "no committed record"
            counts[v] = counts.get(v, 0) + 1
            com = f"{mean_std(vals)} (n={len(vals)})" if vals else "—"
            pv = paper_value(numbers, r["paper"], r["benchmark"], r["method"], m)
            lines.append(f"| {r['benchmark']} | {r['method']} | {m} | {fmt(r['metrics'][m])} | {com} | {pv} | {v} |")
    summary = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
    return "\n".join(lines) + f"\n\n{summary}\n", counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fresh", help="folder of this machine's records (e.g. runs/embedded/raw)")
    ap.add_argument("--committed", default=str(RAW_ROOT), help="committed records (default results/raw)")
    ap.add_argument("--out", default=None, help="markdown file to write (default <fresh>/../REPRO.md)")
    args = ap.parse_args(argv)
    if not Path(args.fresh).is_dir():
        from common.config import UserInputError

        raise UserInputError(f"fresh: {args.fresh} is not a folder of records; run scripts/run_embedded.sh first")
    text, _ = compare(args.fresh, args.committed)
    out = Path(args.out) if args.out else Path(args.fresh).parent / "REPRO.md"
    out.write_text("# Reproduction check\n\n" + text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from common.cli import entry

    raise SystemExit(entry(main))
