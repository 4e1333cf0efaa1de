"""Contrastive Partial Ranking Distillation (CPRD) and the distillation baselines it is compared with.

CPRD (Chen et al., CVPR 2024, arXiv:2407.07479; the equations of §3 could not be checked, see the README): the
student mines K hard negatives per anchor; the cross-encoder teacher orders them; the student is trained to keep the
teacher's order of the *valid* hard negatives with a contrastive (Plackett-Luce / InfoNCE-chain) objective on its
own temperature-scaled similarities, added to its ITC loss:

    L = L_itc + lam * 1/2 (mean_i L_cprd^{i->t}(i) + mean_i L_cprd^{t->i}(i))
    L_cprd(i) = -1/n_i sum_{j < n_i} log( exp(s_{i,pi(j)}/tau) / sum_{k in D_j} exp(s_{i,pi(k)}/tau) )

pi = the teacher's order of the mined list; n_i = J*_i - 1 = the number of leading valid items. Validity
(:func:`validity`) [unconfirmed, options]: ``threshold`` (teacher score >= delta; the list is sorted, so the first
invalid item ends the prefix), ``top_j`` (a fixed cut), ``none`` (the whole list), after a false-negative filter that
first removes negatives the teacher scores at least as high as the positive. D_j = the rest of the list
(``denominator='list'``) or every in-batch candidate ranked below pi(j), mined or not, positives excluded
(``'batch'``: with lam = 1 and a shared tau, ITC + CPRD is then one Plackett-Luce likelihood of
"positive > pi(1) > ... > pi(n_i) > the rest").

Baselines (same batches, same mined lists where they use one): logit KD = KL(softmax(c/T_t) || softmax(s/tau)) over
the whole row (``kl``) or over positive + mined list (``kl_hard``); ranking distillation over all in-batch negatives
(``listmle_all``: full Plackett-Luce order; ``listnet_all``; ``ranknet_all``: RankNet on every teacher-ordered
pair); ``ranknet_hard`` (RankNet on the mined list: rank-based but not coordinated with ITC); ``cprd_easy`` (CPRD on K
random negatives: the order of easy negatives).
"""

from __future__ import annotations

import torch

from common.retrieval import losses as L
from common.retrieval.mining import gather, mine_hard_negatives, random_negatives

NEG = -1e9  # masked logit: finite so that masked rows keep finite gradients


