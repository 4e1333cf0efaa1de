"""Shared retrieval layer: ranking losses (mathematical properties), metrics against hand-computed rankings,
BM25, dense index, encoders (save / load, sentence-transformers), strict file formats."""

import math

import numpy as np
import pytest
import torch

from common.metrics.retrieval import pairwise_accuracy, rank, ranking_metrics
from common.retrieval import losses as L
from common.retrieval.bm25 import BM25
from common.retrieval.encoders import BiEncoder, ColBERT, CrossEncoder, tiny_config
from common.retrieval.formats import (
    FormatError,
    ScoredTriple,
    join_ids_to_text,
    read_qrels,
    read_triples,
    write_triples,
)
from common.retrieval.index import DenseIndex, rerank


def _scores(b=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 1, generator=g),
        torch.randn(b, k, generator=g),
        torch.randn(b, 1, generator=g) * 5,
        torch.randn(b, k, generator=g) * 5,
    )


# --- Margin-MSE -------------------------------------------------------------------------------------------------


def test_margin_mse_zero_when_margins_agree():
    sp, sn, _, _ = _scores()
    # a teacher on another scale and offset, same margins
    tp, tn = sp * 1.0 + 100.0, sn + 100.0
    assert L.margin_mse(sp, sn, tp, tn).item() == pytest.approx(0.0, abs=1e-10)


def test_margin_mse_shift_invariant_both_models():
    sp, sn, tp, tn = _scores()
    base = L.margin_mse(sp, sn, tp, tn)
    assert torch.allclose(L.margin_mse(sp + 7.0, sn + 7.0, tp, tn), base)
    assert torch.allclose(L.margin_mse(sp, sn, tp - 3.0, tn - 3.0), base)
    # per-query shifts too (each query's scores move together)
    shift = torch.randn(sp.shape[0], 1)
    assert torch.allclose(L.margin_mse(sp + shift, sn + shift, tp, tn), base, atol=1e-6)


def test_margin_mse_formula_and_sign():
    s_pos, s_neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    t_pos, t_neg = torch.tensor([5.0, 0.0]), torch.tensor([1.0, 2.0])
    # ((1 - 4)^2 + (-1 - (-2))^2) / 2 = (9 + 1) / 2
    assert L.margin_mse(s_pos, s_neg, t_pos, t_neg).item() == pytest.approx(5.0)
    # the signed margin matters: swapping the teacher's pos/neg changes the loss
    assert L.margin_mse(s_pos, s_neg, t_neg, t_pos).item() != pytest.approx(5.0)
    assert L.margin_mse_from_margin(s_pos, s_neg, t_pos - t_neg).item() == pytest.approx(5.0)


def test_margin_mse_gradient_moves_student_margin_toward_teacher():
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[3.0, 1.0]])  # teacher margin +2
    loss = L.margin_mse(s[:, :1], s[:, 1:], t[:, :1], t[:, 1:])
    loss.backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]  # gradient descent raises s+ and lowers s-
    with torch.no_grad():
        s2 = s - 0.1 * s.grad
    assert (s2[0, 0] - s2[0, 1]).item() > 0.0


def test_teacher_gets_no_gradient():
    sp = torch.zeros(3, 1, requires_grad=True)
    tp = torch.ones(3, 1, requires_grad=True)
    L.margin_mse(sp, torch.zeros(3, 2), tp, torch.zeros(3, 2)).backward()
    assert tp.grad is None


def test_ensemble_of_identical_teachers_is_the_teacher():
    t = torch.randn(4, 5)
    assert torch.allclose(L.ensemble_mean(t, t, t), t, atol=1e-6)


# --- the other losses -----------------------------------------------------------------------------------------


def test_pointwise_mse_not_shift_invariant():
    sp, sn, tp, tn = _scores()
    assert L.pointwise_mse(tp, tn, tp, tn).item() == 0.0
    assert L.pointwise_mse(tp + 1, tn + 1, tp, tn).item() == pytest.approx(2.0)


