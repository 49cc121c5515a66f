"""Shared pieces of the two-process recipe tests: launching a recipe and checking that what it saved is what the
processes trained."""

import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def short_run_args(output_dir: Path, steps: int) -> list[str]:
    """Train `steps` steps into `output_dir`, logging every step and saving and evaluating at the last one."""
    steps = str(steps)
    return [
        "--output_dir",
        str(output_dir),
        "--max_steps",
        steps,
        "--save_steps",
        steps,
        "--eval_steps",
        steps,
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]


def launch(command: list, name: str) -> str:
    """Run a launcher command from the repository root on CPU processes; its stdout and stderr."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(part) for part in command], cwd=REPO, env=env, capture_output=True, text=True, timeout=480
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def assert_saved_as_trained(output_dir: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The final weights equal the last checkpoint's and, under DeepSpeed, the fp32 master weights that the ranks'
    ZeRO partitions hold together: a save of stale, partial or one-rank weights differs. Returns the final weights."""
    final = load_file(output_dir / "model.safetensors")
    saved = load_file(checkpoint / "model.safetensors")
    assert final.keys() == saved.keys()
    for name, tensor in final.items():
        assert torch.equal(tensor, saved[name]), name
    if any(checkpoint.glob("global_step*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        master = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
        assert final.keys() <= master.keys()  # ZeRO-3 saves a tied lm_head only as the embedding
        for name, tensor in final.items():
            torch.testing.assert_close(tensor.float(), master[name], atol=0, rtol=0, msg=name)
    return final


def assert_loads_whole(model, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor of the loaded model is the saved one (tied weights included)."""
    state = model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), name
