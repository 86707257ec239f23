"""Model checkpoints: the embedded offline builder, the HF-format loader and the paged model."""
