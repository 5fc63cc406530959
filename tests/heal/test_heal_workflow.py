"""The heal stage in the Snakemake DAG: dry run with the healing grid, and a real run on a tiny random Llama."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def tiny_checkpoint(path: Path) -> None:
    """A tiny random Llama with a tiny byte-level BPE tokenizer, saved as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the cat sat on the mat", "a book about the sea and the ship"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def tiny_config(tmp_path: Path) -> Path:
    src = tmp_path / "tiny-src"
    tiny_checkpoint(src)
    recipe = {"steps": 4, "batch_size": 2, "seqlen": 32, "learning_rate": 1e-3, "warmup_steps": 1, "log_every": 2,
              "lora": {"rank": 2}, "data": {"format": "corpus", "corpus": "lambada", "split": "test", "max_tokens": 4000}}
    cfg = {
        "results": str(tmp_path / "results"),
        "device": "cpu",
        "model": {"name": "tiny", "source": str(src)},
        "grid": {"dense": False, "pruning": [{"method": "magnitude", "level": "2:4"}],
                 "healing": ["none", "lora", "kd"], "quantization": ["none"]},
        "healing": {"lora": {"method": "lora", **recipe},
                    "kd": {"method": "kd", **recipe, "kd": {"teacher": "base", "temperature": 2.0, "alpha": 0.5}}},
        "evaluation": {"perplexity": {"seqlen": 32, "max_tokens": 256, "batch_size": 4,
                                      "datasets": {"ptb": {"split": "test"}}}, "cost": True},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def test_config_healing_names_and_recipes(tmp_path):
    from llm_compression.config import ConfigError, validate_config

    base = {"model": {"name": "m", "source": "x/y"}, "evaluation": {"perplexity": {"datasets": {"ptb": {}}}},
            "grid": {"healing": ["none", "lora", "kd", "mine"]}, "healing": {"mine": {"method": "kd", "steps": 5}}}
    cfg = validate_config(base, check_model=False)
    assert set(cfg["healing"]) == {"lora", "kd", "mine"}
    assert cfg["healing"]["mine"]["kd"]["teacher"] == "base" and cfg["healing"]["lora"]["lora"]["rank"] == 8
    with pytest.raises(ConfigError, match="'other' has no recipe"):
        validate_config({**base, "grid": {"healing": ["other"]}}, check_model=False)
    with pytest.raises(ConfigError, match="also an evaluation dataset"):
        validate_config({**base, "healing": {"mine": {"method": "lora", "data": {"corpus": "ptb", "split": "test"}}}},
                        check_model=False)
    with pytest.raises(ConfigError, match="kd.teacher"):
        validate_config({**base, "healing": {"mine": {"method": "kd", "kd": {"teacher": str(tmp_path)}}}},
                        check_model=False)
    with pytest.raises(ConfigError, match="steps"):
        validate_config({**base, "healing": {"mine": {"method": "lora", "steps": 0}}}, check_model=False)


@pytest.mark.slow
def test_tiny_heal_pipeline_runs_and_keeps_sparsity(tmp_path):
    """~10 min on 2 heavily shared cores (load ~15), less on an idle machine: import -> 2:4 prune -> heal (lora, kd) -> evaluate -> summary."""
    cfg = tiny_config(tmp_path)
    dry = snakemake("-n", "--configfile", str(cfg), "-c1")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "heal" in dry.stdout
    run = snakemake("--configfile", str(cfg), "-c2", "--set-threads", "heal=1", "evaluate=1", "prune=1", "import_model=1")
    assert run.returncode == 0, run.stderr[-5000:]
    res = tmp_path / "results" / "tiny"
    for h in ("lora", "kd"):
        d = res / "healed" / "magnitude_2of4_0.5_x1" / h
        comp = json.loads((d / "compression.json").read_text())
        assert comp["result"]["sparsity_after"] == comp["result"]["sparsity_before"] == pytest.approx(0.5)
        assert comp["result"]["steps"] == 4 and (d / "loss_curve.csv").exists() and (d / "adapter").is_dir()
        cost = json.loads((res / "metrics" / "magnitude_2of4_0.5_x1" / h / "none" / "cost.json").read_text())
        assert cost["artifact"].endswith(f"healed/magnitude_2of4_0.5_x1/{h}")
        ppl = json.loads((res / "metrics" / "magnitude_2of4_0.5_x1" / h / "none" / "ppl-ptb-sparsegpt.json").read_text())
        assert ppl["metrics"]["perplexity"] > 1
    assert "kd" in (tmp_path / "results" / "summary.csv").read_text()
