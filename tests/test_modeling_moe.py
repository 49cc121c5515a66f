"""Mixture of experts: the Mixtral/Qwen3-MoE router-logits convention TRL relies on, and upstream MiniMind's routing."""

import copy
import json
import logging

import pytest
import torch
from datasets import Dataset
from helpers import VOCAB, build, random_ids, tiny_config, tiny_moe_config
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils.logging import warning_once

from modeling_miniminds import MiniMindConfig, get_config

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "fast", "slow", "red", "blue", "big", "small", "and"]


def switch_balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """num_experts * sum_e(share of top-k picks that went to e * mean router probability of e), over all layers."""
    probs = torch.cat(router_logits).softmax(dim=-1)
    num_experts = probs.shape[-1]
    picks = probs.topk(top_k, dim=-1).indices.reshape(-1)
    share = torch.bincount(picks, minlength=num_experts) / probs.shape[0]
    return num_experts * (share * probs.mean(dim=0)).sum()


def test_router_logits_default_follows_use_moe():
    dense, moe = tiny_config(), tiny_moe_config()
    assert (dense.output_router_logits, dense.router_aux_loss_coef) == (False, 0.0)
    assert (moe.output_router_logits, moe.router_aux_loss_coef) == (True, 0.01)
    assert tiny_moe_config(output_router_logits=False).output_router_logits is False


