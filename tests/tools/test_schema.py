"""Declaring tools: the JSON Schema derived from a signature, and OpenAI's tool shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import jsonschema
import pytest

from mpai.tools import FunctionTool, Tool, tool
from mpai.tools.base import annotation_schema, schema_from_signature


@tool
def every_kind(
    user: Any,
    text: str,
    count: int,
    ratio: float,
    flag: bool,
    tags: list[str],
    mode: Literal["fast", "slow"],
    level: Literal[1, 2, 3] = 1,
    note: str | None = None,
    older: Optional[int] = None,  # noqa: UP045  (the typing spelling is supported too)
    limit: int = 3,
    loud: bool = False,
) -> dict[str, Any]:
    """Exercise every supported annotation.

    This second paragraph is not part of the description.

    Args:
        text: the text to work on,
            continued on a second line.
        count (int): how many times.
    """
    return {}


def test_each_annotation_gives_its_json_schema() -> None:
    properties = every_kind.parameters["properties"]
    assert properties["text"] == {
        "description": "the text to work on, continued on a second line.",
        "type": "string",
    }
    assert properties["count"] == {"description": "how many times.", "type": "integer"}
    assert properties["ratio"] == {"type": "number"}
    assert properties["flag"] == {"type": "boolean"}
    assert properties["tags"] == {"type": "array", "items": {"type": "string"}}
    assert properties["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert properties["level"] == {"type": "integer", "enum": [1, 2, 3], "default": 1}
    assert properties["note"] == {"type": ["string", "null"], "default": None}
    assert properties["older"] == {"type": ["integer", "null"], "default": None}
    assert properties["limit"] == {"type": "integer", "default": 3}
    assert properties["loud"] == {"type": "boolean", "default": False}
    assert "user" not in properties


def test_parameters_without_defaults_are_required_in_signature_order() -> None:
    schema = every_kind.parameters
    assert schema["required"] == ["text", "count", "ratio", "flag", "tags", "mode"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_description_is_the_docstrings_first_paragraph() -> None:
    assert every_kind.description == "Exercise every supported annotation."
    assert every_kind.name == "every_kind"


def test_openai_schema_is_the_chat_completions_tools_entry() -> None:
    @tool(name="lookup-order", description="Look an order up.", timeout=2.5)
    def lookup(user: Any, order: str) -> dict[str, Any]:
        return {"order": order}

    assert lookup.openai_schema() == {
        "type": "function",
        "function": {
            "name": "lookup-order",
            "description": "Look an order up.",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string"}},
                "required": ["order"],
                "additionalProperties": False,
            },
        },
    }
    assert lookup.timeout_s == 2.5
    assert isinstance(lookup, FunctionTool)
    assert lookup(None, order="A1") == {"order": "A1"}  # still callable as the function


def test_explicit_parameters_are_used_as_given() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 10}}}

    @tool(parameters=schema)
    def search(user: Any, **arguments: Any) -> list[str]:
        """Search."""
        return []

    assert search.parameters is schema


def test_annotated_adds_a_description_and_keywords() -> None:
    schema = annotation_schema(Annotated[int, "how many", {"minimum": 1, "maximum": 9}])
    assert schema == {"type": "integer", "description": "how many", "minimum": 1, "maximum": 9}


def test_nullable_literal_and_nested_lists() -> None:
    assert annotation_schema(Literal["a", "b"] | None) == {
        "type": ["string", "null"],
        "enum": ["a", "b", None],
    }
    assert annotation_schema(list[list[int]]) == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}},
    }
    assert annotation_schema(list[int | None]) == {
        "type": "array",
        "items": {"type": ["integer", "null"]},
    }
    assert annotation_schema(Literal["a", 1]) == {"enum": ["a", 1]}
    assert annotation_schema(dict[str, int]) == {"type": "object"}


def test_a_union_of_two_types_needs_anyof_only_for_nullable() -> None:
    assert annotation_schema(list[str] | None) == {
        "type": ["array", "null"],
        "items": {"type": "string"},
    }
    with pytest.raises(TypeError, match="only X \\| None"):
        annotation_schema(int | str)


@pytest.mark.parametrize("annotation", [bytes, set[str], tuple[int, int], object])
def test_an_annotation_without_json_schema_is_refused(annotation: Any) -> None:
    with pytest.raises(TypeError, match="cannot describe"):
        annotation_schema(annotation)


def test_unsupported_signatures_are_refused_when_declared() -> None:
    def unannotated(user, value):
        """No annotation."""

    def star(user: Any, *values: int) -> None:
        """Star args."""

    def bad_type(user: Any, value: bytes) -> None:
        """Bytes."""

    with pytest.raises(TypeError, match="'value' needs an annotation"):
        tool(unannotated)
    with pytest.raises(TypeError, match=r"\*values needs parameters="):
        tool(star)
    with pytest.raises(TypeError, match="parameter 'value': cannot describe"):
        tool(bad_type)


def test_a_tool_needs_a_description_a_valid_name_and_no_user_property() -> None:
    def undocumented(user: Any) -> None:
        pass

    with pytest.raises(ValueError, match="needs a description"):
        tool(undocumented)
    with pytest.raises(TypeError, match="is not"):
        tool(name="has space", description="x")(undocumented)
    with pytest.raises(TypeError, match="is not"):
        tool(name="x" * 65, description="x")(undocumented)
    with pytest.raises(ValueError, match="'user' is passed by the runner"):
        tool(
            description="x",
            parameters={"type": "object", "properties": {"user": {"type": "string"}}},
        )(undocumented)


class Weather(Tool):
    """Today's weather in a city.

    Args:
        city: the city's English name.
    """

    name = "weather"
    permission = "weather.view_forecast"
    timeout_s = 1.0

    def run(self, user: Any, city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:  # type: ignore[override]
        return {"city": city, "unit": unit}


def test_a_tool_subclass_derives_its_schema_from_run_and_its_class_docstring() -> None:
    weather = Weather()
    assert weather.description == "Today's weather in a city."
    assert weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"description": "the city's English name.", "type": "string"},
            "unit": {"type": "string", "enum": ["C", "F"], "default": "C"},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert (weather.permission, weather.timeout_s) == ("weather.view_forecast", 1.0)
    assert Weather(name="weather2", timeout_s=3.0).timeout_s == 3.0


def test_schema_from_signature_skips_the_first_parameter() -> None:
    def fn(account: Any, q: str) -> None:
        """Search."""

    assert schema_from_signature(fn)["properties"] == {"q": {"type": "string"}}


def test_a_subclass_must_name_its_tool() -> None:
    class Nameless(Tool):
        """Has no name."""

        def run(self, user: Any) -> None:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match="Nameless needs a name"):
        Nameless()
    assert Nameless(name="named").name == "named"


def test_openai_schema_is_a_copy_the_caller_may_change() -> None:
    offered = every_kind.openai_schema()
    offered["function"]["parameters"]["properties"].clear()
    assert every_kind.parameters["properties"]
