"""Embedded data sets (toy2d mixtures, scikit-learn digits) and loaders for real image sets."""
