"""A README.md model card written from what a model folder holds, and the push of the folder to the Hub.

    python -m modeling_miniminds.export.convert push runs/sft you/minimind-sft
    python -m modeling_miniminds.export.convert to-gguf runs/sft out/sft.gguf --modelfile --push_to_hub you/minimind-sft-gguf

The card lists the architecture and sizes from `config.json`, the parameter count from the safetensors headers (no
weights loaded), the data and the stages run with their metrics when a `report.json` (from `recipes.demo`, in the
folder or the one above) or an `all_results.json` (from any recipe) is found, and how to load the model. Every
recipe also writes it as the README.md of its output folder, naming its stage, data and steps.
"""

import json
import math
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData
from safetensors import safe_open

CARD = "README.md"
# Trainer checkpoints and hidden files stay local; the folder's own README is replaced by the generated card.
IGNORE = ["checkpoint-*/", ".*", CARD]
# `card_data` is the YAML front matter ModelCardData writes; the rest is filled from the folder's files.
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A small language model trained with MiniMinds (HuggingFace-native MiniMind training){{ converted }}.

| field | value |
| --- | --- |
{% for field, value in rows -%}
| {{ field }} | {{ value }} |
{% endfor %}
## Data

{{ data }}

## Training

{{ training }}
## Use

{{ usage }}

