"""Regenerate results/README.md (and the README results block) from the records under results/raw/.

    python -m results.build            # write results/README.md and the block in README.md
    python -m results.build --check    # exit 1 when a committed file is stale
    python -m results.build --raw runs/embedded/raw --out runs/embedded/RESULTS.md   # tables of other records

Sections, in order:
- **Claims**: one table per paper from results/claims.toml. Each claim compares a method with a baseline on one
  metric: Δ = method − baseline per seed (paired where both have the seed), mean ± std, n, a paired 95% t interval,
  and a verdict: *reproduced* (the interval excludes 0 in the claimed direction), *not reproduced* (it does not),
  *untestable: gate X failed* (a gate listed with the claim is not met by its records), or *too few seeds*.
- **Benchmarks**: per benchmark, the headline metrics (results/headline.toml; otherwise the first five quality
  metrics) as mean ± std over seeds; the other metrics and the timings (throughput, latency: machine-dependent)
  in secondary tables. Rows in natural order (ttur1, ttur5, ttur10). Protocols as text. A benchmark listed in
  results/comparisons.toml also gets paired differences against a baseline method (per preset; seeds pair) and
  its figures.
- **Paper vs ours** from paper_numbers.toml (an entry maps to our records through ``ours_benchmark`` /
  ``ours_method`` / ``ours_metric``; "not run here" when no record matches).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # `python results/build.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.results import RAW_ROOT, is_timing, load_records

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
TOP_README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PAPER_NUMBERS = HERE / "paper_numbers.toml"
HEADLINE = HERE / "headline.toml"
CLAIMS = HERE / "claims.toml"
COMPARISONS = HERE / "comparisons.toml"
N_HEADLINE = 5


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def natural_key(text) -> list:
    """Sort key that orders embedded numbers by value: ttur1 < ttur5 < ttur10."""
    if isinstance(text, tuple):
        return [natural_key(t) for t in text]
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(text)) if p]


def _load_toml(path) -> dict:
    return tomllib.loads(Path(path).read_text()) if Path(path).exists() else {}


def _timings(rec: dict) -> dict:
    out = {k: v for k, v in rec["metrics"].items() if is_timing(k)}
    out.update(rec.get("timing") or {})
    return out


def _group(records):
    by_bench = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_bench[r["benchmark"]][(r["paper"], r["method"], r["preset"])].append(r)
    return by_bench


def headline_metrics(name: str, rows: dict, headline: dict) -> tuple[list[str], list[str]]:
    """(headline, other) quality metrics of a benchmark."""
    seen: list[str] = []
    for recs in rows.values():
        for r in recs:
            for m in r["metrics"]:
                if m not in seen and not is_timing(m):
                    seen.append(m)
    chosen = [m for m in headline.get(name, []) if m in seen] or seen[:N_HEADLINE]
    return chosen, [m for m in seen if m not in chosen]


def protocol_text(p) -> str:
    if isinstance(p, dict):
        return "; ".join(f"{k}: {protocol_text(v)}" for k, v in p.items())
    if isinstance(p, (list, tuple)):
        return ", ".join(protocol_text(v) for v in p)
    return str(p)


def _table(rows: dict, metrics: list[str], value_of) -> list[str]:
    out = ["| paper | method | preset | n (seeds) | " + " | ".join(metrics) + " |", "|" + "---|" * (4 + len(metrics))]
    for (paper, method, preset), recs in sorted(rows.items(), key=lambda kv: natural_key(kv[0])):
        seeds = sorted(r["seed"] for r in recs)
        cells = []
        for m in metrics:
            vals = [v for r in recs if (v := value_of(r).get(m)) is not None]
            cells.append(mean_std(vals) if vals else "—")
        out.append(
            f"| {paper} | {method} | {preset} | {len(recs)} ({','.join(map(str, seeds))}) | " + " | ".join(cells) + " |"
        )
    return out


def paired_table(rows: dict, spec: dict) -> list[str]:
    """Paired differences against a baseline method within each preset (seeds pair: same data, noise, reference):
    Δ = method − baseline per seed, mean ± std, n, paired 95% t interval; spec = {baseline, metrics}."""
    base, metrics = spec["baseline"], spec["metrics"]
    out = [
        f"Paired differences against {base} (same preset, same seeds): Δ mean ± std [paired 95% CI], n",
        "",
        "| preset | method | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
        "|" + "---|" * (2 + len(metrics)),
    ]
    by_preset = defaultdict(dict)
    for (_paper, method, preset), recs in rows.items():
        by_preset[preset][method] = {r["seed"]: r["metrics"] for r in recs}
    for preset in sorted(by_preset, key=natural_key):
        methods = by_preset[preset]
        if base not in methods:
            continue
        for method in sorted(methods, key=natural_key):
            if method == base:
                continue
            cells = []
            for m in metrics:
                seeds = sorted(s for s in methods[method] if s in methods[base] and m in methods[method][s])
                seeds = [s for s in seeds if m in methods[base][s]]
                d = [methods[method][s][m] - methods[base][s][m] for s in seeds]
                if len(d) < 2:
                    cells.append(fmt(d[0]) + " (n=1)" if d else "—")
                    continue
                mu, sd = statistics.fmean(d), statistics.stdev(d)
                half = _t975(len(d) - 1) * sd / math.sqrt(len(d))
                cells.append(f"{fmt(mu)} ± {fmt(sd)} [{fmt(mu - half)}, {fmt(mu + half)}], {len(d)}")
            out.append(f"| {preset} | {method} | " + " | ".join(cells) + " |")
    return out + [""]


def benchmark_table(name: str, rows: dict, headline: dict | None = None, extras: dict | None = None) -> list[str]:
    """The benchmark's tables; `extras` (results/comparisons.toml): `baseline` and `metrics` of a paired-difference
    table, `figures` (paths relative to results/) shown under it."""
    main, other = headline_metrics(name, rows, headline or {})
    extras = extras or {}
    out = [f"### {name}", ""] + _table(rows, main, lambda r: r["metrics"]) + [""]
    if extras.get("baseline"):
        out += paired_table(rows, extras)
    for fig in extras.get("figures", []):
        out += [f"![{Path(fig).stem}]({fig})", ""]
    if other:
        out += ["<details><summary>other metrics</summary>", ""]
        out += _table(rows, other, lambda r: r["metrics"]) + ["", "</details>", ""]
    timing_keys = list(dict.fromkeys(k for recs in rows.values() for r in recs for k in _timings(r)))
    if timing_keys:
        out += ["<details><summary>timings (machine-dependent)</summary>", ""]
        out += _table(rows, timing_keys, _timings) + ["", "</details>", ""]
    protocols = sorted({protocol_text(r["protocol"]) for recs in rows.values() for r in recs})
    for p in protocols:
        out += [f"Protocol: {p}", ""]
    return out


def paper_table(paper: str, entries: list[dict], records: list[dict]) -> list[str]:
    out = [
        f"### {paper}: paper vs ours",
        "",
        "| benchmark | method | metric | paper | source | ours | Δ (ours − paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        ours, delta = "not run here", "—"
        if "ours_benchmark" in e:
            metric = e.get("ours_metric", e["metric"])
            vals = [
                r["metrics"][metric]
                for r in records
                if r["paper"] == paper
                and r["benchmark"] == e["ours_benchmark"]
                and r["method"] == e.get("ours_method", e["method"])
                and metric in r["metrics"]
            ]
            if vals:
                ours = f"{mean_std(vals)} (n={len(vals)}; {e['ours_benchmark']})"
                delta = fmt(statistics.fmean(vals) - e["value"])
        out.append(
            f"| {e['benchmark']} | {e['method']} | {e['metric']} | {fmt(e['value'])} | {e.get('source', '')} | "
            f"{ours} | {delta} |"
        )
    out.append("")
    return out


# ---- claims ------------------------------------------------------------------------------------------------------


def _t975(df: int) -> float:
    """Two-sided 95% Student-t quantile."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def _by_seed(records, paper, benchmark, method, metric) -> dict[int, float]:
    return {
        r["seed"]: r["metrics"][metric]
        for r in records
        if r["paper"] == paper and r["benchmark"] == benchmark and r["method"] == method and metric in r["metrics"]
    }


