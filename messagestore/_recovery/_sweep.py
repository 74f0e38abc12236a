"""The recovery sweep: repair what a store that stopped left half-written.

A message whose writer's lease ended was last written by a store that is gone. The sweep (on
open, ``Store.recover()``, and in the background: ``_sweeper``) gives such an assistant message
without a finish ``Finish(INTERRUPTED)`` (reasoning and tool calls marked finished), answers its
unanswered tool calls with error results in one new ``Role.TOOL`` message, and marks it checked.
A live writer's messages, and those this store has buffered, are never touched. One
transaction, idempotent; the SQL is in ``_database._sweep_job``. The story:
docs/ARCHITECTURE.md, "Recovery".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from .._database._repository import Repository
from .._model import (
    Finish,
    FinishReason,
    Message,
    Part,
    Reasoning,
    Role,
    ToolCall,
    ToolResult,
    new_id,
)

__all__ = [
    "INTERRUPTED_MESSAGE",
    "INTERRUPTED_TOOL_RESULT",
    "RecoveryReport",
    "plan_recovery",
    "recover",
]

INTERRUPTED_MESSAGE = "interrupted: the writer stopped before the message finished"
INTERRUPTED_TOOL_RESULT = "interrupted: the writer stopped before the tool returned"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What one recovery sweep did.

    ``messages_interrupted``: assistant messages that got ``Finish(INTERRUPTED)``;
    ``tool_results_added``: error ``ToolResult`` parts added for unanswered tool calls (in
    ``tool_messages_created`` new ``Role.TOOL`` messages); ``messages_checked``: in-progress
    rows of ended writers marked as checked; ``writers_removed``: leases of ended writers
    deleted (once no in-progress message carries their id);
    ``corrupt_message_ids``: rows that could not be decoded (left as they are, reported again
    by the next sweep).
    """

    messages_interrupted: int = 0
    tool_results_added: int = 0
    tool_messages_created: int = 0
    messages_checked: int = 0
    writers_removed: int = 0
    corrupt_message_ids: tuple[str, ...] = ()


def plan_recovery(
    candidates: list[Message], answered: dict[str, set[str]], now: datetime
) -> tuple[list[Message], list[Message]]:
    """Decide the repair of messages left by ended writers: (messages to rewrite, to insert).

    ``answered`` maps each session to the tool-call ids its stored results answer; it is
    extended with the results planned here, so a call id is answered once.
    """
    updated: list[Message] = []
    created: list[Message] = []
    for message in candidates:
        if message.role is Role.ASSISTANT and not message.is_finished:
            _interrupt(message, now)
            updated.append(message)
        answered_here = answered.setdefault(message.session_id, set())
        missing = [call for call in message.tool_calls if call.id not in answered_here]
        if missing:
            answered_here.update(call.id for call in missing)
            results: list[Part] = [
                ToolResult(call.id, call.name, INTERRUPTED_TOOL_RESULT, is_error=True)
                for call in missing
            ]
            created.append(
                Message(
                    new_id(), message.session_id, Role.TOOL, results, created_at=now, updated_at=now
                )
            )
    return updated, created


def _interrupt(message: Message, now: datetime) -> None:
    for index, part in enumerate(message.parts):
        if isinstance(part, Reasoning) and part.finished_at is None:
            started = part.started_at or now
            message.parts[index] = dataclasses.replace(part, started_at=started, finished_at=now)
        elif isinstance(part, ToolCall) and not part.finished:
            message.parts[index] = dataclasses.replace(part, finished=True)
    message.parts.append(Finish(FinishReason.INTERRUPTED, now, INTERRUPTED_MESSAGE))
    message.updated_at = now


async def recover(
    repository: Repository, writer_id: str, *, keep: frozenset[str]
) -> RecoveryReport:
    """Run one sweep. Its changes are announced through the repository's commit hook, in
    revision order with every other change, so a repair can never follow a ``DELETED``."""
    result = await repository.sweep_abandoned(writer_id, keep, plan_recovery)
    return RecoveryReport(
        messages_interrupted=result.repaired,
        tool_results_added=sum(len(m.tool_results) for m in result.created),
        tool_messages_created=len(result.created),
        messages_checked=result.checked,
        writers_removed=result.writers_removed,
        corrupt_message_ids=result.corrupt,
    )
