"""common.aio.cancel_and_wait against a task that goes on after one cancel(), as a loop does when
asyncio.wait_for swallows the cancellation (CPython gh-86296, Python < 3.12)."""
import asyncio

from common.aio import cancel_and_wait


def test_a_task_that_swallows_a_cancel_is_cancelled_again():
    async def scenario():
        rounds = []

        async def loop_that_goes_on():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    rounds.append("swallowed")
                    if len(rounds) == 2:
                        raise
        async def fails():
            raise RuntimeError("ended badly")

        stubborn = asyncio.create_task(loop_that_goes_on())
        failed = asyncio.create_task(fails())
        plain = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([stubborn, failed, plain]), 10)
        assert rounds == ["swallowed", "swallowed"]
        assert stubborn.done() and plain.cancelled() and failed.done()

    asyncio.run(scenario())
