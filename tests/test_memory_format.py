"""train.memory_format: `auto` is decided once per run, recorded, and reused by resumes and restarts."""

import pytest
import torch
from helpers import TINY
from omegaconf import OmegaConf

from began_dist.config import load_config, to_container
from began_dist.families.base import auto_memory_format
from began_dist.train import loop, resume
from began_dist.train import state as ckpt

CPU = torch.device("cpu")
OTHER = {"channels_last": "contiguous", "contiguous": "channels_last"}


def layout_of(trainer) -> str:
    weight = trainer.family.G.to_image.weight
    return "channels_last" if weight.is_contiguous(memory_format=torch.channels_last) else "contiguous"


def trainer_for(run_dir, *overrides):
    cfg = load_config(None, [*TINY, f"run.dir={run_dir}", "train.device=cpu", *overrides])
    return loop.Trainer(to_container(cfg))


def test_auto_records_its_decision_and_resumes_reuse_it(train_cli, monkeypatch):
    code, run_dir = train_cli("train.steps=4")
    assert code == 0
    decided = auto_memory_format(CPU)
    assert OmegaConf.load(f"{run_dir}/config.yaml").train.memory_format == decided
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["config"]["train"]["memory_format"] == decided

    # The rule would now decide otherwise (another machine, a changed rule): it does for a new run ...
    monkeypatch.setattr(resume, "auto_memory_format", lambda device: OTHER[decided])
    assert layout_of(trainer_for(f"{run_dir}-new")) == OTHER[decided]
    # ... but a worker-group restart (the launch's config still says auto) takes the checkpoint's decision,
    restarted = trainer_for(run_dir, "train.steps=8")
    assert restarted.cfg.train.memory_format == decided and layout_of(restarted) == decided
    # and `--resume` trains on in it (config.yaml holds the decision, not auto).
    code, _ = train_cli("train.steps=8", run_dir=run_dir, resume=True)
    assert code == 0
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["config"]["train"]["memory_format"] == decided
    assert OmegaConf.load(f"{run_dir}/config.yaml").train.memory_format == decided


@pytest.mark.parametrize("choice", ["channels_last", "contiguous"])
def test_explicit_memory_format_is_honoured(tmp_path, monkeypatch, choice):
    monkeypatch.setattr(resume, "auto_memory_format", lambda device: OTHER[choice])
    trainer = trainer_for(tmp_path, f"train.memory_format={choice}")
    assert trainer.cfg.train.memory_format == choice and layout_of(trainer) == choice


def test_unknown_memory_format_is_refused():
    from began_dist.config import ConfigError

    with pytest.raises(ConfigError, match="train.memory_format"):
        load_config(None, ["train.memory_format=nhwc"])


def test_vaegan_records_contiguous_and_refuses_channels_last(tmp_path):
    from began_dist.config import ConfigError

    tiny = [item for item in TINY if not item.startswith("model.nh=")]  # vaegan has no Nh
    cfg = load_config(None, [*tiny, "model.family=vaegan", f"run.dir={tmp_path}", "train.device=cpu"])
    trainer = loop.Trainer(to_container(cfg))
    assert trainer.cfg.train.memory_format == "contiguous"  # what its NCHW networks really use
    with pytest.raises(ConfigError, match="train.memory_format"):
        load_config(None, ["model.family=vaegan", "train.memory_format=channels_last"])
