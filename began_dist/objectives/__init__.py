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
Optional, with BEGAN's as the loop's defaults (train/loop.py):
  logged_losses         stats averaged over each log interval
  scalar_tags           stats.jsonl key -> TensorBoard tag, in stats.jsonl order
  progress_keys         the stats the progress bar shows
  lr_monitor            the stat train.lr_control=m_stall watches
  replicated_networks   checkpoint entries whose weights must agree across ranks
Latent tools (eval/latent.py) use encode(x) / decode(z) / latent_bound when a family has them.
"""

from __future__ import annotations


def get_family(name: str):
    if name == "began":
        from began_dist.objectives.began import BeganFamily

        return BeganFamily
    if name == "multigen":
        from began_dist.objectives.multigen import MultigenFamily

        return MultigenFamily
    if name == "vaegan":
        from began_dist.objectives.vaegan import VaeganFamily

        return VaeganFamily
    raise KeyError(f"model.family={name!r} is not available")
