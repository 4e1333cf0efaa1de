"""Embedded benchmark for Margin-MSE: a synthetic entity-attribute fact collection (no download).

Why synthetic: no passage-ranking data and no cross-encoder ship offline, and tiny BERTs trained from scratch on a
real-text task for a few CPU minutes stay below BM25, leaving nothing to distil. This collection is designed so that
a query-passage cross-encoder has a real advantage over both BM25 and a single-vector dot-product encoder:

* a passage states 3-5 facts ``e a v`` (entity, attribute, value) about one or two entities, plus 10-20 filler words
  from one or two topics;
* a query is ``e a`` plus 1-2 topic words of the designated positive passage;
* graded oracle relevance: 2 = the passage states a fact about (e, a) (the binding ``e a`` is adjacent);
  1 = it mentions e; 0 otherwise. A passage about two entities that says ``e1 a1 v`` and ``e2 a2 v'`` is a
  *binding distractor* for the query ``e1 a2``: it contains both query terms, so BM25 and a bag-of-words encoder
  rank it like a relevant passage; only a model that reads the word order of query and passage together separates
  them;
* training labels are sparse, as on MSMARCO: one designated positive per query; other relevant passages stay
  unlabelled, so sampled negatives contain false negatives.

Construction is deterministic in ``seed`` (numpy Generator) and needs nothing but numpy. Tokens are plain words
(``e17``, ``a3``, ``v42``, ``t105``) so a word-level tokenizer covers the vocabulary exactly.

Left out: natural language, and the paper's 8.8M-passage scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Collection:
    """Passages, queries with their designated positives, and graded oracle relevance."""

    passages: list[str]
    train_queries: list[str]
    train_pos: np.ndarray  # (Q_train,) passage id of the designated positive
    dev_queries: list[str]
    dev_pos: np.ndarray
    dev_qrels: list[dict[int, int]]  # per dev query: passage id -> graded label (1 or 2); others are 0
    train_qrels: list[dict[int, int]]
    vocab: list[str]


def vocabulary(n_entities: int, n_attributes: int, n_values: int, n_topic_words: int) -> list[str]:
    return (
        [f"e{i}" for i in range(n_entities)]
        + [f"a{i}" for i in range(n_attributes)]
        + [f"v{i}" for i in range(n_values)]
        + [f"t{i}" for i in range(n_topic_words)]
    )


def build_collection(
    seed: int = 0,
    n_passages: int = 5000,
    n_entities: int = 200,
    n_attributes: int = 30,
    n_values: int = 50,
    n_topics: int = 20,
    words_per_topic: int = 15,
    n_train_queries: int = 3000,
    n_dev_queries: int = 500,
    entities_per_passage: tuple[int, ...] = (2, 3),
    facts_per_passage: tuple[int, int] = (4, 6),
    topic_words_per_query: tuple[int, int] = (1, 2),
    filler_per_passage: tuple[int, int] = (10, 20),
    with_values: bool = True,
    facts_per_entity: int = 0,
    unique_facts: bool = False,
) -> Collection:
    """Build the collection (margin_mse.md §6). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    n_topic_words = n_topics * words_per_topic
    topic_words = np.arange(n_topic_words).reshape(n_topics, words_per_topic)

    unused = [set(range(n_attributes)) for _ in range(n_entities)]
    passages: list[str] = []
    facts: list[list[tuple[int, int, int]]] = []  # per passage
    topics: list[list[int]] = []
    for _ in range(n_passages):
        n_ent = int(rng.choice(entities_per_passage))
        if unique_facts:
            # every (entity, attribute) fact is stated by one passage only: no relevant passage goes unlabelled
            fpe = facts_per_entity or 2
            ok = [e for e in range(n_entities) if len(unused[e]) >= fpe]
            if len(ok) < n_ent:
                raise ValueError("unique_facts: not enough unused (entity, attribute) pairs; raise n_entities")
            ents = [int(e) for e in rng.choice(ok, size=n_ent, replace=False)]
            per = {e: [int(a) for a in rng.choice(sorted(unused[e]), size=fpe, replace=False)] for e in ents}
            for e in ents:
                unused[e] -= set(per[e])
            # interleaved e1 a e2 a e3 a e1 a ...: facts of different entities alternate
            fs = [(e, per[e][j], int(rng.integers(n_values))) for j in range(fpe) for e in ents]
        else:
            ents = rng.choice(n_entities, size=n_ent, replace=False)
            n_facts = (
                n_ent * facts_per_entity
                if facts_per_entity
                else int(rng.integers(facts_per_passage[0], facts_per_passage[1] + 1))
            )
            attrs = rng.choice(n_attributes, size=n_facts, replace=False)
            fs = []
            for j, a in enumerate(attrs):
                # alternate entities so multi-entity passages interleave their facts (binding distractors)
                e = int(ents[j % n_ent])
                fs.append((e, int(a), int(rng.integers(n_values))))
        tps = rng.choice(n_topics, size=1 if rng.random() < 0.5 else 2, replace=False)
        n_fill = int(rng.integers(filler_per_passage[0], filler_per_passage[1] + 1))
        fill = rng.choice(topic_words[tps].ravel(), size=n_fill)
        # facts and filler interleaved at random fact boundaries; a fact's three words stay adjacent
        chunks = [[f"e{e}", f"a{a}", f"v{v}"][: 3 if with_values else 2] for e, a, v in fs]
        cuts = np.sort(rng.integers(0, len(chunks) + 1, size=n_fill))
        words: list[str] = []
        fi = 0
        for ci, chunk in enumerate(chunks + [[]]):
            while fi < n_fill and cuts[fi] == ci:
                words.append(f"t{fill[fi]}")
                fi += 1
            words.extend(chunk)
        passages.append(" ".join(words))
        facts.append(fs)
        topics.append([int(t) for t in tps])

    # inverted lists for the oracle
    by_pair: dict[tuple[int, int], set[int]] = {}
    by_entity: dict[int, set[int]] = {}
    for pid, fs in enumerate(facts):
        for e, a, _ in fs:
            by_pair.setdefault((e, a), set()).add(pid)
            by_entity.setdefault(e, set()).add(pid)

    all_facts = [(pid, j) for pid, fs in enumerate(facts) for j in range(len(fs))]
    order = rng.permutation(len(all_facts)) if unique_facts else np.zeros(0, dtype=np.int64)
    used = 0

    def make_queries(n: int):
        nonlocal used
        qs, pos, qrels = [], [], []
        if unique_facts:  # each fact is asked once; dev facts are never training facts
            if used + n > len(order):
                raise ValueError(f"only {len(order)} facts for {used + n} queries: lower the query counts")
            picks = [all_facts[i] for i in order[used : used + n]]
            used += n
        else:
            picks = [(int(p), -1) for p in rng.integers(n_passages, size=n)]
        for pid, j in picks:
            if j < 0:
                j = int(rng.integers(len(facts[pid])))
            e, a, _ = facts[pid][j]
            n_tw = int(rng.integers(topic_words_per_query[0], topic_words_per_query[1] + 1))
            tw = rng.choice(topic_words[topics[pid]].ravel(), size=n_tw, replace=False)
            qs.append(" ".join([f"e{e}", f"a{a}"] + [f"t{t}" for t in tw]))
            pos.append(pid)
            rel = {p: 1 for p in by_entity[e]}
            rel.update({p: 2 for p in by_pair[(e, a)]})
            qrels.append(rel)
        return qs, np.asarray(pos, dtype=np.int64), qrels

    train_q, train_pos, train_qrels = make_queries(n_train_queries)
    dev_q, dev_pos, dev_qrels = make_queries(n_dev_queries)
    return Collection(
        passages=passages,
        train_queries=train_q,
        train_pos=train_pos,
        dev_queries=dev_q,
        dev_pos=dev_pos,
        dev_qrels=dev_qrels,
        train_qrels=train_qrels,
        vocab=vocabulary(n_entities, n_attributes, n_values, n_topic_words),
    )


