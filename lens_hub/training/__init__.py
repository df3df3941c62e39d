"""Training a lens: data, losses and kernels, checkpoints, the closed-form fit and the trainer."""
