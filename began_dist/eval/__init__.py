"""Evaluation: the metric registry and one module per metric (metrics/; kid.py, whose feature net
ships beside it, is also `python -m began_dist.eval.kid`), the picture commands (commands/) and the
HTML reports (reports/)."""