def test_dense_config_never_carries_an_aux_coefficient(tmp_path):
    """A dense config.json with router_aux_loss_coef=0.01 and TRL's `output_router_logits: false` made the next TRL
    trainer switch router logits on and fail on the missing `router_logits`."""
    build(tiny_config(router_aux_loss_coef=0.01)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved.get("router_aux_loss_coef", 0.0) == 0.0
    saved.update(router_aux_loss_coef=0.01, output_router_logits=False)  # a folder saved before this fix
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert AutoConfig.from_pretrained(tmp_path).router_aux_loss_coef == 0.0


def test_moe_returns_router_logits_and_adds_balance_loss():
    model = build(tiny_moe_config(router_aux_loss_coef=0.5)).train()
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)

    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (2 * 12, 4)
    real_tokens = tuple(logits[mask.reshape(-1).bool()] for logits in out.router_logits)
    torch.testing.assert_close(out.aux_loss, switch_balance_loss(real_tokens, top_k=2))  # padding excluded
    lm_loss = model.loss_function(logits=out.logits, labels=labels, vocab_size=VOCAB)
    torch.testing.assert_close(out.loss, lm_loss + 0.5 * out.aux_loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


def assert_lm_loss_alone(model, ids: torch.Tensor) -> None:
    out = model(ids, labels=ids)
    assert out.router_logits is None and out.aux_loss is None
    torch.testing.assert_close(out.loss, model.loss_function(logits=out.logits, labels=ids, vocab_size=VOCAB))


def test_router_logits_off_gives_the_lm_loss_alone():
    model = build(tiny_moe_config(output_router_logits=False))
    ids = random_ids(2, 10)
    assert_lm_loss_alone(model, ids)
    assert model(ids, output_router_logits=True).aux_loss is not None  # the argument overrides the config


def test_dense_model_with_router_logits_on():
    """Router logits are None, not (), for a dense model, so Mixtral's balance loss (as TRL calls it) is 0."""
    model = build(tiny_config(output_router_logits=True))
    ids = random_ids(2, 10)
    assert_lm_loss_alone(model, ids)
    backbone = model.model(ids, output_router_logits=True)
    assert backbone.router_logits is None
    assert load_balancing_loss_func(backbone.router_logits, 4, 1, None) == 0


def test_moe_decodes_with_router_logits_on():
    """Qwen3-MoE fails here: a cached decoding step sees only its new tokens but a mask over the whole sequence.
    Asking for router logits must change nothing in what is decoded, cached or not."""
    model = build(tiny_moe_config())
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in the prompt
    mask[1, -1] = 0  # a padded row in the decoding step

    def greedy(**options):
        return model.generate(
            ids[:, :6],
            attention_mask=mask[:, :6],
            max_new_tokens=4,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
            **options,
        )

    plain = greedy(output_router_logits=False)
    assert plain.sequences.shape == (2, 10)
    for options in ({"output_router_logits": True}, {"output_router_logits": True, "use_cache": False}):
        decoded = greedy(**options)
        assert torch.equal(decoded.sequences, plain.sequences), options
        torch.testing.assert_close(torch.stack(decoded.logits), torch.stack(plain.logits), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        prefill = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        step = model(ids[:, 6:], attention_mask=mask, cache=prefill.cache)
        whole = model(ids, attention_mask=mask)
    torch.testing.assert_close(step.logits, whole.logits[:, 6:], atol=1e-5, rtol=1e-5)
    real_tokens = tuple(logits[mask[:, 6:].reshape(-1).bool()] for logits in step.router_logits)
    torch.testing.assert_close(step.aux_loss, switch_balance_loss(real_tokens, top_k=2))


class UpstreamMiniMindMoE(nn.Module):
    """Upstream MiniMind's MoE feed-forward (model/model_minimind.py, MOEFeedForward), restated as the reference:
    softmax over the gate logits, top-k, weights divided by their sum (plus 1e-20) whenever `norm_topk_prob`, top-1
    included; each expert gathers the tokens that picked it."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [
                nn.ModuleDict(
                    {
                        "gate_proj": nn.Linear(config.hidden_size, config.moe_intermediate_size, bias=False),
                        "up_proj": nn.Linear(config.hidden_size, config.moe_intermediate_size, bias=False),
                        "down_proj": nn.Linear(config.moe_intermediate_size, config.hidden_size, bias=False),
                    }
                )
                for _ in range(config.num_experts)
            ]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        scores = self.gate(tokens).softmax(dim=-1)
        weights, chosen = scores.topk(self.top_k, dim=-1, sorted=False)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            picked = chosen == index  # (tokens, k), at most one hit per row
            rows = picked.any(dim=-1).nonzero().flatten()
            x = tokens[rows]
            y = expert["down_proj"](nn.functional.silu(expert["gate_proj"](x)) * expert["up_proj"](x))
            out.index_add_(0, rows, y * weights[picked][:, None])
        return out.reshape(hidden_states.shape)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_logits_match_upstream_routing(top_k, norm_topk_prob):
    """Upstream checkpoints renormalise top-1 weights (to exactly 1); MiniMinds skipped that and gave other logits."""
    config = tiny_config(use_moe=True, num_experts=4, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob)
    model = build(config)
    reference = copy.deepcopy(model)
    for layer, reference_layer in zip(model.model.layers, reference.model.layers):
        reference_layer.mlp = UpstreamMiniMindMoE(config)
        reference_layer.mlp.load_state_dict(layer.mlp.state_dict(), strict=True)
    ids = random_ids(2, 20)
    with torch.no_grad():
        logits, expected = model(ids).logits, reference(ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_minimind2_configs_renormalise_only_above_top1():
    """MiniMind2-era upstream configs (`n_routed_experts`) skipped renormalisation for k = 1."""
    top1 = MiniMindConfig(use_moe=True, n_routed_experts=4, num_experts_per_tok=1, norm_topk_prob=True)
    top2 = MiniMindConfig(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, norm_topk_prob=True)
    assert (top1.norm_topk_prob, top2.norm_topk_prob) == (False, True)
    assert MiniMindConfig(use_moe=True, num_experts=4, num_experts_per_tok=1).norm_topk_prob is True


def test_moe_preset_leaves_top1_weights_unnormalised():
    config = get_config("minimind-moe")
    assert (config.num_experts_per_tok, config.norm_topk_prob) == (1, False)


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_top1_router_gradient_from_lm_loss(norm_topk_prob, caplog):
    """Renormalised top-1 weights are exactly 1, so the LM loss cannot reach the router; training warns once."""
    config = tiny_config(
        use_moe=True, num_experts=4, num_experts_per_tok=1, norm_topk_prob=norm_topk_prob, output_router_logits=False
    )
    model = build(config).train()
    ids = random_ids(2, 16)
    warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            loss = model(ids, labels=ids).loss
    loss.backward()
    router_gradient = model.model.layers[0].mlp.gate.weight.grad.abs().max().item()
    warnings = [record for record in caplog.records if "norm_topk_prob=True" in record.getMessage()]
    if norm_topk_prob:
        assert router_gradient < 1e-6 and len(warnings) == 1
    else:
        assert router_gradient > 1e-4 and not warnings


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def sentences(count: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 10, (count,), generator=generator).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=generator)) for n in lengths]


def trl_args(config_class, output_dir):
    return config_class(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        max_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
    )


def test_sft_trainer_trains_the_balance_loss(tmp_path, word_tokenizer):
    """TRL's fused LM head calls the backbone, so it dropped the aux loss the model added inside `forward`; with
    router logits it adds the same balance loss as the model."""
    from trl import SFTConfig, SFTTrainer

    model = build(tiny_moe_config())
    trainer = SFTTrainer(
        model=model,
        args=trl_args(SFTConfig, tmp_path),
        train_dataset=Dataset.from_dict({"text": sentences(4, seed=0)}),
        processing_class=word_tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch))
        model_loss = model(**batch).loss
        lm_loss = model(**batch, output_router_logits=False).loss
    torch.testing.assert_close(trl_loss, model_loss)
    assert model_loss > lm_loss


@pytest.mark.parametrize("moe", [False, True])
def test_folder_saved_by_trl_trains_again(tmp_path, word_tokenizer, moe):
    """TRL writes `output_router_logits` into config.json; a dense folder with it then failed in the next SFT and DPO
    run. The MoE folder gets `false` written, as TRL did before MiniMind MoE returned router logits."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    sft_data = Dataset.from_dict({"text": sentences(4, seed=0)})
    dpo_data = Dataset.from_dict(
        {"prompt": sentences(4, seed=1), "chosen": sentences(4, seed=2), "rejected": sentences(4, seed=3)}
    )
    folder = tmp_path / "sft"
    first = SFTTrainer(
        model=build(tiny_moe_config() if moe else tiny_config()),
        args=trl_args(SFTConfig, tmp_path / "first"),
        train_dataset=sft_data,
        processing_class=word_tokenizer,
    )
    first.train()
    first.save_model(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["output_router_logits"] is moe
    saved["output_router_logits"] = False
    (folder / "config.json").write_text(json.dumps(saved))

    for trainer_class, config_class, data in ((SFTTrainer, SFTConfig, sft_data), (DPOTrainer, DPOConfig, dpo_data)):
        model = AutoModelForCausalLM.from_pretrained(folder)
        before = {name: param.detach().clone() for name, param in model.named_parameters()}
        trainer_class(
            model=model,
            args=trl_args(config_class, tmp_path / trainer_class.__name__),
            train_dataset=data,
            processing_class=word_tokenizer,
        ).train()
        changed = [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]
        assert changed, trainer_class.__name__