def test_ranknet_shift_invariant_and_value():
    sp, sn, _, _ = _scores()
    assert torch.allclose(L.ranknet(sp + 4, sn + 4), L.ranknet(sp, sn))
    assert L.ranknet(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(math.log(2))


def test_kl_zero_when_distributions_match_and_listnet_adds_entropy():
    t = torch.randn(4, 6)
    assert L.kl_distill(t + 2.0, t).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift invariant
    s = torch.randn(4, 6)
    p = torch.softmax(t, -1)
    ent = -(p * p.log()).sum(-1).mean()
    assert L.listnet(s, t).item() == pytest.approx((L.kl_distill(s, t) + ent).item(), rel=1e-5)


def test_ranknet_teacher_weights_by_margin():
    sp, sn = torch.zeros(2), torch.zeros(2)
    assert L.ranknet_teacher(sp, sn, torch.tensor([2.0, 0.0]), torch.zeros(2)).item() == pytest.approx(math.log(2))


def test_ranknet_teacher_guards_negative_teacher_margins():
    # the teacher orders the pair against the label (t+ < t-): an unguarded loss would reward s+ - s- -> -inf
    t_pos, t_neg = torch.tensor([-2.0]), torch.tensor([0.0])
    d = torch.zeros(1, requires_grad=True)
    L.ranknet_teacher(d, torch.zeros(1), t_pos, t_neg).backward()
    assert d.grad.abs().item() == 0.0  # clamp: no gradient at all
    for far in (-50.0, 50.0):  # bounded below: pushing the margin anywhere cannot lower the loss under 0
        assert L.ranknet_teacher(torch.tensor([far]), torch.zeros(1), t_pos, t_neg).item() >= 0.0
    d = torch.zeros(1, requires_grad=True)
    loss = L.ranknet_teacher(d, torch.zeros(1), t_pos, t_neg, negative="flip")
    assert loss.item() == pytest.approx(2 * math.log(2))
    loss.backward()
    assert d.grad.item() > 0  # gradient descent lowers s+ - s-: the teacher's order, with weight |y|
    with pytest.raises(ValueError, match="negative teacher margin"):
        L.ranknet_teacher(torch.zeros(1), torch.zeros(1), t_pos, t_neg, negative="raise")


def test_margin_mse_equals_sentence_transformers_margin_mse_loss(tmp_path):
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from sentence_transformers import SentenceTransformer

    tok = _tok()
    conf = tiny_config("x", len(tok), 16, 1, 2, 32)
    dot = BiEncoder.from_config(conf, tok, max_query_len=8, max_doc_len=8, pooling="mean").eval()
    dot.save(tmp_path / "dot")
    ref = st.MarginMSELoss(SentenceTransformer(str(tmp_path / "dot"), device="cpu"))
    q, p = ["alpha beta", "gamma"], ["beta gamma delta", "alpha"]
    negs = [["delta", "beta beta alpha"], ["gamma gamma", "delta alpha"]]
    with torch.no_grad():
        eq, ep = dot.encode_query(q), dot.encode_doc(p)
        en = [dot.encode_doc(n) for n in negs]
        s_pos = (eq * ep).sum(-1)
        s_neg = torch.stack([(eq * e).sum(-1) for e in en], 1)
        # one negative: labels are the signed teacher margins t+ - t-
        margins = torch.tensor([1.5, -0.7])
        theirs = ref.compute_loss_from_embeddings([eq, ep, en[0]], margins)
        assert L.margin_mse_from_margin(s_pos, s_neg[:, 0], margins).item() == pytest.approx(theirs.item(), rel=1e-5)
        # n-tuple form: labels are the teacher scores (B, 1 + K); both average over every (q, p+, p-_k)
        t = torch.tensor([[3.0, 1.0, 4.0], [0.5, 2.0, -1.0]])
        theirs = ref.compute_loss_from_embeddings([eq, ep, *en], t)
        ours = L.margin_mse(s_pos[:, None], s_neg, t[:, :1], t[:, 1:])
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_in_batch_contrastive_symmetric_and_masks():
    sim = torch.randn(4, 4)
    sim = sim + sim.T
    a = L.in_batch_contrastive(sim, 0.1)
    ce = torch.nn.functional.cross_entropy(sim / 0.1, torch.arange(4))
    assert a.item() == pytest.approx(ce.item(), rel=1e-5)
    extra = torch.zeros(4, 4, dtype=torch.bool)
    extra[0, 1] = extra[1, 0] = True
    assert L.in_batch_contrastive(sim, 0.1, extra).item() < a.item() + 1e-6


# --- metrics --------------------------------------------------------------------------------------------------


def test_metrics_hand_computed():
    ranked = [[5, 3, 9, 1], [2, 4, 6, 8]]
    qrels = [{9: 2, 1: 1, 7: 2}, {8: 1}]
    m = ranking_metrics(ranked, qrels, mrr_k=10, ndcg_k=3, recall_ks=(2, 4), rel_threshold=1)
    # MRR: q0 first relevant (9) at rank 3 -> 1/3; q1 at rank 4 -> 1/4
    assert m["MRR@10"] == pytest.approx((1 / 3 + 1 / 4) / 2, rel=1e-6)
    # nDCG@3 q0: DCG = 2/log2(4) = 1; ideal over all judged (2, 2, 1) = 2 + 2/log2(3) + 1/2; q1: 0
    ideal = 2 + 2 / math.log2(3) + 0.5
    assert m["nDCG@3"] == pytest.approx((1 / ideal + 0) / 2, rel=1e-5)
    # Recall@2: 0 and 0; Recall@4: q0 2 of its 3 relevant (7 missed), q1 1 of 1
    assert m["R@2"] == pytest.approx(0.0)
    assert m["R@4"] == pytest.approx((2 / 3 + 1) / 2, rel=1e-6)
    # binarised at 2: q0 relevant {9, 7} -> MRR 1/3; q1 has no label >= 2 -> error (must be judged)
    with pytest.raises(ValueError):
        ranking_metrics(ranked, qrels, rel_threshold=2)
    m2 = ranking_metrics(ranked[:1], qrels[:1], rel_threshold=2, recall_ks=(4,))
    assert m2["MRR@10"] == pytest.approx(1 / 3) and m2["R@4"] == pytest.approx(0.5)


def test_metrics_mrr_cutoff_and_exponential_gain():
    ranked = [list(range(12))]
    assert ranking_metrics(ranked, [{11: 1}])["MRR@10"] == 0.0
    m = ranking_metrics([[0, 1]], [{1: 2, 0: 1}], ndcg_k=2, exponential_gain=True, recall_ks=())
    dcg = 1 + 3 / math.log2(3)
    idcg = 3 + 1 / math.log2(3)
    assert m["nDCG@2"] == pytest.approx(dcg / idcg, rel=1e-5)


def test_ndcg_of_a_short_list_never_counts_missed_documents():
    # a 1-document list; the judged document 7 was not retrieved: it must not enter the top 10 as a prediction
    m = ranking_metrics([[3]], [{7: 2, 3: 0}], rel_threshold=1, recall_ks=(10,))
    assert m["nDCG@10"] == 0.0 and m["MRR@10"] == 0.0 and m["R@10"] == 0.0
    m = ranking_metrics([[3, 7]], [{7: 2}], rel_threshold=1, recall_ks=(10,))
    assert m["nDCG@10"] == pytest.approx(1 / math.log2(3)) and m["MRR@10"] == 0.5
    # an empty list (a judged query missing from a run) scores 0
    assert ranking_metrics([[]], [{7: 1}], recall_ks=())["nDCG@10"] == 0.0


def test_rank_is_stable_on_ties():
    assert rank(np.array([[1.0, 2.0, 2.0, 0.5]]), np.array([[10, 11, 12, 13]])).tolist() == [[11, 12, 10, 13]]
    assert pairwise_accuracy(np.array([[3.0, 1.0, 1.0]]), np.array([[2, 0, 1]])) == pytest.approx(2.5 / 3)


# --- BM25, index, formats --------------------------------------------------------------------------------------


def test_bm25_prefers_matching_and_rare_terms():
    docs = ["apple banana", "apple apple cherry", "cherry date", "banana date fig"]
    bm = BM25(docs)
    ids, sc = bm.topk(["fig", "apple", "zzz"], 2)
    assert ids[0, 0] == 3
    assert set(ids[1]) == {0, 1} and ids[1, 0] == 1  # higher tf wins
    assert (sc[2] == 0).all()
    # idf: Lucene form, non-negative
    assert (bm.idf > 0).all()


def test_bm25_random_ties_and_index_ties():
    docs = ["x a", "x b", "x c", "x d", "y"]
    bm = BM25(docs)
    ids, _ = bm.topk(["x"], 4, ties="index")
    assert ids.tolist() == [[0, 1, 2, 3]]
    orders = {tuple(bm.topk(["x"], 4, ties="random", seed=s)[0][0]) for s in range(20)}
    assert len(orders) > 1 and all(set(o) == {0, 1, 2, 3} for o in orders)
    assert (bm.topk(["x"], 4, ties="random", seed=3)[0] == bm.topk(["x"], 4, ties="random", seed=3)[0]).all()
    with pytest.raises(ValueError, match="ties"):
        bm.topk(["x"], 2, ties="nope")


def test_bm25_equals_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(40)]
    queries = [" ".join(rng.choice(words, size=3, replace=False)) for _ in range(6)]
    ours = BM25(docs, k1=0.9, b=0.4)
    ref = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    ref.index(bm25s.tokenize(docs, stopwords=None, show_progress=False), show_progress=False)
    for q, row in zip(queries, ours.scores(queries), strict=True):
        theirs = ref.get_scores(q.split())
        # bm25s (Lucene >= 8) drops the constant (k1 + 1) factor of the Robertson tf part; ranking is identical
        assert np.allclose(row, theirs * (0.9 + 1.0), rtol=1e-5, atol=1e-6)


