"""The pipeline runner: its plan's arithmetic on fixed numbers, the global batch kept on any number of processes,
upstream files routed to stages (a folder the test writes, the Hub with `hf_hub_download` replaced), `--set` mistakes
as one `error:` line, NPROC=2 through accelerate launch, and the dry run of every GPU profile end to end, then run
again: finished stages skipped, an interrupted one resumed from its checkpoint."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipes.training.args import accumulation_steps
from recipes.training.pipeline import launch_command, main
from recipes.training.pipeline_data import HUB_DATASET, fetch_hub, route_folder
from recipes.training.pipeline_plan import (
    TokenSample,
    disk_bytes,
    estimate_records,
    estimate_tokens,
    mfu,
    peak_tflops,
    planned_steps,
    step_seconds,
)
from recipes.training.pipeline_profiles import GPU_STAGES, PROFILES, parse_override, stage_overrides
from recipes.training.pipeline_stages import CONFIGS, NEEDS, Run, post_training_paths
from recipes.training.pretraining import make_parser as pretrain_parser
from recipes.training.warmup import Pass, stage_passes

GPU_PROFILES = ("minimind-26m", "minimind-64m", "minimind-moe")


def test_tokens_and_records_scale_the_sample_to_the_file():
    # 1000 records, 2.4 MB on disk (JSON included), 600K tokens: 0.25 tokens a byte, 2,400 bytes a record.
    sample = TokenSample(records=1000, bytes=2_400_000, tokens=600_000, chars=1_500_000)
    assert estimate_tokens(1_600_000_000, sample) == 400_000_000  # 1.6 GB x 0.25
    assert estimate_records(1_600_000_000, sample) == 666_667  # 1.6 GB / 2,400 bytes
    assert sample.chars_per_token == 2.5 and sample.tokens_per_record == 600


def test_steps_count_epochs_over_the_global_batch_unless_capped():
    assert planned_steps(0, 1.0, examples=781_250, global_batch=1024) == 763  # ceil(762.9)
    assert planned_steps(0, 2.0, examples=1000, global_batch=128) == 16  # 8 per epoch (the last one partial)
    assert planned_steps(0, 0.65, examples=2012, global_batch=4) == 327  # the demo's SFT: 503 per epoch
    assert planned_steps(500, 1.0, examples=10**9, global_batch=32) == 500


def test_disk_counts_final_weights_checkpoints_and_the_token_cache():
    # 64M parameters: 4 bytes final + 3 checkpoints x 12 (weights and AdamW's two moments) = 40 bytes each
    assert disk_bytes(64e6, save_total_limit=3) == 64_000_000 * 40
    assert disk_bytes(64e6, save_total_limit=2, models=2) == 2 * 64_000_000 * 28  # PPO: actor and critic
    assert disk_bytes(1e6, save_total_limit=None, data_tokens=1000) == 1_000_000 * 16 + 4000


def test_eta_is_steps_times_the_timed_step_and_mfu_its_flops_over_the_peak():
    # a pretraining step: 32 accumulated micro-batches of 0.05 s; GRPO: one 6 s rollout and 8 x (0.1 + 0.3) s
    assert step_seconds([(32, 0.05)]) == pytest.approx(1.6)
    assert step_seconds([(1, 6.0), (8, 0.1), (8, 0.3)]) == pytest.approx(9.2)
    assert 763 * step_seconds([(32, 0.05)]) == pytest.approx(1220.8)
    # 6 x 64M x 500K tokens/s = 1.92e14 FLOP/s of an H100's 989 TFLOPS
    assert mfu(64e6, 500_000, peak_tflops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.1941, abs=1e-4)
    assert mfu(64e6, 500_000, 989.0, processes=8) == pytest.approx(0.1941 / 8, abs=1e-4)
    assert mfu(64e6, 500_000, None) is None


def test_moe_flops_count_the_experts_a_token_passes_through():
    from modeling_miniminds import get_config
    from recipes.training.pipeline_estimate import parameters

    moe = get_config("minimind-moe")
    routed = 8 * 4 * 3 * 640 * 1728  # layers x experts x (gate, up, down) x width x expert width
    assert parameters(moe) == 145_031_040
    assert parameters(moe, active=True) == 145_031_040 - routed * 3 // 4  # 65.4M: one routed expert of four
    assert parameters(get_config("minimind-64m"), active=True) == parameters(get_config("minimind-64m"))


def test_a_gpu_stage_reports_peak_memory_and_mfu(tmp_path, monkeypatch):
    """What a training stage adds to its entry on a GPU (this machine has none: torch.cuda answers as one would)."""
    import torch

    from modeling_miniminds import get_config
    from recipes.training.pipeline import gpu_numbers

    get_config("minimind-64m").save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: 12_345_678_901)
    entry = {"tokens_per_second": 500_000.0}
    numbers = gpu_numbers(entry, str(tmp_path), peak=989.0, processes=1)
    # 6 x 63.9M parameters x 500K tokens/s over 989 TFLOPS
    assert numbers == {"peak_memory_gb": 12.35, "mfu": round(6 * 63_912_192 * 500_000 / 989e12, 4)}
    assert "mfu" not in gpu_numbers(entry, str(tmp_path), peak=None, processes=1)  # a GPU the table does not know
    assert gpu_numbers({"tokens_per_second": 0}, str(tmp_path), 989.0, 1) == {}  # the eval stage, the model reload


def test_plan_table_rows_and_totals():
    from recipes.training.pipeline_plan import StagePlan, format_plan

    pretrain = StagePlan("pretrain", Path("d/pretrain_hq.jsonl"), 1_600_000_000, 400_000_000, 763, 399_769_600)
    pretrain.disk, pretrain.step_seconds, pretrain.seconds, pretrain.mfu = 3_000_000_000, 1.6, 1220.8, 0.41
    pretrain.note = "3.10 chars/token on 1000 records"
    table = format_plan([StagePlan("tokenizer"), pretrain], "NVIDIA H100 80GB HBM3", 989.0)
    assert (
        "| pretrain | pretrain_hq.jsonl | 1.6 GB | 400.0M | 763 | 399.8M | 3.0 GB | 1.6 | 20m21s | 41% "
        "| 3.10 chars/token on 1000 records |"
    ) in table
    assert "| tokenizer | - | - | - | - | - | - | - | - | - |  |" in table
    assert "peak 989 TFLOPS. Disk needed: 3.0 GB. Training ETA: 20m21s" in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len({line.count(" | ") for line in rows}) == 1  # every row has the header's columns


def test_banner_eta_leaves_the_plan_out_of_the_pace(monkeypatch):
    """The demo's ETA scales what is left by the pace of the stages so far; the plan's timed warm-up is no stage's
    pace (it made the demo's first banners read 26 minutes left of a 13-minute run)."""
    import time

    from recipes.training.pipeline import Banners

    banners = Banners("demo", {"corpus": 10, "pretrain": 100}, ("corpus", "pretrain"), start=0.0)
    banners.finished.append("corpus")
    monkeypatch.setattr(time, "perf_counter", lambda: 30.0)
    assert banners.eta() == pytest.approx(300)  # 30 s for a 10-second stage: three times slower
    banners.paused = 20.0
    assert banners.eta() == pytest.approx(100)
    assert "0m30s so far" in banners.banner("pretrain")


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("Tesla T4", 65.0),
        ("Some Future GPU", None),
    ],
)
def test_peak_flops_from_the_gpu_name(name, tflops):
    assert peak_tflops(name) == tflops


