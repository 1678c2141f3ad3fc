"""Process-group helpers (comm) and, later, the Ray Train launcher."""
