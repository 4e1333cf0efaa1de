"""Shared diffusion layer for the distribution-matching distillation papers (DMD2, DisBack, TDM, f-distill).

schedules   EDM/VE Karras grid and VP/DDPM betas behind one interface; x0/eps/v/score conversions, SNR
denoisers   EDM preconditioning, MLP / UNet2DModel / UNet2DConditionModel / PixArt denoisers: x0 and eps from one
            call, named feature taps for GAN heads; CFG
teachers    analytic Gaussian-mixture teacher (VE / VP, class-conditional), cached small trained teachers, save/load
samplers    teacher ODE samplers (EDM Heun/Euler, DDIM from the model's scheduler config), student sampler, rollouts
losses      distribution-matching operator, fake-score losses, GAN heads and losses, TTUR schedule
distill     ONE distillation step with pluggable parts (target provider, generator input, per-sample DM weight,
            extra generator / critic losses); its docstring shows how a method plugs in
trainer     the loop around the step: AdamW, TTUR, diffusers warm-up, clipping, EMA, checkpoints, best checkpoint
tasks       the shared config (DistillConfig), toy2d / digits tasks, weights-only init_from
t2i         ImageNet-64 and text-to-image (SD1.5 / SDXL / PixArt) builders, prompt encoding, pipeline export
evaluation  streamed sampling, metrics, records, grids and scatter plots, student / EMA export
"""
