"""Reading results: the leaderboard table built from run records and its views (terminal, Markdown, JSON/CSV with
provenance, LaTeX, plots, per-layer bit maps, a static site) and comparisons of two sweeps."""
