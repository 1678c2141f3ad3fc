"""What several test files share: the tiny run's overrides.

Importable as `from helpers import TINY`: pytest puts this directory first on sys.path
(its default "prepend" import mode, for test directories without __init__.py).
"""

# Tiny runs: 16 px, a few filters, few glyphs. Steps are what each test sets.
TINY = [
    "model.image_size=16",
    "model.filters=8",
    "model.nz=8",
    "model.nh=8",
    "model.convs_per_scale=1",
    "data.glyphs=64",
    "train.batch_size=4",
    "train.log_every=2",
    "train.sample_every=4",
    "train.checkpoint_every=4",
]
