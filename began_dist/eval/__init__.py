"""Evaluation: sampling and latent tools, the metric registry (metrics.py, one module per metric),
`began-dist eval` (evaluate.py) and the HTML run report (report.py)."""
