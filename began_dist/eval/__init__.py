"""Evaluation: sampling and latent tools (metrics and reports arrive with their issue)."""
