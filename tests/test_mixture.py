"""Data mixtures: the YAML entries and their `error:` lines, weights realised within sampling error (tokens for
pretraining, conversations for SFT), repeats, the counts in a stage's result, and the same mixture for the same seed."""

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

from data_process.mixture import MixtureSource, mix, read_mixture
from data_process.records import DataError
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training import sft as sft_stage
from recipes.training.cli import RecipeParser
from recipes.training.packed_text import PretrainConfig, PretrainModelArguments, PretrainScriptArguments, load_datasets
from recipes.training.pretraining import pretrain
from recipes.training.report import run_entry
from recipes.training.sft import SFTModelArguments, SFTRecipeConfig, SFTScriptArguments, sft

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
EXISTING = str(REPO / "pyproject.toml")
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]
Z99 = 2.576  # two-sided 99% normal quantile


def write_yaml(path: Path, value) -> Path:
    path.write_text(yaml.safe_dump(value), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_domain_text(path: Path) -> Path:
    """A small second pretraining source, one document a line (.txt): six blocks of 128 tokens."""
    path.write_text("".join(f"Seven times {i} is {7 * i}.\n" for i in range(60)), encoding="utf-8")
    return path


def pretrain_parser():
    return RecipeParser((PretrainScriptArguments, PretrainConfig, PretrainModelArguments))


def sft_parser():
    return RecipeParser((SFTScriptArguments, SFTRecipeConfig, SFTModelArguments))


def test_entries_read_from_a_file_a_trl_section_or_a_recipe_list(tmp_path):
    """A YAML list, TRL's `{datasets: [...]}`, or the list itself (from a recipe file); split defaults to train."""
    entries = [{"path": EXISTING, "weight": 3}, {"path": EXISTING, "weight": 0.5, "split": "dev"}]
    expected = (MixtureSource(EXISTING, 3.0), MixtureSource(EXISTING, 0.5, "dev"))
    listed = write_yaml(tmp_path / "mix.yaml", entries)
    assert read_mixture(listed) == read_mixture(str(listed)) == expected
    assert read_mixture(write_yaml(tmp_path / "trl.yaml", {"datasets": entries})) == expected
    assert read_mixture(entries) == expected
    assert read_mixture(expected) is expected


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"path": EXISTING, "weight": 0}], r"entry 1 \(.*pyproject.toml\): 'weight' must be > 0, got 0"),
        ([{"path": EXISTING, "weight": -2.5}], r"entry 1 \(.*\): 'weight' must be > 0, got -2.5"),
        ([{"path": EXISTING, "weight": "3"}], r"entry 1 \(.*\): 'weight' must be a number, got '3'"),
        ([{"path": EXISTING, "weight": True}], r"entry 1 \(.*\): 'weight' must be a number, got True"),
        (
            [{"path": EXISTING, "weight": 1}, {"path": EXISTING, "wieght": 1}],
            r"entry 2: unknown key 'wieght'; did you mean weight\? \(an entry has path, weight, split\)",
        ),
        ([{"path": EXISTING, "weight": 1, "fraction": 0.5}], r"entry 1: unknown key 'fraction'"),
        ([{"weight": 1}], r"entry 1: missing key 'path'"),
        ([{"path": EXISTING}], r"entry 1: missing key 'weight'"),
        ([EXISTING], r"entry 1: expected a mapping with path, weight, split"),
        ([], r"expected a list of entries"),
        ({"datasets": [{"path": EXISTING, "weight": 1}], "seed": 0}, r"unknown key 'seed'"),
    ],
)
def test_a_bad_entry_names_its_index_and_key(tmp_path, entries, message):
    with pytest.raises(ValueError, match=rf"^--dataset_mixture .*mix\.yaml: {message}"):
        read_mixture(write_yaml(tmp_path / "mix.yaml", entries))


