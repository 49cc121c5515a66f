"""A tool call checked against the OpenAI function schemas a record declares: the name is declared, the arguments
are a JSON object, every required argument is there, no undeclared one is, and each has its declared type (and enum
value). The tool runner answers a call that fails with an error message; rewards and held-out metrics count it as an
invalid call. Only the part of JSON Schema that function arguments use is checked (types, required, enum), the same
for every caller, so "valid" means one thing in training and in evaluation."""

import json

from data_process.records import type_name

JSON_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def function_of(schema: dict) -> dict:
    """The function part of a tool schema: OpenAI's `{"type": "function", "function": {...}}` or the bare function."""
    function = schema.get("function", schema) if isinstance(schema, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"a tool schema needs a function name, got {schema!r}")
    return function


def schemas_by_name(schemas) -> dict[str, dict]:
    """Declared tools by name (each its function part), from a list of schemas or its JSON text."""
    if isinstance(schemas, str):
        schemas = json.loads(schemas)
    return {function_of(schema)["name"]: function_of(schema) for schema in schemas or []}


def has_type(value, name: str) -> bool:
    """Whether `value` is of JSON type `name`; booleans are not numbers, unknown type names accept anything."""
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return name not in JSON_TYPES or isinstance(value, JSON_TYPES[name])


def argument_errors(parameters: dict | None, arguments) -> list[str]:
    """What is wrong with `arguments` for a function whose `parameters` schema is given; empty when they fit."""
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type_name(arguments)}"]
    parameters = parameters or {}
    properties = parameters.get("properties") or {}
    errors = [
        f"missing required argument {name!r}" for name in parameters.get("required") or [] if name not in arguments
    ]
    for name, value in arguments.items():
        if name not in properties:
            errors.append(f"unexpected argument {name!r} (declared: {', '.join(properties) or 'none'})")
            continue
        spec = properties[name] or {}
        types = spec.get("type")
        types = [types] if isinstance(types, str) else types or []
        if types and not any(has_type(value, t) for t in types):
            errors.append(f"argument {name!r} must be {' or '.join(types)}, got {type_name(value)}")
        elif "enum" in spec and value not in spec["enum"]:
            errors.append(f"argument {name!r} must be one of {spec['enum']}, got {value!r}")
    return errors


def call_errors(call: dict, declared: dict[str, dict]) -> list[str]:
    """What is wrong with one parsed call (`{"function": {"name", "arguments"}}`, or upstream's bare `{"name",
    "arguments"}`; arguments as an object or JSON text) against the declared tools; empty for a valid call."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    name = function.get("name") if isinstance(function, dict) else None
    if name not in declared:
        return [f"unknown tool {name!r}; declared: {', '.join(declared) or 'none'}"]
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            return [f"arguments are not JSON: {err.msg}"]
    return argument_errors(declared[name].get("parameters"), arguments)
