"""Speed benchmarks (`make bench`) and the plain reference step they measure against."""
