"""Held-out intervals: Wilson's interval for accuracies, t intervals for means and paired gains, and the report
that prints them."""

import json

import pytest

from recipes.training.intervals import (
    ITEMS,
    interval,
    merge_metrics,
    paired_gain,
    paired_gains,
    share_interval,
    verdict,
    with_intervals,
)
from recipes.training.report import numbers, run_entry, write_report


def test_wilson_interval_matches_the_textbook_values():
    # 8 of 10: Wilson's 95% score interval is [0.490, 0.943] (Newcombe 1998, table I, method 3).
    assert interval([1] * 8 + [0] * 2) == {"value": 0.8, "n": 10, "ci_low": 0.4902, "ci_high": 0.9433}
    # 0 of 40 still has an upper end above 0: no accuracy is known exactly from a sample.
    none = interval([0] * 40)
    assert none["ci_low"] == 0 and 0.08 < none["ci_high"] < 0.09


def test_a_share_of_n_questions_gets_the_interval_of_its_hits():
    # multiple choice keeps only its accuracy and question count: 0.8 of 10 is 8 hits, Newcombe's interval again
    assert share_interval(0.8, 10) == interval([1] * 8 + [0] * 2)
    assert share_interval(0.3333, 3)["ci_low"] > 0 and share_interval(0.3333, 3)["n"] == 3


def test_mean_interval_is_a_t_interval():
    # mean 2, sd sqrt(2/3), n 4: t(0.975, 3) = 3.1824, so 2 -+ 3.1824 * 0.8165 / 2 = 2 -+ 1.2992
    assert interval([1.0, 2.0, 2.0, 3.0]) == {"value": 2.0, "n": 4, "ci_low": 0.7008, "ci_high": 3.2992}


def test_floats_are_measurements_even_when_all_zero():
    # a KL of 0 by definition (the policy is its reference) has no spread; hits of 0 still leave room above 0
    assert interval([0.0] * 40) == {"value": 0.0, "n": 40, "ci_low": 0.0, "ci_high": 0.0}
    assert interval([0] * 40)["ci_high"] > 0.08
    assert interval([True, False, True, True])["n"] == 4  # bools are hits too


def test_paired_gain_sees_what_two_independent_intervals_cannot():
    # 400 questions, 40 turn right and none turn wrong: +0.10 whose paired interval excludes 0 ...
    before = [0] * 400
    after = [1] * 40 + [0] * 360
    gain = paired_gain(before, after)
    assert gain["diff"] == 0.1 and gain["n"] == 400
    assert 0.06 < gain["ci_low"] < 0.1 < gain["ci_high"] < 0.13
    assert verdict(gain) == "up"
    # ... while the same totals with 40 turning right and 40 turning wrong show no change.
    mixed = paired_gain([1] * 40 + [0] * 360, [0] * 40 + [1] * 40 + [0] * 320)
    assert mixed["diff"] == 0 and verdict(mixed) == "no significant change"
    assert verdict(paired_gain(after, before)) == "down"
    assert paired_gain([1, 1], [1, 1]) == {"diff": 0.0, "n": 2, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_gain_refuses_different_questions():
    with pytest.raises(ValueError, match="same questions"):
        paired_gain([1, 0], [1])


def test_probes_merge_their_items_and_gains_pair_them():
    chat = {"accuracy": 0.5, ITEMS: {"accuracy": [1, 0]}}
    tools = {"tool_accuracy": 1.0, ITEMS: {"tool_accuracy": [1, 1]}}
    before = merge_metrics(chat, tools)
    assert before[ITEMS] == {"accuracy": [1, 0], "tool_accuracy": [1, 1]}
    after = merge_metrics({"accuracy": 1.0, ITEMS: {"accuracy": [1, 1]}}, {"eval_loss": 2.0})
    # differences [0, 1]: the t interval 0.5 -+ 6.35 reaches past what two accuracies can differ by, so it is clipped
    assert paired_gains(before, after) == {"accuracy": {"diff": 0.5, "n": 2, "ci_low": -1.0, "ci_high": 1.0}}
    side = with_intervals(after)
    assert side["accuracy"]["n"] == 2 and side["eval_loss"] == 2.0 and ITEMS not in side


def test_report_prints_intervals_and_what_each_gain_shows(tmp_path):
    before = {"accuracy": 0.0, "eval_loss": 3.0, ITEMS: {"accuracy": [0] * 400}}
    after = {"accuracy": 0.1, "eval_loss": 2.5, ITEMS: {"accuracy": [1] * 40 + [0] * 360}}
    stage = {
        "seconds": 1.0,
        "before": numbers(before),
        "after": numbers(after),
        "gains": paired_gains(before, after),
    }
    assert stage["after"]["accuracy"] == {"value": 0.1, "n": 400, "ci_low": 0.0743, "ci_high": 0.1333}
    write_report(tmp_path, {"sft": stage})
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["stages"]["sft"]["gains"]["accuracy"]) == {"diff", "n", "ci_low", "ci_high"}
    markdown = (tmp_path / "report.md").read_text()
    assert "| accuracy | 0 [0, 0.0095] n=400 | 0.1 [0.0743, 0.133] n=400 |" in markdown
    assert "| accuracy | +0.1 | [+0.0705, +0.13] | 400 | up |" in markdown


def test_report_prints_chat_accuracy_per_family_with_its_n(tmp_path):
    before = {"accuracy": 0.0, "per_family": {"add": 0.0, "compare": 0.0}, "per_family_n": {"add": 3, "compare": 1}}
    after = {"accuracy": 0.5, "per_family": {"add": 0.3333, "compare": 1.0}, "per_family_n": {"add": 3, "compare": 1}}
    before[ITEMS], after[ITEMS] = {"accuracy": [0, 0, 0, 0]}, {"accuracy": [1, 0, 0, 1]}
    result = {"output_dir": str(tmp_path / "sft"), "before": before, "after": after}
    entry = run_entry(result)
    assert entry["per_family"]["add"] == {"n": 3, "before": 0.0, "after": 0.3333}
    write_report(tmp_path, {"sft": {"seconds": 1.0, **entry}})
    markdown = (tmp_path / "report.md").read_text()
    assert "| add | 3 | 0 | 0.3333 |" in markdown and "| compare | 1 | 0 | 1 |" in markdown
    assert "per_family:" not in markdown  # the table, not a JSON dump too


def test_report_prints_pairwise_accuracy_per_rejected_kind(tmp_path):
    kinds_n = {"repetition": 1, "wrong_answer": 3}
    before = {"pairwise_accuracy": 0.25, "per_kind": {"repetition": 1.0, "wrong_answer": 0.0}, "per_kind_n": kinds_n}
    after = {"pairwise_accuracy": 0.5, "per_kind": {"repetition": 1.0, "wrong_answer": 0.3333}, "per_kind_n": kinds_n}
    before[ITEMS], after[ITEMS] = {"pairwise_accuracy": [1, 0, 0, 0]}, {"pairwise_accuracy": [1, 1, 0, 0]}
    entry = run_entry({"output_dir": str(tmp_path / "reward"), "before": before, "after": after})
    assert entry["per_kind"]["wrong_answer"] == {"n": 3, "before": 0.0, "after": 0.3333}
    assert "per_family" not in entry
    write_report(tmp_path, {"reward": {"seconds": 1.0, **entry}})
    markdown = (tmp_path / "report.md").read_text()
    assert "| rejected reply: held-out pairwise accuracy | n | before | after |" in markdown
    assert "| wrong_answer | 3 | 0 | 0.3333 |" in markdown and "| repetition | 1 | 1 | 1 |" in markdown
    assert "per_kind:" not in markdown
