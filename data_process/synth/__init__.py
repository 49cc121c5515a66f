"""Built-in bilingual corpus: small, deterministic, learnable and checkable.

Every item comes from a task family (arithmetic, comparison, counting, units, dates, small fact tables),
stated in prose for pretraining and asked as a question for SFT, DPO and RL. Assistant replies end with
an answer line (`答案：X` / `Answer: X`) that `data_process.rewards` checks.

Each item has a key naming its checkable content, the same in both languages: the operands (`add:37:45`, in
either order), the date, the unit and amount, the list counted, or the row of a fact table (`animal:cat`,
`capital:Japan`). The eval/ split holds only held-out keys and the training files none of them: 15% of
compositional keys by hash, and 15% of the rows of each fact table (animals, colour objects, countries, words
whose length is counted), whole, so no training text states a fact of a held-out row. dev/ is a second held-out
split built the same way from the next 10%: settings are chosen on dev and reported on eval. Month lengths (12
keys) and small talk are training-only. `split_of` decides a key; `split_keys` replays which keys went where.

eval/completion.jsonl (and dev/completion.jsonl) probes generalisation: held-out arithmetic, comparison, counting, unit and date statements
cut right before their answer. eval/trained_facts.jsonl is seen data on purpose: the training statement of
every trained fact, cut the same way, to measure recall. rl_tools.jsonl and eval/rl_tools.jsonl ask for arithmetic
too large to do by heart (family `calc`), for RL with the calculator tool. agent.jsonl (and eval/, dev/) holds
agent RL records in upstream MiniMind's layout: a system turn declaring several demo tools
(`data_process.demo_tools`), a question that needs one or two of them, a placeholder assistant turn, and `gt`.

    python -m data_process.synth --out data/synth --size small --seed 0
"""

from data_process.synth.builders import MAKERS, iter_keyed_records, iter_records
from data_process.synth.corpus import SIZES, build_corpus, split_keys
from data_process.synth.families import FAMILIES, PROBE_FAMILIES, Item, sample_item
from data_process.synth.heldout import DEV_ROWS, HELDOUT_PERCENT, HELDOUT_ROWS, SPLITS, TABLES, is_heldout, split_of
from data_process.synth.probes import completion_probes, trained_fact_probes

__all__ = [
    "DEV_ROWS",
    "FAMILIES",
    "HELDOUT_PERCENT",
    "HELDOUT_ROWS",
    "MAKERS",
    "PROBE_FAMILIES",
    "SIZES",
    "SPLITS",
    "TABLES",
    "Item",
    "build_corpus",
    "completion_probes",
    "is_heldout",
    "iter_keyed_records",
    "iter_records",
    "sample_item",
    "split_keys",
    "split_of",
    "trained_fact_probes",
]
