"""Pretraining recipe: learning, exact resume, atomic checkpoints, errors before training, schedules, MoE aux loss."""

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_run_card
from matplotlib.image import imread
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from data_process.collators import PackedBlockCollator
from data_process.pack import load_blocks
from data_process.pack import main as pack_main
from modeling_miniminds import MiniMindForCausalLM, get_config
from recipes.training.args import resolve_precision
from recipes.training.callbacks import METRICS_FILE, PLOT_FILE, read_metrics
from recipes.training.checkpoints import (
    STAGING_PREFIX,
    latest_checkpoint,
    prepare_output_dir,
    resolve_resume_checkpoint,
)
from recipes.training.cli import RecipeParser
from recipes.training.packed_text import (
    PretrainConfig,
    PretrainModelArguments,
    PretrainScriptArguments,
    PretrainTrainer,
    build_model,
)
from recipes.training.pretraining import pretrain as main

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "configs" / "pretrain_tiny.yaml"


def make_parser():
    return RecipeParser((PretrainScriptArguments, PretrainConfig, PretrainModelArguments))


def parse(output_dir, corpus, tokenizer_dir, *overrides, eval_file=True):
    """Recipe arguments as the CLI would parse them: the tiny recipe file, the fixtures' data, then overrides."""
    argv = [
        "--config",
        str(TINY_RECIPE),
        "--dataset_name",
        str(corpus["pretrain"]),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
    ]
    if eval_file:
        argv += ["--eval_dataset_name", str(Path(corpus["eval"]) / "pretrain.jsonl")]
    return make_parser().parse_args_and_config(argv + list(overrides))


def train_losses(output_dir):
    """Per-step training loss, lr and grad norm from the final trainer_state.json."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: (h["loss"], h["learning_rate"], h["grad_norm"]) for h in history if "loss" in h}


class StopAfter(TrainerCallback):
    """Ends training after `step` optimizer steps, as an interrupted job would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_tiny_model_learns_and_saves_a_complete_model(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """Validation loss falls well below its start, and the output folder is a self-contained HF model."""
    out = tmp_path / "run"
    result = main(*parse(out, tiny_corpus, tiny_tokenizer_dir, "--max_steps", "60", "--eval_steps", "30"))

    before, after = result["before"], result["after"]
    assert before["eval_loss"] > 5.0  # about ln(512) for an untrained 512-token model
    assert after["eval_loss"] < 0.6 * before["eval_loss"]
    assert after["perplexity"] == pytest.approx(math.exp(after["eval_loss"]))
    assert result["steps"] == 60
    # 60 steps of 16 blocks of 128 tokens, less the short last batch of each epoch
    assert result["tokens"] % 128 == 0 and 50 * 16 * 128 < result["tokens"] <= 60 * 16 * 128
    assert result["tokens_per_second"] >= result["tokens"] / result["seconds"]  # eval time left out
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert result["num_parameters"] == result["trainable_parameters"] == saved.num_parameters()
    assert result["output_dir"] == str(out)
    assert "from scratch for 60 optimizer steps" in assert_run_card(out, "pretrain")

    records = read_metrics(out / METRICS_FILE)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert (before["eval_loss"], after["eval_loss"]) == (evals[0], evals[-1])  # the logged start and end
    assert result["train_loss"] == [r["loss"] for r in records if "loss" in r][-1]
    state = json.loads((out / "trainer_state.json").read_text())
    assert result["tokens"] == state["num_input_tokens_seen"]
    assert [r["step"] for r in records if "loss" in r] == list(range(5, 61, 5))
    assert all(r["tokens_per_second"] > 0 for r in records if "loss" in r)
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 30, 60]
    assert imread(out / PLOT_FILE).shape[0] == 400  # loss and learning rate; no reward row

    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_minimind.MiniMindForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == config["eos_token_id"]

    # Load through trust_remote_code in a fresh Python where the MiniMinds package cannot be imported.
    ids = tokenizer("3 + 4 = 7. The capital of", return_tensors="pt").input_ids
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["modeling_miniminds"] = None
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        ids = torch.load(sys.argv[2])
        with torch.no_grad():
            torch.save(model(ids).logits, sys.argv[3])
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        assert generated.past_key_values.get_seq_length() == ids.shape[1] + 3, "generation must reuse its KV cache"
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    local = MiniMindForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = local(ids).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


