"""Healing recipes as data: methods, defaults and the checks of a recipe (torch-free).

A *recipe* (one per healing name in the config's ``healing:`` section) says what to train, on what,
and how; :func:`normalize_recipe` fills :data:`DEFAULTS` in and checks it. The science lives in
:mod:`llm_compression.heal`, which reads the same definitions.
"""

from __future__ import annotations

import copy

from .dtypes import AUTO, COMPUTE_DTYPES

FORMATS = ("corpus", "alpaca")
LOSS_ON = ("response", "full")
#: training dtypes of a recipe: a compute dtype, or ``auto`` (resolved on the device by
#: :func:`llm_compression.heal.train.resolve_training_dtype`)
TRAIN_DTYPES = (*COMPUTE_DTYPES, AUTO)

METHODS = ("lora", "kd")
TRAINABLE = ("lora", "full")

DEFAULTS = {
    "learning_rate": 2e-4,
    "steps": 100,
    "epochs": None,
    "batch_size": 4,
    "seqlen": 256,
    "seed": 0,
    "dtype": "float32",
    "weight_decay": 0.0,
    "warmup_steps": 10,
    "lr_schedule": "constant",
    "max_grad_norm": 1.0,
    "log_every": 10,
    "gradient_checkpointing": False,
    "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": None, "masked": False},
    "kd": {"teacher": "base", "temperature": 2.0, "alpha": 1.0, "trainable": "lora"},
    "data": {"format": "corpus", "corpus": "lambada", "split": "test", "path": None, "max_tokens": None,
             "dataset": None, "loss_on": "response",
             "allow_evaluation_corpus": False},
}
#: healing names usable in ``grid.healing`` without a ``healing:`` entry
BUILTIN_RECIPES = {"lora": {"method": "lora"}, "kd": {"method": "kd"}}


class RecipeError(ValueError):
    """A healing recipe with a bad or inconsistent value."""


def normalize_recipe(recipe: dict, *, name: str = "recipe") -> dict:
    """A complete copy of ``recipe`` with :data:`DEFAULTS` filled in, checked for consistency.

    Only the sections a method uses are kept (``kd`` only for ``method: kd``), so an unrelated
    setting never makes a checkpoint stale.

    Raises:
        RecipeError: unknown method/key/choice, non-positive sizes, or both/neither of steps and epochs.
    """
    if not isinstance(recipe, dict):
        raise RecipeError(f"healing recipe {name!r} must be a mapping, got {recipe!r}")
    r = copy.deepcopy(recipe)
    method = r.get("method")
    if method not in METHODS:
        raise RecipeError(f"healing recipe {name!r}: method {method!r} is not one of {', '.join(METHODS)}")
    unknown = set(r) - set(DEFAULTS) - {"method"}
    if unknown:
        raise RecipeError(f"healing recipe {name!r}: unknown keys {sorted(unknown)}; valid: method, {', '.join(DEFAULTS)}")
    if r.get("epochs") is not None and "steps" not in r:
        r["steps"] = None
    out = {"method": method}
    for k, default in DEFAULTS.items():
        if isinstance(default, dict):
            sub = dict(r.get(k) or {})
            bad = set(sub) - set(default)
            if bad:
                raise RecipeError(f"healing recipe {name!r}: unknown keys {sorted(bad)} in {k}; valid: {', '.join(default)}")
            out[k] = {**default, **sub}
        else:
            out[k] = r.get(k, default)
    if not isinstance(out["gradient_checkpointing"], bool):
        raise RecipeError(f"healing recipe {name!r}: gradient_checkpointing {out['gradient_checkpointing']!r} must be "
                          "true or false")
    if not out["gradient_checkpointing"]:
        del out["gradient_checkpointing"]  # kept only when on: recipes written before it stay the same params
    if method != "kd":
        del out["kd"]
    elif out["kd"]["trainable"] not in TRAINABLE:
        raise RecipeError(f"healing recipe {name!r}: kd.trainable {out['kd']['trainable']!r} not in {TRAINABLE}")
    if method == "kd" and out["kd"]["trainable"] == "full":
        del out["lora"]
    if (out["steps"] is None) == (out["epochs"] is None):
        raise RecipeError(f"healing recipe {name!r}: give exactly one of steps and epochs "
                          f"(got steps={out['steps']!r}, epochs={out['epochs']!r})")
    for k in ("steps", "batch_size", "seqlen", "log_every"):
        if out[k] is not None and (not isinstance(out[k], int) or out[k] < 1):
            raise RecipeError(f"healing recipe {name!r}: {k} {out[k]!r} must be a positive integer")
    if out["epochs"] is not None and not out["epochs"] > 0:
        raise RecipeError(f"healing recipe {name!r}: epochs {out['epochs']!r} must be > 0")
    if not out["learning_rate"] > 0:
        raise RecipeError(f"healing recipe {name!r}: learning_rate {out['learning_rate']!r} must be > 0")
    if out["dtype"] not in TRAIN_DTYPES:
        raise RecipeError(f"healing recipe {name!r}: dtype {out['dtype']!r} not in {', '.join(TRAIN_DTYPES)}")
    if out["lr_schedule"] not in ("constant", "cosine"):
        raise RecipeError(f"healing recipe {name!r}: lr_schedule {out['lr_schedule']!r} not in constant, cosine")
    d = out["data"]
    if d["format"] not in FORMATS:
        raise RecipeError(f"healing recipe {name!r}: data.format {d['format']!r} not in {FORMATS}")
    if d["loss_on"] not in LOSS_ON:
        raise RecipeError(f"healing recipe {name!r}: data.loss_on {d['loss_on']!r} not in {LOSS_ON}")
    if d["format"] == "alpaca" and not (d["dataset"] or d["path"]):
        raise RecipeError(f"healing recipe {name!r}: data.format alpaca needs data.path (local JSON/JSONL) "
                          "or data.dataset (hub id)")
    if method == "kd":
        k = out["kd"]
        if not k["temperature"] > 0:
            raise RecipeError(f"healing recipe {name!r}: kd.temperature {k['temperature']!r} must be > 0")
        if not 0 <= k["alpha"] <= 1:
            raise RecipeError(f"healing recipe {name!r}: kd.alpha {k['alpha']!r} must be in [0, 1]")
    if "lora" in out:
        lo = out["lora"]
        if not isinstance(lo["rank"], int) or lo["rank"] < 1:
            raise RecipeError(f"healing recipe {name!r}: lora.rank {lo['rank']!r} must be a positive integer")
        if not 0 <= lo["dropout"] < 1:
            raise RecipeError(f"healing recipe {name!r}: lora.dropout {lo['dropout']!r} must be in [0, 1)")
        if lo["masked"] and lo["dropout"] > 0:
            raise RecipeError(f"healing recipe {name!r}: lora.masked needs lora.dropout 0 (got {lo['dropout']})")
    return out