def test_step_shapes_follow_the_parsed_recipe():
    """What a step repeats, from the numbers a stage's arguments hold."""
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=4, max_length=512)
    assert stage_passes("sft", args, None, 0) == [Pass("train", 8, 512, 4)]
    dpo = SimpleNamespace(**vars(args), precompute_ref_log_probs=False)
    # a pair of 300 tokens: chosen and rejected of about 150 each, and the reference's forward
    assert stage_passes("dpo", dpo, None, 300) == [Pass("train", 16, 150, 4), Pass("forward", 16, 150, 4)]
    ppo = SimpleNamespace(**vars(args), rollout_batch_size=64, max_completion_length=128, num_ppo_epochs=2)
    decode, forward, train = stage_passes("ppo", ppo, None, 40)
    assert decode == Pass("decode", 64, 128, 1, prompt=40)
    assert (forward.rows, forward.seq, forward.count) == (64, 168, 3)
    assert (train.rows, train.count) == (8, 2 * 2 * 8)  # actor and critic, 2 epochs of 64 / 8 micro-batches


def test_global_batch_sets_accumulation_for_any_number_of_processes(tmp_path):
    assert accumulation_steps(1024, 32, 1) == 32
    assert accumulation_steps(1024, 32, 8) == 4
    with pytest.raises(ValueError, match="not a multiple of per_device_train_batch_size 32 x 3 processes = 96"):
        accumulation_steps(1024, 32, 3)
    config = ["--config", str(CONFIGS / "pretrain_64m.yaml"), "--output_dir", str(tmp_path)]
    assert pretrain_parser().parse_args_and_config(config)[1].gradient_accumulation_steps == 32
    halved = pretrain_parser().parse_args_and_config([*config, "--per_device_train_batch_size", "16"])
    assert halved[1].gradient_accumulation_steps == 64  # the step keeps its 1024 rows


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_gpu_recipes_keep_their_global_batch_on_one_to_eight_processes(profile):
    import yaml

    for name in PROFILES[profile].recipes.values():
        values = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
        assert "gradient_accumulation_steps" not in values, name
        for processes in (1, 2, 4, 8):
            accumulation_steps(values["global_batch_size"], values["per_device_train_batch_size"], processes)


