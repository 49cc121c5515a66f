"""The model package against its references: transformers' Qwen3, itself unpacked/uncached, and itself reloaded."""

import functools
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import VOCAB, build, random_ids, tiny_config, tiny_moe_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen3ForCausalLM

from modeling_miniminds import (
    MiniMindConfig,
    MiniMindForCausalLM,
    MiniMindForSequenceClassification,
    get_config,
    to_qwen3,
)
from modeling_miniminds.export.qwen3 import from_qwen3


@functools.cache
def flex_attention_unavailable() -> str | None:
    """Why torch itself cannot run flex attention here (it compiles a kernel, which needs a C++ toolchain on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    query = torch.randn(1, 1, 16, 8)
    try:
        torch.compile(flex_attention)(query, query, query)
    except Exception as error:  # inductor reports a missing toolchain through several exception types
        return f"torch cannot compile flex_attention on this CPU: {type(error).__name__}: {error}"[:300]
    return None


@pytest.fixture(params=["eager", "sdpa", "flex_attention"])
def implementation(request) -> str:
    """An attention backend; flex_attention is skipped, with torch's error as the reason, where torch cannot run it."""
    if request.param == "flex_attention" and (reason := flex_attention_unavailable()):
        pytest.skip(reason)
    return request.param


@pytest.mark.parametrize("rope", [None, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}])
def test_logits_match_qwen3(rope):
    extra = {"rope_parameters": {**rope, "rope_theta": 1e6}} if rope else {}
    model = build(tiny_config(**extra))
    qwen3 = to_qwen3(model).eval()
    assert isinstance(qwen3, Qwen3ForCausalLM)
    ids = random_ids(2, 40)
    with torch.no_grad():
        diff = (model(ids).logits - qwen3(ids).logits).abs().max().item()
    assert diff < 1e-4
    back = from_qwen3(qwen3)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def test_state_dict_uses_upstream_names():
    dense = build(tiny_config()).state_dict()
    assert "model.layers.0.self_attn.q_norm.weight" in dense
    assert "model.layers.1.mlp.gate_proj.weight" in dense
    moe = build(tiny_moe_config()).state_dict()
    assert moe["model.layers.0.mlp.gate.weight"].shape == (4, 128)
    for e in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.0.mlp.experts.{e}.{proj}.weight" in moe
    assert "model.layers.0.mlp.shared_experts.0.up_proj.weight" in moe


def test_legacy_upstream_config_keys():
    legacy = dict(rope_theta=10000.0, rope_scaling=None, flash_attn=True, n_routed_experts=8, aux_loss_alpha=0.1)
    config = MiniMindConfig(use_moe=True, dropout=0.0, **legacy)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert (config.num_experts, config.router_aux_loss_coef) == (8, 0.1)
    yarn = MiniMindConfig(rope_scaling={"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048})
    assert yarn.rope_parameters["rope_type"] == "yarn" and yarn.rope_parameters["rope_theta"] == 1e6


def test_default_config_is_upstream_dense_model():
    config = MiniMindConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (6400, 768, 8)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 96)
    assert config.intermediate_size == 2432  # ceil(768 * pi / 64) * 64
    assert config.use_qk_norm and config.tie_word_embeddings and config.rope_parameters["rope_theta"] == 1e6


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(hidden_size=100, num_attention_heads=8),
            "hidden_size (100) must be divisible by num_attention_heads (8)",
        ),
        (dict(num_attention_heads=8, num_key_value_heads=3), "num_attention_heads (8) must be divisible by"),
        (dict(use_moe=True, num_experts=2, num_experts_per_tok=3), "num_experts_per_tok (3)"),
    ],
)
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MiniMindConfig(**overrides)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="minimind-tiny"):
        get_config("minimind-huge")


