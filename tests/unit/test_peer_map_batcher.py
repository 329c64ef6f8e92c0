"""PeerMapBatcher: concurrent reads share one compute pass, and each gets its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from rustynet.application.control.map_batch import PeerMapBatcher, Request
from rustynet.application.errors import Unauthorized


class Recorder:
    """A compute callback that records its batches: a map text, None, or Unauthorized, in
    slices of `size`."""

    def __init__(self, size: int = 7) -> None:
        self.batches: list[list[Request]] = []
        self.size = size

    async def __call__(self, requests: Sequence[Request]) -> AsyncGenerator[list[object], None]:
        self.batches.append(list(requests))
        await asyncio.sleep(0.01)  # a store read
        out: list[object] = []
        for node_id, after in requests:
            if node_id.startswith("revoked"):
                out.append(Unauthorized())
            else:
                out.append(None if after >= 5 else f"map:{node_id}:{after}")
            if len(out) == self.size:
                yield out
                out = []
        yield out


@pytest.mark.asyncio
async def test_reads_woken_together_share_one_pass_and_get_their_own_answers() -> None:
    """100 reads queued in one loop iteration: one compute call; each its own outcome."""
    compute = Recorder()
    batcher = PeerMapBatcher(compute)
    reads = [batcher.read(f"n{i}", i % 7) for i in range(100)]
    got = await asyncio.gather(*reads)
    assert len(compute.batches) == 1
    assert got == [None if i % 7 >= 5 else f"map:n{i}:{i % 7}" for i in range(100)]


@pytest.mark.asyncio
async def test_the_first_slice_is_answered_before_the_last_is_computed() -> None:
    """Slices settle as they come: a request of the first slice returns while compute is still
    working on later ones."""
    order: list[str] = []
    release = asyncio.Event()

    async def compute(requests: Sequence[Request]) -> AsyncGenerator[list[object], None]:
        yield ["first"]
        order.append("first slice yielded")
        await release.wait()
        yield ["second"] * (len(requests) - 1)

    batcher = PeerMapBatcher(compute)
    first = asyncio.create_task(batcher.read("a", 0))
    rest = asyncio.create_task(batcher.read("b", 0))
    assert await first == "first"
    assert not rest.done()
    release.set()
    assert await rest == "second"
    assert order == ["first slice yielded"]


@pytest.mark.asyncio
async def test_a_revoked_node_in_a_batch_gets_unauthorized_and_the_others_their_maps() -> None:
    """An exception outcome is raised in that request only."""
    batcher = PeerMapBatcher(Recorder())
    results = await asyncio.gather(
        batcher.read("a", 0), batcher.read("revoked-b", 0), return_exceptions=True
    )
    assert results[0] == "map:a:0"
    assert isinstance(results[1], Unauthorized)


@pytest.mark.asyncio
async def test_reads_arriving_during_a_pass_form_the_next_batch() -> None:
    """A read queued while a pass runs is answered by a second pass, not lost."""
    compute = Recorder()
    batcher = PeerMapBatcher(compute)
    first = asyncio.create_task(batcher.read("a", 0))
    await asyncio.sleep(0.005)  # the first pass is inside compute
    second = await batcher.read("b", 1)
    assert await first == "map:a:0"
    assert second == "map:b:1"
    assert compute.batches == [[("a", 0)], [("b", 1)]]


@pytest.mark.asyncio
async def test_a_failing_pass_fails_every_read_of_it_and_the_next_pass_still_runs() -> None:
    """compute raising: each read of that batch raises it; later reads are served."""
    calls = 0

    async def compute(requests: Sequence[Request]) -> AsyncGenerator[list[object], None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("store down")
        yield ["ok"] * len(requests)

    batcher = PeerMapBatcher(compute)
    results = await asyncio.gather(
        batcher.read("a", 0), batcher.read("b", 0), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.read("c", 0) == "ok"


@pytest.mark.asyncio
async def test_a_compute_that_answers_too_few_fails_the_rest_instead_of_hanging() -> None:
    """A slice stream shorter than the batch: the unanswered requests raise, none waits."""

    async def compute(requests: Sequence[Request]) -> AsyncGenerator[list[object], None]:
        yield ["only one"]

    batcher = PeerMapBatcher(compute)
    results = await asyncio.gather(
        batcher.read("a", 0), batcher.read("b", 0), return_exceptions=True
    )
    assert results[0] == "only one"
    assert isinstance(results[1], RuntimeError)


@pytest.mark.asyncio
async def test_a_cancelled_read_is_left_out_and_does_not_break_the_batch() -> None:
    """A request that went away before its pass ran is skipped; the others are answered."""
    compute = Recorder()
    batcher = PeerMapBatcher(compute)
    gone = asyncio.create_task(batcher.read("gone", 0))
    kept = asyncio.create_task(batcher.read("kept", 0))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == "map:kept:0"
    assert compute.batches == [[("kept", 0)]]
