"""Networks of each model family."""
