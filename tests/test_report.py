"""`began-dist report`: a self-contained page for one run, and several runs side by side."""

import os
import re

from helpers import TINY

from began_dist.cli import main
from began_dist.eval.reports.run import load


def html_of(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_report_of_one_run_is_self_contained(train_cli, capsys):
    code, run_dir = train_cli("train.steps=8", "train.eval_every=4", "train.eval_n=16", "train.eval_metrics=swd,recon")
    assert main(["report", run_dir]) == 0
    path = os.path.join(run_dir, "report.html")
    assert capsys.readouterr().out.strip().endswith(path)
    page = html_of(path)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # every picture embedded, nothing fetched
    assert page.count("data:image/png;base64,") >= 4 + 2 + 2 + 1  # curves, metric plots, stills, reconstructions
    assert "data:image/gif;base64," in page  # the fixed-z animation
    assert "<th>swd (real vs real floor)</th>" in page and "<th>recon (training images)</th>" in page
    assert "step 8: held-out images" in page
    assert "Spearman(M, swd): too few checkpoints (2)" in page  # M against the metric (eval/reports/agreement.py)
    assert "gamma: 0.5" in page  # the config
    run = load(run_dir)
    assert [row["step"] for row in run.metrics["swd"]] == [4, 8]
    assert [step for step, _ in run.samples] == [4, 8]


def test_report_puts_runs_side_by_side(tmp_path):
    runs = []
    for gamma in ("0.3", "0.7"):
        run_dir = str(tmp_path / f"gamma{gamma}")
        assert main(["train", *TINY, "train.steps=4", f"train.gamma={gamma}", f"run.dir={run_dir}"]) == 0
        runs.append(run_dir)
    out = str(tmp_path / "compare.html")
    assert main(["report", *runs, "--out", out]) == 0
    page = html_of(out)
    assert "Keys that differ" in page and "<td>train.gamma</td><td>0.3</td><td>0.7</td>" in page
    assert "side by side" in page and "gamma0.3, step 4" in page and "gamma0.7, step 4" in page
    assert "No metric-*.jsonl yet" in page


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
