"""Export and import: Qwen3 / Qwen3-MoE folders any Qwen3-aware tool runs, upstream MiniMind `.pth` checkpoints, and
the LoRA merge every stage and `merge_lora` share.

Each conversion must compute the same logits; a layout that does not map (shared experts, missing or extra tensors)
is refused by name, and a mistyped command or flag by one `error:` line naming the nearest real one.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.export.convert import main
from modeling_miniminds.export.merge_lora import fold_adapter
from modeling_miniminds.export.merge_lora import main as merge_lora_main
from modeling_miniminds.export.qwen3 import from_qwen3, to_qwen3
from modeling_miniminds.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_TOKENIZER = REPO.parent / "shared" / "upstream-minimind-tokenizer"
IDS = torch.tensor([[1, 40, 41, 42, 43, 2, 50, 60]])


def saved_model(folder, tokenizer_dir=None, seed=0, **config):
    torch.manual_seed(seed)
    vocab = len(load_tokenizer(tokenizer_dir)) if tokenizer_dir else 256
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=vocab, **config)).eval()
    model.save_pretrained(folder)
    if tokenizer_dir:
        load_tokenizer(tokenizer_dir).save_pretrained(folder)
    return model


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_dense_export_loads_as_plain_qwen3_with_tokenizer(tmp_path, tiny_tokenizer_dir, capsys):
    source = saved_model(tmp_path / "mm", tiny_tokenizer_dir)
    assert main(["to-qwen3", str(tmp_path / "mm"), str(tmp_path / "qwen3")]) == 0
    assert "max |logit diff|" in capsys.readouterr().out
    config = json.loads((tmp_path / "qwen3" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and "auto_map" not in config
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3")  # no remote code: a built-in class
    assert type(exported) is Qwen3ForCausalLM
    torch.testing.assert_close(logits(exported), logits(source), rtol=1e-5, atol=1e-5)
    assert len(load_tokenizer(tmp_path / "qwen3")) == len(load_tokenizer(tiny_tokenizer_dir))
    assert json.loads((tmp_path / "qwen3" / "generation_config.json").read_text())["eos_token_id"] == 2

    assert main(["from-qwen3", str(tmp_path / "qwen3"), str(tmp_path / "back")]) == 0
    back = MiniMindForCausalLM.from_pretrained(tmp_path / "back")
    torch.testing.assert_close(logits(back), logits(source), rtol=1e-5, atol=1e-5)


def test_qwen3_export_samples_with_qwen3_defaults(tmp_path, tiny_tokenizer_dir):
    """Issue 17: the export's generation config had no `do_sample`, so `transformers serve` ignored a request's
    temperature and every reply was greedy."""
    saved_model(tmp_path / "mm", tiny_tokenizer_dir)
    assert main(["to-qwen3", str(tmp_path / "mm"), str(tmp_path / "qwen3")]) == 0
    written = json.loads((tmp_path / "qwen3" / "generation_config.json").read_text())
    assert {k: written.get(k) for k in ("do_sample", "temperature", "top_p", "top_k")} == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }
    assert (written["bos_token_id"], written["eos_token_id"], written["pad_token_id"]) == (1, 2, 0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3")
    prompt = torch.tensor([[1, 40, 41]])
    torch.manual_seed(0)
    sampled = {tuple(model.generate(prompt, max_new_tokens=12)[0].tolist()) for _ in range(4)}
    greedy = {tuple(model.generate(prompt, max_new_tokens=12, do_sample=False)[0].tolist()) for _ in range(2)}
    assert len(sampled) > 1 and len(greedy) == 1  # a plain generate() samples; do_sample=False is greedy


def test_moe_without_shared_experts_exports_to_qwen3_moe(tmp_path):
    moe = dict(use_moe=True, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)
    source = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=256, **moe))
    exported = to_qwen3(source)
    assert type(exported) is Qwen3MoeForCausalLM
    torch.testing.assert_close(logits(exported), logits(source), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(from_qwen3(exported)), logits(source), rtol=1e-5, atol=1e-5)


def test_shared_experts_are_refused_with_the_reason(tmp_path, capsys):
    saved_model(tmp_path / "mm", use_moe=True, num_experts=4, num_experts_per_tok=1, n_shared_experts=1)
    assert main(["to-qwen3", str(tmp_path / "mm"), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: Qwen3-MoE has no shared experts and this model has 1")
    assert not (tmp_path / "out").exists()


def upstream_checkpoint(tmp_path, config_overrides):
    """An upstream-style checkpoint: `torch.save(model.state_dict())` (tied lm_head included) and its config."""
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=6400, **config_overrides)).eval()
    torch.save(model.state_dict(), tmp_path / "full_sft.pth")
    config = {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 6400,
        "rope_theta": 1e6,
        "flash_attn": True,
        **config_overrides,
    }
    (tmp_path / "upstream_config.json").write_text(json.dumps(config))
    return model


@pytest.mark.skipif(
    not UPSTREAM_TOKENIZER.is_dir(), reason="upstream MiniMind tokenizer folder (../shared) not present"
)
def test_upstream_checkpoint_imports_and_chats_with_upstream_tokenizer(tmp_path):
    source = upstream_checkpoint(tmp_path, {})
    argv = [
        "from-upstream",
        str(tmp_path / "full_sft.pth"),
        str(tmp_path / "out"),
        "--config",
        str(tmp_path / "upstream_config.json"),
        "--tokenizer",
        str(UPSTREAM_TOKENIZER),
    ]
    assert main(argv) == 0
    imported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    torch.testing.assert_close(logits(imported), logits(source))
    tokenizer = load_tokenizer(tmp_path / "out")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    reply = imported.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert reply.shape[1] > prompt["input_ids"].shape[1]


def test_upstream_checkpoint_with_missing_or_extra_tensors_is_refused(tmp_path, capsys):
    upstream_checkpoint(tmp_path, {})
    state = torch.load(tmp_path / "full_sft.pth", weights_only=True)
    state["model.layers.9.mlp.gate_proj.weight"] = torch.zeros(1)
    del state["model.norm.weight"]
    torch.save(state, tmp_path / "bad.pth")
    argv = [
        "from-upstream",
        str(tmp_path / "bad.pth"),
        str(tmp_path / "out"),
        "--config",
        str(tmp_path / "upstream_config.json"),
    ]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "missing ['model.norm.weight']" in error and "unexpected ['model.layers.9.mlp.gate_proj.weight']" in error


def test_cli_runs_as_a_module(tmp_path):
    saved_model(tmp_path / "mm")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeling_miniminds.export.convert",
            "to-qwen3",
            str(tmp_path / "mm"),
            str(tmp_path / "q"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RuntimeWarning" not in done.stderr


@pytest.mark.parametrize(
    "command, argv, expected",
    [
        (main, ["to-qwne3", "mm", "out"], "unknown command 'to-qwne3'; did you mean to-qwen3?"),
        (main, ["to-gguf", "mm", "out.gguf", "--outype", "q8_0"], "arguments --outype q8_0; did you mean --outtype?"),
        (main, ["push", "mm", "me/x", "--pivate"], "unrecognized argument --pivate; did you mean --private?"),
        (merge_lora_main, ["ad", "out", "--base-modle", "x"], "arguments --base-modle x; did you mean --base_model?"),
    ],
)
def test_a_typo_is_one_error_line_naming_the_nearest_command_or_flag(command, argv, expected, capsys):
    with pytest.raises(SystemExit) as raised:
        command(argv)
    assert raised.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(expected), errors


def test_merge_lora_refuses_a_folder_without_adapter_in_one_line(tmp_path, capsys):
    assert merge_lora_main([str(tmp_path), str(tmp_path / "merged")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no adapter_config.json, not a LoRA adapter folder"
    assert not (tmp_path / "merged").exists()


def test_fold_adapter_merges_a_peft_model_and_returns_any_other_unchanged():
    """The project's one `merge_and_unload`: the folded model is a plain MiniMind computing what base + adapter did."""
    torch.manual_seed(0)
    base = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=256))
    assert fold_adapter(base) is base
    without_adapter = logits(base)
    adapted = get_peft_model(base, LoraConfig(target_modules="all-linear", init_lora_weights=False))
    with_adapter = logits(adapted)
    assert not torch.allclose(with_adapter, without_adapter, atol=1e-3)  # the adapter changes the model
    folded = fold_adapter(adapted)
    assert type(folded) is MiniMindForCausalLM
    torch.testing.assert_close(logits(folded), with_adapter, rtol=1e-5, atol=1e-5)
