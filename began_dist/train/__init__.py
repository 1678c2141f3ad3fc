"""The per-worker training loop, checkpoints and run-directory logging."""
