"""`make demo` end to end at test size: every stage runs, learns what it trains for on held-out data (thresholds a
stage that does not train misses), and the saved model, reloaded without MiniMinds, scores what it scored in
training. The numbers in comments were measured at this size (the same on two runs: the demo is seeded)."""

import dataclasses
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from modeling_miniminds.inference import Generator, SamplingParams, load_for_decoding
from modeling_miniminds.serving.chat import Chat
from modeling_miniminds.tokenizer import parse_reply
from recipes.demo import main
from recipes.training.pipeline_profiles import PROFILES
from recipes.training.pipeline_stages import CONFIGS, STAGE_MODULES, Run, recipe_args

STEPS = 8  # --stage_steps: distillation and every post-training stage
PRETRAIN_STEPS = 90  # --max_steps: 60 left trained-fact recall at 0.007 once half the statements came with questions
TRAINING_STAGES = ("pretrain", "distill", "sft", "dpo", "reward", "ppo", "grpo")
STAGE_KEYS = {"seconds", "steps", "tokens", "before", "after", "gains", "output_dir", "curves"}


@pytest.mark.parametrize("stage", [*TRAINING_STAGES, "tool_grpo"])
def test_demo_takes_run_sizes_from_the_recipe_and_knobs_from_the_stage(stage, tmp_path):
    """The demo parses each stage through the stage's own parser and its recipe: the step count is the recipe's,
    and the demo changes nothing but where things go, the seed and resuming an interrupted run."""
    recipe = PROFILES["demo"].recipes[stage]
    assert recipe == f"{stage}_tiny.yaml"
    values = yaml.safe_load((CONFIGS / recipe).read_text(encoding="utf-8"))
    parsed = recipe_args(Run(out=tmp_path, recipes=PROFILES["demo"].recipes, seed=7), stage, tmp_path / "out")
    assert parsed[1].max_steps == values.get("max_steps", -1)
    assert parsed[1].num_train_epochs == values.get("num_train_epochs", parsed[1].num_train_epochs)
    assert parsed[1].seed == 7 and Path(parsed[1].output_dir) == tmp_path / "out"
    recipe_only = (
        STAGE_MODULES[stage]
        .make_parser()
        .parse_args_and_config(["--config", str(CONFIGS / recipe), "--output_dir", "x"])
    )
    demo_flags = {"output_dir", "overwrite_output_dir", "seed", "data_seed", "resume_from_checkpoint"}
    for demo, plain in zip(parsed, recipe_only):
        changed = {f.name for f in dataclasses.fields(demo) if getattr(demo, f.name) != getattr(plain, f.name)}
        assert changed <= demo_flags, (type(demo).__name__, changed - demo_flags)


