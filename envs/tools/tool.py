"""Any typed Python function as a tool: a name, a description, a JSON schema of its
parameters, and an async call that validates arguments with pydantic.

    @tool
    def lookup(query: Annotated[str, Field(description="a name")]) -> str:
        '''Find the document about a name.'''

The description is the docstring's first paragraph; a parameter's description comes
from `Annotated[..., Field(description=...)]`. `Tool.schema()` is the function format
of OpenAI and Hugging Face chat templates (`tokenizer.apply_chat_template(messages,
tools=[t.schema() for t in tools])`). Calling a tool returns text: a `str` result as it
is, anything else as JSON. Bad arguments raise `InvalidArguments`; a tool that wants
to report a clean error to the model raises `ToolError`; the episode turns any
exception into an error observation (envs/tools/base.py). A synchronous function runs
on the caller's event loop, so a slow tool should be `async`.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = "arg_"  # model fields are prefixed (and aliased) so that no name shadows BaseModel's


class ToolError(Exception):
    """A tool's failure, with a message meant for the model (shown as `error: <message>`)."""


class InvalidArguments(ToolError):
    """The arguments do not fit the tool's parameters."""


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _parameter_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The parameters' annotations, evaluated (string annotations too) in the function's
    module; the return annotation is not needed, and may name a class defined locally."""
    annotations = {
        p.name: p.annotation for p in signature.parameters.values() if p.annotation is not p.empty
    }
    target = inspect.unwrap(fn)
    module = inspect.getmodule(target)  # for a callable object, its class's module
    module_globals = getattr(target, "__globals__", None) or (vars(module) if module else {})
    holder = types.FunctionType((lambda: None).__code__, module_globals)
    holder.__annotations__ = annotations
    return typing.get_type_hints(holder, include_extras=True)


def _drop_titles(schema: Any, in_properties: bool = False) -> Any:
    """pydantic's generated `title`s are noise in a prompt; a property named title stays."""
    if isinstance(schema, dict):
        return {
            key: _drop_titles(value, key in ("properties", "$defs") and not in_properties)
            for key, value in schema.items()
            if in_properties or not (key == "title" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [_drop_titles(item) for item in schema]
    return schema


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        first, *rest = error["loc"] or ("",)
        where = ".".join([str(first).removeprefix(_PREFIX), *map(str, rest)])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


class Tool:
    """A function the model may call by name with JSON arguments."""

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "")
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {_NAME.pattern}")
        self.description = description if description is not None else _description(fn)
        self._signature = inspect.signature(fn)
        hints = _parameter_hints(fn, self._signature)
        fields: dict[str, Any] = {}
        for param in self._signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args and **kwargs have no schema")
            default = ... if param.default is param.empty else param.default
            annotation = hints.get(param.name, Any)
            fields[_PREFIX + param.name] = (annotation, Field(default, alias=param.name))
        config = ConfigDict(extra="forbid", populate_by_name=False)
        self._arguments = create_model(f"{self.name}_arguments", __config__=config, **fields)
        self.parameters: dict[str, Any] = _drop_titles(self._arguments.model_json_schema())

    def schema(self) -> dict[str, Any]:
        """The tool in the function format that chat templates take (`tools=[...]`)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def __call__(self, arguments: dict[str, Any]) -> str:
        """Validate `arguments`, call the function, and return its result as text."""
        try:
            parsed = self._arguments.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidArguments(f"invalid arguments: {_validation_message(exc)}") from None
        args, kwargs = [], {}
        for param in self._signature.parameters.values():
            value = getattr(parsed, _PREFIX + param.name)
            if param.kind is param.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[param.name] = value
        result = self.fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, str):
            return result
        return json.dumps(to_jsonable_python(result, fallback=str), ensure_ascii=False)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


@typing.overload
def tool(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool: ...
@typing.overload
def tool(
    fn: None = None, *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a typed (sync or async) function a `Tool`: `@tool`, `@tool(name=...)` or `tool(fn)`.

    `name` defaults to the function's name, `description` to its docstring's first paragraph.
    """
    if fn is None:
        return lambda f: Tool(f, name=name, description=description)
    return Tool(fn, name=name, description=description)
