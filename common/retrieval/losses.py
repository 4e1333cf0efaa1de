"""Ranking losses shared by the ranking-distillation papers.

Notation: student scores s, teacher scores t (raw, never squashed), s+ / s- for the positive / negative passage of a
triple (q, p+, p-). All losses return a scalar mean over the batch.

* ``ranknet``          binary pairwise loss on labels: softplus(-(s+ - s-)) = BCE-with-logits(s+ - s-, 1)
                       (matchmaker's default no-KD loss).
* ``margin_mse``       Margin-MSE, Hofstätter et al. 2020, Eq. (1): mean[((s+ - s-) - (t+ - t-))^2]; signed margins;
                       with several negatives per query (n-tuple variant) the mean runs over every (q, p+, p-_k).
* ``pointwise_mse``    (s+ - t+)^2 + (s- - t-)^2 (matchmaker ``MSETeacherPointwise``), sensitive to score scale.
* ``kl_distill``       KL(softmax(t / T_t) || softmax(s / tau)) over a candidate list (positive + negatives).
* ``listnet``          cross-entropy -sum softmax(t/T_t) log softmax(s/tau); equals ``kl_distill`` plus the teacher
                       entropy.
* ``ranknet_teacher``  BCE on s+ - s- with target 1, weighted by the teacher margin t+ - t- (matchmaker
                       ``RankNetTeacher``).
* ``ranknet_pairs``    log(1 + exp(-(s_a - s_b)/tau)) over every teacher-ordered pair a > b of a list.
* ``listmle``          Plackett-Luce likelihood of the teacher order (``scope='list'``: the denominator runs over the
                       rest of the list), optionally over a per-row number of ranked positions and normalised by it;
                       ``plackett_luce_terms`` is its per-position core (CPRD builds its partial-ranking loss on it).
* ``in_batch_contrastive``  symmetric InfoNCE (ITC) over a (B, B) similarity matrix with temperature; optional
                       mask of extra positives.
* teacher output adapters ``to_ranks``, ``to_margins``, ``to_probs``; ``ensemble_mean`` (mean of raw scores, T2).

Left out: the inter-passage Margin-MSE over all pos x neg pairs and pointwise KL on single scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranknet(s_pos: torch.Tensor, s_neg: torch.Tensor) -> torch.Tensor:
    """Binary RankNet: softplus(-(s+ - s-)), mean over pairs."""
    return F.softplus(-(s_pos - s_neg)).mean()


def margin_mse(s_pos: torch.Tensor, s_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """Margin-MSE (Eq. 1): mean[((s+ - s-) - (t+ - t-))^2]. Shapes broadcast: (B,) or (B, K) negatives."""
    t_margin = (t_pos - t_neg).detach()
    return ((s_pos - s_neg) - t_margin).pow(2).mean()


def margin_mse_from_margin(s_pos: torch.Tensor, s_neg: torch.Tensor, t_margin: torch.Tensor) -> torch.Tensor:
    """Margin-MSE when only the teacher margin is known (the published ``bert-ensemble-margin-mse`` scores)."""
    return ((s_pos - s_neg) - t_margin.detach()).pow(2).mean()


def pointwise_mse(s_pos: torch.Tensor, s_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """(s+ - t+)^2 + (s- - t-)^2, mean over the batch."""
    return ((s_pos - t_pos.detach()).pow(2) + (s_neg - t_neg.detach()).pow(2)).mean()


def kl_distill(s: torch.Tensor, t: torch.Tensor, tau: float = 1.0, teacher_temp: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T_t) || softmax(s/tau)) per row of (B, L) candidate lists, mean over rows."""
    p_t = F.softmax(t.detach() / teacher_temp, dim=-1)
    return F.kl_div(F.log_softmax(s / tau, dim=-1), p_t, reduction="batchmean")


def listnet(s: torch.Tensor, t: torch.Tensor, tau: float = 1.0, teacher_temp: float = 1.0) -> torch.Tensor:
    """ListNet cross-entropy between teacher and student list distributions, mean over rows."""
    p_t = F.softmax(t.detach() / teacher_temp, dim=-1)
    return -(p_t * F.log_softmax(s / tau, dim=-1)).sum(-1).mean()


def ranknet_teacher(
    s_pos: torch.Tensor, s_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor, negative: str = "clamp"
) -> torch.Tensor:
    """RankNet weighted by the teacher margin y = t+ - t- (matchmaker RankNetTeacher).

    A negative weight would turn the loss around: minimising -|y| * softplus(-(s+ - s-)) pushes s+ - s- to minus
    infinity without bound. ``negative`` says what happens to pairs the teacher orders against the label:
    ``clamp`` (default) gives them weight 0; ``flip`` trains the teacher's order (target 0) with weight |y|;
    ``raise`` refuses them."""
    if negative not in ("clamp", "flip", "raise"):
        raise ValueError(f"negative: {negative!r} not in ('clamp', 'flip', 'raise')")
    w = (t_pos - t_neg).detach()
    d = s_pos - s_neg
    if negative == "raise" and bool((w < 0).any()):
        raise ValueError(f"ranknet_teacher: {int((w < 0).sum())} pairs have a negative teacher margin")
    if negative == "flip":
        return (w.abs() * F.softplus(-torch.sign(w) * d)).mean()
    return (w.clamp_min(0.0) * F.softplus(-d)).mean()


