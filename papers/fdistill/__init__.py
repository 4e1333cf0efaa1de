"""f-distill (Xu, Nie, Vahdat 2025): one-step diffusion distillation with f-divergence distribution matching."""
