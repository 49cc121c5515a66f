"""The sampling layer: greedy output equal to `model.generate` (padding, cache pruning, static cache, reordered
weights), text streamed without split characters or stop strings, stop tokens, and sampling settings that do what
they say. Tiny model, no compilation."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.inference import (
    Generator,
    PackedLinear,
    PromptLookup,
    SamplingParams,
    StopStrings,
    TextStream,
    apply_repetition_penalty,
    generate_completions,
    pad_batch,
    prepare_for_decoding,
)
from modeling_miniminds.tokenizer import load_tokenizer

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a second OpenMP thread on a busy 2-core machine makes every op
    wait for it (this file ran 4x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["the cat sat on the mat", "one", "what is two plus three? the answer is"]
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def hf_greedy(model, prompt, max_new_tokens, eos_token_id):
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=0,
        )
    ids = output[0, len(prompt) :].tolist()
    return ids[: ids.index(eos_token_id)] if eos_token_id in ids else ids


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_batched_greedy_equals_model_generate_row_by_row(model, tokenizer, prompts, cache_implementation):
    """Left padding, per-row positions, and pruning finished rows from the cache must not change any row."""
    expected = [hf_greedy(model, p, GREEDY.max_new_tokens, tokenizer.eos_token_id) for p in prompts]
    generator = Generator(model, tokenizer, cache_implementation=cache_implementation)
    completions = generator.generate(prompts, GREEDY)
    assert [c.token_ids for c in completions] == expected
    for completion, ids in zip(completions, expected):
        assert completion.finish_reason == ("length" if len(ids) == GREEDY.max_new_tokens else "stop")
        assert completion.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_text_cut_inside_a_character_flushes_what_decode_gives(tokenizer):
    """A reply whose tokens stop inside a multi-byte character: streaming holds the bytes back, and the flush at the
    end gives them as `decode` does (U+FFFD), so a finished reply's text is the decode of its tokens."""
    ids = tokenizer.encode("clef 𝄞", add_special_tokens=False)
    cut = ids[:-1]
    stream = TextStream(tokenizer)
    streamed = "".join(stream.push(token) for token in cut)
    assert streamed == "clef "  # nothing of the half character is streamed
    assert streamed + stream.flush() == tokenizer.decode(cut) and tokenizer.decode(cut).endswith("\ufffd")
    assert stream.flush() == ""


def test_pad_batch_pads_either_side_and_masks_only_the_padding():
    input_ids, attention_mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    input_ids, attention_mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]] and attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_generate_completions_is_greedy_per_row_in_any_batch_and_stops_before_eos(model, tokenizer, prompts):
    """Probes and tools decode left-padded batches through `generate`; no row may change with its neighbours."""
    expected = [hf_greedy(model, p, GREEDY.max_new_tokens, tokenizer.eos_token_id) for p in prompts]
    for batch_size in (1, 2, None):
        completions = generate_completions(model, tokenizer, prompts, GREEDY.max_new_tokens, batch_size)
        assert [c.token_ids for c in completions] == expected
    torch.manual_seed(0)  # random weights repeat one greedy token; a sample has a first new token to stop at
    ids = generate_completions(model, tokenizer, prompts[:1], 12, do_sample=True, top_k=0)[0].token_ids
    end = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    torch.manual_seed(0)
    stopped = generate_completions(model, tokenizer, prompts[:1], 12, do_sample=True, top_k=0, eos_token_id=ids[end])[0]
    assert (stopped.token_ids, stopped.finish_reason) == (ids[:end], "stop")
    assert stopped.text == tokenizer.decode(ids[:end], skip_special_tokens=True)
    assert stopped.prompt_tokens == len(prompts[0])


def test_prepare_for_decoding_keeps_values_and_greedy_output(tokenizer, prompts):
    torch.manual_seed(1)
    config = get_config("minimind-tiny", vocab_size=len(tokenizer))
    reference = MiniMindForCausalLM(config).eval()
    prepared = prepare_for_decoding(MiniMindForCausalLM(config))
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        prepared(ids)  # several rows: the Linears pack their initial weights for oneDNN
    prepared.load_state_dict(reference.state_dict())  # which must not leave a stale packed copy
    prepare_for_decoding(prepared)
    assert not prepared.lm_head.weight.is_contiguous() and isinstance(prepared.lm_head, PackedLinear)
    with torch.no_grad():
        torch.testing.assert_close(prepared(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prepared(ids[:, :1]).logits, reference(ids[:, :1]).logits, rtol=1e-5, atol=1e-5)
    expected = [hf_greedy(reference, p, GREEDY.max_new_tokens, tokenizer.eos_token_id) for p in prompts]
    assert [c.token_ids for c in Generator(prepared, tokenizer).generate(prompts, GREEDY)] == expected


def test_compiled_step_of_a_prepared_model_keeps_batched_greedy_output(tokenizer, prompts):
    """Several rows go through the packed weights when eager; a compiled step must trace without them (~10 s)."""
    torch.manual_seed(2)
    prepared = prepare_for_decoding(MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))))
    params = SamplingParams(max_new_tokens=6, temperature=0)
    expected = Generator(prepared, tokenizer).generate(prompts[:2], params)
    assert Generator(prepared, tokenizer, compile=True).generate(prompts[:2], params) == expected