def validity(
    t_list: torch.Tensor,
    t_pos: torch.Tensor,
    rule: str = "threshold",
    delta: float | None = None,
    top_j: int = 4,
    false_negative_filter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher order and valid prefix of each anchor's mined list.

    t_list (A, K) teacher scores of the mined negatives, t_pos (A,) of the positive. Returns ``order`` (A, K): list
    positions in descending teacher score with filtered false negatives moved to the end (stable), ``n_valid`` (A,):
    how many leading positions of ``order`` are ranked, and ``keep`` (A, K) in the order's positions: False for the
    filtered false negatives (they leave every denominator too).
    """
    fn = t_list >= t_pos[:, None] if false_negative_filter else torch.zeros_like(t_list, dtype=torch.bool)
    key = t_list.float().masked_fill(fn, float("-inf"))
    order = torch.sort(-key, dim=1, stable=True).indices
    keep = torch.gather(~fn, 1, order)
    n_kept = keep.sum(1)
    if rule == "threshold":
        if delta is None:
            raise ValueError("validity='threshold' needs delta")
        n_valid = ((t_list >= delta) & ~fn).sum(1)
    elif rule == "top_j":
        n_valid = n_kept.clamp(max=top_j)
    elif rule == "none":
        n_valid = n_kept
    else:
        raise ValueError(f"validity: {rule!r} not in ('threshold', 'top_j', 'none')")
    return order, n_valid, keep


def partial_ranking_loss(
    logits: torch.Tensor,
    positive: torch.Tensor,
    idx: torch.Tensor,
    order: torch.Tensor,
    n_valid: torch.Tensor,
    keep: torch.Tensor,
    denominator: str = "list",
    normalise: str = "valid",
) -> torch.Tensor:
    """CPRD for one direction. logits (A, C) = s / tau (differentiable), positive (A, C) mask, idx (A, K) mined
    candidates, (order, n_valid, keep) from :func:`validity`. Returns the mean over anchors of each anchor's sum of
    Plackett-Luce terms over its valid prefix, divided by n_valid (``normalise='valid'``; anchors without a valid
    negative contribute 0) or by K."""
    A, K = idx.shape
    s_sorted = gather(gather(logits, idx), order)
    extra = None
    if denominator == "batch":  # every unmined, non-positive candidate is ranked below the whole list
        listed = torch.zeros_like(positive).scatter_(1, idx.to(positive.device), True)
        extra = torch.logsumexp(logits.masked_fill(positive | listed, NEG), dim=1)
    elif denominator != "list":
        raise ValueError(f"denominator: {denominator!r} not in ('list', 'batch')")
    s_masked = s_sorted.masked_fill(~keep, NEG)
    nll = L.plackett_luce_terms(s_masked, None, extra)
    used = torch.arange(K, device=logits.device)[None, :] < n_valid[:, None].to(logits.device)
    rows = torch.where(used, nll, torch.zeros_like(nll)).sum(1)
    div = n_valid.clamp_min(1).to(rows.dtype) if normalise == "valid" else torch.full_like(rows, float(K))
    return (rows / div).mean()


def _negatives_all(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Indices of every non-positive candidate of each row (rows must have equal counts)."""
    n = (~positive).sum(1)
    if not bool((n == n[0]).all()):
        raise ValueError("all-negative baselines need the same number of positives in every row")
    return mine_hard_negatives(sim, positive, int(n[0]))


def direction_loss(cfg, sim, tau, teacher, positive, generator=None) -> tuple[torch.Tensor, dict]:
    """Distillation loss of ``cfg.method`` for one direction (rows = anchors). sim (A, C) student cosine
    similarities (differentiable), teacher (A, C) teacher scores (entries outside the needed pairs may be NaN),
    positive (A, C) mask. Returns (loss, diagnostics)."""
    m = cfg.method
    logits = sim / tau
    diag: dict = {}
    if m == "no_kd":
        return sim.sum() * 0.0, diag
    pos_col = torch.argmax(positive.float() * (1 + torch.arange(positive.shape[1], 0, -1)), dim=1)  # first positive
    t_pos = teacher.gather(1, pos_col[:, None]).squeeze(1)
    s_pos = logits.gather(1, pos_col[:, None])
    if m in ("kl", "listmle_all", "listnet_all", "ranknet_all"):
        idx = _negatives_all(sim, positive)
    elif m == "cprd_easy":
        idx = random_negatives(positive, cfg.k, generator)
    else:
        idx = mine_hard_negatives(sim, positive, cfg.k)
    s_list, t_list = gather(logits, idx), gather(teacher, idx)
    if torch.isnan(t_list).any() or torch.isnan(t_pos).any():
        raise RuntimeError("teacher scores missing for a pair the loss needs")
    if m in ("kl", "kl_hard"):  # logit KD over positive + candidates (whole row for kl)
        loss = L.kl_distill(torch.cat([s_pos, s_list], 1), torch.cat([t_pos[:, None], t_list], 1), 1.0,
                            cfg.kd_teacher_temp)  # fmt: skip
    elif m == "listmle_all":
        loss = L.listmle(s_list, t_list, normalise=True)
    elif m == "listnet_all":
        loss = L.listnet(s_list, t_list, 1.0, cfg.kd_teacher_temp)
    elif m in ("ranknet_all", "ranknet_hard"):
        loss = L.ranknet_pairs(s_list, t_list, 1.0)
    elif m in ("cprd", "cprd_easy"):
        order, n_valid, keep = validity(t_list, t_pos, cfg.validity, cfg.delta, cfg.top_j, cfg.false_negative_filter)
        lg = logits if cfg.cprd_tau == "shared" else sim
        loss = partial_ranking_loss(lg, positive, idx, order, n_valid, keep, cfg.denominator, cfg.normalise)
        diag["valid_frac"] = float(n_valid.float().mean() / idx.shape[1])
        diag["fn_frac"] = float((~keep).float().mean())
    else:
        raise ValueError(m)
    if m in ("kl_hard", "ranknet_hard", "cprd", "cprd_easy"):
        diag["_lists"] = (s_list.detach(), t_list)
    return loss, diag


def distill_loss(cfg, sim, tau, teacher, positive, generator=None) -> tuple[torch.Tensor, dict]:
    """Both directions, averaged: image anchors over captions (rows of sim) and caption anchors over images."""
    li, di = direction_loss(cfg, sim, tau, teacher, positive, generator)
    lt, dt = direction_loss(cfg, sim.T, tau, teacher.T, positive.T, generator)
    diag = {k: 0.5 * (di[k] + dt[k]) for k in di if not k.startswith("_")}
    if "_lists" in di:
        diag["_lists"] = di["_lists"]
    return 0.5 * (li + lt), diag


def calibrate_delta(teacher: torch.Tensor, positive: torch.Tensor, k: int, valid_fraction: float) -> float:
    """delta such that ``valid_fraction`` of each anchor's k hardest negatives *by the teacher* (the lists a good
    student mines) on a held-out batch score >= delta (both directions pooled)."""
    vals = []
    for t, p in ((teacher, positive), (teacher.T, positive.T)):
        top = torch.sort(-t.masked_fill(p, float("-inf")), dim=1, stable=True).indices[:, :k]
        vals.append(t.gather(1, top).reshape(-1))
    v = torch.cat(vals).float()
    return float(torch.quantile(v, 1.0 - valid_fraction))
