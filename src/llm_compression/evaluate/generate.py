"""Generation demo: the same prompts through every variant, greedy, side by side.

Greedy decoding (``do_sample=False``, one beam) makes the continuation a deterministic function of
the weights, so the differences between variants come from compression alone.
"""

from __future__ import annotations

import time


def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 48,
                    device: str | None = None) -> list[dict]:
    """Greedy continuation of each prompt, one at a time (no padding effects).

    Args:
        prompts: plain-text prompts (no chat template is applied).
        max_new_tokens: tokens generated after each prompt (generation also stops at EOS).

    Returns:
        one dict per prompt: ``prompt``, ``completion`` (decoded new tokens only), ``new_tokens``,
        ``seconds``.

    Raises:
        ValueError: no prompts, or ``max_new_tokens < 1``.
    """
    import torch

    if not prompts:
        raise ValueError("no prompts given for the generation demo")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    dev = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt").to(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        new = gen[0, enc["input_ids"].shape[1]:]
        out.append({"prompt": p, "completion": tokenizer.decode(new, skip_special_tokens=True),
                    "new_tokens": int(new.numel()), "seconds": time.perf_counter() - t0})
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def demo_markdown(records: list[dict], *, title: str = "Generation demo") -> str:
    """Side-by-side Markdown of demo records (one per variant, as written by the ``generate`` rule).

    Each record has ``variant`` (label) and ``generations`` (list from :func:`generate_greedy`), all with
    the same prompts in the same order. One section per prompt, one table row per variant.

    Raises:
        ValueError: no records, or records whose prompts differ.
    """
    if not records:
        raise ValueError("no generation records to put side by side")
    prompts = [g["prompt"] for g in records[0]["generations"]]
    for r in records[1:]:
        if [g["prompt"] for g in r["generations"]] != prompts:
            raise ValueError(f"variant {r['variant']!r} was generated with different prompts")
    lines = [f"# {title}", ""]
    params = records[0].get("params", {})
    if params:
        lines += ["Greedy decoding, " + ", ".join(f"{k}={v}" for k, v in params.items()) + ".", ""]
    for i, p in enumerate(prompts):
        lines += [f"## Prompt {i + 1}", "", "> " + p.replace("\n", "\n> "), "",
                  "| variant | completion |", "|---|---|"]
        for r in records:
            lines.append(f"| {_cell(r['variant'])} | {_cell(r['generations'][i]['completion'])} |")
        lines.append("")
    return "\n".join(lines)
