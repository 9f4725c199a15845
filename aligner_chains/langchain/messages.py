"""Message <-> text helpers: read the text of a message, put corrected text back, build stream chunks."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage

__all__ = [
    "content_text",
    "final_chunk",
    "is_tool_call_only",
    "last_human_text",
    "message_text",
    "piece_chunk",
    "with_text",
]


def _is_text_block(block: Any) -> bool:
    return isinstance(block, str) or (
        isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def content_text(content: Any) -> str:
    """The text of a message content: the string itself, or the text blocks of a block list, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block if isinstance(block, str) else block["text"] for block in content if _is_text_block(block))
    return ""


def message_text(message: BaseMessage) -> str:
    """The text of any message (non-text content blocks are ignored)."""
    return content_text(message.content)


def is_tool_call_only(message: AIMessage) -> bool:
    """True for an assistant turn that only calls tools (no text to correct)."""
    calls = message.tool_calls or message.invalid_tool_calls
    if isinstance(message, AIMessageChunk):
        calls = calls or message.tool_call_chunks
    return bool(calls) and not message_text(message).strip()


def _first_text_index(content: list[Any]) -> int | None:
    return next((i for i, block in enumerate(content) if _is_text_block(block)), None)


def _replace_text_content(content: Any, text: str) -> Any:
    """``content`` with its text replaced by ``text``: non-text blocks keep their place, text blocks merge into one."""
    if isinstance(content, str):
        return text
    first = _first_text_index(content)
    if first is None:
        return [*content, {"type": "text", "text": text}] if text else list(content)
    out: list[Any] = []
    for i, block in enumerate(content):
        if i == first:
            out.append({**block, "text": text} if isinstance(block, dict) else text)
        elif not _is_text_block(block):
            out.append(block)
    return out


def with_text(message: AIMessage, text: str, aligner_meta: dict[str, Any]) -> AIMessage:
    """A copy of ``message`` with corrected text and ``response_metadata["aligner"]``; everything else kept."""
    return message.model_copy(
        update={
            "content": _replace_text_content(message.content, text),
            "response_metadata": {**message.response_metadata, "aligner": aligner_meta},
        }
    )


def piece_chunk(message: AIMessage, piece: str) -> AIMessageChunk:
    """One streamed piece of corrected text for ``message`` (same id; block content stays block content)."""
    if isinstance(message.content, list):
        first = _first_text_index(message.content)
        index = first if first is not None else len(message.content)
        return AIMessageChunk(content=[{"type": "text", "text": piece, "index": index}], id=message.id)
    return AIMessageChunk(content=piece, id=message.id)


def final_chunk(message: AIMessage, aligner_meta: dict[str, Any]) -> AIMessageChunk:
    """The closing chunk of a streamed correction: everything of ``message`` except its text.

    Carries the non-text content blocks, ``response_metadata`` (with ``"aligner"``), ``usage_metadata``,
    ``additional_kwargs``, the name and the tool calls, so that adding up the stream gives the message back.
    """
    if isinstance(message.content, list):
        content: Any = [block for block in message.content if not _is_text_block(block)]
    else:
        content = ""
    calls: dict[str, Any]
    if isinstance(message, AIMessageChunk):
        calls = {"tool_call_chunks": list(message.tool_call_chunks)}
    else:
        calls = {"tool_calls": list(message.tool_calls), "invalid_tool_calls": list(message.invalid_tool_calls)}
    return AIMessageChunk(
        content=content,
        id=message.id,
        name=message.name,
        additional_kwargs=dict(message.additional_kwargs),
        response_metadata={**message.response_metadata, "aligner": aligner_meta},
        usage_metadata=message.usage_metadata,
        chunk_position="last",
        **calls,
    )


def last_human_text(messages: list[BaseMessage]) -> str | None:
    """The text of the last human message of a conversation, or None when there is none."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage) or getattr(message, "type", None) == "human":
            return message_text(message)
    return None
