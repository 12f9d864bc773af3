"""A small event loop: readable file descriptors, timers on monotonic time, and signals.

It is built on ``selectors`` and runs on any selector, including ``PollSelector`` (only
select/poll), so LD_PRELOAD clock and network simulators that interpose those calls can
drive the real daemon. Timers run on CLOCK_MONOTONIC so that stepping the clock (ours or
anyone's) never makes a timer fire early or late. Signals arrive through a self-pipe
(``signal.set_wakeup_fd``) so handlers run in the loop, not in the middle of a packet.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

SELECTORS: dict[str, type[selectors.BaseSelector]] = {
    "default": selectors.DefaultSelector,
    "poll": selectors.PollSelector,
    "select": selectors.SelectSelector,
}


class Loop:
    """Run callbacks when file descriptors are readable, when timers expire, on signals."""

    def __init__(self, selector: str = "default") -> None:
        try:
            self._selector = SELECTORS[selector]()
        except KeyError:
            raise ValueError(
                f"unknown selector {selector!r}: expected one of {', '.join(SELECTORS)}"
            ) from None
        self.selector_name = type(self._selector).__name__
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._old_handlers: dict[int, Any] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)
        self._old_wakeup_fd: int | None = None

    def add_reader(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self._selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self._selector.unregister(fileobj)

    def call_at(self, when_mono_ns: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, at CLOCK_MONOTONIC ``when_mono_ns``."""
        heapq.heappush(self._timers, (when_mono_ns, next(self._seq), callback))

    def call_later(self, delay_ns: int, callback: Callable[[], None]) -> None:
        self.call_at(time.monotonic_ns() + delay_ns, callback)

    def call_every(self, interval_ns: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` every ``interval_ns`` (fixed rate, no drift accumulation)."""

        def tick(due: int) -> None:
            callback()
            nxt = due + interval_ns
            now = time.monotonic_ns()
            if nxt <= now:  # we fell behind (suspend, overload): skip missed ticks
                nxt = now + interval_ns
            self.call_at(nxt, lambda: tick(nxt))

        first = time.monotonic_ns() + interval_ns
        self.call_at(first, lambda: tick(first))

    def add_signal_handler(self, signum: int, handler: Callable[[int], None]) -> None:
        """Run ``handler(signum)`` from the loop when ``signum`` arrives."""
        self._signal_handlers[signum] = handler
        self._old_handlers[signum] = signal.signal(signum, lambda s, f: None)
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _on_wakeup(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler(signum)

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Run until ``stop()`` is called."""
        self._running = True
        sel = self._selector
        timers = self._timers
        while self._running:
            timeout: float | None = None
            if timers:
                timeout = max(0.0, (timers[0][0] - time.monotonic_ns()) / 1e9)
            for key, _mask in sel.select(timeout):
                key.data()
                if not self._running:
                    break
            if timers:
                now = time.monotonic_ns()
                while timers and timers[0][0] <= now and self._running:
                    _, _, cb = heapq.heappop(timers)
                    cb()

    def close(self) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