def test_demo_runs_every_stage_and_reports_heldout_metrics(tmp_path, capsys):
    main(
        [
            "--output_dir",
            str(tmp_path),
            "--size",
            "tiny",
            "--vocab_size",
            "512",
            "--max_steps",
            str(PRETRAIN_STEPS),
            "--stage_steps",
            str(STEPS),
        ]
    )
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    stages = report["stages"]
    banners = re.findall(
        r"==> demo stage (\d+)/11: (\w+) \(\d+m\d\ds so far, about \d+m\d\ds left\)", capsys.readouterr().out
    )
    assert banners == [(str(i), name) for i, name in enumerate(stages, start=1)]
    assert list(stages) == [
        "corpus",
        "tokenizer",
        "pretrain",
        "model",
        "distill",
        "sft",
        "dpo",
        "reward",
        "ppo",
        "grpo",
        "eval",
    ]
    assert report["machine"]["torch"] and report["machine"]["threads"] >= 1
    assert report["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # the float rounding
    assert stages["corpus"]["records"]["pretrain"] == 400 and stages["corpus"]["records"]["eval/completion"] > 0
    assert stages["tokenizer"]["compression_heldout"]["en"]["bytes_per_token"] > 1.5  # 2.29

    for name in TRAINING_STAGES:  # one shape: the same keys, the same held-out keys before and after
        stage = stages[name]
        assert set(stage) >= STAGE_KEYS, (name, STAGE_KEYS - set(stage))
        assert set(stage["before"]) == set(stage["after"]) and stage["steps"] == (
            PRETRAIN_STEPS if name == "pretrain" else STEPS
        )
        assert 0 < stage["tokens"] <= stage["steps"] * 16 * 512, name  # at most a full batch of the longest rows

    pretrain = stages["pretrain"]
    assert pretrain["preset"] == "minimind-tiny"
    full = (
        PRETRAIN_STEPS * 16 * 128
    )  # steps x batch x block of pretrain_tiny.yaml; an epoch's last batch may be partial
    assert 0.95 * full < pretrain["tokens"] <= full
    assert set(pretrain["before"]) == {"eval_loss", "perplexity", "completion_accuracy"}
    assert pretrain["before"]["eval_loss"] > 6.0  # 6.26, about ln(512) untrained
    assert pretrain["after"]["eval_loss"] < min(4.0, 0.6 * pretrain["before"]["eval_loss"])  # 3.30
    assert pretrain["after"]["perplexity"] == pytest.approx(math.exp(pretrain["after"]["eval_loss"]), rel=1e-3)

    model = stages["model"]
    assert model["model_class"].startswith("transformers_modules."), model["model_class"]
    # Reloaded through trust_remote_code in another process, greedy answers are the same as in training.
    assert model["completion_accuracy"] == pretrain["after"]["completion_accuracy"] and model["samples"]
    assert model["trained_fact_recall"]["value"] > 0.02  # 0.04; an untrained model recalls none

    distilled = stages["distill"]  # the student with the teacher; `alone` the same student without it
    assert (distilled["preset"], distilled["teacher"]) == ("minimind-micro", "pretrain")
    assert distilled["parameters_m"] < 0.5 * pretrain["parameters_m"]  # 0.156 vs 0.509
    assert set(distilled["after"]) == set(distilled["alone"]) == {"eval_loss", "perplexity", "document_loss"}
    assert distilled["before"]["document_loss"]["n"] == 40  # every document of eval/pretrain.jsonl
    # Per document the same cross-entropy as the trainer's eval loss, which weighs documents by their tokens.
    assert distilled["before"]["document_loss"]["value"] == pytest.approx(distilled["before"]["eval_loss"], abs=0.1)
    assert distilled["gains"]["document_loss"]["ci_high"] < -0.1  # 6.23 -> 5.85 in 4 steps: training shows in it
    loss_vs_alone = distilled["gains"]["loss_vs_alone"]  # a tiny run cannot promise its sign
    assert set(loss_vs_alone) == {"diff", "n", "ci_low", "ci_high"} and loss_vs_alone["n"] == 40
    taught_minus_alone = distilled["after"]["document_loss"]["value"] - distilled["alone"]["document_loss"]["value"]
    assert loss_vs_alone["diff"] == pytest.approx(taught_minus_alone, abs=2e-4)
    assert loss_vs_alone["ci_low"] < loss_vs_alone["diff"] < loss_vs_alone["ci_high"]  # two students that differ

    sft_run, reward_run, dpo_run = stages["sft"], stages["reward"], stages["dpo"]
    assert sft_run["tokens"] <= STEPS * 4 * 512  # 8192: batch 4 of packed 512-token rows
    assert {"eval_loss", "accuracy", "task_accuracy", "eot_rate"} <= set(sft_run["after"])
    assert sft_run["after"]["eval_loss"] < sft_run["before"]["eval_loss"] - 0.15  # 4.21 -> 3.99
    # 8 steps barely move the end-of-turn rate (0.6 -> 0.575); tests/test_sft.py asserts that SFT raises it
    assert sft_run["gains"]["eot_rate"]["n"] == 40
    accuracy = sft_run["after"]["accuracy"]
    assert set(accuracy) == {"value", "n", "ci_low", "ci_high"}
    assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"] and accuracy["n"] == 40
    pairwise = reward_run["after"]["pairwise_accuracy"]
    assert pairwise["value"] > max(0.75, reward_run["before"]["pairwise_accuracy"]["value"])  # .73->.90
    assert reward_run["gains"]["pairwise_accuracy"]["n"] == pairwise["n"]
    gap = {
        side: reward_run[side]["mean_chosen_score"] - reward_run[side]["mean_rejected_score"]
        for side in ("before", "after")
    }
    assert gap["after"] > gap["before"] + 0.5  # 0.03 -> 1.04
    assert dpo_run["before"]["preference_accuracy"]["value"] == 0.0 and dpo_run["before"]["margin"] == 0.0
    assert dpo_run["after"]["preference_accuracy"]["value"] > 0.7 and dpo_run["after"]["margin"] > 0.5  # .925, 1.70
    assert dpo_run["gains"]["preference_accuracy"]["ci_low"] > 0  # policy = reference at the start: no pair won
    assert {"accuracy", "task_accuracy", "eot_rate"} <= set(dpo_run["after"])

    for name in ("ppo", "grpo"):
        assert {"reward", "accuracy", "kl"} <= set(stages[name]["after"])
        assert {"reward", "accuracy", "task_accuracy", "eot_rate"} <= set(stages[name]["gains"])
        assert stages[name]["chat_samples"]
    assert stages["ppo"]["after"]["kl"]["value"] > 0.05  # 0.45: the policy moved away from the SFT reference
    assert stages["grpo"]["before"]["kl"] == 0.0
    assert {"reward/reward_model", "reward/accuracy", "reward/format"} <= set(stages["ppo"]["after"])
    assert {"tool_call_rate", "tool_accuracy"} <= set(stages["grpo"]["after"])
    # SFT asks the held-out calculator questions through the tool loop, and without the tool.
    assert {"tool_call_rate", "tool_accuracy", "no_tool_accuracy"} <= set(sft_run["gains"])
    assert sft_run["after"]["tool_call_rate"]["n"] == 40  # every question of eval/rl_tools.jsonl
    assert sft_run["before"]["tool_call_rate"]["value"] == 0.0  # the pretrained model has never seen a call

    models = stages["eval"]["models"]
    assert set(models) == {"pretrain", "sft", "dpo", "ppo", "grpo"}
    # An untrained model scores about 3.9 bits per byte here (6.26 nats per token, 2.29 bytes per token).
    assert all(m["bits_per_byte"] < 3.0 for m in models.values()), models  # 2.11 to 2.45
    # every accuracy of the eval table over all of eval/rl.jsonl (40 questions at the tests' corpus size)
    assert models["sft"]["mc_accuracy"]["n"] == models["sft"]["eot_rate"]["n"] == 40

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    for name in stages:
        assert f"## {name} (" in markdown
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    curves = [f"{name}/training_curves.png" for name in TRAINING_STAGES]
    assert links == curves + ["eval/eval_chart.png"]
    assert all((tmp_path / link).stat().st_size > 0 for link in links)
    assert "| completion_accuracy |" in markdown and "held out" in markdown
    assert "## Sample chat with the final model (grpo)" in markdown and "**assistant:**" in markdown
    final_chat = markdown.split("## Sample chat with the final model (grpo)")[1]
    assert "(expected: " in final_chat  # the true answer beside each held-out question
    # the reload's scores are report lines with their interval, not JSON blocks
    assert re.search(r"^- completion_accuracy: [\d.]+ \[[\d.]+, [\d.]+\] n=\d+$", markdown, re.M)
    assert "| paired change |" in markdown and " n=40 |" in markdown
    assert "| held-out metric | before | after | alone |" in markdown and "| loss_vs_alone | " in markdown

    # What a user gets from `python -m modeling_miniminds.chat runs/demo/sft --system ... --temperature 0 --prompt ...`
    # is the greedy reply the report shows for that question: chat renders the prompt as the probes (and SFT) did.
    sample = sft_run["chat_samples"][0]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)  # chat_eval_max_new_tokens of sft_tiny.yaml
    chat = Chat(Generator(*load_for_decoding(tmp_path / "sft")), greedy, sample["system"], out=io.StringIO())
    # A streamed reply holds back bytes that never complete a character, which the report's decode shows as U+FFFD.
    expected = parse_reply(sample["reply"]).content.replace("\ufffd", "").strip()
    assert chat.reply(sample["question"]).content.replace("\ufffd", "") == expected