"""


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's `*.safetensors` (tied weights once), read from the headers."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is no dict)
                total += math.prod(weights.get_slice(key).get_shape())
    return total


def human(count: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{' ' if unit else ''}{suffix}{unit}"
    return f"{count:.0f}{' ' if unit else ''}{unit}"


def format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def find_report(folder: Path) -> dict:
    """`report.json` in the folder or its parent (the demo writes it above the stage folders), else {}."""
    for candidate in (folder / "report.json", folder.parent / "report.json"):
        if candidate.is_file():
            return read_json(candidate)
    return {}


def describe_data(report: dict) -> str:
    corpus = report.get("stages", {}).get("corpus")
    if not corpus:
        return "Not recorded next to the weights; pass `--data` to describe it."
    records = corpus.get("records", {})
    counts = ", ".join(f"{kind} {count}" for kind, count in records.items()) if isinstance(records, dict) else records
    return f"The MiniMinds built-in synthetic corpus (`data_process.synth`, size `{corpus.get('size')}`): {counts} records."


def architecture_rows(config: dict, parameters: int | None) -> list[tuple[str, str]]:
    architecture = (config.get("architectures") or ["?"])[0]
    rows = [("architecture", f"`{architecture}` (model_type `{config.get('model_type')}`)")]
    if parameters is not None:
        rows.append(("parameters", f"{human(parameters)} ({parameters:,})"))
    rows += [
        ("hidden size / layers", f"{config.get('hidden_size')} / {config.get('num_hidden_layers')}"),
        (
            "attention / kv heads / head dim",
            f"{config.get('num_attention_heads')} / {config.get('num_key_value_heads')} / {config.get('head_dim')}",
        ),
        ("intermediate size", str(config.get("intermediate_size"))),
    ]
    if config.get("use_moe") or config.get("model_type") == "qwen3_moe":  # dense MiniMind configs keep num_experts
        shared = config.get("n_shared_experts") or 0
        experts = f"{config.get('num_experts')} routed, top-{config.get('num_experts_per_tok')}"
        rows.append(("experts", experts + (f", {shared} shared" if shared else "")))
    rope = config.get("rope_parameters") or {}
    rows += [
        ("vocabulary", str(config.get("vocab_size"))),
        (
            "max positions",
            f"{config.get('max_position_embeddings')} (rope theta {format_value(rope.get('rope_theta'))})",
        ),
        ("tied embeddings", "yes" if config.get("tie_word_embeddings") else "no"),
    ]
    return rows


def run_lines(stage: str | None, base_model: str | None, steps: int | None) -> list[str]:
    """One sentence on the run that saved the weights, when a recipe wrote the card."""
    if stage is None:
        return []
    start = f" from `{base_model}`" if base_model else " from scratch" if stage == "pretrain" else ""
    counted = f" for {steps} optimizer steps" if steps is not None else ""
    return [f"Trained by the MiniMinds `{stage}` stage (`recipes/{stage}.py`){start}{counted}.", ""]


def training_lines(report: dict, results: dict, run: list[str] = ()) -> list[str]:
    lines = list(run)
    stages = {name: stage for name, stage in report.get("stages", {}).items() if isinstance(stage, dict)}
    if stages:
        lines += [
            "Stages run (from `report.json`), with held-out metrics after each:",
            "",
            "| stage | seconds | metrics |",
            "| --- | ---: | --- |",
        ]
        for name, stage in stages.items():
            metrics = stage.get("after") or {k: v for k, v in stage.items() if not isinstance(v, (dict, list))}
            shown = ", ".join(f"{k} {format_value(v)}" for k, v in metrics.items() if k != "seconds")
            lines.append(f"| {name} | {stage.get('seconds', '')} | {shown} |")
        lines.append("")
    if results:
        lines += [
            "Final metrics of the run that saved these weights (`all_results.json`; `eval_*` on held-out data):",
            "",
        ]
        lines += [f"- {key}: {format_value(value)}" for key, value in results.items()]
        lines.append("")
    return lines or [
        "No `report.json` or `all_results.json` was found next to the weights, so no metrics are listed.",
        "",
    ]


def reward_usage_lines(repo_id: str) -> list[str]:
    """A reward model scores a whole conversation: the score of its last token."""
    return [
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]',
        'inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)',
        "print(model(**inputs).logits[0, 0].item())  # the reward: higher is preferred",
        "```",
    ]


def usage_lines(repo_id: str, config: dict, gguf_files: list[Path]) -> list[str]:
    if gguf_files:
        gguf, name = gguf_files[0].name, repo_id.split("/")[-1]
        return [
            "```bash",
            f"hf download {repo_id} --local-dir {name} && cd {name}",
            f"ollama create {name.lower()} -f Modelfile && ollama run {name.lower()}",
            f"llama-cli -m {gguf} -cnv   # or llama.cpp directly",
            "```",
        ]
    remote = "auto_map" in config
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture.endswith("ForSequenceClassification"):
        return reward_usage_lines(repo_id)
    note = ["", f"`{architecture}` is a transformers class: the model also loads without `trust_remote_code`."]
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": "What is 2+3?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        'reply = model.generate(**inputs, max_new_tokens=64)[0, inputs["input_ids"].shape[1]:]',
        "print(tokenizer.decode(reply, skip_special_tokens=True))",
        "```",
        *(note if not remote else []),
    ]


def model_card(
    folder: Path,
    repo_id: str,
    gguf_files=(),
    data: str | None = None,
    stage: str | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The card for `folder` (a model folder; for a GGUF push, the MiniMind folder it came from). A recipe passes
    its `stage` and the model it started from (the steps come from the folder's `trainer_state.json`); its card
    leaves out a `report.json`, which a previous demo may have left next to the folder."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    report = find_report(folder) if stage is None else {}
    gguf_files = [Path(path) for path in gguf_files]
    rows = architecture_rows(config, count_parameters(folder))
    run = run_lines(stage, base_model, read_json(folder / "trainer_state.json").get("global_step"))
    weights = sorted(folder.glob("*.safetensors"))
    if weights and not gguf_files:
        size = sum(path.stat().st_size for path in weights)
        rows.append(("weights", f"{', '.join(p.name for p in weights)}: {human(size, 'B')} ({config.get('dtype')})"))
    rows += [("gguf", f"{path.name}: {human(path.stat().st_size, 'B')}") for path in gguf_files]
    metadata = ModelCardData(
        library_name="gguf" if gguf_files else "transformers",
        pipeline_tag="text-generation",
        tags=["miniminds", str(config.get("model_type")), *(["gguf"] if gguf_files else [])],
    )
    return ModelCard.from_template(
        metadata,
        template_str=TEMPLATE,
        title=repo_id.split("/")[-1],
        converted=", converted to GGUF for llama.cpp and Ollama" if gguf_files else "",
        rows=rows,
        data=data or describe_data(report),
        training="\n".join(training_lines(report, read_json(folder / "all_results.json"), run)),
        usage="\n".join(usage_lines(repo_id, config, gguf_files)),
    )


def push_to_hub(folder: Path, repo_id: str, card: ModelCard, allow_patterns=None, private: bool = False) -> str:
    """Create (or reuse) the model repository, upload the folder, then the card as README.md; returns the URL. The
    card goes up through the same `HfApi` as the folder (not `ModelCard.push_to_hub`), so one client does the push."""
    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=allow_patterns,
        ignore_patterns=IGNORE,
        commit_message=f"Upload {Path(folder).name} with MiniMinds",
    )
    api.upload_file(
        repo_id=repo_id, path_or_fileobj=str(card).encode("utf-8"), path_in_repo=CARD, commit_message="Add model card"
    )
    return str(url)
