"""Import TensorFlow without the notices its C++ side prints before Python logging exists.

TensorFlow 2.21 writes "All log messages before absl::InitializeLog() ..." and the
oneDNN notice to file descriptor 2 while its shared libraries load, once per
library and regardless of ``TF_CPP_MIN_LOG_LEVEL``. They cannot be switched off,
so the import runs with descriptor 2 pointed at a temporary file, and every other
line is written back to stderr: a real warning or error still shows.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* in other operations, rebuild TensorFlow"),
)


def filter_notices(text: str) -> str:
    """``text`` without the known import-time notices (lines kept in order, with their newlines)."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(p.match(line.rstrip("\n")) for p in NOISE))


def import_tensorflow_quietly() -> None:
    """Import tensorflow (and keras) with the import-time notices filtered out of stderr."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import keras  # noqa: F401  (loads tensorflow)
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = filter_notices(tmp.read().decode("utf-8", "replace"))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()