def test_text_stream_never_splits_a_multibyte_character(tokenizer):
    """Byte-level BPE splits the UTF-8 bytes of rare characters across tokens; a delta must never hold half of one."""
    text = "naïve café → 数学 🙂 done"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split())  # some characters really are split over several tokens
    stream = TextStream(tokenizer)
    deltas = [stream.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_stop_strings_hold_back_possible_starts_and_cut_at_the_first():
    stops = StopStrings(["\nUser:", "END"])
    assert stops.feed("Hello") == ("Hello", False)
    assert stops.feed(" wor\nUs") == (" wor", False)  # "\nUs" may begin "\nUser:"
    assert stops.feed("eless EN") == ("\nUseless ", False)
    assert stops.feed("D and more") == ("", True)
    assert StopStrings(["xy"]).feed("abcx") == ("abc", False)


@pytest.mark.parametrize("prompt_lookup", [0, 4])
def test_stop_string_ends_the_reply_before_it(model, tokenizer, prompts, prompt_lookup):
    full = Generator(model, tokenizer).generate(prompts[:1], GREEDY)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"the greedy reply {full!r} has no usable middle"
    generator = Generator(model, tokenizer, prompt_lookup=prompt_lookup)
    cut = generator.generate(prompts[:1], SamplingParams(max_new_tokens=12, temperature=0, stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_end_of_turn_token_stops_without_being_decoded(model, tokenizer, prompts):
    generator = Generator(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generator.stop_ids
    seeded = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)  # random weights repeat one greedy token
    ids = generator.generate(prompts[:1], seeded)[0].token_ids
    first_new = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    generator.stop_ids = {ids[first_new]}  # pretend that token ends the turn
    stopped = generator.generate(prompts[:1], seeded)[0]
    assert (stopped.token_ids, stopped.finish_reason) == (ids[:first_new], "stop")


def test_seeded_sampling_repeats_whatever_else_is_in_the_batch(model, tokenizer, prompts):
    generator = Generator(model, tokenizer)
    seeded = SamplingParams(max_new_tokens=10, temperature=1.5, top_p=0.95, seed=7)
    alone = generator.generate(prompts[:1], seeded)[0].token_ids
    batched = generator.generate(prompts, [seeded, SamplingParams(max_new_tokens=3), GREEDY])[0].token_ids
    other_seed = generator.generate(prompts[:1], SamplingParams(max_new_tokens=10, temperature=1.5, seed=8))[0]
    assert alone == batched
    assert other_seed.token_ids != alone


def test_top_k_1_and_a_tiny_top_p_are_greedy(model, tokenizer, prompts):
    generator = Generator(model, tokenizer)
    greedy = [c.token_ids for c in generator.generate(prompts, GREEDY)]
    for params in (SamplingParams(max_new_tokens=12, top_k=1), SamplingParams(max_new_tokens=12, top_p=1e-6)):
        assert [c.token_ids for c in generator.generate(prompts, params)] == greedy


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 50), torch.randint(0, 50, (2, 7))
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter_(1, ids, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, torch.full((2, 1), 1.3)), expected)


def test_strong_repetition_penalty_avoids_prompt_and_reply_tokens(model, tokenizer, prompts):
    """Random weights repeat one greedy token forever; a huge penalty must forbid every token seen so far."""
    params = SamplingParams(max_new_tokens=8, temperature=0, repetition_penalty=1e4)
    for prompt, completion in zip(prompts, Generator(model, tokenizer).generate(prompts, params)):
        ids = completion.token_ids
        assert len(set(ids)) == len(ids) and not set(ids) & set(prompt)


@pytest.mark.parametrize("prompt_lookup", [0, 4])
def test_cancelled_request_leaves_the_batch_and_the_rest_finish(model, tokenizer, prompts, prompt_lookup):
    generator = Generator(model, tokenizer, prompt_lookup=prompt_lookup)
    generator.stop_ids = set()
    finished = {}
    for deltas in generator.stream(prompts, GREEDY, cancelled=lambda i: i == 1):
        finished.update({d.index: (d.finish_reason, d.completion_tokens) for d in deltas if d.finish_reason})
    assert finished == {0: ("length", 12), 1: ("cancelled", 0), 2: ("length", 12)}


def test_prompt_lookup_drafts_what_followed_the_first_occurrence_of_the_longest_suffix():
    lookup = PromptLookup([5, 2, 3, 8, 1, 2, 3, 6, 4], num_tokens=3)
    assert lookup.draft([1, 2, 3], limit=10) == [6, 4, 1]  # (1, 2, 3) beats the earlier (2, 3) -> 8
    assert lookup.draft([1, 2, 3, 7, 2, 3], limit=10) == [8, 1, 2]  # (7, 2, 3) is new; (2, 3) first led to 8
    assert lookup.draft([1, 2, 3, 7, 2, 3], limit=2) == [8, 1]
    assert lookup.draft([1, 2, 3, 7, 2, 3, 9], limit=10) == []  # a single token is too weak a match


def test_prompt_lookup_keeps_greedy_output_and_drafts(model, tokenizer, prompts):
    """Random weights repeat one greedy token, so drafts are made and kept; rows of different lengths leave the batch
    until one decodes alone (where drafting starts) and it ends at its length inside a draft."""
    params = [SamplingParams(max_new_tokens=n, temperature=0) for n in (5, 40, 17)]
    expected = Generator(model, tokenizer).generate(prompts, params)
    generator = Generator(model, tokenizer, prompt_lookup=6)
    assert generator.generate(prompts, params) == expected
    assert generator.accepted > 0


def test_prompt_lookup_stops_at_an_end_of_turn_token_inside_a_draft(model, tokenizer, prompts, monkeypatch):
    """Drafts are the tokens plain decoding draws (a seeded run), so all are kept until the pretend stop token."""
    seeded = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)
    ids = Generator(model, tokenizer).generate(prompts[:1], seeded)[0].token_ids
    first_new = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    monkeypatch.setattr(PromptLookup, "draft", lambda self, reply, limit: ids[len(reply) : len(reply) + min(limit, 4)])
    generator = Generator(model, tokenizer, prompt_lookup=4)
    generator.stop_ids = {ids[first_new]}
    stopped = generator.generate(prompts[:1], seeded)[0]
    assert (stopped.token_ids, stopped.finish_reason) == (ids[:first_new], "stop")
    assert generator.accepted == first_new  # every token after the first came from a draft, the stop token included


