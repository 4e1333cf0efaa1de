"""Shared text-ranking layer (Margin-MSE, CPRD): encoders, ranking losses, BM25, dense index, file formats."""
