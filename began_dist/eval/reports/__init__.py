"""HTML reports: one run or several side by side (run.py), a Tune sweep (sweep.py); their plots
(plots.py) and embedded pictures (embed.py) apart from the page."""
