"""Output names from untrusted case names: one safe path component each, never two alike."""

from __future__ import annotations

import pytest

from medflow.inference.names import MAX_LENGTH, safe_name, unique_names


@pytest.mark.parametrize("name, expected", [
    ("sub-01_T1w", "sub-01_T1w"), ("../../etc/passwd", "_.._etc_passwd"), ("..", "fallback"),
    (".bashrc", "bashrc"), ("a\\b", "a_b"), ("tab\there", "tab_here"), ("名前", "fallback"), ("", "fallback"),
    (None, "fallback"), ("///", "fallback"), ("C:\\x", "C_x"), ("ﬁle", "file"), ("x" * 500, "x" * MAX_LENGTH),
])
def test_a_name_becomes_one_safe_component(name, expected):
    got = safe_name(name, "fallback")
    assert got == expected
    assert "/" not in got and "\\" not in got and not got.startswith(".") and got not in ("", ".", "..")


def test_names_are_distinct_without_regard_to_case():
    assert unique_names(["a", "A", "a", None, "case_1", "b/"], [f"case_{i}" for i in range(6)]) == \
        ["a", "A-2", "a-3", "case_3", "case_1", "b_"]