def ranknet_pairs(s: torch.Tensor, t: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """log(1 + exp(-(s_a - s_b)/tau)) for every pair with t_a > t_b in each row of (B, L); mean over pairs."""
    diff_t = t.detach()[:, :, None] - t.detach()[:, None, :]
    diff_s = (s[:, :, None] - s[:, None, :]) / tau
    mask = diff_t > 0
    if not mask.any():
        return s.sum() * 0.0
    return F.softplus(-diff_s[mask]).mean()


def plackett_luce_terms(
    s_sorted: torch.Tensor, keep: torch.Tensor | None = None, extra_lse: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-position Plackett-Luce terms of rows already in the target order: (B, L) ->
    nll[b, j] = log( sum_{k>=j, keep} exp(s[b, k]) + exp(extra_lse[b]) ) - s[b, j].

    ``keep`` (B, L) drops items from every denominator (their own terms are meaningless and must be masked by the
    caller); ``extra_lse`` (B,) adds mass that is ranked below the whole list (e.g. unlisted candidates)."""
    x = s_sorted if keep is None else s_sorted.masked_fill(~keep, float("-inf"))
    suffix = torch.logcumsumexp(x.flip(-1), dim=-1).flip(-1)  # log-sum-exp over k >= j, right to left
    if extra_lse is not None:
        suffix = torch.logaddexp(suffix, extra_lse[:, None].expand_as(suffix))
    return suffix - s_sorted


def listmle(
    s: torch.Tensor,
    t: torch.Tensor,
    tau: float | torch.Tensor = 1.0,
    prefix: int | None = None,
    valid: torch.Tensor | None = None,
    normalise: bool = False,
) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the teacher's order of each row (scope 'list').

    -sum_{j<J_b} log( exp(s_pi(j)/tau) / sum_{k>=j} exp(s_pi(k)/tau) ), pi = teacher order (stable), J_b = ``valid[b]``
    (a per-row count of ranked positions), else ``prefix``, else the full length. With ``normalise`` each row's sum
    is divided by its count; rows with count 0 contribute 0. Mean over rows.
    """
    order = to_ranks(t)
    s_sorted = torch.gather(s / tau, 1, order)
    nll = plackett_luce_terms(s_sorted)
    L = s.shape[1]
    if valid is None:
        j = L if prefix is None else min(prefix, L)
        valid = torch.full((s.shape[0],), j, device=s.device)
    valid = valid.to(s.device).clamp(0, L)
    used = torch.arange(L, device=s.device)[None, :] < valid[:, None]
    rows = (nll * used).sum(-1)
    if normalise:
        rows = rows / valid.clamp_min(1).to(rows.dtype)
    return rows.mean()


def in_batch_contrastive(
    sim: torch.Tensor, tau: float | torch.Tensor = 0.05, extra_pos: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) similarity matrix; diagonal = positives; ``extra_pos`` masks other positives
    (True entries off the diagonal are removed from the denominators)."""
    logits = sim / tau
    if extra_pos is not None:
        eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        logits = logits.masked_fill(extra_pos & ~eye, float("-inf"))
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def in_batch_negatives(q: torch.Tensor, d: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """One-directional softmax cross-entropy of each query over all passages of the batch (q: (B, D), d: (N, D),
    passage i is the positive of query i)."""
    logits = (q @ d.T) / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


# --- teacher output adapter ---------------------------------------------------------


def to_ranks(t: torch.Tensor) -> torch.Tensor:
    """Indices of each row in descending teacher order, ties broken by index (stable)."""
    return torch.sort(-t, dim=-1, stable=True).indices


def to_margins(t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """Signed teacher margins t+ - t-."""
    return t_pos - t_neg


def to_probs(t: torch.Tensor, teacher_temp: float = 1.0) -> torch.Tensor:
    """Softmax over the last dim of a list; a single pair logit (last dim absent) goes through a sigmoid."""
    if t.dim() == 1:
        return torch.sigmoid(t / teacher_temp)
    return F.softmax(t / teacher_temp, dim=-1)


def ensemble_mean(*scores: torch.Tensor) -> torch.Tensor:
    """T2-style ensemble: the mean of the members' raw scores per (q, p) pair."""
    return torch.stack(scores).mean(0)
