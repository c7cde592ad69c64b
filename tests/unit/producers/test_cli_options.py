"""Options of `esflow loadgen` and `esflow send` are checked before anything connects to a server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from producers.cli import loadgen, send


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--rate", "-5"], "--rate"),
        (["--count", "0"], "--count"),
        (["--timeout", "0"], "--timeout"),
        (["--reject-share", "1.5"], "--reject-share"),
    ],
)
def test_loadgen_refuses_an_out_of_range_option_at_once(args: list[str], option: str) -> None:
    # No server runs in unit tests: reaching Kafka would fail differently (and slowly).
    result = CliRunner().invoke(loadgen, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_send_refuses_a_non_positive_timeout() -> None:
    result = CliRunner().invoke(send, ["OpenAccount", "--wait", "--timeout", "-1", "--json", "{}"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout'" in result.output


@pytest.mark.parametrize(
    ("at", "says"),
    [("tomorrow", "is not an ISO 8601 time"), ("2030-01-01T09:00:00", "has no UTC offset")],
)
def test_send_at_needs_an_iso_time_with_an_offset(at: str, says: str) -> None:
    result = CliRunner().invoke(send, ["OpenAccount", "--at", at, "--json", "{}"])
    assert result.exit_code == 2, result.output
    assert "--at" in result.output and says in result.output


def test_send_at_does_not_wait() -> None:
    result = CliRunner().invoke(
        send, ["OpenAccount", "--at", "2030-01-01T09:00:00Z", "--wait", "--json", "{}"]
    )
    assert result.exit_code == 2, result.output
    assert "--at and --wait do not go together" in result.output
