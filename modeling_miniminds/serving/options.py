"""The flags that pick and load a model and set its sampling, shared by the terminal chat and the server, and the
`Generator` they ask for."""

import torch

from ..inference import Generator, SamplingParams, load_for_decoding


def add_sampling_args(parser):
    group = parser.add_argument_group("sampling")
    group.add_argument("--max_new_tokens", type=int, default=512, help="longest reply in tokens")
    group.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    group.add_argument("--top_p", type=float, default=0.9, help="nucleus size, 1 is off")
    group.add_argument("--top_k", type=int, default=0, help="0 is off")
    group.add_argument("--repetition_penalty", type=float, default=1.0, help="1 is off")
    group.add_argument("--stop", action="append", default=[], help="stop string; repeat the flag for several")
    group.add_argument("--seed", type=int, default=None, help="sampling seed; None draws a fresh one")


def add_model_args(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--device", default=None, help="cpu | cuda | cuda:N; None: cuda when available")
    group.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16; None: bf16 on GPU, fp32 on CPU")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads; None: torch's choice")
    group.add_argument(
        "--compile",
        action="store_true",
        help="static cache + torch.compile of the decoding step (faster after a slow warm-up)",
    )
    group.add_argument(
        "--draft_model",
        default=None,
        help="speculative decoding with this small model of the same tokenizer (a distilled student) drafting "
        "--draft_tokens at a time whenever a single request decodes; the output is unchanged",
    )
    group.add_argument("--draft_tokens", type=int, default=4, help="tokens per draft of --draft_model")
    group.add_argument(
        "--prompt_lookup",
        type=int,
        default=0,
        metavar="N",
        help="speculative decoding by prompt lookup: up to N draft tokens copied from earlier in the conversation; "
        "pays where replies quote it (0 is off)",
    )
    group.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the modeling code saved in the folder instead of the installed MiniMinds classes",
    )


def sampling_params(args) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
    )


def build_generator(args) -> Generator:
    """The model, tokenizer and Generator the model flags ask for."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_decoding(args.model_dir, args.device, args.dtype, args.trust_remote_code)
    draft = None
    if args.draft_model:
        draft, _ = load_for_decoding(
            args.draft_model, str(model.device), args.dtype, args.trust_remote_code, what="--draft_model"
        )
    return Generator(
        model,
        tokenizer,
        compile=args.compile,
        prompt_lookup=args.prompt_lookup,
        draft_model=draft,
        draft_tokens=args.draft_tokens,
    )
