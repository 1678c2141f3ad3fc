"""Model families: each supplies its networks, its training step and its checkpoint entries.

A family is a class constructed as `Family(cfg, device)` with:
  latents_per_step      how many global latent batches one step draws
  latent_size           size of one latent vector
  optimizers            the optimizers the lr controller drives
  train_step(real, z)   one step; returns a dict of device scalars (the Contract's stats)
  needs_labels          optional, True: train_step(real, z, labels=y) gets the images' labels (N, K)
  distribute(wrap)      train through wrap(network) (DDP under Ray Train), one per network
  set_step(step)        schedules that follow the step (e.g. the vanishing-residual carry)
  generate(z)           images from latents (no grad)
  image_panels(real, z) named image batches for TensorBoard (images/<name>)
  state_dict() / load_state_dict(state)   the family's checkpoint entries
"""

from __future__ import annotations


def get_family(name: str):
    if name == "began":
        from began_dist.objectives.began import BeganFamily

        return BeganFamily
    if name == "multigen":
        from began_dist.objectives.multigen import MultigenFamily

        return MultigenFamily
    raise KeyError(f"model.family={name!r} is not available")