def gate_status(gate: dict, records: list[dict], paper: str) -> tuple[bool | None, str]:
    """(passed, text) of a gate: every record of (benchmark, method) meets min/max on metric; None = no records."""
    vals = list(_by_seed(records, paper, gate["benchmark"], gate["method"], gate["metric"]).values())
    if not vals:
        return None, f"{gate['name']}: no records"
    ok = all(
        ("min" not in gate or v >= gate["min"]) and ("max" not in gate or v <= gate["max"]) and math.isfinite(v)
        for v in vals
    )
    return ok, f"{gate['name']}: {'passed' if ok else 'FAILED'} ({', '.join(fmt(v) for v in vals)})"


def claim_row(c: dict, records: list[dict], paper: str) -> tuple[str, list[str]]:
    notes = []
    failed = []
    for g in c.get("gates", []):
        ok, text = gate_status(g, records, paper)
        notes.append(text)
        if ok is False or ok is None:
            failed.append(g["name"])
    base = _by_seed(records, paper, c["benchmark"], c["baseline"], c["metric"])
    meth = _by_seed(records, paper, c["benchmark"], c["method"], c["metric"])
    seeds = sorted(set(base) & set(meth))
    if c.get("paired", True) and seeds:
        diffs = [meth[s] - base[s] for s in seeds]
    elif not c.get("paired", True) and base and meth:  # a reference measured once (e.g. a fixed teacher)
        ref = statistics.fmean(base.values())
        diffs = [v - ref for v in meth.values()]
    else:
        diffs = []
    sign = -1.0 if c.get("better", "higher") == "lower" else 1.0
    n = len(diffs)
    if n == 0:
        delta, ci, verdict = "—", "—", "not run"
    else:
        m = statistics.fmean(diffs)
        sd = statistics.stdev(diffs) if n > 1 else 0.0
        delta = f"{fmt(m)} ± {fmt(sd)}" if n > 1 else fmt(m)
        if n > 1:
            half = _t975(n - 1) * sd / math.sqrt(n)
            lo, hi = m - half, m + half
            ci = f"[{fmt(lo)}, {fmt(hi)}]"
            verdict = "reproduced" if (sign * lo > 0 if sign > 0 else sign * hi > 0) else "not reproduced"
        else:
            ci, verdict = "—", "too few seeds (n=1)"
    if failed:
        verdict = f"untestable: gate {', '.join(failed)} failed"
    where = f"{c['method']} vs {c['baseline']} ({c['metric']}, {c.get('better', 'higher')} is better)"
    row = f"| {c['claim']} | {where} | {delta} | {ci} | {n} | {verdict} |"
    return row, notes


