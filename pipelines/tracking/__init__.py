"""Tracking: the only package that imports mlflow (runs, the registry, signatures).

Telemetry is off before mlflow is imported, so nothing leaves the machine.
"""

import os
import warnings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
warnings.filterwarnings("ignore", module=r"mlflow\..*")
