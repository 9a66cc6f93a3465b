"""Shared assertions of the command line's contract: a user error is one ``error:`` line on stderr, exit code 2,
no traceback."""

from __future__ import annotations

import pytest

from icm_core.commands import cli


def cli_error_line(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """Run ``cli.main(args)`` expecting a user error: exit code 2 and exactly one ``error: `` line on stderr, no
    traceback; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 2
    return only_error_line(capsys.readouterr().err)


def only_error_line(stderr: str) -> str:
    """Assert ``stderr`` is exactly one ``error: `` line (no traceback) and return it."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]
