"""Public surface of ``pubsub``: exports, Event/EventType, argument validation, snapshots."""

from __future__ import annotations

import dataclasses
import math

import pytest

import pubsub
from pubsub import Broker, BrokerStats, Event, EventType


def test_all_names_are_exported_and_importable() -> None:
    for name in pubsub.__all__:
        assert hasattr(pubsub, name), name
    expected = {"Broker", "Subscription", "Event", "EventType", "BrokerStats", "dropped"}
    assert expected <= set(pubsub.__all__)


def test_pubsub_does_not_import_messagestore() -> None:
    import ast
    from pathlib import Path

    for path in Path(pubsub.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "messagestore" for n in names), path


def test_event_type_values_are_plain_strings() -> None:
    assert [member.value for member in EventType] == ["created", "updated", "deleted"]
    assert str(EventType.UPDATED) == f"{EventType.UPDATED}" == "updated"


def test_event_is_a_frozen_slotted_generic_dataclass() -> None:
    event = Event[int](EventType.CREATED, 1)
    assert (event.type, event.payload) == (EventType.CREATED, 1)
    assert event == Event(EventType.CREATED, 1)
    assert not hasattr(event, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.payload = 2  # type: ignore[misc]


def test_defaults_are_documented_values() -> None:
    broker: Broker[int] = Broker()
    assert broker.buffer_size == pubsub.DEFAULT_BUFFER_SIZE == 64
    assert broker.must_deliver_timeout == pubsub.DEFAULT_MUST_DELIVER_TIMEOUT == 0.05


def test_generic_subscript_constructs_a_broker() -> None:
    broker = Broker[str](buffer_size=3, must_deliver_timeout=0.5)
    assert (broker.buffer_size, broker.must_deliver_timeout) == (3, 0.5)
    assert "subscribers=0" in repr(broker)


@pytest.mark.parametrize("size", [0, -1, -64])
def test_non_positive_buffer_size_is_a_value_error_naming_it(size: int) -> None:
    with pytest.raises(ValueError, match=rf"buffer_size.*{size}"):
        Broker[int](buffer_size=size)


@pytest.mark.parametrize("size", [1.5, "8", True, None])
def test_non_int_buffer_size_is_a_type_error(size: object) -> None:
    with pytest.raises(TypeError, match="buffer_size"):
        Broker[int](buffer_size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -0.5, math.nan, math.inf])
def test_bad_timeout_is_a_value_error_naming_it(seconds: float) -> None:
    with pytest.raises(ValueError, match=r"must_deliver_timeout.*got"):
        Broker[int](must_deliver_timeout=seconds)


def test_timeout_setter_validates_and_keeps_the_old_value_on_error() -> None:
    broker: Broker[int] = Broker(must_deliver_timeout=0.2)
    broker.must_deliver_timeout = 1
    assert broker.must_deliver_timeout == 1.0
    with pytest.raises(ValueError, match=r"must_deliver_timeout.*-1"):
        broker.must_deliver_timeout = -1
    with pytest.raises(TypeError, match="must_deliver_timeout"):
        broker.must_deliver_timeout = "1"  # type: ignore[assignment]
    assert broker.must_deliver_timeout == 1.0


def test_subscribe_validates_its_buffer_size() -> None:
    broker: Broker[int] = Broker(buffer_size=5)
    with pytest.raises(ValueError, match=r"buffer_size.*0"):
        broker.subscribe(buffer_size=0)
    default, custom = broker.subscribe(), broker.subscribe(buffer_size=2)
    assert (default.buffer_size, custom.buffer_size) == (5, 2)
    assert broker.subscriber_count == 2


def test_key_must_be_callable() -> None:
    with pytest.raises(TypeError, match="key"):
        Broker[int](key=42)  # type: ignore[arg-type]


def test_publish_rejects_an_unknown_event_type_and_accepts_its_string_value() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    with pytest.raises(ValueError, match=r"event_type.*'bogus'"):
        broker.publish("bogus", 1)  # type: ignore[arg-type]
    broker.publish("updated", 2)  # type: ignore[arg-type]
    event = sub.receive_nowait()
    assert event.type is EventType.UPDATED
    assert broker.stats().published == 1


def test_stats_is_a_frozen_snapshot() -> None:
    broker: Broker[int] = Broker(buffer_size=1)
    sub = broker.subscribe()
    before = broker.stats()
    broker.publish(EventType.CREATED, 1)
    broker.publish(EventType.UPDATED, 2)
    after = broker.stats()
    assert before == BrokerStats(1, 0, 0, 0, 0, 0)
    assert after == BrokerStats(
        subscribers=1, published=2, delivered=1, dropped=1, must_deliver_dropped=0, conflated=0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.dropped = 0  # type: ignore[misc]
    assert (broker.drop_count, broker.must_deliver_drop_count) == (1, 0)
    sub.close()
