"""`make demo` end to end at test size: every stage runs and reports, and the saved model loads without MiniMinds."""

import json

from recipes.demo import main


def test_demo_runs_every_stage(tmp_path):
    main(["--output_dir", str(tmp_path), "--size", "tiny", "--vocab_size", "512", "--max_steps", "40"])
    stages = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["stages"]
    assert list(stages) == ["corpus", "tokenizer", "pretrain", "model"]
    assert all(stage["seconds"] > 0 for stage in stages.values())
    assert stages["corpus"]["pretrain_records"] > 0
    assert stages["tokenizer"]["compression"]["en"]["bytes_per_token"] > 1.0
    assert stages["pretrain"]["eval_loss"] < stages["pretrain"]["eval_loss_first"]
    model = stages["model"]
    assert model["model_class"].startswith("transformers_modules."), model["model_class"]
    assert model["facts"] > 0 and 0.0 <= model["fact_accuracy"] <= 1.0 and model["samples"]
    assert "| pretrain |" in (tmp_path / "report.md").read_text(encoding="utf-8")
