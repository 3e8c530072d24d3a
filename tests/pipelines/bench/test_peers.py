"""medflow bench peers: the peers' script ships with the package, and a missing peers venv is one line."""

from __future__ import annotations

import ast

from medflow.bench.peers_bench import SCRIPT
from medflow.cli.main import main


def test_the_peers_script_is_standalone():
    tree = ast.parse(SCRIPT.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names} \
        | {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
    # It runs in the peers' venv: no medflow, and torch/monai only inside the commands.
    assert names <= {"__future__", "argparse", "json", "os", "statistics", "time"}, names
    assert (SCRIPT.parent / "requirements.txt").read_text().count("monai==") == 1


def test_a_missing_peers_venv_is_one_line(tmp_path, capsys):
    assert main(["bench", "peers", "--peers-python", str(tmp_path / "nope" / "python"), "--size", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "make bench-peers makes .venv-peers" in err
