"""Multi-turn tool environments: the call format, tools from typed functions, the episode
base class, the built-in tools and environments (envs/README.md, "Tool environments")."""

from envs.tools.base import Episode, ToolEnvConfig, ToolEnvironment, Turn, describe_tools
from envs.tools.builtin import calculator, lookup_tool, python_tool
from envs.tools.calls import (
    CLOSE,
    OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    CallError,
    ToolCall,
    cut_after_call,
    find_call,
    format_call,
    observation,
)
from envs.tools.tool import InvalidArguments, Tool, ToolError, tool

__all__ = [
    "CLOSE",
    "OPEN",
    "RESPONSE_CLOSE",
    "RESPONSE_OPEN",
    "CallError",
    "Episode",
    "InvalidArguments",
    "Tool",
    "ToolCall",
    "ToolEnvConfig",
    "ToolEnvironment",
    "ToolError",
    "Turn",
    "calculator",
    "cut_after_call",
    "describe_tools",
    "find_call",
    "format_call",
    "lookup_tool",
    "observation",
    "python_tool",
    "tool",
]
