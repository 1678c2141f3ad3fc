"""began-dist: Boundary Equilibrium GANs, from a laptop CPU to a Ray cluster."""

__version__ = "0.1.0"