RESUME_ARGS = (
    "--max_steps",
    "8",
    "--save_steps",
    "4",
    "--logging_steps",
    "1",
    "--eval_strategy",
    "no",
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "2",
    "--warmup_steps",
    "2",
    "--block_size",
    "64",
)


def test_best_fit_packing_trains_on_rows_that_start_at_documents(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """--packing best_fit: rows of whole documents padded in the batch; the pads are neither counted as trained
    tokens nor targets, and the model learns as on full blocks."""
    out = tmp_path / "run"
    flags = ("--max_steps", "30", "--eval_steps", "30", "--packing", "best_fit")
    result = main(*parse(out, tiny_corpus, tiny_tokenizer_dir, *flags))
    assert result["after"]["eval_loss"] < 0.7 * result["before"]["eval_loss"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    rows = load_blocks(tiny_corpus["pretrain"], tokenizer, 128, len(tokenizer), packing="best_fit")
    assert set(rows.column_names) == {"input_ids", "seq_lengths"}
    full = 30 * 16 * 128  # steps x rows x block
    assert 0.8 * full < result["tokens"] < full  # the pads are not counted; short documents fill most of each row

    blocks = tmp_path / "blocks"
    argv = ["--input", str(Path(tiny_corpus["eval"]) / "pretrain.jsonl"), "--output", str(blocks)]
    assert pack_main([*argv, "--tokenizer", str(tiny_tokenizer_dir), "--block_size", "128", "--num_proc", "1"]) == 0
    mixed = parse(tmp_path / "mixed", tiny_corpus, tiny_tokenizer_dir, "--packing", "best_fit", eval_file=False)
    mixed[0].eval_dataset_name = str(blocks)
    with pytest.raises(ValueError, match="packed differently from the training data"):
        main(*mixed)


def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """Optimizer, scheduler, RNG and data position all come back: the loss curve continues exactly."""
    main(*parse(tmp_path / "full", tiny_corpus, tiny_tokenizer_dir, *RESUME_ARGS, eval_file=False))
    interrupted = tmp_path / "interrupted"
    main(*parse(interrupted, tiny_corpus, tiny_tokenizer_dir, *RESUME_ARGS, eval_file=False), callbacks=[StopAfter(4)])
    assert sorted(train_losses(interrupted)) == [1, 2, 3, 4]
    main(
        *parse(
            interrupted,
            tiny_corpus,
            tiny_tokenizer_dir,
            *RESUME_ARGS,
            "--resume_from_checkpoint",
            "auto",
            eval_file=False,
        )
    )

    full, resumed = train_losses(tmp_path / "full"), train_losses(interrupted)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7), f"step {step}"
    full_weights = load_file(tmp_path / "full" / "model.safetensors")
    for name, tensor in load_file(interrupted / "model.safetensors").items():
        torch.testing.assert_close(tensor, full_weights[name], rtol=1e-5, atol=1e-6)
    logged_steps = [r["step"] for r in read_metrics(interrupted / METRICS_FILE) if "loss" in r]
    assert logged_steps == list(range(1, 9))


KILL_DURING_SECOND_CHECKPOINT = """
import os, signal, sys
from transformers import Trainer
from recipes.training.cli import RecipeParser
from recipes.training.packed_text import PretrainConfig, PretrainModelArguments, PretrainScriptArguments
from recipes.training.pretraining import pretrain

write_rng_state = Trainer._save_rng_state

def killed_mid_checkpoint(self, output_dir):
    # Weights and optimizer of checkpoint-4 are written by now; the RNG and trainer state are not.
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return write_rng_state(self, output_dir)

Trainer._save_rng_state = killed_mid_checkpoint
parser = RecipeParser((PretrainScriptArguments, PretrainConfig, PretrainModelArguments))
pretrain(*parser.parse_args_and_config(sys.argv[1:]))
"""


def test_kill_during_checkpoint_leaves_previous_checkpoint_usable(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """A SIGKILL while checkpoint-4 is being written leaves checkpoint-2 intact and resume picks it."""
    out = tmp_path / "run"
    args = [
        "--config",
        str(TINY_RECIPE),
        "--dataset_name",
        str(tiny_corpus["pretrain"]),
        "--tokenizer_name_or_path",
        str(tiny_tokenizer_dir),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        "--eval_strategy",
        "no",
        "--per_device_train_batch_size",
        "4",
        "--block_size",
        "64",
        "--logging_steps",
        "1",
    ]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_CHECKPOINT, *args], cwd=REPO)
    assert killed.returncode == -9
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "checkpoint-4").exists()
    assert (out / f"{STAGING_PREFIX}4" / "checkpoint-4" / "model.safetensors").is_file()  # the torn write

    result = main(*make_parser().parse_args_and_config(args + ["--resume_from_checkpoint", "auto"]))
    assert result["steps"] == 6
    assert not list(out.glob(STAGING_PREFIX + "*"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert sorted(train_losses(out)) == list(range(1, 7))


def test_resume_picks_the_latest_complete_checkpoint(tmp_path):
    for step, files in ((2, ["model.safetensors", "trainer_state.json"]), (10, ["model.safetensors"]), (4, [])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    (tmp_path / f"{STAGING_PREFIX}12").mkdir()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint("auto", tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint("auto", tmp_path / "empty") is None
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint("true", tmp_path / "empty")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-10"), tmp_path)


def test_fresh_run_refuses_a_folder_with_checkpoints_unless_overwriting(tmp_path):
    """Old checkpoints left next to a new run would win the rotation and a later resume: refuse, or delete them."""
    (tmp_path / "checkpoint-30").mkdir()
    (tmp_path / f"{STAGING_PREFIX}40").mkdir()
    with pytest.raises(ValueError, match="already holds checkpoint-30"):
        prepare_output_dir(tmp_path, resuming=False)
    prepare_output_dir(tmp_path, resuming=True)
    assert (tmp_path / "checkpoint-30").exists() and not (tmp_path / f"{STAGING_PREFIX}40").exists()
    prepare_output_dir(tmp_path, resuming=False, overwrite=True)
    assert not (tmp_path / "checkpoint-30").exists()


class ModelSeen(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_activation_checkpointing_gives_the_same_losses(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    common = (
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--per_device_train_batch_size",
        "4",
        "--block_size",
        "64",
        "--save_strategy",
        "no",
    )
    main(*parse(tmp_path / "plain", tiny_corpus, tiny_tokenizer_dir, *common, eval_file=False))
    seen = ModelSeen()
    main(
        *parse(
            tmp_path / "gc",
            tiny_corpus,
            tiny_tokenizer_dir,
            *common,
            "--activation_checkpointing",
            "true",
            eval_file=False,
        ),
        callbacks=[seen],
    )
    assert seen.model.is_activation_checkpointing
    plain, checkpointed = train_losses(tmp_path / "plain"), train_losses(tmp_path / "gc")
    assert sorted(plain) == [1, 2, 3]
    for step in plain:
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-5)


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def small_vocab_model(tmp_path):
    """A saved model whose 100-token vocabulary is smaller than the 512-token test tokenizer."""
    folder = tmp_path / "small-vocab-model"
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=100)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("missing data", FileNotFoundError, "nope.jsonl"),
        ("empty data", ValueError, "empty"),
        ("bad record", ValueError, "bad.jsonl:2"),
        ("shorter than a block", ValueError, "block"),
        ("missing tokenizer", FileNotFoundError, "no-tokenizer"),
        ("tokenizer larger than model", ValueError, "512 tokens but the model .* vocab_size=100"),
    ],
)
def test_bad_inputs_fail_before_training(
    case, error, message, tmp_path, tiny_corpus, tiny_tokenizer_dir, small_vocab_model
):
    """Each mistake stops the run with a message naming the culprit, before any training step."""
    dataset, tokenizer, extra = tiny_corpus["pretrain"], tiny_tokenizer_dir, []
    if case == "missing data":
        dataset = tmp_path / "nope.jsonl"
    elif case == "empty data":
        dataset = write_jsonl(tmp_path / "empty.jsonl", [])
    elif case == "bad record":
        dataset = tmp_path / "bad.jsonl"
        dataset.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    elif case == "shorter than a block":
        dataset = write_jsonl(tmp_path / "short.jsonl", ["just a few words"])
    elif case == "missing tokenizer":
        tokenizer = tmp_path / "no-tokenizer"
    elif case == "tokenizer larger than model":
        extra = ["--model_name_or_path", str(small_vocab_model)]
    out = tmp_path / "run"
    argv = [
        "--config",
        str(TINY_RECIPE),
        "--dataset_name",
        str(dataset),
        "--tokenizer_name_or_path",
        str(tokenizer),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        *extra,
    ]
    with pytest.raises(error, match=message):
        main(*make_parser().parse_args_and_config(argv))
    assert not (out / METRICS_FILE).exists()


def test_preset_takes_vocab_and_special_tokens_from_tokenizer(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = build_model(PretrainModelArguments(model_config="minimind-tiny"), tokenizer, block_size=128)
    assert model.config.vocab_size == len(tokenizer) == 512
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with pytest.raises(ValueError, match="max_position_embeddings"):
        build_model(PretrainModelArguments(model_config="minimind-tiny"), tokenizer, block_size=10**6)


def test_collator_restarts_positions_and_masks_document_starts():
    """Two documents in a block: no attention mask, positions restart, the second document's first token is
    not predicted from the first document."""
    rows = [{"input_ids": [5, 6, 7, 2, 8, 9], "position_ids": [0, 1, 2, 3, 0, 1]}] * 2
    batch = PackedBlockCollator()(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["labels"][0].tolist() == [-100, 6, 7, 2, -100, 9]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]] * 2
    contiguous = PackedBlockCollator(document_mask=False)(rows)
    assert set(contiguous) == {"input_ids", "labels"}
    assert contiguous["labels"].tolist() == contiguous["input_ids"].tolist()


def tiny_trainer(tmp_path, model=None, **config):
    model = model or MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=64))
    args = PretrainConfig(
        output_dir=str(tmp_path), report_to="none", disable_tqdm=True, eval_strategy="no", eval_on_start=False, **config
    )
    return PretrainTrainer(model=model, args=args, data_collator=PackedBlockCollator())


