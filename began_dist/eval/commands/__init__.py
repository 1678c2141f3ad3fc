"""The commands that make pictures from a trained run: sample, interpolate, arithmetic, decompose,
and the latent tools they share (latent.py: encoder or inversion, slerp)."""
