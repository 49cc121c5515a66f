r"""Group relative policy optimisation (TRL's GRPOTrainer) of an SFT model on prompts scored by reward functions
and/or a reward model; the SFT folder, frozen, is the reference for the KL term. Optionally with the calculator tool,
or with the tools each agent record declares.

```bash
# CPU demo on the built-in corpus, from the SFT model (minimind-tiny, a few minutes)
python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml --model_name_or_path runs/sft-tiny \
    --dataset_name data/synth/rl.jsonl --chat_eval_dataset data/synth/eval/rl.jsonl --output_dir runs/grpo-tiny

# The calculator tool: the policy may call it while it answers; tool_call_rate and tool_accuracy before and after
python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml --model_name_or_path runs/sft-tiny \
    --dataset_name data/synth/rl_tools.jsonl --use_tools true --reward_funcs accuracy format \
    --tool_eval_dataset data/synth/eval/rl_tools.jsonl --max_completion_length 160 --output_dir runs/grpo-tools-tiny

# Agentic RL: records in upstream's agent layout offer the tools they declare; rewards on the whole trajectory
python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml --model_name_or_path runs/sft-tiny \
    --dataset_name data/synth/agent.jsonl --use_tools true --reward_funcs gt valid_calls unfinished \
    --tool_eval_dataset data/synth/eval/agent.jsonl --max_completion_length 256 --output_dir runs/grpo-agent-tiny

# One GPU, the 64M model; a trained reward model next to the reward functions; loss, beta, group size are flags
python recipes/grpo.py --config recipes/configs/grpo_64m.yaml --model_name_or_path runs/sft-64m \
    --dataset_name data/rl.jsonl --reward_model_name_or_path runs/reward-64m --output_dir runs/grpo-64m \
    --loss_type cispo --beta 0.02 --num_generations 8

# LoRA: the reference is the policy with its adapter disabled; the saved folder has the adapter merged
python recipes/grpo.py --config recipes/configs/grpo_64m.yaml ... --use_peft true --lora_r 16 --learning_rate 1e-5

# Several GPUs: the other three launchers (same recipe flags after the script); vLLM generation if installed
accelerate launch --config_file ds_configs/zero2.yaml recipes/grpo.py --config recipes/configs/grpo_64m.yaml ...
torchrun --nproc_per_node 8 recipes/grpo.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/grpo.py --deepspeed ds_configs/zero3.json --config ... --use_vllm true

# Continue an interrupted run (Ctrl-C saves a checkpoint first) from its latest complete checkpoint
python recipes/grpo.py --config recipes/configs/grpo_64m.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.grpo import grpo
from recipes.training.grpo import make_parser as stage_parser


@recipe_main
def main(script_args, training_args, model_args):
    return grpo(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