def learning_rates(trainer, steps):
    """The learning rate before each of `steps` optimizer steps, then after the last one."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates + trainer.lr_scheduler.get_last_lr()


def test_cosine_with_min_lr_schedule(tmp_path):
    rates = learning_rates(tiny_trainer(tmp_path, learning_rate=1e-3, warmup_steps=10, min_lr_rate=0.1), 100)
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(1e-4)


def test_warmup_stable_decay_schedule(tmp_path):
    trainer = tiny_trainer(
        tmp_path, learning_rate=1e-3, warmup_steps=10, lr_scheduler_type="warmup_stable_decay", decay_ratio=0.2
    )
    rates = learning_rates(trainer, 100)
    assert rates[10:80] == pytest.approx([1e-3] * 70)  # stable: 100 steps - 10 warmup - 20 decay
    assert all(a >= b for a, b in itertools.pairwise(rates[80:])) and rates[90] < rates[80]
    assert rates[-1] == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices(tmp_path):
    trainer = tiny_trainer(tmp_path, weight_decay=0.1)
    trainer.create_optimizer()
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decayed["params"] and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["params"] and all(p.ndim < 2 for p in plain["params"])
    norm_weight = trainer.model.model.norm.weight
    assert any(p is norm_weight for p in plain["params"])


def test_precision_defaults(monkeypatch):
    """fp32 on CPU; bf16 on GPUs that have it, fp16 otherwise; explicit flags win."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(None, None) == (False, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision(None, None, use_cpu=True) == (False, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(None, None) == (True, False)
    assert resolve_precision(None, True) == (False, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(None, None) == (False, True)
    assert resolve_precision(False, False) == (False, False)


@pytest.fixture
def tiny_moe_config(tmp_path):
    config = get_config("minimind-tiny", use_moe=True, num_experts=4, num_experts_per_tok=1, vocab_size=512)
    config.save_pretrained(tmp_path / "moe-config")
    return tmp_path / "moe-config"


def test_moe_aux_loss_is_logged(tmp_path, tiny_corpus, tiny_tokenizer_dir, tiny_moe_config):
    out = tmp_path / "moe"
    result = main(
        *parse(
            out,
            tiny_corpus,
            tiny_tokenizer_dir,
            "--model_config",
            str(tiny_moe_config),
            "--max_steps",
            "4",
            "--logging_steps",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--eval_steps",
            "4",
        )
    )
    aux = [r["aux_loss"] for r in read_metrics(out / METRICS_FILE) if "loss" in r]
    assert len(aux) == 2 and all(value > 0 for value in aux)
    assert math.isfinite(result["after"]["eval_loss"])
    assert json.loads((out / "config.json").read_text())["use_moe"] is True


def test_moe_aux_loss_counts_once_per_step_and_stays_out_of_eval_loss(tmp_path, tiny_moe_config):
    """The model adds coef * aux to every micro-batch loss; with token-normalised accumulation that would count it
    gradient_accumulation_steps times. Eval loss must be the plain LM loss, so perplexity is perplexity."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config(tiny_moe_config))
    trainer = tiny_trainer(tmp_path, model=model, gradient_accumulation_steps=4)
    inputs = PackedBlockCollator()([{"input_ids": torch.randint(3, 512, (32,)).tolist()}] * 2)
    num_items = torch.tensor(inputs["labels"][:, 1:].numel())
    coef = model.config.router_aux_loss_coef

    model.train()
    trainer.current_gradient_accumulation_steps = 4
    outputs = model(**inputs, num_items_in_batch=num_items)
    loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items)
    expected = outputs.loss - coef * outputs.aux_loss + coef * outputs.aux_loss / 4
    torch.testing.assert_close(loss, expected)

    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, inputs)
        logits = model(**inputs).logits
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 512), inputs["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(eval_loss, plain)


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "configs").glob("pretrain_*.yaml")), ids=lambda p: p.stem)
def test_recipe_files_parse(recipe, tmp_path):
    """Every shipped recipe parses (no unknown keys), names a preset, and the GPU ones aim at ~0.5M tokens/step."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--dataset_name", "unused", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_config in ("minimind-tiny", "minimind-26m", "minimind-64m", "minimind-104m", "minimind-moe")
    tokens_per_step = (
        script_args.block_size * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    )
    if recipe.stem != "pretrain_tiny":
        assert tokens_per_step == 2**19


def test_launcher_configs_are_valid():
    import yaml

    for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
        config = json.loads((REPO / "ds_configs" / name).read_text())
        assert config["train_micro_batch_size_per_gpu"] == "auto"
        assert config["zero_optimization"]["stage"] == int(name[4])
    launchers = (("ddp.yaml", "MULTI_GPU"), ("multi_cpu.yaml", "MULTI_GPU"), ("zero2.yaml", "DEEPSPEED"))
    for name, kind in (*launchers, ("zero3.yaml", "DEEPSPEED")):
        config = yaml.safe_load((REPO / "ds_configs" / name).read_text())
        assert config["distributed_type"] == kind and config["mixed_precision"] == "no"
    # accelerate starts several processes only through its multi-GPU launcher; on CPU the recipes switch to gloo
    assert yaml.safe_load((REPO / "ds_configs" / "multi_cpu.yaml").read_text())["num_processes"] == 2


def test_train_loss_is_reported_when_no_step_was_logged(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    """With max_steps below logging_steps no loss is logged; the summary falls back to the run's mean loss."""
    result = main(
        *parse(
            tmp_path / "run",
            tiny_corpus,
            tiny_tokenizer_dir,
            "--max_steps",
            "2",
            "--logging_steps",
            "10",
            "--block_size",
            "64",
            "--per_device_train_batch_size",
            "4",
            "--eval_strategy",
            "no",
            eval_file=False,
        )
    )
    assert not [r for r in read_metrics(tmp_path / "run" / METRICS_FILE) if "loss" in r]
    train_results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert result["train_loss"] == train_results["train_loss"] > 5.0  # the mean loss, about ln(512) after two steps
