"""The scale fuzzer (bench/fuzz.py) on a CI budget, and proof that its checks can fail.

Why both: a fuzz run that finds nothing is only evidence if the generator reaches the
interesting paths (served, signed, crypto-NAK, every drop reason) and the invariants would
have caught a break. So this runs 20,000 generated inputs through decode and the
responders, asserts the path coverage, and then feeds deliberately broken targets to the
same checker to see it report them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fuzz
from ntpy.core.packet import PacketError, decode
from ntpy.core.server import Reason, Reply, Responder
from ntpy.core.system import unsynchronized

CI_INPUTS = 20_000
BASE_REASONS = (
    "served",
    "served_auth",
    "crypto_nak",
    "drop_too_short",
    "drop_bad_version",
    "drop_bad_mode",
    "drop_not_request",
    "drop_mode6",
    "drop_mode7",
    "drop_malformed",
    "drop_bad_port",
)
RESTRICT_REASONS = (
    "drop_restricted",
    "drop_mode6_noquery",
    "drop_restrict_version",
    "drop_notrust",
    "drop_rate_limited",
    "kod_rate_sent",
)
"""Reached only through the access-control / rate-limit targets, when ntpy has them."""


def _reachable_reasons() -> list[str]:
    names = {str(r) for r in Reason}
    wanted = list(BASE_REASONS)
    if any(t.steady for t in fuzz.make_targets()):
        wanted += [r for r in RESTRICT_REASONS if r in names]
    return wanted


def test_ci_budget_run_finds_no_violation_and_covers_the_paths() -> None:
    start = time.monotonic()
    summary = fuzz.run_builtin(CI_INPUTS, seed=20261122)
    elapsed = time.monotonic() - start
    assert summary.violation is None, summary.render()
    assert summary.inputs == CI_INPUTS
    assert elapsed < 10, f"CI fuzz budget exceeded: {elapsed:.1f} s"
    # Every generator ran, and the inputs reached every outcome worth reaching.
    assert set(summary.categories) == {name for name, _ in fuzz.Generator(0)._table}
    for reason in _reachable_reasons():
        assert summary.reasons[reason] > 0, (reason, summary.render())
    assert 0.2 < summary.decoded / summary.inputs < 0.8


def test_same_seed_same_inputs() -> None:
    a = fuzz.run_builtin(3000, seed=5)
    b = fuzz.run_builtin(3000, seed=5)
    c = fuzz.run_builtin(3000, seed=6)
    assert a.digest == b.digest != c.digest
    assert a.reasons == b.reasons


class _OversizeResponder(Responder):
    """Answers every valid packet with a 100-byte reply: breaks 'reply <= request'."""

    def handle(
        self, request: bytes, client: Any, rx_time: int, now: int
    ) -> tuple[Reply | None, Reason]:
        try:
            decode(request)
        except PacketError:
            return None, Reason.MALFORMED
        buf = bytearray(100)
        buf[0] = (request[0] & 0x38) | 4
        buf[24:32] = request[40:48]
        return Reply(buf), Reason.SERVED


class _RaisingResponder(Responder):
    def handle(
        self, request: bytes, client: Any, rx_time: int, now: int
    ) -> tuple[Reply | None, Reason]:
        return None, Reason(request[47:48].hex() or "x")  # ValueError on most inputs


@pytest.mark.parametrize(
    ("responder_type", "expected"),
    [
        (_OversizeResponder, "reply of 100 bytes"),
        (_RaisingResponder, "handle raised ValueError"),
    ],
)
def test_checker_reports_a_broken_responder(
    tmp_path: Path, responder_type: type[Responder], expected: str
) -> None:
    target = fuzz.Target("broken", responder_type(unsynchronized(-20)), {})
    summary = fuzz.run_builtin(5000, seed=1, targets=[target])
    assert summary.violation is not None
    assert expected in summary.violation.message
    saved = fuzz.save_crash(summary.violation, tmp_path)
    assert saved.read_bytes() == summary.violation.data
    assert expected in saved.with_suffix(".txt").read_text()


def test_checker_reports_a_decode_that_raises_the_wrong_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = decode

    def leaky(data: bytes) -> Any:
        if len(data) == 47:
            raise IndexError("simulated codec bug")
        return real(data)

    monkeypatch.setattr(fuzz, "decode", leaky)
    summary = fuzz.run_builtin(20_000, seed=3)
    assert summary.violation is not None
    assert "decode raised IndexError" in summary.violation.message


def test_main_exit_status_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--n", "500", "--seed", "2", "--crash-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "inputs/s" in out and "violations: none" in out
    good = tmp_path / "good.bin"
    good.write_bytes(bytes([0x23]) + bytes(47))
    assert fuzz.main(["--replay", str(good)]) == 0
    assert fuzz.replay(good) == []
    with pytest.raises(SystemExit):
        fuzz.main(["--n", "-1"])


def test_decode_of_generated_valid_packets_succeeds() -> None:
    """The 'valid' generator must produce what decode accepts, or mutations start nowhere."""
    gen = fuzz.Generator(11)
    bad = 0
    for _ in range(2000):
        try:
            decode(gen.valid_packet())
        except PacketError:
            bad += 1
    assert bad == 0
