"""`make demo` end to end at test size: every stage runs and reports held-out numbers that mean something, and the
saved model, reloaded without MiniMinds, scores exactly what it scored in training."""

import json
import re

from recipes.demo import main


def test_demo_runs_every_stage_and_reports_heldout_metrics(tmp_path):
    main(
        [
            "--output_dir",
            str(tmp_path),
            "--size",
            "tiny",
            "--vocab_size",
            "512",
            "--max_steps",
            "40",
            "--stage_steps",
            "4",
        ]
    )
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    stages = report["stages"]
    assert list(stages) == ["corpus", "tokenizer", "pretrain", "model", "sft", "reward", "dpo", "ppo", "grpo", "eval"]
    assert report["machine"]["torch"] and report["machine"]["threads"] >= 1

    assert stages["corpus"]["records"]["pretrain"] == 400 and stages["corpus"]["records"]["eval/completion"] > 0
    assert stages["tokenizer"]["compression_heldout"]["en"]["bytes_per_token"] > 1.5

    pretrain = stages["pretrain"]
    assert pretrain["preset"] == "minimind-tiny" and pretrain["steps"] == 40
    full = 40 * 16 * 128  # steps x batch x block of pretrain_tiny.yaml; an epoch's last batch may be partial
    assert 0.95 * full < pretrain["tokens"] <= full
    assert set(pretrain["before"]) == set(pretrain["after"]) == {"eval_loss", "perplexity", "completion_accuracy"}
    assert pretrain["before"]["eval_loss"] > 6.0  # about ln(512) untrained
    assert pretrain["after"]["eval_loss"] < 0.6 * pretrain["before"]["eval_loss"]  # 2.9 vs 6.3 when measured
    assert 0.0 <= pretrain["after"]["completion_accuracy"] <= 1.0

    model = stages["model"]
    assert model["model_class"].startswith("transformers_modules."), model["model_class"]
    # Reloaded through trust_remote_code in another process, greedy answers are the same as in training.
    assert model["completion_accuracy"] == pretrain["after"]["completion_accuracy"]
    assert 0.0 <= model["trained_fact_recall"] <= 1.0 and model["samples"]

    for name in ("sft", "reward", "dpo", "ppo", "grpo"):  # each post-training stage: the same keys before and after
        stage = stages[name]
        assert stage["steps"] == 4 and set(stage["before"]) == set(stage["after"]), name
    assert {"loss", "accuracy", "task_accuracy", "eot_rate"} <= set(stages["sft"]["after"])
    assert stages["sft"]["after"]["eot_rate"] > stages["sft"]["before"]["eot_rate"]  # 0.05 -> 0.68 when measured
    assert stages["reward"]["after"]["pairwise_accuracy"] > 0.6  # 0.90 after 4 steps when measured
    assert {"preference_accuracy", "margin", "accuracy"} <= set(stages["dpo"]["after"])
    for name in ("ppo", "grpo"):
        assert {"reward", "accuracy", "kl"} <= set(stages[name]["after"]) and stages[name]["before"]["kl"] == 0.0
        assert stages[name]["after"]["kl"] >= 0.0 and stages[name]["chat_samples"]
    assert {"reward/reward_model", "reward/accuracy", "reward/format"} <= set(stages["ppo"]["after"])
    assert {"tool_call_rate", "tool_accuracy"} <= set(stages["grpo"]["after"])
    assert set(stages["eval"]["models"]) == {"pretrain", "sft", "dpo", "ppo", "grpo"}
    assert all(m["bits_per_byte"] > 0 for m in stages["eval"]["models"].values())

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    for name in stages:
        assert f"## {name} (" in markdown
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    curves = [f"{name}/training_curves.png" for name in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")]
    assert links == curves + ["eval/eval_chart.png"]
    assert all((tmp_path / link).stat().st_size > 0 for link in links)
    assert "| completion_accuracy |" in markdown and "held out" in markdown
    assert "## Sample chat with the final model (grpo)" in markdown and "**assistant:**" in markdown
