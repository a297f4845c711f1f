"""Declaring a tool once: the :class:`Tool` base class and the :func:`tool` decorator.

A tool is a function the model may call (OpenAI Chat Completions, "Function calling":
the request's ``tools`` array, the reply's ``tool_calls``). Declared once, it gives
both what the model is offered (:meth:`Tool.openai_schema`) and what the runner calls
(:meth:`Tool.run`, see :mod:`mpai.tools.execution`)::

    from mpai.tools import tool

    @tool(permission="billing.view_invoice", timeout=2.0)
    def list_invoices(user, year: int, status: Literal["paid", "open"] | None = None):
        '''The signed-in user's invoices of one year, newest first.'''
        return {"invoices": [...]}

The first parameter is always the signed-in user, passed by the runner: it is never
in the schema, so the model cannot choose whose data a tool reads. The JSON Schema of
the other parameters (JSON Schema draft 2020-12) is derived from the signature:

===============================  =======================================================
annotation                       schema
===============================  =======================================================
``str``                          ``{"type": "string"}``
``int`` / ``float`` / ``bool``   ``"integer"`` / ``"number"`` / ``"boolean"``
``list[X]``                      ``{"type": "array", "items": <X>}``
``dict`` / ``dict[str, X]``      ``{"type": "object"}``
``Literal["a", "b"]``            ``{"type": "string", "enum": ["a", "b"]}``
``X | None`` / ``Optional[X]``   ``<X>`` with ``"null"`` also allowed
``Annotated[X, "text", {...}]``  ``<X>`` with ``description`` "text", the dict merged in
===============================  =======================================================

A parameter with a default is not required (its default, when JSON, is given as the
schema's ``default``); every other one is. ``additionalProperties`` is false. Each
parameter's ``description`` comes from ``Annotated`` text, else from the docstring's
``Args:`` section (``name: text`` lines); the tool's description is the docstring's
first paragraph. Pass ``parameters=`` to give the schema yourself.
"""

from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, overload

__all__ = ["FunctionTool", "Permission", "Tool", "ToolError", "tool"]

#: Who may use a tool: None (everyone), a Django permission string "app_label.codename"
#: (``user.has_perm``), or a callable(user) -> bool.
Permission = str | Callable[[Any], bool] | None

#: A function name OpenAI accepts: letters, digits, underscores and dashes, at most 64
#: (OpenAI API reference, Chat Completions, ``tools[].function.name``).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ToolError(Exception):
    """Raised by a tool for an error the model should see and can act on.

    The runner turns it into ``{"error": {"code": code, "message": message}}`` as the
    tool message's content; any other exception gives code ``tool_error`` and only
    its class name (the traceback is logged, never shown to the model).

    Attributes:
        code: short snake_case code, e.g. ``"not_found"``.
        message: one sentence for the model.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Tool:
    """A function the model may call, described by a JSON Schema.

    Subclass it and set the class attributes (or pass them to ``__init__``), then
    implement :meth:`run`. Left as None, ``parameters`` is derived from ``run``'s
    signature after ``self`` and ``user``, and ``description`` from the class docstring
    (see the module docstring).

    Attributes:
        name: the function name the model calls (``[A-Za-z0-9_-]{1,64}``).
        description: what it does and when to use it, for the model.
        parameters: JSON Schema (draft 2020-12) of the arguments object.
        permission: who may use it (:data:`Permission`); None = everyone.
        timeout_s: seconds one call may take; None = ``MPAI["TOOL_TIMEOUT_SECONDS"]``.

    Raises:
        TypeError: a schema cannot be derived (an unsupported or missing annotation,
            ``*args``), or no name, or a name OpenAI does not accept.
        ValueError: no description, or a schema property named ``user``.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any]  # a subclass may set it; else derived from run()
    permission: Permission = None
    timeout_s: float | None = None

    def __init__(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        permission: Permission = None,
        timeout_s: float | None = None,
    ) -> None:
        target = self._target()
        self.name = str(name or self.name or self._default_name())
        if not self.name:
            raise TypeError(f"{type(self).__name__} needs a name.")
        if not NAME_PATTERN.match(self.name):
            raise TypeError(f"Tool name {self.name!r} is not [A-Za-z0-9_-]{{1,64}}.")
        doc = self._doc()
        self.description = description or self.description or _first_paragraph(doc)
        if not self.description:
            raise ValueError(f"Tool {self.name!r} needs a description or a docstring.")
        schema = parameters if parameters is not None else getattr(self, "parameters", None)
        if schema is None:
            schema = schema_from_signature(target, _arg_descriptions(doc))
        if "user" in schema.get("properties", {}):
            raise ValueError(f"Tool {self.name!r}: 'user' is passed by the runner, not the model.")
        self.parameters = schema
        self.permission = permission if permission is not None else self.permission
        self.timeout_s = timeout_s if timeout_s is not None else self.timeout_s

    def _target(self) -> Callable[..., Any]:
        """The callable whose signature describes the arguments (after ``user``)."""
        return self.run

    def _default_name(self) -> str:
        """The name when none is set: none for a subclass (it must set ``name``)."""
        return ""

    def _doc(self) -> str | None:
        """The docstring describing the tool: the subclass's own."""
        return type(self).__dict__.get("__doc__")

    def run(self, user: Any, **arguments: Any) -> Any:
        """Do the work for ``user`` and return a JSON-serialisable result.

        ``arguments`` have been validated against :attr:`parameters`. Raise
        :class:`ToolError` for an error the model should see.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run().")

    def is_allowed(self, user: Any) -> bool:
        """Whether ``user`` may use this tool (see :data:`Permission`).

        A permission string is checked with ``user.has_perm``; a callable's answer is
        taken as a bool. Exceptions propagate.
        """
        if self.permission is None:
            return True
        if isinstance(self.permission, str):
            return bool(user is not None and user.has_perm(self.permission))
        return bool(self.permission(user))

    def openai_schema(self) -> dict[str, Any]:
        """The entry of the Chat Completions request's ``tools`` array (a new dict)::

        {"type": "function",
         "function": {"name": ..., "description": ..., "parameters": {...}}}
        """
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionTool(Tool):
    """A :class:`Tool` over a plain function ``fn(user, **arguments)`` (see :func:`tool`).

    Calling the tool calls the function, so a decorated function still works as one.
    """

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        super().__init__(**options)
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.__wrapped__ = fn

    def _target(self) -> Callable[..., Any]:
        return self.fn

    def _default_name(self) -> str:
        return str(getattr(self.fn, "__name__", ""))

    def _doc(self) -> str | None:
        return inspect.getdoc(self.fn)

    def run(self, user: Any, **arguments: Any) -> Any:
        return self.fn(user, **arguments)

    def __call__(self, user: Any, **arguments: Any) -> Any:
        return self.fn(user, **arguments)


if TYPE_CHECKING:  # the two ways to use it, for type checkers

    @overload
    def tool(fn: Callable[..., Any], /) -> FunctionTool: ...
    @overload
    def tool(
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        permission: Permission = None,
        timeout: float | None = None,
    ) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    permission: Permission = None,
    timeout: float | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make ``fn(user, **arguments)`` a :class:`FunctionTool`; used bare or with options.

    Args:
        name: the function name for the model; default ``fn.__name__``.
        description: default the docstring's first paragraph.
        parameters: JSON Schema of the arguments; default derived from the signature.
        permission: who may use it (:data:`Permission`).
        timeout: seconds one call may take (default ``MPAI["TOOL_TIMEOUT_SECONDS"]``).

    Raises:
        TypeError, ValueError: as :class:`Tool`.
    """

    def build(function: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            function,
            name=name,
            description=description,
            parameters=parameters,
            permission=permission,
            timeout_s=timeout,
        )

    return build(fn) if fn is not None else build


