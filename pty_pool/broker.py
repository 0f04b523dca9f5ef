"""The tool-call broker: the caller's tools, served to one claude over MCP, and its parked calls.

Every claude the pool starts gets its own `Channel`, reached by an unguessable token in the URL of
the daemon's MCP endpoint (`daemon.mcp`, which only translates HTTP and JSON-RPC to the methods
here). A request's `tools` become the channel's tool list; claude's `tools/call` is *parked* as a
future until the caller's next request brings the `tool_result`. Pure asyncio: no HTTP, no wire
format beyond MCP's own result dicts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

from claude_relay.protocols.model import (
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
)

log = logging.getLogger(__name__)

# The MCP server name claude sees; its tools reach the model as `mcp__api__<name>`. Short, so
# the caller's names keep as much of the API's 64-character limit as possible.
SERVER_NAME: Final = "api"
TOOL_PREFIX: Final = f"mcp__{SERVER_NAME}__"
LIST_CHANGED: Final = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}

McpResult = dict[str, Any]  # an MCP CallToolResult: {"content": [...], "isError": bool}


def caller_name(name: str) -> str:
    """The caller's tool name for the name claude's upstream request used."""
    return name.removeprefix(TOOL_PREFIX)


def error_result(text: str) -> McpResult:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def mcp_result(block: ToolResultBlock) -> McpResult:
    """A `tool_result` as the MCP result claude turns back into a `tool_result` upstream."""
    content: list[dict[str, Any]] = []
    for part in block.content:
        if isinstance(part, TextBlock):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ImageBlock):
            data = base64.b64encode(part.data).decode("ascii")
            content.append({"type": "image", "data": data, "mimeType": part.media_type})
        elif isinstance(part, DocumentBlock):
            if part.text is not None:
                content.append({"type": "text", "text": part.text})
            else:
                data = base64.b64encode(part.data).decode("ascii")
                resource = {"uri": "file:///document.pdf", "mimeType": part.media_type}
                content.append({"type": "resource", "resource": {**resource, "blob": data}})
    return {"content": content, "isError": block.is_error}


@dataclass
class ParkedCall:
    tool_use_id: str
    name: str  # the caller's name
    arguments: dict[str, Any]
    future: asyncio.Future[McpResult] = field(repr=False)


class Channel:
    """One claude's MCP connection: its tool list, server→client notifications, parked calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.tools: tuple[ToolSpec, ...] = ()
        self._version = 0
        self._listed_version = -1  # the tool-list version claude last fetched
        self._listed = asyncio.Event()
        self._notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._parked: dict[str, ParkedCall] = {}
        self._answers: dict[str, McpResult] = {}  # results that arrived before their call
        self.arrived = asyncio.Event()  # set whenever a call is parked
        # When set, calls are answered at once with this error (tool_choice "none").
        self.refuse: str | None = None
        self.closed = False
        self.calls = 0

    # --- tool list -----------------------------------------------------------------------------
    def set_tools(self, tools: tuple[ToolSpec, ...]) -> bool:
        """Replace the tool list; True when it changed (claude is told to re-list)."""
        if tools == self.tools:
            return False
        self.tools = tools
        self._version += 1
        self._listed.clear()
        self._notes.put_nowait(LIST_CHANGED)
        return True

    def nudge(self) -> None:
        """Tell claude again that the tool list changed (it did not fetch it after the first)."""
        if not self.listed:
            self._notes.put_nowait(LIST_CHANGED)

    def list_tools(self) -> list[dict[str, Any]]:
        self._listed_version = self._version
        self._listed.set()
        return [
            {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
            for t in self.tools
        ]

    @property
    def listed(self) -> bool:
        """Whether claude holds the current tool list."""
        return self._listed_version == self._version

    async def wait_listed(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not self.listed:
                    self._listed.clear()
                    await self._listed.wait()
        return self.listed

    async def notifications(self) -> AsyncIterator[dict[str, Any]]:
        """Server→client messages, for the one open GET stream."""
        while not self.closed:
            yield await self._notes.get()

    # --- calls ---------------------------------------------------------------------------------
    async def call(self, name: str, arguments: dict[str, Any], tool_use_id: str) -> McpResult:
        """claude's tools/call: answered from a result already given, or parked until one is."""
        self.calls += 1
        if self.refuse is not None:
            return error_result(self.refuse)
        if tool_use_id in self._answers:
            return self._answers.pop(tool_use_id)
        if self.closed:
            return error_result("the session has ended")
        future: asyncio.Future[McpResult] = asyncio.get_running_loop().create_future()
        self._parked[tool_use_id] = ParkedCall(tool_use_id, caller_name(name), arguments, future)
        self.arrived.set()
        try:
            return await future
        finally:
            self._parked.pop(tool_use_id, None)

    @property
    def parked(self) -> tuple[ParkedCall, ...]:
        return tuple(self._parked.values())

    def answer(self, tool_use_id: str, result: McpResult) -> None:
        """Answer a parked call, or keep the result for a call claude has not made yet."""
        call = self._parked.get(tool_use_id)
        if call is not None and not call.future.done():
            call.future.set_result(result)
        else:
            self._answers[tool_use_id] = result

    def cancelled(self, tool_use_id: str) -> None:
        """claude gave up on a call (its own timeout, or an interrupt)."""
        call = self._parked.get(tool_use_id)
        if call is not None and not call.future.done():
            call.future.cancel()

    def cancel_all(self, reason: str) -> None:
        """Answer every parked call with an error and forget results not yet asked for."""
        self._answers.clear()
        for call in list(self._parked.values()):
            if not call.future.done():
                call.future.set_result(error_result(reason))


class Broker:
    """All channels by token. `url` is the MCP endpoint's base, set once it listens."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self.url: str | None = None

    def open(self) -> Channel:
        channel = Channel(secrets.token_urlsafe(32))
        self._channels[channel.token] = channel
        return channel

    def get(self, token: str) -> Channel | None:
        return self._channels.get(token)

    def close(self, channel: Channel) -> None:
        self._channels.pop(channel.token, None)
        channel.closed = True
        channel.cancel_all("the claude session has ended")
        channel._notes.put_nowait({})  # wake a GET stream so it can end

    def endpoint(self, channel: Channel) -> str | None:
        return f"{self.url}/{channel.token}" if self.url is not None else None

    def __len__(self) -> int:
        return len(self._channels)
