import os

import pytest
from omegaconf import OmegaConf

from began_dist.cli import main
from began_dist.config import ConfigError, from_container, load_config, to_container
from began_dist.families import FAMILIES


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("train.gamma=0", "train.gamma", "(0, 1]"),
        ("train.gamma=1.5", "train.gamma", "(0, 1]"),
        ("model.image_size=48", "model.image_size", "power of two"),
        ("model.image_size=512", "model.image_size", "16..256"),
        ("model.arch=resnet", "model.arch", "repeat, skip"),
        ("model.channels=2", "model.channels", "1, 3"),
        ("train.lr_control=cosine", "train.lr_control", "m_stall, decay, step, none"),
        ("train.update_order=random", "train.update_order", "alternating, simultaneous"),
        ("train.batch_size=0", "train.batch_size", "positive"),
        ("train.steps=-5", "train.steps", "positive"),
        ("train.lr_decay_factor=2", "train.lr_decay_factor", "(0, 1]"),
        ("run.collective_timeout_s=0", "run.collective_timeout_s", "positive number of seconds"),
        ("data.source=webdataset", "data.source", "glyphs, shapes, folder, shards"),
        ("data.source=folder", "data.path", "required"),
        ("data.fetch_workers=0", "data.fetch_workers", "1 (one shard at a time) to 64"),
        ("model.filters=many", "model.filters", "Integer"),
        ("train.gamma=high", "train.gamma", "Float"),
        ("model.nonsense=3", "model.nonsense", "not in"),
    ],
)
def test_bad_values_are_refused_naming_the_field(tmp_path, capsys, override, field, allowed):
    run_dir = tmp_path / "run"
    code = main(["train", override, f"run.dir={run_dir}"])
    message = capsys.readouterr().err.strip()
    assert code == 2
    assert field in message and allowed in message
    assert len(message.splitlines()) == 1
    assert not run_dir.exists()


def test_batch_must_split_across_workers(tmp_path, capsys):
    code = main(["train", "train.batch_size=10", "--workers", "4", f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert "train.batch_size=10" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_data_path_is_refused_before_work(tmp_path, capsys):
    code = main(["train", "data.source=folder", f"data.path={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_yaml_file_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  gamma: 0.4\n  steps: 7\nmodel:\n  image_size: 64\n")
    cfg = load_config(str(path), ["train.steps=9"])
    assert (cfg.train.gamma, cfg.train.steps, cfg.model.image_size) == (0.4, 9, 64)


def test_unknown_key_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  gama: 0.4\n")
    with pytest.raises(ConfigError, match="gama"):
        load_config(str(path))


def test_example_configs_load():
    folder = os.path.join(os.path.dirname(__file__), "..", "configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert names
    for name in names:
        cfg = load_config(os.path.join(folder, name))
        named = [family for family in FAMILIES if family in name]  # seed002_vaegan_glyphs.yaml
        assert OmegaConf.select(cfg, "model.family") == (named[0] if named else "began"), name


def test_checkpoint_configs_of_older_runs_load_with_unset_keys_at_their_defaults(tmp_path):
    stored = to_container(load_config(None, ["model.family=multigen", "data.source=shapes"]))
    stored["model"]["nz"] = stored["model"]["nh"] = None  # how multigen runs before the family defaults saved them
    loaded = from_container(stored)
    assert loaded.model.nz == load_config(None, []).model.nz and stored["model"]["nz"] is None
    saved = tmp_path / "config.yaml"  # the run's config.yaml, which --resume reads
    saved.write_text(OmegaConf.to_yaml(OmegaConf.create(stored)))
    assert load_config(str(saved)).model.nh == loaded.model.nh
    began = to_container(load_config(None, []))
    began["model"]["nz"] = None  # means something for BEGAN: still refused, naming the field
    with pytest.raises(ConfigError, match="model.nz"):
        from_container(began)