def schema_from_signature(
    fn: Callable[..., Any], descriptions: dict[str, str] | None = None
) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``fn``'s parameters after the user.

    The first parameter (``user``; for a bound method, the one after ``self``) is left
    out. ``descriptions`` maps parameter names to their ``description``.

    Returns:
        ``{"type": "object", "properties": {...}, "required": [...],
        "additionalProperties": False}`` (``required`` in signature order).

    Raises:
        TypeError: ``*args``/``**kwargs``, a parameter without annotation, or an
            annotation this module cannot express (see the module docstring).
    """
    descriptions = descriptions or {}
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())[1:]
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            stars = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise TypeError(f"{fn.__qualname__}: {stars}{param.name} needs parameters=.")
        if param.name not in hints:
            raise TypeError(f"{fn.__qualname__}: parameter {param.name!r} needs an annotation.")
        try:
            prop = annotation_schema(hints[param.name])
        except TypeError as exc:
            raise TypeError(f"{fn.__qualname__}: parameter {param.name!r}: {exc}") from None
        if param.name in descriptions and "description" not in prop:
            prop = {"description": descriptions[param.name], **prop}
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is None or isinstance(param.default, str | int | float | bool):
            prop["default"] = param.default
        properties[param.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def annotation_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one type annotation (the table in the module docstring).

    Raises:
        TypeError: an annotation it cannot express.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if origin is typing.Annotated:
        schema = annotation_schema(args[0])
        for meta in args[1:]:
            if isinstance(meta, str):
                schema["description"] = meta
            elif isinstance(meta, dict):
                schema.update(meta)
        return schema
    if annotation is list or origin is list:
        return {"type": "array", "items": annotation_schema(args[0])} if args else {"type": "array"}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    if origin is Literal:
        kinds = {_SIMPLE.get(type(value)) for value in args}
        if None in kinds:
            raise TypeError(f"Literal values must be str, int, float or bool: {args!r}")
        enum: dict[str, Any] = {"enum": list(args)}
        return {"type": kinds.pop(), **enum} if len(kinds) == 1 else enum
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in args if arg is not type(None)]
        if len(members) != len(args) - 1 or len(members) != 1:
            raise TypeError(f"only X | None unions can be described, not {annotation!r}")
        return _nullable(annotation_schema(members[0]))
    raise TypeError(f"cannot describe {annotation!r} in JSON Schema; pass parameters=")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with JSON ``null`` also allowed."""
    if "enum" in schema:
        schema = {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, its lines joined by spaces."""
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _arg_descriptions(doc: str | None) -> dict[str, str]:
    """``name -> text`` from a Google-style ``Args:`` section (continuation lines joined)."""
    found: dict[str, str] = {}
    if not doc:
        return found
    lines = inspect.cleandoc(doc).splitlines()
    inside, indent, current = False, 0, ""
    for line in lines:
        if _ARGS_HEADER.match(line.strip()) and not line.startswith(" "):
            inside, indent, current = True, -1, ""
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break
        match = _ARG_LINE.match(line.strip())
        if match and (indent < 0 or depth <= indent):
            indent, current = depth, match.group(1).lstrip("*")
            found[current] = match.group(2).strip()
        elif current:
            found[current] = f"{found[current]} {line.strip()}".strip()
    return found