def test_moe_matches_per_token_reference():
    """Grouped expert execution equals running each token through its chosen experts one at a time."""
    config = tiny_moe_config()
    moe = build(config).model.layers[0].mlp
    hidden = torch.randn(2, 5, config.hidden_size)
    out, _ = moe(hidden)
    tokens = hidden.reshape(-1, config.hidden_size)
    probs = torch.softmax(moe.gate(tokens), dim=-1)
    expected = []
    for token, p in zip(tokens, probs):
        weights, experts = p.topk(2)
        weights = weights / weights.sum()
        routed = sum(w * moe.experts[int(e)](token) for w, e in zip(weights, experts))
        expected.append(routed + moe.shared_experts[0](token))
    torch.testing.assert_close(out.reshape(-1, config.hidden_size), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_attention_implementations_agree(implementation):
    model = build(tiny_config())
    ids = random_ids(2, 33)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        model.set_attn_implementation(implementation)
        logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], reference[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, 5:], reference[1, 5:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("moe", [False, True])
def test_packed_equals_unpacked(implementation, moe):
    config = tiny_moe_config() if moe else tiny_config()
    config._attn_implementation = implementation
    model = build(config)
    lengths = [7, 12, 5]
    docs = [random_ids(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    packed = torch.cat(docs, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids).logits
        separate = torch.cat([model(doc).logits for doc in docs], dim=1)
    torch.testing.assert_close(packed_logits, separate, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("moe", [False, True])
def test_generate_with_cache_equals_without(moe):
    model = build(tiny_moe_config() if moe else tiny_config())
    prompt = random_ids(1, 6)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 18)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_generation_equals_one_by_one():
    model = build(tiny_config())
    prompts = [random_ids(1, n, seed=20 + n)[0] for n in (3, 7, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **kwargs)[:, width:]
    for row, prompt in enumerate(prompts):
        single = model.generate(prompt[None], **kwargs)[0, len(prompt) :]
        assert torch.equal(batched[row], single), row


def test_gradient_checkpointing_gives_same_gradients():
    """Checkpointing recomputes each layer in backward (so it is really on) and gives the same gradients."""
    ids = random_ids(2, 20)

    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = build(tiny_moe_config()).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        calls = []  # a pre-hook: torch's recompute stops once the last saved tensor is back, before forward hooks run
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        model(ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}, len(calls)

    (plain, plain_calls), (checkpointed, checkpointed_calls) = gradients(False), gradients(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_logits_to_keep():
    model = build(tiny_config())
    ids = random_ids(2, 10)
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1])


@pytest.mark.parametrize("moe", [False, True])
def test_save_and_reload_in_process(tmp_path, moe):
    model = build(tiny_moe_config() if moe else tiny_config())
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_minimind.MiniMindForCausalLM"
    assert saved["auto_map"]["AutoModelForSequenceClassification"].endswith("MiniMindForSequenceClassification")
    assert (tmp_path / "modeling_minimind.py").exists() and (tmp_path / "configuration_minimind.py").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MiniMindForCausalLM
    ids = random_ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


REMOTE_CODE_CHECK = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_miniminds"] = None  # as if MiniMinds were not installed
    try:
        import modeling_miniminds
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_miniminds is still importable")
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_file, out_file = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.save(model(torch.load(ids_file)).logits, out_file)
    """
)


@pytest.mark.parametrize("moe", [False, True])
def test_reload_through_trust_remote_code_without_package(tmp_path, moe):
    model = build(tiny_moe_config() if moe else tiny_config())
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = random_ids(2, 16)
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "check.py"
    script.write_text(REMOTE_CODE_CHECK)
    # The same thread count as here: bit-identical logits need the same reduction order in both processes.
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "out.pt"), model(ids).logits, atol=0, rtol=0)


def test_sequence_classification_scores_last_non_pad_token(tmp_path):
    model = build(tiny_config(num_labels=1), cls=MiniMindForSequenceClassification)
    ids = random_ids(1, 6)
    right_padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    left_padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    with torch.no_grad():
        alone = model(ids).logits
        right = model(right_padded, attention_mask=(right_padded != 0).long()).logits
        left = model(left_padded, attention_mask=(left_padded != 0).long()).logits
        hidden = model.model(ids).last_hidden_state[:, -1]
    assert alone.shape == (1, 1)
    torch.testing.assert_close(alone, model.score(hidden))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MiniMindForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, alone)
