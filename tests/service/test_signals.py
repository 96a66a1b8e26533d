"""`run_until_signalled`: a signal stops the main task even when it swallows a cancellation
(as redis-py can inside a blocking read)."""

import asyncio
import os
import signal

from service.cli.server import run_until_signalled


async def stubborn(swallow: int, log: list[str]) -> None:
    """Ignores its first `swallow` cancellations, then stops on the next."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancelled")
            if len(log) > swallow:
                raise


def test_a_signal_stops_a_task_that_swallows_the_first_cancellation():
    log: list[str] = []

    async def go():
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        running = asyncio.ensure_future(run_until_signalled(stubborn(1, log)))
        done, _ = await asyncio.wait({running}, timeout=10)
        if not done:  # leave nothing running, then fail
            running.cancel()
            await asyncio.wait({running})
        return bool(done)

    assert asyncio.run(go()), "the signal did not stop the task"
    assert log == ["cancelled", "cancelled"]


def test_a_main_that_returns_ends_without_a_signal():
    async def done():
        return None

    asyncio.run(run_until_signalled(done()))
