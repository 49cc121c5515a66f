r"""PPO of an SFT model against reward functions and/or a trained reward model, with a critic and a frozen reference.

PPO is written in this project, since TRL removed its PPOTrainer: a `transformers.Trainer` subclass with its own
training loop (recipes/training/ppo_trainer.py), so checkpoints, resume, Ctrl-C and metrics are every stage's.

```bash
# CPU demo on the built-in corpus, from the SFT model and the reward model (minimind-tiny, a few minutes)
python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml --model_name_or_path runs/sft-tiny \
    --reward_model_name_or_path runs/reward-tiny --dataset_name data/builtin/rl.jsonl \
    --chat_eval_dataset data/builtin/eval/rl.jsonl --output_dir runs/ppo-tiny

# Verifiable rewards only (no reward model), weighted; the critic then starts from the SFT model
python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml ... --reward_funcs accuracy format --reward_weights 1 0.2

# LoRA actor: the reference is the same weights with the adapter disabled (one backbone in memory)
python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml ... --use_peft true --lora_r 16

# One GPU, the 64M model (larger rollouts and replies); see recipes/configs/ppo_64m.yaml
python recipes/ppo.py --config recipes/configs/ppo_64m.yaml --model_name_or_path runs/sft-64m \
    --reward_model_name_or_path runs/reward-64m --dataset_name data/rl.jsonl --output_dir runs/ppo-64m

# Several processes: every gradient of actor and critic is all-reduced (DDP) or sharded (ZeRO-2/3)
accelerate launch --config_file ds_configs/ddp.yaml recipes/ppo.py --config recipes/configs/ppo_tiny.yaml ...
accelerate launch --config_file ds_configs/zero3.yaml recipes/ppo.py --config ...
torchrun --nproc_per_node 8 recipes/ppo.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/ppo.py --deepspeed ds_configs/zero3.json --config ...

# Continue an interrupted run (Ctrl-C saves a checkpoint first)
python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.ppo import make_parser as stage_parser
from recipes.training.ppo import ppo


@recipe_main
def main(script_args, training_args, model_args):
    return ppo(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
