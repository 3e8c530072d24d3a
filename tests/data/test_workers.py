"""Case workers start from a forkserver that has the case readers, and nothing heavier, imported."""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor

from medflow.data.workers import PRELOAD, process_context


def _modules_at_start(_):
    return sorted(m for m in (*PRELOAD, "tensorflow", "keras", "mlflow") if m in sys.modules)


def test_preload_holds_no_tensorflow_keras_or_mlflow():
    import subprocess

    code = ("import sys\n" + "".join(f"import {m}\n" for m in PRELOAD) +
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_workers_start_with_the_readers_loaded():
    with ProcessPoolExecutor(2, mp_context=process_context()) as pool:
        seen = list(pool.map(_modules_at_start, range(2)))
    for modules in seen:
        assert set(PRELOAD) <= set(modules)
        assert not {"tensorflow", "keras", "mlflow"} & set(modules)
