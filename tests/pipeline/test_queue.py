"""The batching queue: batch sizes, the max_wait timer, backpressure, drain on close, reconfigure."""

import asyncio

import pytest

from amplitude_brevo.pipeline.queue import BatchQueue, QueueClosed


async def test_full_batch_is_released_without_waiting():
    q = BatchQueue("s", max_items=3, max_wait=60, capacity=10)
    for i in range(7):
        await q.put(i)
    assert await asyncio.wait_for(q.next_batch(), 1) == [0, 1, 2]
    assert await asyncio.wait_for(q.next_batch(), 1) == [3, 4, 5]


async def test_partial_batch_is_released_after_max_wait():
    q = BatchQueue("s", max_items=100, max_wait=0.05, capacity=1000)
    await q.put("a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(q.next_batch(), 1) == ["a"]
    assert loop.time() - started >= 0.04


async def test_flush_releases_the_partial_batch_at_once_and_only_that_one():
    q = BatchQueue("s", max_items=100, max_wait=60, capacity=1000)
    await q.flush()  # nothing queued: no effect on what comes later
    await q.put("a")
    consumer = asyncio.create_task(q.next_batch())
    await asyncio.sleep(0)
    await q.put("b")
    await q.flush()
    assert await asyncio.wait_for(consumer, 1) == ["a", "b"]
    await q.put("c")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.next_batch(), 0.05)  # the next batch waits to fill again


async def test_items_arriving_during_wait_join_the_batch():
    q = BatchQueue("s", max_items=3, max_wait=5, capacity=10)
    await q.put(1)
    consumer = asyncio.create_task(q.next_batch())
    await asyncio.sleep(0)
    await q.put(2)
    await q.put(3)
    assert await asyncio.wait_for(consumer, 1) == [1, 2, 3]


async def test_producers_block_when_full_and_resume_after_a_batch():
    q = BatchQueue("s", max_items=2, max_wait=0, capacity=2)
    await q.put(1)
    await q.put(2)
    blocked = asyncio.create_task(q.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done(), "put() must wait while the queue is full"
    assert await q.next_batch() == [1, 2]
    await asyncio.wait_for(blocked, 1)
    assert len(q) == 1


async def test_close_drains_then_returns_none_and_refuses_new_items():
    q = BatchQueue("s", max_items=10, max_wait=60, capacity=100)
    await q.put_many(range(3))
    await q.close()
    assert await asyncio.wait_for(q.next_batch(), 1) == [0, 1, 2]
    assert await q.next_batch() is None
    with pytest.raises(QueueClosed):
        await q.put(9)


async def test_close_wakes_a_blocked_producer():
    q = BatchQueue("s", max_items=1, max_wait=0, capacity=1)
    await q.put(1)
    blocked = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    await q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(blocked, 1)


async def test_reconfigure_keeps_queued_items():
    q = BatchQueue("s", max_items=10, max_wait=60, capacity=100)
    await q.put_many(range(5))
    await q.reconfigure(max_items=2, max_wait=0, capacity=3)
    assert await q.next_batch() == [0, 1]
    assert len(q) == 3


async def test_put_many_queues_in_order_and_waits_only_while_full():
    q = BatchQueue("s", max_items=3, max_wait=0, capacity=4)
    producer = asyncio.create_task(q.put_many(range(10)))
    await asyncio.sleep(0.01)
    assert not producer.done(), "put_many() must wait while the queue is full"
    assert len(q) == 4, "it fills the queue up to capacity, no further"
    taken = []
    while len(taken) < 10:
        batch = await asyncio.wait_for(q.next_batch(), 1)
        assert batch and len(batch) <= 3
        assert len(q) <= 4
        taken.extend(batch)
    await asyncio.wait_for(producer, 1)
    assert taken == list(range(10))


async def test_put_many_accepts_any_iterable_and_nothing():
    q = BatchQueue("s", max_items=10, max_wait=0, capacity=100)
    await q.put_many([])
    await q.put_many(x for x in "abc")
    await q.put_many(("d",))
    assert await q.next_batch() == ["a", "b", "c", "d"]


async def test_put_many_on_close_keeps_what_was_queued_and_raises():
    q = BatchQueue("s", max_items=10, max_wait=0, capacity=2)
    producer = asyncio.create_task(q.put_many([1, 2, 3, 4]))
    await asyncio.sleep(0.01)
    await q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(producer, 1)
    assert await q.next_batch() == [1, 2]
    assert await q.next_batch() is None


async def test_put_many_wakes_a_waiting_consumer():
    q = BatchQueue("s", max_items=2, max_wait=5, capacity=10)
    consumer = asyncio.create_task(q.next_batch())
    await asyncio.sleep(0)
    await q.put_many([1, 2, 3])
    assert await asyncio.wait_for(consumer, 1) == [1, 2]


async def test_a_larger_capacity_wakes_a_blocked_producer():
    q = BatchQueue("s", max_items=10, max_wait=60, capacity=1)
    await q.put(1)
    blocked = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    await q.reconfigure(max_items=10, max_wait=60, capacity=5)
    await asyncio.wait_for(blocked, 1)
    assert len(q) == 2


async def test_a_consumer_whose_items_another_took_waits_for_the_next_ones():
    """Two consumers waiting out max_wait on the same partial batch: one gets it, the other keeps waiting
    (no empty batch), and gets the next items or None at close."""
    q = BatchQueue("t", max_items=10, max_wait=0.05, capacity=100)
    await q.put_many([1, 2, 3])
    first = asyncio.create_task(q.next_batch())
    second = asyncio.create_task(q.next_batch())
    done, _ = await asyncio.wait([first, second], timeout=1, return_when=asyncio.FIRST_COMPLETED)
    (winner,) = done
    assert winner.result() == [1, 2, 3]
    other = second if winner is first else first
    await asyncio.sleep(0.15)
    assert not other.done(), "nothing to hand over: still waiting"
    await q.put_many([4])
    assert await asyncio.wait_for(other, 1) == [4]
    third = asyncio.create_task(q.next_batch())
    await q.close()
    assert await asyncio.wait_for(third, 1) is None
