r"""Distil a trained MiniMind teacher into a smaller student on packed text: the student learns from the labels (CE,
weight --alpha) and from the teacher's next-token distribution at --temperature (KL, weight 1 - alpha).

```bash
# CPU demo on the built-in corpus: the tiny pretraining run is the teacher, a fresh minimind-micro the student
python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml --num_train_epochs 3 \
    --dataset_name data/builtin/pretrain.jsonl --tokenizer_name_or_path runs/tokenizer --output_dir runs/pretrain-tiny
python recipes/distill.py --config recipes/configs/distill_tiny.yaml --teacher_name_or_path runs/pretrain-tiny \
    --dataset_name data/builtin/pretrain.jsonl --eval_dataset_name data/builtin/eval/pretrain.jsonl \
    --output_dir runs/distill-tiny

# One GPU, upstream's pairing: MiniMind2 (104M) teaches MiniMind2-Small (26M); any TrainingArguments flag works
python recipes/distill.py --teacher_name_or_path runs/pretrain-104m --model_config minimind-26m \
    --dataset_name data/pretrain_hq.jsonl --block_size 512 --per_device_train_batch_size 32 \
    --gradient_accumulation_steps 32 --learning_rate 1e-3 --alpha 0.5 --temperature 1.0 --output_dir runs/distill-26m

# Several GPUs: the other three launchers (same recipe flags after the script)
accelerate launch --config_file ds_configs/zero2.yaml recipes/distill.py --teacher_name_or_path ... --config ...
torchrun --nproc_per_node 8 recipes/distill.py --deepspeed ds_configs/zero2.json --teacher_name_or_path ... ...
deepspeed --num_gpus 8 recipes/distill.py --deepspeed ds_configs/zero2.json --teacher_name_or_path ... ...

# Start the student from a saved model instead of a preset; continue an interrupted run
python recipes/distill.py --teacher_name_or_path runs/pretrain-104m --model_name_or_path runs/pretrain-26m ...
python recipes/distill.py --config recipes/configs/distill_tiny.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.distill import distill
from recipes.training.distill import make_parser as stage_parser


@recipe_main
def main(script_args, training_args, model_args):
    return distill(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
