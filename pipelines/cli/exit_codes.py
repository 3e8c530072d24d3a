"""The CLI's exit codes: 0 done, 1 a stage (or an input) failed, 2 invalid configuration (nothing ran)."""

EXIT_FAILED, EXIT_CONFIG = 1, 2
