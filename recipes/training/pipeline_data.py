"""Which training file each pipeline stage reads: upstream MiniMind's published files, found by name in a folder or
fetched from its Hub dataset.

    route_folder("data/minimind", ("pretrain", "sft", "dpo"))   # {"pretrain": Path(...pretrain_hq.jsonl), ...}
    fetch_hub(("pretrain", "sft"), cache_dir)                   # the same files through hf_hub_download

Only the routing lives here; each stage's recipe reads its file's layout.
"""

from pathlib import Path

HUB_DATASET = "jingyaogong/minimind_dataset"

# Upstream's file names per stage, in order of preference (the smaller "mini" files first).
UPSTREAM_FILES = {
    "pretrain": ("pretrain_t2t_mini.jsonl", "pretrain_hq.jsonl"),
    "sft": ("sft_t2t_mini.jsonl", "sft_mini_512.jsonl"),
    "dpo": ("dpo.jsonl",),
    "reward": ("dpo.jsonl",),
    "ppo": ("rlaif.jsonl", "rlaif-mini.jsonl"),
    "grpo": ("rlaif.jsonl", "rlaif-mini.jsonl"),
    "agent": ("agent_rl.jsonl",),
}
# Distillation reads the pretraining text.
SAME_FILE_AS = {"distill": "pretrain"}


def file_stages(stages) -> list[str]:
    """The stages among `stages` that read an upstream file (distillation through pretraining's)."""
    wanted = [SAME_FILE_AS.get(stage, stage) for stage in stages]
    return [stage for stage in UPSTREAM_FILES if stage in wanted]


def expected_names(stages) -> str:
    return "; ".join(f"{stage}: {' or '.join(UPSTREAM_FILES[stage])}" for stage in file_stages(stages))


def route_folder(folder: str | Path, stages) -> dict[str, Path]:
    """The file of each stage in `folder`, by upstream's names; a missing one fails with what was found and what
    each stage expects."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: no such folder (expected a folder of upstream MiniMind's .jsonl files)")
    routed, missing = {}, []
    for stage in file_stages(stages):
        found = next((folder / name for name in UPSTREAM_FILES[stage] if (folder / name).is_file()), None)
        if found is not None:
            routed[stage] = found
        else:
            missing.append(stage)
    if missing:
        present = sorted(path.name for path in folder.glob("*.jsonl")) or ["no .jsonl file"]
        raise ValueError(
            f"--data {folder}: no file for {', '.join(missing)}; found {', '.join(present)}; expected "
            f"{expected_names(stages)}"
        )
    return with_shared_files(routed, stages)


def with_shared_files(routed: dict[str, Path], stages) -> dict[str, Path]:
    return routed | {stage: routed[source] for stage, source in SAME_FILE_AS.items() if stage in stages}


def fetch_hub(stages, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Each stage's file from the Hub dataset through `hf_hub_download`: cached (a second run downloads nothing),
    resumed after an interruption, and from a mirror when `HF_ENDPOINT` is set. The first of a stage's names that
    the dataset holds is used."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    routed = {}
    for stage in file_stages(stages):
        for name in UPSTREAM_FILES[stage]:
            try:
                routed[stage] = Path(hf_hub_download(HUB_DATASET, name, repo_type="dataset", cache_dir=cache_dir))
                break
            except EntryNotFoundError:
                continue
        if stage not in routed:
            raise ValueError(f"--data hub: {HUB_DATASET} holds none of {', '.join(UPSTREAM_FILES[stage])} ({stage})")
    return with_shared_files(routed, stages)