def write_upstream_folder(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text('{"text": "x"}\n', encoding="utf-8")
    return folder


def test_upstream_files_route_to_stages_by_name(tmp_path):
    names = ["pretrain_hq.jsonl", "pretrain_t2t_mini.jsonl", "sft_mini_512.jsonl", "dpo.jsonl", "rlaif.jsonl"]
    folder = write_upstream_folder(tmp_path / "data", names + ["agent_rl.jsonl", "notes.jsonl"])
    routed = route_folder(folder, GPU_STAGES)
    assert {stage: path.name for stage, path in routed.items()} == {
        "pretrain": "pretrain_t2t_mini.jsonl",  # the smaller file when both are there
        "sft": "sft_mini_512.jsonl",
        "reward": "dpo.jsonl",
        "dpo": "dpo.jsonl",
        "ppo": "rlaif.jsonl",
        "grpo": "rlaif.jsonl",
        "agent": "agent_rl.jsonl",
    }
    assert set(route_folder(folder, ("corpus", "pretrain", "distill"))) == {"pretrain", "distill"}


def test_the_reward_model_starts_from_the_dpo_model_when_the_run_trained_one(tmp_path):
    """DPO runs before the reward model and is where it starts; without a DPO model it starts from SFT, and PPO
    still starts from SFT with the reward model beside it."""
    assert GPU_STAGES.index("dpo") < GPU_STAGES.index("reward") < GPU_STAGES.index("ppo")
    assert NEEDS["reward"] == ("sft",)  # DPO is used when there, not required
    run = Run(out=tmp_path, recipes={})
    files = {stage: f"{stage}.jsonl" for stage in ("reward", "ppo")}
    done = {"corpus": {"held_out": str(tmp_path / "eval"), "files": files}, "sft": "runs/sft"}
    assert post_training_paths(run, "reward", done)["model_name_or_path"] == "runs/sft"
    with_dpo = done | {"dpo": "runs/dpo"}
    assert post_training_paths(run, "reward", with_dpo)["model_name_or_path"] == "runs/dpo"
    ppo = post_training_paths(run, "ppo", with_dpo | {"reward": "runs/reward"})
    assert ppo["model_name_or_path"] == "runs/sft" and ppo["reward_model_name_or_path"] == "runs/reward"


def test_a_folder_without_a_stages_file_names_what_it_found_and_expects(tmp_path):
    folder = write_upstream_folder(tmp_path / "data", ["pretrain_hq.jsonl", "sft_1024.jsonl"])
    with pytest.raises(ValueError) as error:
        route_folder(folder, GPU_STAGES)
    message = str(error.value)
    assert "no file for sft, dpo, reward, ppo, grpo, agent" in message
    assert "found pretrain_hq.jsonl, sft_1024.jsonl" in message
    assert "sft: sft_t2t_mini.jsonl or sft_mini_512.jsonl" in message and "dpo: dpo.jsonl" in message
    with pytest.raises(ValueError, match="no such folder"):
        route_folder(tmp_path / "missing", GPU_STAGES)


def test_hub_files_come_through_hf_hub_download(tmp_path, monkeypatch):
    """The first name the dataset holds, as a dataset repo, with no endpoint passed (so HF_ENDPOINT applies) and
    downloaded once per name asked (the cache answers the rest)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        if filename in ("pretrain_t2t_mini.jsonl", "sft_t2t_mini.jsonl"):
            raise EntryNotFoundError(f"{filename} not found")
        return str(write_upstream_folder(tmp_path / "cache", [filename]) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    routed = fetch_hub(("corpus", "pretrain", "sft", "dpo", "grpo"), tmp_path / "hub")
    assert {stage: path.name for stage, path in routed.items()} == {
        "pretrain": "pretrain_hq.jsonl",
        "sft": "sft_mini_512.jsonl",
        "dpo": "dpo.jsonl",
        "grpo": "rlaif.jsonl",
    }
    assert all(repo == HUB_DATASET and kwargs["repo_type"] == "dataset" for repo, _, kwargs in calls)
    assert all("endpoint" not in kwargs and kwargs["cache_dir"] == tmp_path / "hub" for _, _, kwargs in calls)
    assert "agent_rl.jsonl" not in [name for _, name, _ in calls]  # no chosen stage reads it: not downloaded


def test_override_values_and_their_mistakes(tmp_path, capsys):
    assert parse_override("sft.learning_rate=2e-4") == ("sft", "learning_rate", ["2e-4"])
    assert parse_override("grpo.reward_funcs=format accuracy") == ("grpo", "reward_funcs", ["format", "accuracy"])
    assert stage_overrides(["grpo.reward-funcs=format accuracy"], GPU_STAGES) == {
        "grpo": {"reward_funcs": ["format", "accuracy"]}
    }
    mistakes = {
        "sft.learning_rate": "expected STAGE.FLAG=VALUE",
        "learning_rate=2e-4": "expected STAGE.FLAG=VALUE",
        "sfr.learning_rate=2e-4": "no training stage 'sfr' in this profile; did you mean sft?",
        "eval.max_docs=3": "no training stage 'eval'",
        "distill.alpha=0.5": "no training stage 'distill'",  # minimind-26m has no smaller student
        "sft.learning_rat=2e-4": "learning_rat is not a flag of sft; did you mean learning_rate?",
        "dpo.output_dir=x": "output_dir is set by the runner",
    }
    for text, message in mistakes.items():
        with pytest.raises(SystemExit) as stop:
            main(["--profile", "minimind-26m", "--set", text, "--plan_only", "--output_dir", str(tmp_path)])
        assert stop.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (text, lines)


def test_optional_stages_run_when_named():
    from recipes.training.pipeline import chosen_stages

    profile = PROFILES["minimind-64m"]
    assert "distill" not in chosen_stages(None, profile, None)
    assert chosen_stages(["pretrain", "distill"], profile, None) == ("corpus", "pretrain", "distill")
    assert chosen_stages(None, profile, None, dry_run=True) == profile.stages
    assert chosen_stages(["sft"], profile, "upstream/tokenizer") == ("corpus", "tokenizer", "sft")


def test_stages_and_their_inputs_are_checked_before_anything_runs(tmp_path, capsys):
    for argv, message in [
        (["--stages", "sft", "ppo"], "sft starts from pretrain's output"),
        (["--stages", "pretrian"], "not a stage of profile minimind-26m; did you mean pretrain?"),
    ]:
        with pytest.raises(SystemExit):
            main(["--profile", "minimind-26m", "--output_dir", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_mistyped_flag_is_refused_not_taken_for_an_abbreviation(tmp_path, capsys):
    """argparse would read --profil as --profile and start the whole demo."""
    with pytest.raises(SystemExit) as stop:
        main(["--profil", "demo", "--output_dir", str(tmp_path)])
    assert stop.value.code == 2 and "did you mean --profile?" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_nproc_runs_each_training_stage_under_accelerate_launch():
    argv = ["--profile", "minimind-64m", "--stages", "pretrain", "sft", "--nproc", "8", "--data", "hub"]
    command = launch_command(argv, "sft", 8)
    assert command[1:7] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "8", "-m"]
    assert command[7:] == [
        "recipes.pipeline",
        "--profile",
        "minimind-64m",
        "--data",
        "hub",
        "--stages",
        "sft",
        "--nproc",
        "1",
        "--launched",
    ]


@pytest.mark.parametrize("source", ["folder", "hub"])
def test_plan_only_measures_upstream_files_and_stops(
    source, tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys, monkeypatch
):
    """Upstream's files from `--data DIR` or `--data hub` (`hf_hub_download` replaced by a lookup in a folder): the
    plan lists each file with its size and tokens, and nothing trains."""
    import huggingface_hub

    folder = tmp_path / "minimind"
    folder.mkdir()
    for corpus_file, name in [
        ("pretrain", "pretrain_hq.jsonl"),
        ("sft", "sft_mini_512.jsonl"),
        ("dpo", "dpo.jsonl"),
        ("rl", "rlaif.jsonl"),
        ("rl", "agent_rl.jsonl"),
    ]:
        shutil.copy(tiny_corpus[corpus_file], folder / name)

    def from_folder(repo_id, filename, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not found")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", from_folder)
    out = tmp_path / "run"
    small_model = ["--set", "pretrain.model_config=minimind-micro", "--size", "tiny"]  # 26M: minutes on CPU
    data = str(folder) if source == "folder" else "hub"
    argv = ["--profile", "minimind-26m", "--data", data, "--tokenizer", str(tiny_tokenizer_dir)]
    assert main([*argv, "--output_dir", str(out), "--plan_only", *small_model]) == {}
    plan = capsys.readouterr().out
    assert "Plan for minimind-26m" in plan and "Disk needed:" in plan
    for name in ("pretrain_hq.jsonl", "sft_mini_512.jsonl", "dpo.jsonl", "rlaif.jsonl", "agent_rl.jsonl"):
        assert f"| {name} |" in plan, name
    corpus = json.loads((out / ".pipeline" / "corpus.json").read_text(encoding="utf-8"))
    assert corpus["artifact"]["files"]["sft"] == str(folder / "sft_mini_512.jsonl")
    assert not (out / "pretrain").exists() and not (out / ".pipeline" / "tokenizer.json").exists()


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_dry_run_of_a_gpu_profile_runs_every_stage(profile, tmp_path, capsys, caplog):
    """Every stage of the profile's recipes, two steps each on the tiny corpus on CPU: a recipe key that no longer
    parses, or a stage that no longer connects to the next, fails here before it fails on a GPU."""
    out = tmp_path / "dry"
    stages = PROFILES[profile].stages  # the optional ones (distillation) included
    entries = main(["--profile", profile, "--dry_run", "--output_dir", str(out)])
    assert list(entries) == list(stages)
    console = capsys.readouterr().out
    assert f"Plan for {profile}" in console and f"==> {profile} stage {len(stages)}/{len(stages)}: eval" in console
    for stage in set(stages) & {"pretrain", "distill", "sft", "reward", "dpo", "ppo", "grpo"}:
        assert entries[stage]["steps"] == 2, stage
        assert entries[stage]["tokens_per_second"] > 0, stage
    assert "reward/reward_model" in entries["grpo"]["after"]  # upstream's prompts have no answer: the model scores
    config = json.loads((out / "pretrain" / "config.json").read_text(encoding="utf-8"))
    assert config["hidden_size"] == 64 and config["use_moe"] == (profile == "minimind-moe")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report["stages"]) == list(stages)
    assert (out / "report.md").read_text(encoding="utf-8").startswith(f"# MiniMinds {profile} report")
    if profile == "minimind-moe":
        rerun_skips_finished_stages_and_resumes_the_interrupted_one(profile, out, report, capsys, caplog)


def test_demo_tool_grpo_runs_when_named_from_the_sft_model(tmp_path):
    """The demo's optional tool_grpo: GRPO on the calculator questions with the tool offered, from the SFT model;
    SFT and it report the held-out calls, and the same questions answered without the tool."""
    out = tmp_path / "dry"
    stages = ["tokenizer", "pretrain", "sft", "tool_grpo"]
    entries = main(["--profile", "demo", "--dry_run", "--stages", *stages, "--output_dir", str(out)])
    assert list(entries) == ["corpus", *stages]
    sft_run, tool = entries["sft"], entries["tool_grpo"]
    assert tool["steps"] == 2 and tool["tokens_per_second"] > 0
    for entry in (sft_run, tool):
        assert {"tool_call_rate", "tool_accuracy", "no_tool_accuracy"} <= set(entry["gains"])
    assert sft_run["after"]["tool_call_rate"]["n"] == 40  # every calculator question of the tiny corpus's eval/
    assert "accuracy" not in tool["after"]  # the calculator questions only: no chat probe
    assert json.loads((out / "tool_grpo" / "config.json").read_text(encoding="utf-8"))["hidden_size"] == 64


def rerun_skips_finished_stages_and_resumes_the_interrupted_one(profile, out, report, capsys, caplog):
    argv = ["--profile", profile, "--dry_run", "--output_dir", str(out)]
    assert main(argv) == report["stages"]  # every stage finished: nothing runs, the same report
    console = capsys.readouterr().out
    stages = PROFILES[profile].stages
    assert console.count("finished in an earlier run, skipped") == len(stages) and "Plan for" not in console
    # A stop during GRPO's second step: its marker not written, its step-1 checkpoint complete.
    (out / ".pipeline" / "grpo.json").unlink()
    (out / ".pipeline" / "eval.json").unlink()
    shutil.rmtree(out / "grpo" / "checkpoint-2")
    caplog.clear()
    with caplog.at_level("INFO", logger="recipes.training.lifecycle"):
        entries = main(argv)
    console = capsys.readouterr().out
    assert f"==> minimind-moe stage {stages.index('grpo') + 1}/{len(stages)}: grpo" in console
    assert "stage sft: finished in an earlier run" in console
    assert f"Resuming from {out / 'grpo' / 'checkpoint-1'}" in caplog.text
    assert entries["grpo"]["steps"] == 2 and entries["sft"] == report["stages"]["sft"]
    assert json.loads((out / ".pipeline" / "grpo.json").read_text(encoding="utf-8"))["entry"] == entries["grpo"]


def test_nproc_trains_a_stage_in_several_processes_with_the_same_global_batch(tmp_path, monkeypatch):
    """`NPROC=2` on CPU: the runner makes the corpus and tokenizer itself, then pretraining runs under accelerate
    launch in 2 processes (gloo), each a micro-batch of 2 rows, and writes its marker for the runner to read."""
    monkeypatch.setenv("NPROC", "2")
    out = tmp_path / "run"
    entries = main(
        ["--profile", "minimind-64m", "--dry_run", "--stages", "tokenizer", "pretrain", "--output_dir", str(out)]
    )
    assert list(entries) == ["corpus", "tokenizer", "pretrain"]
    marker = json.loads((out / ".pipeline" / "pretrain.json").read_text(encoding="utf-8"))
    assert marker["settings"]["pretrain.global_batch_size"] == 4  # 2 rows x 2 processes, no accumulation
    assert entries["pretrain"]["steps"] == 2 and entries["pretrain"]["tokens"] == 2 * 4 * 64  # steps x rows x block
