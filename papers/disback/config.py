"""DisBack configuration and presets (Zhang et al., ICLR 2025, arXiv:2408.15991).

A run has two stages: stage 1 (degradation recording, paper Alg. 1) fine-tunes a copy of the teacher by denoising
score matching on samples of the frozen initial generator G^0 for `num_nodes * stage1_interval` steps and saves
a weights-only node every `stage1_interval` steps; stage 2 (distribution backtracking, paper Fig. 3) runs `steps`
iterations of the base distiller with the target score switched from node N-1 down to the teacher every
`switch_every` iterations. `backtrack=false` is the endpoint-only baseline (the teacher from iteration 0, no
stage 1 unless the fake score starts from the last node). Iterations count as in the base distiller: the critic
updates every iteration, the generator every `ttur_ratio`-th.
Presets: toy2d (embedded default), digits, and full scale ffhq64, afhq64, imagenet64 (EDM teachers) and sdxl
(starting from a DMD2 generator, as the official code does) - each with a "-smoke" twin.
"""
