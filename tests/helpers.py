"""Plain helpers that several test modules share (fixtures live in conftest.py): a tiny model config with inputs, and an
in-process chat server with a scripted generator standing in for the model."""

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import TrainerCallback

from modeling_miniminds import MiniMindConfig, MiniMindForCausalLM, get_config
from modeling_miniminds.inference import Delta

VOCAB = 256
CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
QUIET = ("--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true")


class ScriptedPolicy(TrainerCallback):
    """Makes the policy's `generate` answer each prompt with `reply(prompt_text)` from the start of training: a tiny
    test model cannot learn a long tool prompt in a test's time, yet TRL's tool loop (render the tools, parse the
    calls, run them, generate again, reward the trajectory) and the held-out loop must run for real."""

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply = tokenizer, reply

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.generate = self.generate

    def generate(self, input_ids, attention_mask, **kwargs):
        replies = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            replies.append(torch.tensor(self.tokenizer(self.reply(prompt), add_special_tokens=False).input_ids))
        width = max(len(r) for r in replies)
        padded = [torch.cat([r, r.new_full((width - len(r),), self.tokenizer.pad_token_id)]) for r in replies]
        return torch.cat([input_ids, torch.stack(padded).to(input_ids.device)], dim=1)


def stage_args(parser, recipe: str, model, dataset, output_dir, *flags):
    """A stage's arguments as its script parses them: the recipe file `recipes/configs/<recipe>.yaml`, the model to
    start from, the data and the output folder, quiet on the CPU, then `flags` (paths and numbers welcome)."""
    argv = ["--config", CONFIGS / f"{recipe}.yaml", "--model_name_or_path", model, "--dataset_name", dataset]
    argv += ["--output_dir", output_dir, *QUIET, *flags]
    return parser.parse_args_and_config([str(arg) for arg in argv])


def tiny_config(**overrides) -> MiniMindConfig:
    return get_config("minimind-tiny", vocab_size=VOCAB, **overrides)


def tiny_moe_config(**overrides) -> MiniMindConfig:
    return tiny_config(use_moe=True, num_experts=4, num_experts_per_tok=2, n_shared_experts=1, **overrides)


def build(config: MiniMindConfig, cls=MiniMindForCausalLM, seed: int = 0):
    torch.manual_seed(seed)
    return cls(config).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


TIMEOUT = 60  # seconds any single request may take on a busy CI machine
SCRIPTED_REPLY = (
    '<think>\nThe user wants weather.\n</think>\n\nChecking.\n<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Paris"}}\n</tool_call>'
)


class ScriptedGenerator:
    """Streams one fixed reply to every request in a few pieces, as a model would; remembers the prompts."""

    def __init__(self, tokenizer, reply: str = SCRIPTED_REPLY, pieces: int = 6, delay: float = 0.0):
        self.tokenizer, self.max_length, self.delay = tokenizer, 2048, delay
        size = -(-len(reply) // pieces)
        self.pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        self.prompts = []

    def stream(self, prompts, params, cancelled=None):
        self.prompts += prompts
        for step, piece in enumerate(self.pieces):
            time.sleep(self.delay)
            last = step + 1 == len(self.pieces)
            yield [Delta(i, piece, "stop" if last else None, step + 1) for i in range(len(prompts))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(generator, **options):
    """A ChatServer on a free 127.0.0.1 port for the duration of the block."""
    import uvicorn  # the serve extra: only the modules that serve need it, and they importorskip it first

    from modeling_miniminds.serving.serve import ChatServer, Limits

    limits = Limits(max_prompt_tokens=512, max_tokens=1500, max_body_bytes=64 * 1024)
    server = ChatServer(generator, "tiny", options.pop("limits", limits), **options)
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_until(lambda: web.started or not thread.is_alive(), "the server did not start")
    assert web.started, "the server thread ended before it started serving"
    try:
        yield SimpleNamespace(server=server, port=port, url=f"http://127.0.0.1:{port}")
    finally:
        web.should_exit = True
        thread.join(timeout=TIMEOUT)


def wait_until(condition, failure: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def raw_request(served, method, path, body=b"", headers=None):
    """(status, parsed JSON or text) of one plain HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, (
        json.loads(text) if response.getheader("content-type", "").startswith("application/json") else text
    )


def assert_run_card(folder, stage: str) -> str:
    """The run folder's README.md is the project's card for `stage`, loading through remote code (issue 17: it was
    TRL's draft, `model="None"` without `trust_remote_code`, whose quick start failed). Returns the card."""
    card = (Path(folder) / "README.md").read_text(encoding="utf-8")
    assert f"Trained by the MiniMinds `{stage}` stage (`recipes/{stage}.py`)" in card and 'model="None"' not in card
    assert f'AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)' in card
    return card
