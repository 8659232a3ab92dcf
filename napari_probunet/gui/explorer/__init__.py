"""The latent-space explorer: a 2D map of the model's latent space, dragged to decode."""