def claims_section(claims: dict, records: list[dict]) -> list[str]:
    out = []
    for paper in sorted(claims):
        out += [
            f"### {paper}",
            "",
            "| claim | method vs baseline (metric) | Δ mean ± std | paired 95% CI | n | verdict |",
            "|---|---|---|---|---|---|",
        ]
        notes = []
        for c in claims[paper]:
            row, gate_notes = claim_row(c, records, paper)
            out.append(row)
            notes += gate_notes
        out.append("")
        if notes:
            out += ["Gates: " + "; ".join(dict.fromkeys(notes)), ""]
        benches = sorted({c["benchmark"] for c in claims[paper]})
        out += ["Benchmarks: " + "; ".join(benches), ""]
    return out


# ---- documents ---------------------------------------------------------------------------------------------------


def build(
    raw_root=RAW_ROOT,
    numbers_path=PAPER_NUMBERS,
    headline_path=HEADLINE,
    claims_path=CLAIMS,
    comparisons_path=COMPARISONS,
) -> str:
    records = load_records(raw_root) if Path(raw_root).exists() else []
    numbers = _load_toml(numbers_path)
    headline = _load_toml(headline_path)
    claims = _load_toml(claims_path)
    comparisons = _load_toml(comparisons_path)
    lines = [
        "# Results",
        "",
        "Generated by `python -m results.build` from the records in `results/raw/`, `results/claims.toml`,",
        "`results/headline.toml` and `results/paper_numbers.toml`; do not edit by hand. Values are mean ± sample std",
        "over the seeds listed; a single value means one seed. Offline Fréchet distances use the feature network named",
        "in the protocol, not Inception. Timings depend on the machine and its load and are kept apart.",
        "",
        f"{len(records)} records.",
        "",
    ]
    if claims:
        lines += ["## Claims", ""] + claims_section(claims, records)
    lines += ["## Benchmarks", ""]
    by_bench = _group(records)
    for name in sorted(by_bench, key=natural_key):
        lines += benchmark_table(name, by_bench[name], headline, comparisons.get(name))
    lines += ["## Paper vs ours", ""]
    for paper in sorted(numbers):
        lines += paper_table(paper, numbers[paper], records)
    return "\n".join(lines).rstrip() + "\n"


def summary(records: list[dict], headline: dict | None = None) -> str:
    """The compact table in the top-level README: one line per (benchmark, method) with its headline metrics."""
    lines = ["| benchmark | method | n | headline metrics (mean ± std) |", "|---|---|---|---|"]
    for name, rows in sorted(_group(records).items(), key=lambda kv: natural_key(kv[0])):
        keys, _ = headline_metrics(name, rows, headline or {})
        several = len({preset for _paper, _method, preset in rows}) > 1  # e.g. one benchmark at two budgets
        for (_paper, method, preset), recs in sorted(rows.items(), key=lambda kv: natural_key(kv[0])):
            cells = ", ".join(
                f"{m} {mean_std(vals)}" for m in keys if (vals := [r["metrics"][m] for r in recs if m in r["metrics"]])
            )
            lines.append(
                f"| {name} | {method} ({preset}) | {len(recs)} | {cells} |"
                if several
                else f"| {name} | {method} | {len(recs)} | {cells} |"
            )
    return "\n".join(lines) if len(lines) > 2 else "No records yet."


def top_readme(raw_root=RAW_ROOT, headline_path=HEADLINE) -> str:
    text = TOP_README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    records = load_records(raw_root) if Path(raw_root).exists() else []
    return f"{head}{START}\n{summary(records, _load_toml(headline_path))}\n{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if results/README.md or README.md is stale")
    ap.add_argument("--raw", default=None, help="records folder (default results/raw); writes only --out then")
    ap.add_argument("--out", default=None, help="where to write the tables of --raw (default: <raw>/../RESULTS.md)")
    args = ap.parse_args(argv)
    if args.raw:
        out = Path(args.out) if args.out else Path(args.raw).parent / "RESULTS.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(build(args.raw))
        print(f"wrote {out}")
        return 0
    outputs = {README: build(), TOP_README: top_readme()}
    if args.check:
        stale = [str(p) for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}; run `python -m results.build`", file=sys.stderr)
            return 1
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from common.cli import entry

    raise SystemExit(entry(main))
