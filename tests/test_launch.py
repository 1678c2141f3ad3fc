"""launch() and its RunResult in local mode; the cli's flags and exit table that go with it."""

import dataclasses

from helpers import TINY

from began_dist.cli import EXIT_CODES, build_parser
from began_dist.data.prepare import PrepareOptions
from began_dist.launch import RunResult, Status, launch
from began_dist.train import state as ckpt
from began_dist.train.preflight import train_config


def test_local_launch_returns_a_typed_result(tmp_path):
    run_dir = tmp_path / "run"
    result = launch(train_config(None, [*TINY, "train.steps=4", f"run.dir={run_dir}"]), progress=False)
    assert isinstance(result, RunResult) and result.status is Status.done and result.ok
    assert result.step == 4 and result.metrics["step"] == 4 and result.run_dir == str(run_dir)
    assert result.checkpoint == ckpt.latest_checkpoint(str(run_dir))
    assert set(result.debug) == {"replica_digests"}  # diagnostics live apart from the result proper


def test_non_finite_loss_is_a_status_not_an_exception(tmp_path):
    cfg = train_config(None, [*TINY, "train.steps=20", "train.lr=1e10", f"run.dir={tmp_path / 'nan'}"])
    result = launch(cfg, progress=False)
    assert result.status is Status.non_finite and "non-finite loss" in result.message
    assert EXIT_CODES[result.status] == 3


def test_every_status_has_an_exit_code():
    assert set(EXIT_CODES) == set(Status)
    assert [status.name for status in Status] == [
        "done", "non_finite", "interrupted", "refused", "storage_error", "failed"
    ]
    assert (EXIT_CODES[Status.done], EXIT_CODES[Status.refused], EXIT_CODES[Status.interrupted]) == (0, 2, 130)


def test_prepare_flags_come_from_prepare_options():
    args = build_parser().parse_args(["prepare", "glyphs", "out"])
    for option in dataclasses.fields(PrepareOptions):
        assert getattr(args, option.name) == option.default, option.name
    args = build_parser().parse_args(["prepare", "a", "b", "--source-size", "7", "--skip-bad", "--format", "hdf5"])
    assert (args.source_size, args.skip_bad, args.format) == (7, True, "hdf5")
