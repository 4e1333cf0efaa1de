"""File formats of ranking distillation (MS MARCO and the Margin-MSE teacher-score releases), read strictly.

* teacher-score triples, id form (neural-ranking-kd / Zenodo 4068216): ``pos_score \\t neg_score \\t qid \\t pid+ \\t pid-``
* teacher-score triples, text form (matchmaker training input): ``score+ \\t score- \\t query \\t pos \\t neg``
* id -> text files (collection.tsv, queries.tsv): ``id \\t text``
* qrels (TREC): ``qid 0 docid rel``
* candidate runs: ``qid \\t docid \\t ...`` (first two columns used; order in the file = rank order)

A malformed line raises ``FormatError`` naming the file and line number. ``join_ids_to_text`` joins id triples to
text and counts the ids it could not resolve (as the official ``teacher_id_to_text.py`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class FormatError(ValueError):
    pass


@dataclass(frozen=True)
class ScoredTriple:
    pos_score: float
    neg_score: float
    query: str  # query id or text
    pos: str  # passage id or text
    neg: str


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if line:
                yield n, line


def write_triples(triples: Iterable[ScoredTriple], path: str | Path) -> None:
    """Write the official 5-column format (scores with 6 decimals)."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in triples:
            f.write(f"{t.pos_score:.6f}\t{t.neg_score:.6f}\t{t.query}\t{t.pos}\t{t.neg}\n")
    tmp.replace(path)


def read_triples(path: str | Path) -> list[ScoredTriple]:
    out = []
    for n, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != 5:
            raise FormatError(
                f"{path}:{n}: expected 5 tab-separated columns (pos_score, neg_score, q, pos, neg), got {len(cols)}"
            )
        try:
            ps, ns = float(cols[0]), float(cols[1])
        except ValueError as e:
            raise FormatError(f"{path}:{n}: scores must be numbers: {cols[0]!r}, {cols[1]!r}") from e
        out.append(ScoredTriple(ps, ns, cols[2], cols[3], cols[4]))
    return out


def read_id_text(path: str | Path) -> dict[str, str]:
    out = {}
    for n, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != 2:
            raise FormatError(f"{path}:{n}: expected 2 tab-separated columns (id, text), got {len(cols)}")
        out[cols[0]] = cols[1]
    return out


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n, line in _lines(path):
        cols = line.split()
        if len(cols) != 4:
            raise FormatError(f"{path}:{n}: expected 4 columns (qid 0 docid rel), got {len(cols)}")
        try:
            out.setdefault(cols[0], {})[cols[2]] = int(cols[3])
        except ValueError as e:
            raise FormatError(f"{path}:{n}: relevance must be an integer: {cols[3]!r}") from e
    return out


def write_qrels(qrels: dict[str, dict[str, int]], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q, rel in qrels.items():
            for d, r in rel.items():
                f.write(f"{q} 0 {d} {r}\n")


def read_run(path: str | Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, line in _lines(path):
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2:
            raise FormatError(f"{path}:{n}: expected at least 2 columns (qid, docid)")
        out.setdefault(cols[0], []).append(cols[1])
    return out


def join_ids_to_text(
    triples: Iterable[ScoredTriple], queries: dict[str, str], passages: dict[str, str]
) -> tuple[list[ScoredTriple], dict[str, int]]:
    """Replace ids by text; triples with a missing id are dropped and counted."""
    out, missing = [], {"query": 0, "passage": 0, "dropped": 0}
    for t in triples:
        q, p, n = queries.get(t.query), passages.get(t.pos), passages.get(t.neg)
        missing["query"] += q is None
        missing["passage"] += (p is None) + (n is None)
        if q is None or p is None or n is None:
            missing["dropped"] += 1
            continue
        out.append(ScoredTriple(t.pos_score, t.neg_score, q, p, n))
    return out, missing
