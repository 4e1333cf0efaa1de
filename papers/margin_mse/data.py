"""Embedded benchmark for Margin-MSE: "paraphrased facts", a synthetic collection that needs query-passage binding.

Why synthetic: no passage-ranking data and no cross-encoder ship offline. The collection is built so that ranking it
well needs what a cross-encoder (BERT_CAT) has and a bag-of-words or single-vector model lacks:

* a passage states ``facts_per_passage`` facts "entity - attribute - value", one sentence each, rendered from one of
  several English templates of its attribute (templates differ in length, so passage lengths vary);
* a query is the entity plus a *paraphrase* of the attribute whose words never occur in any passage: lexical
  matching (BM25) can only find the entity, and the attribute must be learned from training pairs;
* graded oracle relevance per query (e, a): 2 = the passage states the fact (e, a); 1 = it mentions e in another
  fact; 0 otherwise. A passage that names e in one fact and attribute a for another entity is a *binding
  distractor*: a model that matches entity and attribute separately ranks it like a relevant passage;
* labels are sparse, as on MSMARCO: one designated positive per training query; a fact stated by two passages
  leaves the second unlabelled (a false negative if sampled).

Splits are reserved by construction: every (entity, attribute) pair is assigned to ``train``, ``val`` or ``dev`` by
a hash of the pair (``pair_split``), and queries are only drawn from the pairs of their split, so no dev pair can
occur as a training or validation query whatever the sampling.

Construction is deterministic in ``seed`` (numpy Generator). Entity and value names are pseudo-words; ``render``
maps them to real single-token words of a pretrained tokenizer when a pretrained model reads the text.

Left out: natural text beyond the templates, and the paper's 8.8M-passage scale.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# (attribute, passage templates, query paraphrases). Query words never occur in passages (checked in build).
ATTRIBUTES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "birthplace",
        ("{e} was born in {v}", "{e} grew up as a child in {v}", "the hometown of {e} is {v}"),
        ("birthplace", "origin region", "nativity"),
    ),
    (
        "employer",
        ("{e} works for {v}", "{e} is employed at the firm {v}", "the boss of {e} runs {v}"),
        ("employer", "job", "occupation company"),
    ),
    (
        "spouse",
        ("{e} married {v}", "{e} has shared a home with {v} for years", "the partner of {e} is {v}"),
        ("spouse", "husband", "wedding"),
    ),
    (
        "pet",
        ("{e} owns a dog called {v}", "{e} keeps {v}", "the animal that lives with {e} is {v}"),
        ("pet", "companion creature", "puppy"),
    ),
    (
        "instrument",
        ("{e} plays the {v}", "{e} practises music on a {v} every evening", "the favourite sound of {e} is the {v}"),
        ("musical", "band", "orchestra"),
    ),
    (
        "food",
        ("{e} likes to eat {v}", "{e} cooks {v} on sundays", "the dish that {e} loves most is {v}"),
        ("cuisine", "meal", "favorite snack"),
    ),
    (
        "school",
        ("{e} studied at {v}", "{e} holds a degree from {v}", "the teachers of {e} were at {v}"),
        ("alma mater", "education", "college"),
    ),
    (
        "car",
        ("{e} drives a {v}", "{e} bought a new {v} last spring", "the vehicle of {e} is a {v}"),
        ("automobile", "ride", "motor"),
    ),
)

SPLITS = ("train", "val", "dev")


def pseudo_words(n: int, seed: int, taken: set[str] = frozenset()) -> list[str]:
    """n distinct pronounceable pseudo-words (consonant-vowel syllables), deterministic in seed."""
    rng = np.random.default_rng(seed)
    cons, vows = list("bdfgklmnprstvz"), list("aeiou")
    out: list[str] = []
    seen = set(taken)
    while len(out) < n:
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(int(rng.integers(2, 4))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def template_words() -> tuple[set[str], set[str]]:
    """(words of all passage templates, words of all query paraphrases)."""
    p = {w for _, ts, _ in ATTRIBUTES for t in ts for w in t.split() if w not in ("{e}", "{v}")}
    q = {w for _, _, ps in ATTRIBUTES for x in ps for w in x.split()}
    return p, q


def pair_split(seed: int, e: int, a: int, dev_frac: float, val_frac: float) -> str:
    """The split of the (entity, attribute) pair, by a hash of the pair: fixed by construction, not by sampling."""
    u = zlib.crc32(f"{seed}|{e}|{a}".encode()) / 2**32
    return "dev" if u < dev_frac else ("val" if u < dev_frac + val_frac else "train")


@dataclass
class Queries:
    text: list[str]
    pairs: np.ndarray  # (Q, 2) entity, attribute
    pos: np.ndarray  # (Q,) designated positive passage
    qrels: list[dict[int, int]]  # passage -> graded label (1 or 2); others are 0


@dataclass
class Collection:
    passages: list[str]
    facts: list[list[tuple[int, int, int]]]  # per passage: (entity, attribute, value)
    splits: dict[str, Queries]
    entity_names: list[str]
    value_names: list[list[str]]
    by_pair: dict[tuple[int, int], set[int]]
    by_entity: dict[int, set[int]]
    by_attribute: dict[int, set[int]]

    @property
    def vocab(self) -> list[str]:
        words = {w for p in self.passages for w in p.split()}
        for q in self.splits.values():
            words.update(w for t in q.text for w in t.split())
        return sorted(words)

    def binding_distractors(self, e: int, a: int) -> list[int]:
        """Passages naming entity e in one fact and attribute a for another entity, without stating (e, a)."""
        return sorted((self.by_entity[e] & self.by_attribute[a]) - self.by_pair[(e, a)])


def build_collection(
    seed: int = 0,
    n_entities: int = 600,
    n_attributes: int = 8,
    values_per_attribute: int = 40,
    statements: tuple[int, int] = (1, 2),
    facts_per_passage: int = 3,
    dev_frac: float = 0.25,
    val_frac: float = 0.1,
    train_paraphrases: int = 3,
    names: tuple[list[str], list[list[str]]] | None = None,
) -> Collection:
    """Build the collection; deterministic in ``seed``. Every (entity, attribute) pair holds one value and is stated
    by ``statements`` passages (uniform in the range); facts are shuffled into passages of ``facts_per_passage``.
    Queries: one per dev / val pair (a random paraphrase), ``train_paraphrases`` per training pair."""
    if not 1 <= n_attributes <= len(ATTRIBUTES):
        raise ValueError(f"n_attributes: 1..{len(ATTRIBUTES)}")
    pw, qw = template_words()
    if pw & qw:
        raise AssertionError(f"paraphrase words occur in passage templates: {sorted(pw & qw)}")
    rng = np.random.default_rng(seed)
    if names is None:
        ent = pseudo_words(n_entities, seed, taken=pw | qw)
        vals_flat = pseudo_words(n_attributes * values_per_attribute, seed + 7919, taken=pw | qw | set(ent))
        vals = [vals_flat[i * values_per_attribute : (i + 1) * values_per_attribute] for i in range(n_attributes)]
    else:
        ent, vals = names
    value_of = rng.integers(values_per_attribute, size=(n_entities, n_attributes))
    stmts = [
        (e, a)
        for e in range(n_entities)
        for a in range(n_attributes)
        for _ in range(int(rng.integers(statements[0], statements[1] + 1)))
    ]
    order = rng.permutation(len(stmts))
    passages, facts = [], []
    for s in range(0, len(order) - facts_per_passage + 1, facts_per_passage):
        fs = [(stmts[i][0], stmts[i][1], int(value_of[stmts[i]])) for i in order[s : s + facts_per_passage]]
        sents = []
        for e, a, v in fs:
            tpl = ATTRIBUTES[a][1][int(rng.integers(len(ATTRIBUTES[a][1])))]
            sents.append(tpl.format(e=ent[e], v=vals[a][v]))
        passages.append(" . ".join(sents) + " .")
        facts.append(fs)
    by_pair: dict[tuple[int, int], set[int]] = {}
    by_entity: dict[int, set[int]] = {e: set() for e in range(n_entities)}
    by_attribute: dict[int, set[int]] = {a: set() for a in range(n_attributes)}
    for pid, fs in enumerate(facts):
        for e, a, _ in fs:
            by_pair.setdefault((e, a), set()).add(pid)
            by_entity[e].add(pid)
            by_attribute[a].add(pid)

    split_pairs: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for e, a in sorted(by_pair):
        split_pairs[pair_split(seed, e, a, dev_frac, val_frac)].append((e, a))

    def make(pairs: list[tuple[int, int]], per_pair: int) -> Queries:
        text, prs, pos, qrels = [], [], [], []
        for e, a in pairs:
            paras = ATTRIBUTES[a][2]
            picks = rng.permutation(len(paras))[:per_pair]
            for j in picks:
                para = paras[int(j)]
                text.append(f"{ent[e]} {para}" if rng.random() < 0.5 else f"{para} {ent[e]}")
                prs.append((e, a))
                pos.append(int(rng.choice(sorted(by_pair[(e, a)]))))
                rel = {p: 1 for p in by_entity[e]}
                rel.update({p: 2 for p in by_pair[(e, a)]})
                qrels.append(rel)
        return Queries(text, np.asarray(prs, dtype=np.int64).reshape(-1, 2), np.asarray(pos, dtype=np.int64), qrels)

    splits = {
        "train": make(split_pairs["train"], train_paraphrases),
        "val": make(split_pairs["val"], 1),
        "dev": make(split_pairs["dev"], 1),
    }
    return Collection(passages, facts, splits, ent, vals, by_pair, by_entity, by_attribute)


def pick_words(vocab: dict[str, int], n: int, seed: int = 0, exclude: set[str] = frozenset()) -> list[str]:
    """n distinct whole English words from a WordPiece vocabulary (alphabetic, 4-9 letters, ids 2000-11999: common
    words that are single tokens), chosen deterministically, none in ``exclude``."""
    cands = sorted(
        (i, w)
        for w, i in vocab.items()
        if 2000 <= i < 12000 and w.isalpha() and w.isascii() and 4 <= len(w) <= 9 and w not in exclude
    )
    if len(cands) < n:
        raise ValueError(f"vocabulary has only {len(cands)} suitable words, {n} needed")
    pick = np.random.default_rng(seed).choice(len(cands), size=n, replace=False)
    return [cands[j][1] for j in pick]


def real_word_names(vocab: dict[str, int], n_entities: int, n_attributes: int, values_per_attribute: int, seed: int):
    """Entity and value names as single-token words of a pretrained vocabulary (for pretrained teachers)."""
    pw, qw = template_words()
    words = pick_words(vocab, n_entities + n_attributes * values_per_attribute, seed, exclude=pw | qw)
    ent = words[:n_entities]
    rest = words[n_entities:]
    vals = [rest[i * values_per_attribute : (i + 1) * values_per_attribute] for i in range(n_attributes)]
    return ent, vals