def test_missing_files_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--dataset_mixture .*nowhere\.yaml: no such file"):
        read_mixture(tmp_path / "nowhere.yaml")
    (tmp_path / "general.jsonl").touch()
    typo = write_yaml(tmp_path / "typo.yaml", [{"path": str(tmp_path / "genral.jsonl"), "weight": 1}])
    with pytest.raises(FileNotFoundError, match=r"entry 1 \(.*genral.jsonl\): dataset .*: no such file or folder; did"):
        read_mixture(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("- path: a.jsonl\n  weight: [1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML \(line 3\)"):
        read_mixture(broken)


def test_the_command_line_refuses_both_flags_and_reads_a_mixture_in_the_recipe_file(tmp_path, capsys):
    """--dataset_name beside --dataset_mixture, and a bad entry inside a recipe file, are one `error:` line each."""
    mixture = write_yaml(tmp_path / "mix.yaml", [{"path": EXISTING, "weight": 1}])
    with pytest.raises(SystemExit) as stop:
        pretrain_parser().parse_args_and_config(["--dataset_name", EXISTING, "--dataset_mixture", str(mixture)])
    assert stop.value.code == 2
    assert "error: --dataset_name and --dataset_mixture both given" in capsys.readouterr().err

    recipe = yaml.safe_load((CONFIGS / "sft_tiny.yaml").read_text(encoding="utf-8"))
    recipe["dataset_mixture"] = [{"path": EXISTING, "weight": 2}, {"path": EXISTING, "weight": 1, "split": "dev"}]
    script_args, *_ = sft_parser().parse_args_and_config(["--config", str(write_yaml(tmp_path / "r.yaml", recipe))])
    assert script_args.dataset_mixture == (MixtureSource(EXISTING, 2.0), MixtureSource(EXISTING, 1.0, "dev"))

    recipe["dataset_mixture"][1]["spilt"] = "dev"
    with pytest.raises(SystemExit):
        sft_parser().parse_args_and_config(["--config", str(write_yaml(tmp_path / "bad.yaml", recipe))])
    assert "error: --dataset_mixture: entry 2: unknown key 'spilt'; did you mean split?" in capsys.readouterr().err


def synthetic_sources(sizes_a, sizes_b, weights=(3, 1)):
    """Two sources whose rows name themselves, with the given token counts per row."""
    parts = [
        datasets.Dataset.from_dict({"source": [name] * len(s), "row": list(range(len(s)))})
        for name, s in (("a", sizes_a), ("b", sizes_b))
    ]
    counts = [{"documents": np.ones(len(s), dtype=np.int64), "tokens": np.asarray(s)} for s in (sizes_a, sizes_b)]
    sources = (MixtureSource("a", float(weights[0])), MixtureSource("b", float(weights[1])))
    return parts, sources, counts


@pytest.mark.parametrize("unit", ["tokens", "documents"])
def test_weights_are_realised_within_sampling_error(unit):
    """Two sources at 3:1: the realised share of the unit lies in the binomial 99% interval around 0.75 (and, as the
    sampler takes whole passes and a closest prefix, within one row of it)."""
    rng = np.random.default_rng(0)
    parts, sources, counts = synthetic_sources(rng.integers(1, 200, 500), rng.integers(50, 400, 300))
    mixed, report = mix(parts, sources, counts, unit, seed=0)
    a, b = report["sources"]
    n = len(mixed)
    share = a[unit] / (a[unit] + b[unit])
    assert abs(share - 0.75) <= Z99 * math.sqrt(0.75 * 0.25 / n)
    assert abs(share - 0.75) <= 400 / (a[unit] + b[unit])
    assert (a["target_share"], a["share"]) == (0.75, round(share, 4))
    assert report["unit"] == unit and report["tokens"] == a["tokens"] + b["tokens"]
    assert mixed["source"].count("a") == a["documents"] and mixed["source"].count("b") == b["documents"]
    picked_tokens = sum(int(counts[0]["tokens"][r]) for s, r in zip(mixed["source"], mixed["row"]) if s == "a")
    assert picked_tokens == a["tokens"]
    assert mixed["source"][:20] != sorted(mixed["source"][:20])  # the sources are shuffled together


def test_a_source_asked_for_more_than_it_holds_repeats_evenly_with_a_warning(caplog):
    parts, sources, counts = synthetic_sources([1] * 100, [1] * 10, weights=(1, 1))
    mixed, report = mix(parts, sources, counts, "documents", seed=0)
    assert "entry 2 (b) is repeated: its weight asks for 5.50 passes over its 10 documents" in caplog.text
    uses = np.bincount([r for s, r in zip(mixed["source"], mixed["row"]) if s == "b"], minlength=10)
    assert sorted(set(uses)) == [5, 6] and uses.sum() == 55
    assert [s["passes"] for s in report["sources"]] == [0.55, 5.5]


def test_the_same_seed_gives_the_same_mixture():
    parts, sources, counts = synthetic_sources([5] * 50, [7] * 40)
    first, _ = mix(parts, sources, counts, "tokens", seed=3)
    again, _ = mix(parts, sources, counts, "tokens", seed=3)
    other, _ = mix(parts, sources, counts, "tokens", seed=4)
    assert first.to_list() == again.to_list() != other.to_list()


def test_pretraining_on_a_mixture_from_a_recipe_file(tmp_path, tiny_corpus, tiny_tokenizer_dir, caplog):
    """Token shares of the packed blocks follow the weights, the small source repeats, the counts land in the
    result, and the held-out blocks come out of each source before sampling (no held-out block is trained on)."""
    domain = write_domain_text(tmp_path / "domain.txt")
    recipe = yaml.safe_load((CONFIGS / "pretrain_tiny.yaml").read_text(encoding="utf-8"))
    recipe["dataset_mixture"] = [
        {"path": str(tiny_corpus["pretrain"]), "weight": 3},
        {"path": str(domain), "weight": 1},
    ]
    argv = ["--config", str(write_yaml(tmp_path / "recipe.yaml", recipe)), "--tokenizer_name_or_path"]
    argv += [str(tiny_tokenizer_dir), "--output_dir", str(tmp_path / "run"), "--max_steps", "4", *QUIET]
    script_args, training_args, model_args = pretrain_parser().parse_args_and_config(argv)

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    train, held_out, mixture = load_datasets(script_args, training_args, tokenizer, len(tokenizer))
    general, small = mixture["sources"]
    assert mixture["unit"] == "tokens" and mixture["tokens"] == len(train) * 128
    assert abs(general["share"] - 0.75) <= 128 / mixture["tokens"]
    assert small["passes"] > 1 and "entry 2" in caplog.text and "is repeated" in caplog.text
    assert general["documents"] > 0 and small["documents"] > 0
    assert mixture["documents"] == sum(ids.count(tokenizer.eos_token_id) for ids in train["input_ids"])
    trained = {tuple(ids) for ids in train["input_ids"]}
    assert len(held_out) > 0 and not any(tuple(ids) in trained for ids in held_out["input_ids"])
    again, _, _ = load_datasets(script_args, training_args, tokenizer, len(tokenizer))
    assert again["input_ids"] == train["input_ids"]

    result = pretrain(script_args, training_args, model_args)
    assert result["steps"] == 4 and result["mixture"] == mixture
    assert run_entry(result)["mixture"] == mixture  # the report shows what the run took of each source
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert f"{tiny_corpus['pretrain']} (weight 3), {domain} (weight 1)" in card

    script_args.eval_split_size = 6  # blocks from each source: all the small one has
    with pytest.raises(
        ValueError, match=r"--eval_split_size 6 leaves no training data out of the 6 blocks of .*domain"
    ):
        load_datasets(script_args, training_args, tokenizer, len(tokenizer))


def test_best_fit_rows_count_their_documents_and_tokens(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    domain = write_domain_text(tmp_path / "domain.txt")
    mixture_file = write_yaml(
        tmp_path / "mix.yaml", [{"path": str(tiny_corpus["pretrain"]), "weight": 1}, {"path": str(domain), "weight": 1}]
    )
    argv = ["--config", str(CONFIGS / "pretrain_tiny.yaml"), "--dataset_mixture", str(mixture_file)]
    argv += ["--packing", "best_fit", "--eval_split_size", "0", "--output_dir", str(tmp_path / "run")]
    script_args, training_args, _ = pretrain_parser().parse_args_and_config(argv)
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    train, _, mixture = load_datasets(script_args, training_args, tokenizer, len(tokenizer))
    assert mixture["tokens"] == sum(len(ids) for ids in train["input_ids"])
    assert mixture["documents"] == sum(len(lengths) for lengths in train["seq_lengths"])
    general, _ = mixture["sources"]
    assert abs(general["share"] - 0.5) <= 128 / mixture["tokens"]  # within one row


def test_sft_on_a_mixture_of_formats(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """Conversation shares follow the weights, each source keeps its own loader (ShareGPT beside the project's
    format), the tokens the chat template gives are counted, and the counts land in the result."""
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    base = tmp_path / "base"
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    turns = [
        ({"role": "user", "content": f"What is {i} plus 1?"}, {"role": "assistant", "content": f"{i + 1}"})
        for i in range(20)
    ]
    chats = [
        {"conversations": [{"from": "human", "value": q["content"]}, {"from": "gpt", "value": a["content"]}]}
        for q, a in turns
    ]
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", chats)
    mixture_file = write_yaml(
        tmp_path / "mix.yaml", [{"path": str(tiny_corpus["sft"]), "weight": 1}, {"path": str(sharegpt), "weight": 1}]
    )
    argv = ["--config", str(CONFIGS / "sft_tiny.yaml"), "--model_name_or_path", str(base), "--dataset_mixture"]
    argv += [str(mixture_file), "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--eval_strategy", "no"]
    result = sft(*sft_parser().parse_args_and_config([*argv, *QUIET]))

    mixture = result["mixture"]
    project, shared = mixture["sources"]
    assert mixture["unit"] == "documents" and project["documents"] == shared["documents"] == 160  # (300 + 20) / 2
    assert shared["passes"] == 8.0 and project["passes"] == round(160 / 300, 3)
    texts = [tokenizer.apply_chat_template(list(turn), tokenize=False) for turn in turns]
    per_pass = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert shared["tokens"] == 8 * per_pass  # eight whole passes over the ShareGPT chats
    assert project["tokens"] > project["documents"] and result["rejected"] == {"train": 0, "eval": 0}


def test_a_bad_record_in_a_mixture_source_stops_at_its_file_and_line(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"conversations": [{"role": "user", "content": "Hi"}]},
        ],
    )
    mixture_file = write_yaml(
        tmp_path / "mix.yaml", [{"path": str(tiny_corpus["sft"]), "weight": 1}, {"path": str(bad), "weight": 1}]
    )
    argv = ["--model_name_or_path", "unused", "--dataset_mixture", str(mixture_file), "--output_dir", str(tmp_path)]
    script_args, training_args, _ = sft_parser().parse_args_and_config(argv)
    with pytest.raises(DataError, match=rf"{bad}:2: "):
        sft_stage.load_datasets(script_args, training_args, load_tokenizer(tiny_tokenizer_dir))
