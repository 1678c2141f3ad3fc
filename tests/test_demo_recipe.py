"""The demo's pieces: the shipped KID feature net, the demo config's first steps, the recipe sweep's spec."""

import hashlib
import json
import os

import pytest
import torch

from began_dist.cli import main
from began_dist.eval import kid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shipped net's sha256 as docs/evaluation.md records it: a rebuilt net must update both.
SHIPPED_SHA256 = "5f0ebb83c360fa812e54d753edc2d8ee7f4ffe1d9e1f2a7187ae8f9b646a0cf2"


def test_shipped_glyphnet_loads_and_matches_its_recorded_sha256(monkeypatch):
    monkeypatch.delenv("BEGAN_DIST_KID_NET", raising=False)
    assert kid.default_path() == kid.SHIPPED_NET
    with open(kid.SHIPPED_NET, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == SHIPPED_SHA256
    net, info = kid.load_net(kid.default_path())  # also checks PATH.json's sha256 and the accuracy floor
    assert info["sha256"] == SHIPPED_SHA256 and info["heldout_accuracy"] >= kid.MIN_ACCURACY
    assert net.features(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape == (2, 128)
    assert os.path.getsize(kid.SHIPPED_NET) < 2_000_000  # small enough to ship in the package


def test_demo_config_first_steps_lower_the_reconstruction_loss(tmp_path):
    config = os.path.join(REPO, "configs", "demo_glyphs32.yaml")
    run_dir = tmp_path / "demo"
    # 150 steps: L(x) of the first logged steps (about 0.62) falls to 0.80x by step 100 and to
    # about 0.70x by step 150 (Nz = Nh = 64, one seed, measured)
    steps = ["train.steps=150", "train.log_every=5", "train.sample_every=150", "train.checkpoint_every=150"]
    assert main(["train", "--config", config, *steps, f"run.dir={run_dir}"]) == 0
    with open(run_dir / "stats.jsonl") as handle:
        l_x = [json.loads(line)["L_x"] for line in handle]
    assert sum(l_x[-3:]) / 3 < 0.8 * sum(l_x[:3]) / 3, l_x


@pytest.mark.parametrize("name", ["demo_recipe.yaml", "demo_recipe_round2.yaml"])
def test_demo_recipe_sweep_spec_is_refused_nothing(name):
    from began_dist.eval.metrics import check_prerequisites, parse_metrics
    from began_dist.tune.spec import load_spec
    from began_dist.tune.sweep import trial_base

    spec, base = load_spec(os.path.join(REPO, "tune", name))
    assert spec.metric == "kid" and spec.scheduler["type"] == "asha"
    check_prerequisites(parse_metrics(trial_base(spec, base).train.eval_metrics))  # the shipped net is found


def test_readme_recipe_scores_and_keeps_what_checkpoint_best_ranks():
    """configs/readme_glyphs32.yaml is sampled with --checkpoint best: every checkpoint it writes must be
    scored with the metrics best ranks, and kept."""
    import began_dist.families  # noqa: F401  (registers the family rules the loader checks)
    from began_dist.config import load_config
    from began_dist.eval.metrics import check_prerequisites, parse_metrics
    from began_dist.train.runs import BEST_BY

    cfg = load_config(os.path.join(REPO, "configs", "readme_glyphs32.yaml"))
    names = parse_metrics(cfg.train.eval_metrics)
    assert set(BEST_BY) <= set(names)
    assert cfg.train.eval_every == cfg.train.checkpoint_every
    assert cfg.run.checkpoints_to_keep >= cfg.train.steps // cfg.train.checkpoint_every
    check_prerequisites(names)  # the shipped GlyphNet is found
    # The same model and training as the demo: only the length and what is scored and kept differ.
    demo = load_config(os.path.join(REPO, "configs", "demo_glyphs32.yaml"))
    # g_ema_half_life: the recipe shows its best scored G; the demo, scored once, the average
    # (docs/evaluation.md, "A moving average of G").
    recipe_only = {"steps", "checkpoint_every", "eval_every", "eval_metrics", "eval_n", "g_ema_half_life"}
    assert cfg.model == demo.model and cfg.data == demo.data
    assert {k: v for k, v in cfg.train.items() if k not in recipe_only} == {
        k: v for k, v in demo.train.items() if k not in recipe_only}
