"""What a reviewer sees: run names, headline-versus-baseline comparisons, review figures and ``report.html``."""
