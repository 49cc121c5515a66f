"""What a person typing a recipe command sees: one `error:` line for each mistake, short help, Ctrl-C that saves.

Each case here was hit by a newcomer: a typo in a model path spent 28 s retrying the Hub, misspelled flags and YAML
keys and bad data lines printed long tracebacks, `--help` ran to 651 lines without `--config`.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modeling_miniminds.cli.paths import check_name_or_path, is_hub_id
from recipes.training.args import WORLD_SIZE_VARIABLES, check_one_process_launch
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "configs" / "pretrain_tiny.yaml"
QUICK = ["--block_size", "64", "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--disable_tqdm", "true"]


def pretrain_cli(*argv, cwd=REPO, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), *map(str, argv)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def error_line(done) -> str:
    """The last line on stderr, which must start with `error:`, and no traceback before it (progress bars may)."""
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


@pytest.fixture
def base_args(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    return [
        "--config",
        TINY_RECIPE,
        "--dataset_name",
        tiny_corpus["pretrain"],
        "--tokenizer_name_or_path",
        tiny_tokenizer_dir,
        "--output_dir",
        tmp_path / "run",
        *QUICK,
    ]


def test_misspelled_flag_names_the_nearest_one(base_args):
    done = pretrain_cli(*base_args, "--lerning_rate", "1e-3")
    assert done.returncode == 2
    assert error_line(done) == "error: unknown flag --lerning_rate; did you mean --learning_rate?"


def test_unknown_yaml_key_names_file_key_and_nearest(base_args, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_config: minimind-tiny\nwarmup_step: 3\n", encoding="utf-8")
    done = pretrain_cli("--config", recipe, *base_args[2:])
    assert done.returncode == 2
    assert error_line(done) == f"error: {recipe}: unknown key 'warmup_step'; did you mean warmup_steps?"


def test_bad_flag_value_is_one_line(base_args):
    done = pretrain_cli(*base_args, "--max_steps", "abc")
    assert done.returncode == 2 and "invalid int value: 'abc'" in error_line(done)


def test_missing_data_file(base_args, tmp_path):
    done = pretrain_cli(*base_args, "--dataset_name", tmp_path / "nope.jsonl")
    assert done.returncode == 1
    assert error_line(done) == f"error: dataset {tmp_path / 'nope.jsonl'}: no such file or folder"


def test_malformed_data_line_names_file_and_line(base_args, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    done = pretrain_cli(*base_args, "--dataset_name", bad)
    assert done.returncode == 1
    assert error_line(done).startswith(f"error: {bad}:2: field 'text': expected a string")


def test_model_path_typo_fails_at_once_and_suggests(base_args, tmp_path):
    """`runs/pretrain-tiy` is a path with a typo, not the Hub repository `pretrain-tiy` of a user `runs`."""
    (tmp_path / "runs" / "pretrain-tiny").mkdir(parents=True)
    done = pretrain_cli(*base_args, "--model_name_or_path", "runs/pretrain-tiy", cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert (
        error_line(done) == "error: model runs/pretrain-tiy: no such file or folder; did you mean runs/pretrain-tiny?"
    )


# The environment `accelerate launch --cpu --num_processes 2 ...` gives the one process it starts (accelerate 1.15).
ACCELERATE_CPU_OF_TWO = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def launched_with(monkeypatch, env: dict) -> None:
    for name in (*WORLD_SIZE_VARIABLES, *ACCELERATE_CPU_OF_TWO):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_accelerate_cpu_launch_of_two_processes_is_one_error_line(base_args, monkeypatch, capsys):
    """Issue 17: that launch trained one process and exited 0, as if two had trained."""
    from recipes.pretrain import main, make_parser

    args = make_parser().parse_args_and_config([str(arg) for arg in base_args])
    launched_with(monkeypatch, ACCELERATE_CPU_OF_TWO)
    with pytest.raises(SystemExit) as stopped:
        main(*args)
    assert stopped.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: accelerate launch was asked for several processes but started one")
    assert "--config_file ds_configs/multi_cpu.yaml" in lines[-1] and (REPO / "ds_configs" / "multi_cpu.yaml").is_file()


@pytest.mark.parametrize("where", ["flag", "flag=value", "recipe"])
def test_deepspeed_without_deepspeed_installed_is_one_error_line(where, base_args, tmp_path, monkeypatch, capsys):
    """`make install` leaves DeepSpeed out (make install-dev adds it); transformers then stopped with a traceback."""
    from recipes.pretrain import make_parser

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    args = [str(arg) for arg in base_args]
    if where == "flag":
        args += ["--deepspeed", str(REPO / "ds_configs" / "zero2.json")]
    elif where == "flag=value":
        args += [f"--deepspeed={REPO / 'ds_configs' / 'zero2.json'}"]
    else:
        recipe = {**yaml.safe_load(TINY_RECIPE.read_text(encoding="utf-8")), "deepspeed": "ds_configs/zero2.json"}
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        args[args.index(str(TINY_RECIPE))] = str(tmp_path / "recipe.yaml")
    with pytest.raises(SystemExit) as stopped:
        make_parser().parse_args_and_config(args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'error: --deepspeed needs DeepSpeed, which is not installed: pip install -e ".[deepspeed]" (or make install-dev)'
    )


@pytest.mark.parametrize(
    "env",
    [
        {},  # python recipes/sft.py
        {"ACCELERATE_USE_CPU": "True"},  # accelerate launch --cpu: one process asked, one started
        {**ACCELERATE_CPU_OF_TWO, "WORLD_SIZE": "2"},  # torchrun or accelerate's multi-process launcher
        {**ACCELERATE_CPU_OF_TWO, "PMI_SIZE": "2"},  # a MULTI_CPU config run by mpirun
    ],
)
def test_launches_that_started_what_they_asked_for_pass(env, monkeypatch):
    launched_with(monkeypatch, env)
    check_one_process_launch()


def test_hub_ids_are_only_owner_slash_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_hub_id("jingyaogong/MiniMind2")
    assert not is_hub_id("runs/pretrain-tiy")  # its first part is a local folder
    assert not is_hub_id("data/pretrain.jsonl") and not is_hub_id("model") and not is_hub_id("a/b/c")
    assert check_name_or_path("jingyaogong/MiniMind2", "model") == "jingyaogong/MiniMind2"
    with pytest.raises(FileNotFoundError, match=re.escape("model ./nope: no such file or folder")):
        check_name_or_path("./nope", "model")


def test_help_leads_with_recipe_flags_and_points_to_the_rest():
    short = pretrain_cli("--help")
    full = pretrain_cli("--help_all")
    assert short.returncode == full.returncode == 0
    for flag in (
        "--config FILE.yaml",
        "--resume_from_checkpoint",
        "`auto`",
        "--model_config",
        "--block_size",
        "--learning_rate",
        "--help_all",
    ):
        assert flag in short.stdout, flag
    assert short.stdout.index("recipe flags:") < short.stdout.index("training flags:")
    assert "--lora_r" not in short.stdout  # pretraining trains every weight
    assert len(short.stdout.splitlines()) * 3 < len(full.stdout.splitlines())


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(base_args, tmp_path):
    out = tmp_path / "run"
    argv = [*base_args, "--max_steps", "2000", "--logging_steps", "1", "--save_steps", "1000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), *map(str, argv)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("loss" in r for r in read_metrics(out / METRICS_FILE)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and is_complete_checkpoint(checkpoints[0])
    step = int(checkpoints[0].name.split("-")[1])
    assert 1 <= step < 2000
    assert f"interrupted at step {step}; checkpoint saved to {checkpoints[0]}" in stderr
    assert "resume with: python " in stderr and stderr.rstrip().endswith("--resume_from_checkpoint auto")
    assert not (out / "model.safetensors").exists()  # no final model from an unfinished run

    resumed = pretrain_cli(
        *base_args,
        "--max_steps",
        str(step + 2),
        "--logging_steps",
        "1",
        "--save_steps",
        "1000",
        "--resume_from_checkpoint",
        "auto",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == step + 2


STAGE_CONFIGS = sorted(p for p in (REPO / "recipes" / "configs").glob("*.yaml") if not p.stem.startswith("pretrain_"))


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.stem)
def test_every_stage_config_parses_with_its_recipe(config, tmp_path):
    """A misspelled key or a bad value in a shipped YAML fails here, not on a user's GPU an hour into setup. Each is
    parsed by its stage's parser, as the pipeline parses it (the agent stage's by GRPO's)."""
    from recipes.training.pipeline_stages import STAGE_MODULES

    parser = STAGE_MODULES[config.stem.rsplit("_", 1)[0]].make_parser()
    args = parser.parse_args_and_config(["--config", str(config), "--output_dir", str(tmp_path)])
    assert args[1].output_dir == str(tmp_path)
