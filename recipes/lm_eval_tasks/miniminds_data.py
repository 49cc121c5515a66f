"""The dataset loader the task YAMLs in this folder name (`custom_dataset: !function miniminds_data.load`).

lm-eval hands a YAML's `data_files` to `datasets`, which reads relative paths against the working directory, so the
tasks ran only from the repository root. lm-eval imports this module from next to the YAML, wherever it is run from,
and here a relative path is read against the repository root; an absolute path is used as it is.
"""

from pathlib import Path

import datasets

REPOSITORY = Path(__file__).resolve().parents[2]


def load(data_files: dict[str, str], **metadata) -> datasets.DatasetDict:
    """The JSONL splits named in `data_files`; `metadata` (the YAML's, which lm-eval passes along) is not used."""
    files = {split: str(REPOSITORY / path) for split, path in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