def pick_words(vocab: dict[str, int], n: int, seed: int = 0) -> list[str]:
    """n distinct whole English words from a WordPiece vocabulary (alphabetic, 4-9 letters, ids 2000-11999: common
    words that are single tokens), chosen deterministically. Used to render the collection as words a pretrained
    tokenizer knows."""
    cands = sorted(
        (i, w) for w, i in vocab.items() if 2000 <= i < 12000 and w.isalpha() and w.isascii() and 4 <= len(w) <= 9
    )
    if len(cands) < n:
        raise ValueError(f"vocabulary has only {len(cands)} suitable words, {n} needed")
    pick = np.random.default_rng(seed).choice(len(cands), size=n, replace=False)
    return [cands[j][1] for j in pick]


def render(c: Collection, words: list[str]) -> Collection:
    """The same collection with every synthetic token (e17, a3, ...) replaced by one word (a bijection)."""
    if len(words) != len(c.vocab):
        raise ValueError(f"need {len(c.vocab)} words, got {len(words)}")
    m = dict(zip(c.vocab, words, strict=True))

    def tr(s: str) -> str:
        return " ".join(m[t] for t in s.split())

    return Collection(
        passages=[tr(p) for p in c.passages],
        train_queries=[tr(q) for q in c.train_queries],
        train_pos=c.train_pos,
        dev_queries=[tr(q) for q in c.dev_queries],
        dev_pos=c.dev_pos,
        dev_qrels=c.dev_qrels,
        train_qrels=c.train_qrels,
        vocab=list(words),
    )
