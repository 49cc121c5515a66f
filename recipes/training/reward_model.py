"""A trained reward model as a scorer: loading a folder as a one-output sequence classifier, and the rewards of token
sequences, conversations and held-out pairs. The reward stage trains one; PPO and GRPO score replies with it."""

import torch
from transformers import AutoModelForSequenceClassification
from trl.trainer.reward_trainer import suppress_seqcls_warning

from modeling_miniminds.cli.paths import check_name_or_path, from_pretrained_or_explain
from modeling_miniminds.inference import pad_batch
from recipes.training.evaluation import eval_mode, group_means, group_sizes, grouped
from recipes.training.intervals import ITEMS
from recipes.training.models import align_special_tokens, check_vocab_fits
from recipes.training.preference import PAIR_LABEL


def load_reward_model(model_args, tokenizer, trust_remote_code: bool = False):
    """A one-output sequence classifier from a causal-LM (or reward) folder, its pad id set from the tokenizer (its pad
    token, else eos): the score is read at the last token that is not padding, so a config without one cannot batch."""
    name = check_name_or_path(model_args.model_name_or_path, "model")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    with suppress_seqcls_warning():  # the new score head and the unused lm_head are expected
        model = from_pretrained_or_explain(
            AutoModelForSequenceClassification,
            name,
            "model",
            num_labels=1,
            revision=model_args.model_revision,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
        )
    check_vocab_fits(tokenizer, model.config.vocab_size, name)
    align_special_tokens(model, tokenizer)
    return model


@torch.no_grad()
def score_ids(
    model, sequences: list[list[int]], pad_token_id: int, padding_side: str = "right", batch_size: int = 32
) -> torch.Tensor:
    """The reward of each token sequence, in float32 on the CPU."""
    scores = []
    with eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            input_ids, attention_mask = pad_batch(sequences[start : start + batch_size], pad_token_id, padding_side)
            logits = model(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), use_cache=False
            ).logits
            scores.append(logits[:, 0].float().cpu())
    return torch.cat(scores)


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """The reward of whole conversations, tokenized with the chat template as in training (PPO and GRPO use this)."""
    sequences = [
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        for messages in conversations
    ]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_ids(model, sequences, pad_token_id, batch_size=batch_size).tolist()


def pairwise_metrics(model, pairs, pad_token_id: int, batch_size: int = 32) -> dict:
    """On tokenized pairs (`chosen_ids`, `rejected_ids`): the fraction where the chosen side scores higher, and the
    mean score of each side; with a `rejected_kind` column, the fraction per kind of rejected reply too
    (`per_kind`, `per_kind_n`), which tells a model that ranks by form from one that checks the answer."""
    chosen = score_ids(model, pairs["chosen_ids"], pad_token_id, batch_size=batch_size)
    rejected = score_ids(model, pairs["rejected_ids"], pad_token_id, batch_size=batch_size)
    right = (chosen > rejected).int().tolist()
    metrics = {
        "pairwise_accuracy": round(sum(right) / len(right), 4),
        "mean_chosen_score": round(chosen.mean().item(), 4),
        "mean_rejected_score": round(rejected.mean().item(), 4),
        ITEMS: {"pairwise_accuracy": right},
    }
    kinds = pairs[PAIR_LABEL] if PAIR_LABEL in pairs.column_names else None
    if kinds and all(kinds):
        per_kind = grouped(kinds, right)
        metrics["per_kind"], metrics["per_kind_n"] = group_means(per_kind), group_sizes(per_kind)
    return metrics