def test_streaming_topk_equals_bruteforce_with_bounded_blocks():
    from common.retrieval.index import streaming_topk

    g = torch.Generator().manual_seed(1)
    d, q = torch.randn(103, 6, generator=g), torch.randn(9, 6, generator=g)
    d[50] = d[7]  # a tie: the passage seen first wins
    ids = [f"p{i}" for i in range(len(d))]
    chunks = ((ids[s : s + 10], d[s : s + 10]) for s in range(0, len(d), 10))
    top, sc = streaming_topk(q, chunks, k=12, query_block=4)
    ref = torch.sort(-(q @ d.T), dim=1, stable=True).indices[:, :12]
    assert top == [[ids[j] for j in row] for row in ref.tolist()]
    assert np.allclose(sc, torch.gather(q @ d.T, 1, ref).numpy(), atol=1e-5)
    top, _ = streaming_topk(q, iter([(ids[:3], d[:3])]), k=5)  # fewer passages than k
    assert all(len(r) == 3 for r in top)


def test_dense_index_matches_bruteforce_and_rerank():
    g = torch.Generator().manual_seed(0)
    d, q = torch.randn(50, 8, generator=g), torch.randn(3, 8, generator=g)
    idx = DenseIndex(d)
    ids, sc = idx.search(q, 5, chunk=2)
    ref = torch.topk(q @ d.T, 5).indices.numpy()
    assert (ids == ref).all()
    assert np.allclose(sc, np.take_along_axis((q @ d.T).numpy(), ref, 1), atol=1e-5)
    cands = np.array([[0, 1], [2, 3], [4, 5]])
    out = rerank(
        lambda qs, ds: torch.tensor([float(len(x)) for x in ds]),
        ["a", "b", "c"],
        cands,
        [str(i) * (i + 1) for i in range(6)],
        batch_size=4,
    )
    assert out.shape == (3, 2) and out[2, 1].item() == 6


