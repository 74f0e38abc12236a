"""LangChain messages <-> messagestore messages, both ways.

Each ``BaseMessage`` becomes one store message holding the message exactly (a ``Binary`` part
with langchain-core's own ``message_to_dict`` JSON, read back equal) and typed parts that show
it. A store message without exact LangChain parts (other code, the OpenAI adapter, crash
recovery) is read from its typed parts. A message that is not a ``BaseMessage``, or holds
values JSON cannot, raises ``InvalidMessage`` before anything is stored. The mapping of every
message type: docs/MODULES.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypeGuard

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.tool import ToolCall as LCToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

from .. import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Message,
    Part,
    Reasoning,
    Role,
    Text,
    ToolCall,
    ToolResult,
)
from ._json_values import check_json_value

__all__ = [
    "MESSAGE_MIME",
    "CorruptMessage",
    "decode_message",
    "encode_messages",
    "from_typed_parts",
    "is_message_part",
]

MESSAGE_MIME = "application/vnd.langchain.message+json"

_CHAT_ROLES = {
    "user": Role.USER,
    "human": Role.USER,
    "assistant": Role.ASSISTANT,
    "ai": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "tool": Role.TOOL,
    "function": Role.TOOL,
}


class CorruptMessage(ValueError):
    """A stored LangChain message part that does not decode."""


# -- LangChain to the store ----------------------------------------------------------------


def encode_messages(messages: object) -> list[tuple[Role, list[Part]]]:
    """The role and parts of the store message for each LangChain message, all checked first."""
    if isinstance(messages, BaseMessage | str | bytes) or not isinstance(messages, Iterable):
        raise InvalidMessage(
            f"add_messages() takes a sequence of messages, not {type(messages).__name__}"
        )
    encoded: list[tuple[Role, list[Part]]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, BaseMessage):
            raise InvalidMessage(
                f"{where} is a {type(message).__name__}, not a langchain_core BaseMessage"
            )
        as_dict = message_to_dict(message)
        check_json_value(as_dict["data"], f"{where} ({type(message).__name__})")
        data = json.dumps(as_dict, separators=(",", ":"), allow_nan=False).encode()
        role, parts = _typed(message)
        parts.append(Binary(f"{message.type}.json", MESSAGE_MIME, data))
        if role is Role.ASSISTANT:
            calls = any(isinstance(p, ToolCall) for p in parts)
            reason = FinishReason.TOOL_USE if calls else FinishReason.END_TURN
            parts.append(Finish(reason, datetime.now(UTC)))
        encoded.append((role, parts))
    return encoded


def _typed(message: BaseMessage) -> tuple[Role, list[Part]]:
    kind = message.type.removesuffix("Chunk").lower()
    text = message.text
    if kind in ("human", "humanmessage"):
        return Role.USER, [*_text(text), *_images(message.content)]
    if kind in ("system", "systemmessage"):
        return Role.SYSTEM, _text(text)
    if kind in ("ai", "aimessage"):
        return Role.ASSISTANT, [*_reasoning(message.content), *_text(text), *_calls(message)]
    if kind in ("tool", "toolmessage"):
        call_id = str(getattr(message, "tool_call_id", ""))
        is_error = getattr(message, "status", "success") == "error"
        return Role.TOOL, [ToolResult(call_id, message.name or "", text, is_error=is_error)]
    if kind in ("function", "functionmessage"):
        name = message.name or ""
        return Role.TOOL, [ToolResult(name, name, text)]
    if kind in ("chat", "chatmessage"):
        role = _CHAT_ROLES.get(str(getattr(message, "role", "")).lower(), Role.USER)
        return role, _text(text)
    return Role.SYSTEM, []


def _text(text: str) -> list[Part]:
    return [Text(text)] if text else []


def _blocks(content: object) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _images(content: object) -> list[Part]:
    images: list[Part] = []
    for block in _blocks(content):
        url: object = None
        detail: object = ""
        if block.get("type") == "image_url":
            image = block.get("image_url")
            url, detail = (
                (image.get("url"), image.get("detail", ""))
                if isinstance(image, dict)
                else (image, "")
            )
        elif block.get("type") == "image":
            url = block.get("url")
        if isinstance(url, str) and url and not url.startswith("data:"):
            images.append(ImageURL(url, detail if isinstance(detail, str) else ""))
    return images


def _reasoning(content: object) -> list[Part]:
    thinking = [
        block[key]
        for block in _blocks(content)
        for key in ("reasoning", "thinking")
        if block.get("type") == key and isinstance(block.get(key), str)
    ]
    if not thinking:
        return []
    now = datetime.now(UTC)
    return [Reasoning("\n\n".join(thinking), started_at=now, finished_at=now)]


def _calls(message: BaseMessage) -> list[Part]:
    calls: list[Part] = []
    seen: set[str] = set()
    for call in getattr(message, "tool_calls", []):
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            continue
        seen.add(call_id)
        arguments = json.dumps(call.get("args", {}), ensure_ascii=False)
        calls.append(ToolCall(call_id, call.get("name") or "", arguments, finished=True))
    return calls


# -- the store to LangChain ----------------------------------------------------------------


def is_message_part(part: Part) -> TypeGuard[Binary]:
    """True for a part that stores one LangChain message exactly."""
    return isinstance(part, Binary) and part.mime_type == MESSAGE_MIME


def decode_message(part: Binary) -> BaseMessage:
    """The LangChain message stored in ``part``, or ``CorruptMessage``."""
    try:
        return messages_from_dict([json.loads(part.data)])[0]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptMessage(f"{type(exc).__name__}: {exc}") from None


def from_typed_parts(message: Message) -> list[BaseMessage]:
    """LangChain messages for a store message that holds no exact LangChain message."""
    text = message.text
    if message.role is Role.USER:
        return [HumanMessage(text)] if text else []
    if message.role is Role.SYSTEM:
        return [SystemMessage(text)] if text else []
    results: list[BaseMessage] = [
        ToolMessage(
            r.content,
            tool_call_id=r.tool_call_id,
            name=r.name or None,
            status="error" if r.is_error else "success",
        )
        for r in message.tool_results
    ]
    if message.role is Role.TOOL:
        return results
    calls: list[LCToolCall] = []
    invalid = []
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.input) if call.input else {}
        except json.JSONDecodeError:
            arguments = None
        if isinstance(arguments, dict):
            calls.append(tool_call(name=call.name, args=arguments, id=call.id))
        else:
            invalid.append(
                invalid_tool_call(name=call.name, args=call.input, id=call.id, error=None)
            )
    if not text and not calls and not invalid:
        return results
    return [AIMessage(text, tool_calls=calls, invalid_tool_calls=invalid), *results]
