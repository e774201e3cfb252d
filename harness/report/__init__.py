"""Reading results: leaderboards (tables, plots) built from run records."""
