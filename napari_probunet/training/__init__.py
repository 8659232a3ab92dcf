"""Training, evaluation and benchmarks of a Probabilistic U-Net (no Qt, no napari)."""
