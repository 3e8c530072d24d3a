"""TensorFlow's import-time notices are filtered from stderr; every other line stays, in order."""

from __future__ import annotations

import subprocess
import sys

from medflow.cli.quiet import filter_notices

NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1765000000.123456   4242 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1765000000.223456   4242 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use ...\n"
    "To enable the following instructions: AVX512F FMA, in other operations, rebuild TensorFlow with the flags.\n"
)


def test_filter_drops_the_notices_and_keeps_other_lines():
    kept = "E0000 a real error\nsomething else\n"
    assert filter_notices(NOTICES + kept + NOTICES) == kept
    assert filter_notices("no newline at the end") == "no newline at the end"


def test_cli_import_prints_no_tensorflow_notices():
    code = "from medflow.cli.quiet import import_tensorflow_quietly as q; q(); import sys; print('ok', file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "1", "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "ok\n"