def test_formats_strict(tmp_path):
    f = tmp_path / "t.tsv"
    write_triples([ScoredTriple(1.5, -2.0, "q1", "p1", "p2")], f)
    assert read_triples(f) == [ScoredTriple(1.5, -2.0, "q1", "p1", "p2")]
    f.write_text("1.0\t2.0\tq\tp\n")
    with pytest.raises(FormatError, match=":1: expected 5"):
        read_triples(f)
    joined, missing = join_ids_to_text([ScoredTriple(1, 0, "q1", "p1", "p9")], {"q1": "query"}, {"p1": "pos"})
    assert joined == [] and missing == {"query": 0, "passage": 1, "dropped": 1}
    (tmp_path / "qrels").write_text("q1 0 p1 2\nq1 0 p2 0\n")
    assert read_qrels(tmp_path / "qrels") == {"q1": {"p1": 2, "p2": 0}}


# --- encoders ---------------------------------------------------------------------------------------------------


def _tok():
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alpha", "beta", "gamma", "delta"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def test_encoders_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    tok = _tok()
    conf = tiny_config("x", len(tok), hidden=16, layers=1, heads=2, max_len=32)
    q, d = ["alpha beta", "gamma"], ["beta gamma delta", "alpha"]
    cat = CrossEncoder.from_config(conf, tok, max_query_len=4, max_doc_len=8)
    assert cat(q, d).shape == (2,)
    batch = cat.tokenize(q, d)
    assert batch["input_ids"][0].tolist()[:4] == [2, 5, 6, 3] and batch["token_type_ids"][0, 4].item() == 1
    cat.save(tmp_path / "cat")
    cat2 = CrossEncoder.from_pretrained(str(tmp_path / "cat"))
    assert torch.allclose(cat.score(q, d), cat2.score(q, d), atol=1e-5)

    dot = BiEncoder.from_config(tiny_config("x", len(tok), 16, 1, 2, 32), tok, max_query_len=4, max_doc_len=8).eval()
    s = dot(q, d)
    assert torch.allclose(s, (dot.encode_query(q) * dot.encode_doc(d)).sum(-1))
    dot.save(tmp_path / "dot")
    dot2 = BiEncoder.from_pretrained(str(tmp_path / "dot")).eval()
    assert torch.allclose(dot2(q, d), s, atol=1e-5)

    col = ColBERT.from_config(
        tiny_config("x", len(tok), 16, 1, 2, 32), tok, max_query_len=4, max_doc_len=8, compress_dim=8
    ).eval()
    qv, qm = col.encode_query(q)
    assert qv.shape == (2, 6, 8) and qm.sum().item() == 12  # [MASK]-augmented to a fixed length, all attended
    col.save(tmp_path / "col")
    col2 = ColBERT.from_pretrained(str(tmp_path / "col")).eval()
    assert torch.allclose(col2(q, d), col(q, d), atol=1e-5)


def test_colbert_maxsim_masks_padding():
    q = torch.ones(1, 2, 2)
    d = torch.tensor([[[1.0, 0.0], [50.0, 50.0]]])
    assert ColBERT.maxsim(q, torch.ones(1, 2), d, torch.tensor([[1, 0]])).item() == pytest.approx(2.0)
    assert ColBERT.maxsim(q, torch.ones(1, 2), d, torch.tensor([[1, 1]])).item() == pytest.approx(200.0)


def test_biencoder_loads_in_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    tok = _tok()
    dot = BiEncoder.from_config(tiny_config("x", len(tok), 16, 1, 2, 32), tok, max_query_len=8, max_doc_len=8).eval()
    dot.save(tmp_path / "dot")
    model = st.SentenceTransformer(str(tmp_path / "dot"), device="cpu")
    emb = model.encode(["beta gamma delta"], convert_to_tensor=True)
    with torch.no_grad():
        ref = dot.encode_doc(["beta gamma delta"])
    assert torch.allclose(emb.cpu(), ref, atol=1e-4)
