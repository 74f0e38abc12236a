"""The simulated workload shared by the demo and the benchmark (no speed is asserted)."""

from __future__ import annotations

import pytest

from messagestore import Role, open_store
from messagestore._demo import WorkloadConfig, run_workload


async def test_streams_complete_conversations(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:
        result = await run_workload(store, WorkloadConfig(streams=3, duration=0.5, rate=200))
        await store.messages.flush_all()
        assert result.stats.deltas > 0
        assert result.stats.messages_finished >= 3
        for message_id in result.stats.finished_ids:
            assert (await store.messages.get(message_id)).is_finished
        for session_id in result.session_ids:
            messages = await store.messages.list(session_id)
            assert all(m.model == "" for m in messages if m.role is Role.USER)
            assert all(m.is_finished for m in messages if m.role is Role.ASSISTANT)


async def test_a_failing_step_raises_its_own_error(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:

        async def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("database said no")

        store.messages.create = refuse  # type: ignore[method-assign, assignment]
        with pytest.raises(RuntimeError, match="database said no"):
            await run_workload(store, WorkloadConfig(streams=2, duration=0.5))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="streams"):
        WorkloadConfig(streams=0)
    with pytest.raises(ValueError, match="rate"):
        WorkloadConfig(rate=0)
