"""Agentic RL on GRPO: prompts that offer their own tools and carry `gt`, as upstream MiniMind's `train_agent.py`
trains on `agent_rl.jsonl`, here through TRL's tool loop.

Each record offers tools: those its system turn declares (agent layout, `data_process.agent_records`), or the
calculator (the calculator layout, `prompt` and `answer`). Every offered tool must be in the registry
(`recipes.training.tool_registry`); a record naming one that is not stops the run at load time, naming the tool and
the record's `file:line`, unless `--skip_unknown_tools` leaves such records out and counts them. Records offering
the same tools share one TRL environment; each training row names its environment and keeps its declared schemas
as JSON text in `tools`, which the `valid_calls` reward checks calls against.

Held-out numbers, before and after, from the greedy tool loop on agent records: `agent_call_rate` (questions whose
trajectory calls a tool), `agent_valid_call_rate` (questions that call and whose every call is valid: declared
name, JSON object arguments, required fields, declared types), `agent_gt_hit_rate` (questions whose final answer
states every `gt` value) and `agent_turns` (assistant turns per answer), each per question so it gets an interval.
"""

import json
import logging

from data_process.tool_schema import function_of, schemas_by_name
from data_process.tools import CALCULATOR_TOOL
from data_process.trajectories import assistant_turns, count_calls, gt_hits
from recipes.training.intervals import ITEMS
from recipes.training.tool_registry import bind_tools, check_tool_name, tool_environments, toolset_key
from recipes.training.tool_use import tool_loop_transcripts

logger = logging.getLogger(__name__)


def is_agent(record: dict) -> bool:
    """Whether a read RL record came from the agent layout (it carries `gt`)."""
    return "gt" in record


def offered_tools(record: dict) -> list[dict]:
    """The tool schemas a record offers the policy: its declared ones, or the calculator for a calculator record."""
    return record["tools"] if is_agent(record) else [CALCULATOR_TOOL]


def usable_records(located: list[tuple[str, dict]], registry: dict, skip_unknown: bool) -> tuple[list[dict], int]:
    """The records whose offered tools are all in `registry`, and how many were left out (only with
    `skip_unknown`; otherwise the first unknown tool raises, naming the tool and the record)."""
    kept, skipped = [], 0
    for where, record in located:
        names = [function_of(schema)["name"] for schema in offered_tools(record)]
        for name in names:
            try:
                check_tool_name(name)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        missing = [name for name in names if name not in registry]
        if missing and not skip_unknown:
            raise ValueError(
                f"{where}: declares the tool {missing[0]!r}, which is not in the registry ({', '.join(registry)}): "
                "add it with --tools_module pkg.mod, or pass --skip_unknown_tools true to leave such records out"
            )
        if missing:
            skipped += 1
        else:
            kept.append(record)
    if skipped:
        logger.warning(f"--skip_unknown_tools: left out {skipped} records that declare tools not in the registry")
    if not kept:
        raise ValueError("no record left whose tools are all in the registry")
    return kept, skipped


def agent_rows(records: list[dict], registry: dict, timeout: float) -> tuple[list[dict], dict[str, type]]:
    """The training rows (each with its `environment` and its schemas as JSON text in `tools`) and TRL's
    `environment_factory` dict, one environment per distinct tool set."""
    names, toolsets, rows = {}, {}, []
    for record in records:
        schemas = offered_tools(record)
        key = toolset_key(schemas)
        if key not in names:
            names[key] = f"toolset{len(names)}"
            toolsets[names[key]] = schemas
        rows.append({**record, "tools": json.dumps(schemas, ensure_ascii=False), "environment": names[key]})
    return rows, tool_environments(toolsets, registry, timeout)


def agent_dataset(
    located: list[tuple[str, dict]], registry: dict, timeout: float, skip_unknown: bool, reward_funcs: list[str]
) -> tuple[list[dict], dict[str, type], dict]:
    """The training rows and environments of `agent_rows` for records read with their `file:line`, and what the
    stage's result reports: agent records read, records left out, and the tools of each tool set."""
    if "accuracy" in reward_funcs:
        where = next(where for where, record in located if is_agent(record))
        raise ValueError(
            f"--reward_funcs accuracy reads `answer`, which agent records such as {where} do not have: use gt "
            "(it reads `answer` where a record has no gt), e.g. --reward_funcs gt valid_calls unfinished"
        )
    records, skipped = usable_records(located, registry, skip_unknown)
    rows, environments = agent_rows(records, registry, timeout)
    toolsets = {row["environment"]: sorted(schemas_by_name(row["tools"])) for row in rows}
    info = {"agent_records": sum(1 for r in records if is_agent(r)), "skipped_records": skipped, "toolsets": toolsets}
    return rows, environments, info


def split_tool_probes(
    located: list[tuple[str, dict]], registry: dict, skip_unknown: bool
) -> tuple[list[dict], list[dict]]:
    """Held-out tool questions as calculator questions (they need `answer`) and agent records (their tools must be
    in the registry, as for training)."""
    for where, probe in located:
        if not is_agent(probe) and "answer" not in probe:
            raise ValueError(f"{where}: tool questions need `answer` (calculator) or `gt` (agent layout)")
    agents = [(where, probe) for where, probe in located if is_agent(probe)]
    if agents:
        agents, _ = usable_records(agents, registry, skip_unknown)
    return [probe for _, probe in located if not is_agent(probe)], agents


def agent_metrics(transcripts: list[list[dict]], records: list[dict], num_samples: int = 3) -> dict:
    """The held-out agent numbers of greedy trajectories (see the module docstring) with per-question items."""
    if not transcripts or len(transcripts) != len(records):
        raise ValueError(f"agent_metrics needs one record per transcript, got {len(transcripts)} and {len(records)}")
    called, valid, hit, turns = [], [], [], []
    for transcript, record in zip(transcripts, records):
        good, bad = count_calls(transcript, schemas_by_name(record["tools"]))
        called.append(int(good + bad > 0))
        valid.append(int(good > 0 and bad == 0))
        hit.append(int(all(gt_hits(transcript, record["gt"]))))
        turns.append(float(len(assistant_turns(transcript))))
    items = {"agent_call_rate": called, "agent_valid_call_rate": valid, "agent_gt_hit_rate": hit, "agent_turns": turns}
    metrics = {name: round(sum(values) / len(values), 4) for name, values in items.items()}
    metrics["agent_samples"] = [
        {"gt": r["gt"], "transcript": t} for t, r in list(zip(transcripts, records))[:num_samples]
    ]
    return metrics | {ITEMS: items}


def heldout_agent_metrics(
    model,
    tokenizer,
    records: list[dict],
    registry: dict,
    timeout: float,
    max_new_tokens: int = 64,
    max_iterations: int = 2,
) -> dict:
    """Agent numbers on held-out agent records, each answered greedily with the tools it declares."""
    toolsets = [bind_tools(r["tools"], registry, timeout) for r in records]
    conversations = [r["prompt"] for r in records]
    transcripts = tool_loop_transcripts(model, tokenizer, conversations, toolsets, max_new_tokens, max_iterations)
    return agent_metrics(transcripts, records)
