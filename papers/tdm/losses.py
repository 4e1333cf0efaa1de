"""TDM's generator loss: the trajectory distribution-matching surrogate (Luo et al. 2025, Eq. 6).

The reverse-KL gradient of Eq. 5 at the matching sample x_tau is lambda_tau [s_fake - s_teacher] d x0_hat / d theta;
it is applied as a distance between x0_hat and the stop-gradient corrected target
x_tilde = sg(x0_hat + (mu_real - mu_fake)), with mu_real the teacher's (guided) x0 and mu_fake the fake score's x0
at x_tau. Forms (each an ablation switch):

  vector        (sqrt(||x0_hat - x_tilde||^2 + c^2) - c) / omega,  c = 0.00054 sqrt(d)     (paper Eq. 6)
  elementwise   mean_d (sqrt((x0_hat - x_tilde)^2 + c^2) - c) / omega,  c = 1e-3   (official demo, `--use_huber`;
                identical to common.diffusion.losses.dm_loss(metric="pseudo_huber"))
  mse           mean_d (x0_hat - x_tilde)^2 / omega                                    (demo without `--use_huber`)

omega = mean_d |x0_hat - mu_real| per sample (detached) is the demo's DMD-style normaliser (not in the paper;
`normalise=False` drops it). The vector form is reported per dimension (divided by d) so that its scale matches
the other two; the optimiser sees the same direction either way.
"""

from __future__ import annotations

import math

import torch

from common.diffusion.losses import dm_loss
from common.diffusion.schedules import bcast

__all__ = ["FORMS", "paper_huber_c", "tdm_loss"]

FORMS = ("vector", "elementwise", "mse")


def paper_huber_c(dim: int) -> float:
    """The paper's pseudo-Huber constant c = 0.00054 sqrt(d) (Eq. 6, after Song & Dhariwal's iCT)."""
    return 0.00054 * math.sqrt(dim)


def tdm_loss(x0_hat, mu_real, mu_fake, form="vector", c: float | None = None, normalise=True, eps=1e-6):
    """Generator loss on the differentiable step's x0_hat (module docstring). c=None takes the form's default."""
    if form not in FORMS:
        raise ValueError(f"form: {form!r} not in {list(FORMS)}")
    if form == "elementwise" and normalise:
        return dm_loss(x0_hat, mu_real, mu_fake, metric="pseudo_huber", c=1e-3 if c is None else c, eps=eps)
    mu_real, mu_fake = mu_real.detach().to(x0_hat.dtype), mu_fake.detach().to(x0_hat.dtype)
    with torch.no_grad():
        target = x0_hat + (mu_real - mu_fake)
        omega = (
            (x0_hat - mu_real).abs().flatten(1).mean(1) + eps
            if normalise
            else torch.ones(len(x0_hat), device=x0_hat.device)
        )
    diff = x0_hat - target.detach()
    d = diff[0].numel()
    if form == "vector":
        c = paper_huber_c(d) if c is None else c
        per = (torch.sqrt((diff.flatten(1) ** 2).sum(1) + c**2) - c) / d
    elif form == "elementwise":
        c = 1e-3 if c is None else c
        per = (torch.sqrt(diff**2 + c**2) - c).flatten(1).mean(1)
    else:
        per = (diff**2).flatten(1).mean(1)
    return torch.nan_to_num(per / bcast(omega.to(per), per)).mean()
