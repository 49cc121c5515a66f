r"""Supervised fine-tuning of a pretrained model on chat data (loss on assistant tokens only, conversations
packed), with LoRA as an option.

```bash
# CPU demo on the built-in corpus, from the pretraining demo's model (its tokenizer comes along)
python recipes/sft.py --config recipes/configs/sft_tiny.yaml --model_name_or_path runs/pretrain-tiny \
    --dataset_name data/builtin/sft.jsonl --eval_dataset_name data/builtin/eval/sft.jsonl \
    --chat_eval_dataset data/builtin/eval/rl.jsonl --output_dir runs/sft-tiny

# One GPU, the 64M model; any SFTConfig / TrainingArguments flag overrides the recipe file
python recipes/sft.py --config recipes/configs/sft_64m.yaml --model_name_or_path runs/pretrain-64m \
    --dataset_name data/sft_mini_512.jsonl --output_dir runs/sft-64m

# LoRA adapters on every linear layer; --merge_on_save true (or modeling_miniminds.export.merge_lora) writes a full model
python recipes/sft.py --config recipes/configs/sft_tiny.yaml ... --use_peft true --lora_r 8 --lora_alpha 16
python -m modeling_miniminds.export.merge_lora runs/sft-lora runs/sft-lora-merged

# Several GPUs: the same recipe flags after the script
accelerate launch --config_file ds_configs/zero2.yaml recipes/sft.py --config recipes/configs/sft_64m.yaml ...
torchrun --nproc_per_node 8 recipes/sft.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/sft.py --deepspeed ds_configs/zero3.json --config ...

# Continue an interrupted run from its latest complete checkpoint
python recipes/sft.py --config recipes/configs/sft_64m.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.sft import make_parser as stage_parser
from recipes.training.sft import sft


@recipe_main
def main(script_args, training_args, model_args):
    return sft(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
