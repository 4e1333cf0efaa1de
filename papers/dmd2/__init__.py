"""DMD2: Improved Distribution Matching Distillation for Fast Image Synthesis (Yin et al., NeurIPS 2024)."""
