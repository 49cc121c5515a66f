"""The tools an agentic GRPO run can hand the policy, bound to the schemas its records declare, and TRL's per-record
tool wiring.

The registry maps a tool name to a Python function: the calculator, the deterministic stand-ins of upstream's demo
tools (`data_process.demo_tools`), and the public functions of `--tools_module pkg.mod` that have type hints and a
docstring (a user's function of the same name wins). A record declares which tools it offers and their schemas;
`declared_tool` binds a registry function to the declared schema. The result is what the chat template renders (its
name, signature and docstring are made from the schema, so the prompt shows the tool as the data declares it) and
what the tool loop calls: the arguments are checked against the schema (`data_process.tool_schema`), the function
runs in a worker thread for at most `timeout` seconds, and any failure answers an error message instead of raising.
Nothing the model writes is evaluated as code.

Why environments: TRL 1.16's GRPOTrainer takes either one `tools` list, rendered in every prompt, or an
`environment_factory` dict whose environments each expose their methods as tools, one environment per example
chosen by the example's `environment` column; that example's prompt is rendered, and its reply parsed, with that
environment's tools only. Records declare different tool sets, so each distinct set becomes one environment class
whose static methods are its declared tools (`tool_environments`): every prompt offers exactly the tools its record
declares, not a union of tools the data never offered together. TRL renders a tool from its function, so the prompt
shows what `get_json_schema` reads back: name, description, each argument's type, description and enum, and which
are required; a declared default (still applied) or a nested schema (`items`, inner properties) is not shown.
"""

import importlib
import inspect
import json
import logging
import threading
import typing

from data_process.demo_tools import DEMO_TOOLS
from data_process.tool_schema import argument_errors, function_of
from data_process.tools import calculator, function_schema

logger = logging.getLogger(__name__)

PYTHON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}
MAX_RESULT_CHARS = 2000
RESERVED = ("reset", "get_reward")  # what TRL reads off an environment besides its tools


def module_tools(module_name: str) -> dict[str, typing.Callable]:
    """The public functions defined in `module_name` that TRL can render as tools (type hints and a Google-style
    docstring); the others are skipped with a warning saying why."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--tools_module: cannot import {module_name!r}: {err}") from None
    tools = {}
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or function.__module__ != module.__name__:
            continue
        try:
            function_schema(function)
        except Exception as err:
            logger.warning(
                f"--tools_module {module_name}: {name} is not a tool (needs type hints and a docstring): {err}"
            )
            continue
        tools[name] = function
    if not tools:
        raise ValueError(f"--tools_module {module_name}: no public function with type hints and a docstring")
    return tools


def build_registry(tools_module: str | None = None) -> dict[str, typing.Callable]:
    """Tool name -> function: the calculator, the demo stand-ins, then the functions of `tools_module`."""
    registry = {"calculator": calculator, **DEMO_TOOLS}
    if tools_module:
        own = module_tools(tools_module)
        replaced = sorted(set(own) & set(registry))
        if replaced:
            logger.info(f"--tools_module {tools_module} replaces the built-in {', '.join(replaced)}")
        registry.update(own)
    return registry


def result_text(result) -> str:
    """A tool's return value as the tool message's text, cut to MAX_RESULT_CHARS."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + " ... (cut)"


def run_with_timeout(function, arguments: dict, timeout: float) -> str:
    """`function(**arguments)` as text, in a daemon thread for at most `timeout` seconds; an exception or a
    timeout answers `error: ...`. A thread that overruns is left to finish on its own (Python cannot stop it) and
    its result is dropped."""
    outcome = []

    def target():
        try:
            outcome.append(("ok", function(**arguments)))
        except Exception as err:
            outcome.append(("error", f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)))

    worker = threading.Thread(target=target, daemon=True, name=f"tool-{getattr(function, '__name__', 'tool')}")
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"error: the tool took longer than {timeout:g} s"
    kind, value = outcome[0]
    return result_text(value) if kind == "ok" else f"error: {value}"


def docstring(function: dict) -> str:
    """A Google-style docstring carrying the declared description and each argument's description and enum, which
    transformers' `get_json_schema` reads back when the chat template renders the tool."""
    lines = [function.get("description") or function["name"], "", "Args:"]
    for name, spec in ((function.get("parameters") or {}).get("properties") or {}).items():
        text = (spec or {}).get("description") or name
        if "enum" in (spec or {}):
            text += f" (choices: {json.dumps(spec['enum'], ensure_ascii=False)})"
        lines.append(f"    {name}: {' '.join(text.split())}")
    return "\n".join(lines)


def python_type(spec: dict):
    types = (spec or {}).get("type")
    return PYTHON_TYPES.get(types if isinstance(types, str) else None, typing.Any)


def declared_tool(schema: dict, function, timeout: float):
    """The tool the policy sees and calls: named, typed and documented as `schema` declares it; a call checks its
    arguments against the schema, fills the declared defaults, then runs `function` under `timeout`; every failure
    is an `error: ...` text."""
    declared = function_of(schema)
    parameters = declared.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    defaults = {name: spec["default"] for name, spec in properties.items() if "default" in (spec or {})}

    def tool(**arguments):
        errors = argument_errors(parameters, arguments)
        if errors:
            return f"error: {declared['name']}: {'; '.join(errors)}"
        return run_with_timeout(function, {**defaults, **arguments}, timeout)

    tool.__name__ = tool.__qualname__ = declared["name"]
    tool.__doc__ = docstring(declared)
    tool.__annotations__ = {name: python_type(spec) for name, spec in properties.items()}
    tool.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=python_type(spec),
                default=inspect.Parameter.empty if name in required else None,
            )
            for name, spec in properties.items()
        ]
    )
    return tool


def check_tool_name(name: str) -> None:
    """TRL calls an environment's tools by attribute: a name must be an identifier and not one TRL reserves."""
    if not name.isidentifier() or name.startswith("_") or name in RESERVED:
        raise ValueError(
            f"tool name {name!r} cannot be offered through TRL: it must be a Python identifier, not start with _ and "
            f"not be {' or '.join(RESERVED)}"
        )


def bind_tools(schemas: list[dict], registry: dict, timeout: float) -> dict[str, typing.Callable]:
    """Name -> declared tool for one record's schemas (every name must be in `registry`)."""
    return {function_of(s)["name"]: declared_tool(s, registry[function_of(s)["name"]], timeout) for s in schemas}


def reset(self, **row):
    """Nothing to reset: the tools are stateless, and the prompt is left as the record wrote it."""


def tool_environment(name: str, tools: dict[str, typing.Callable]) -> type:
    """A TRL environment class whose static methods are `tools`."""
    return type(name, (), {"reset": reset, **{key: staticmethod(tool) for key, tool in tools.items()}})


def toolset_key(schemas: list[dict]) -> str:
    """The name of a record's tool set: the same declared schemas, the same environment."""
    return json.dumps(sorted((function_of(s) for s in schemas), key=lambda f: f["name"]), sort_keys=True)


def tool_environments(toolsets: dict[str, list[dict]], registry: dict, timeout: float) -> dict[str, type]:
    """TRL's `environment_factory` dict: for each named tool set, the environment of its tools."""
    return {name: tool_environment(name, bind_tools(schemas, registry, timeout)) for name, schemas in toolsets.items()}
