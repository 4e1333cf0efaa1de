"""DisBack: Distribution Backtracking Builds A Faster Convergence Trajectory for Diffusion Distillation (Zhang et
al., ICLR 2025)."""
