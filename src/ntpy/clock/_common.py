"""Small helpers shared by the clock implementations."""

from __future__ import annotations

from collections.abc import Sequence

from ntpy.clock.base import StepHandler


def require_int_ns(what: str, value: object) -> None:
    """Offsets are integer ns; a float here would be a unit bug, so refuse it loudly."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int number of ns, got {value!r}")


def notify_step_handlers(handlers: Sequence[StepHandler], offset_ns: int) -> None:
    """Tell every handler of a step, even if one of them raises; re-raise afterwards.

    Every holder of timestamps must hear of the step, so one faulty handler must not
    silence the others.
    """
    errors: list[Exception] = []
    for handler in list(handlers):
        try:
            handler(offset_ns)
        except Exception as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup("step handlers failed", errors)
