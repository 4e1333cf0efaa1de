"""Shared diffusion layer for the distribution-matching distillation papers (DMD2, DisBack, TDM, f-distill).

schedules   EDM/VE Karras grid and VP/DDPM betas behind one interface; x0/eps/v/score conversions, SNR
denoisers   EDM preconditioning, MLP / UNet2DModel / UNet2DConditionModel denoisers with one x0 API, CFG
teachers    analytic Gaussian-mixture teacher, cached small trained teachers (train_teacher), save/load
samplers    teacher ODE samplers (EDM Heun/Euler, DDIM), few-step student sampler, rollouts
losses      distribution-matching operator, fake-score losses, GAN heads and losses, TTUR schedule
"""