def test_prompt_lookup_keeps_seeded_sampling(tokenizer, prompts):
    """Sharpened logits make sampling repeat itself, so some drafts are kept and some rejected; the token drawn where
    a draft was rejected is the one plain decoding draws, so seeded outputs stay identical."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(6)
    for penalty in (1.0, 1.3):
        params = [
            SamplingParams(max_new_tokens=n, temperature=1.0, repetition_penalty=penalty, seed=7) for n in (10, 60, 25)
        ]
        expected = Generator(model, tokenizer).generate(prompts, params)
        generator = Generator(model, tokenizer, prompt_lookup=6)
        assert generator.generate(prompts, params) == expected
        assert generator.drafted > generator.accepted > 0


def test_draft_model_keeps_greedy_and_seeded_output(model, tokenizer, prompts):
    """Greedy, a draft that agrees with the model (itself) has every draft kept and one with other weights has some
    rejected; seeded sampling rejects the greedy drafts it does not draw. The replies are always plain decoding's."""
    torch.manual_seed(6)  # a stranger whose greedy tokens match the model's at some steps and not at others
    stranger = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).eval()
    for temperature in (0, 0.8):
        params = [SamplingParams(max_new_tokens=n, temperature=temperature, seed=3) for n in (5, 40, 17)]
        expected = Generator(model, tokenizer).generate(prompts, params)
        for draft in (model, stranger):
            generator = Generator(model, tokenizer, draft_model=draft, draft_tokens=3)
            assert generator.generate(prompts, params) == expected
            all_kept = temperature == 0 and draft is model
            assert generator.drafted > 0 and (generator.accepted == generator.drafted) == all_kept


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cache_implementation": "static", "prompt_lookup": 4}, "needs the dynamic cache, got static"),
        ({"prompt_lookup": -1}, "prompt_lookup must be >= 0"),
        ({"prompt_lookup": 4, "draft_model": "model"}, "choose one way of drafting"),
        ({"draft_model": "model", "draft_tokens": 0}, "draft_tokens must be >= 1"),
        ({"draft_model": "other vocabulary"}, "draft_model: vocabulary of 99 tokens, but the model has"),
    ],
)
def test_speculative_settings_that_cannot_work_are_refused(model, tokenizer, options, message):
    drafts = {"model": model, "other vocabulary": MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=99))}
    if "draft_model" in options:
        options = {**options, "draft_model": drafts[options["draft_model"]]}
    with pytest.raises(ValueError, match=message):
        Generator(model, tokenizer, **options)


@pytest.mark.parametrize(
    "field, value", [("temperature", -1), ("top_p", 0), ("top_k", -2), ("max_new_tokens", 0), ("repetition_penalty", 0)]
)
def test_bad_sampling_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingParams(**{field: value})


def test_prompt_longer_than_the_context_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="exceed the model's max_position_embeddings"):
        Generator(model, tokenizer).generate([[5] * 2040], SamplingParams(max_new_tokens=10))


def test_chat_prompt_passes_enable_thinking_to_the_template(model, tokenizer):
    generator = Generator(model, tokenizer)
    messages = [{"role": "user", "content": "hi"}]
    off = tokenizer.decode(generator.chat_prompt(messages, enable_thinking=False))
    on = tokenizer.decode(generator.chat_prompt(messages, enable_thinking=True))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n")
