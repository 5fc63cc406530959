"""Colours, markers and names shared by every figure: one colour per method family (:func:`family_of`), one
marker per quantization scheme, hatches for healed variants, and the short labels of variants.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402



#: colour of each method family (:func:`family_of`); families not listed get :data:`EXTRA_COLORS` in order
FAMILY_COLORS = {"dense": "black", "magnitude": "tab:red", "Wanda": "tab:blue", "SparseGPT": "tab:green",
                 "LLM-Pruner block": "tab:purple", "LLM-Pruner channel": "tab:orange",
                 "LLM-Pruner layer": "tab:brown"}


EXTRA_COLORS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "teal", "navy", "lime", "maroon"]


#: kept for callers that colour by path method
METHOD_COLORS = {"dense": "black", "magnitude": "tab:red", "wanda": "tab:blue", "sparsegpt": "tab:green",
                 "llm-pruner": "tab:purple", "random": "tab:gray"}


QUANT_MARKERS = {"none": "o", "nf4": "s", "nf4-dq": "D", "fp4": "^", "int8": "v",
                 "gguf-f32": "h", "gguf-f16": "p", "gguf-q8_0": "X", "gguf-q4_k_m": "*"}


QUANT_NAMES = {"none": "unquantized", "nf4": "NF4", "nf4-dq": "NF4 + double quant.", "fp4": "FP4", "int8": "int8",
               "gguf-f32": "llama.cpp f32", "gguf-f16": "llama.cpp f16", "gguf-q8_0": "llama.cpp Q8_0",
               "gguf-q4_k_m": "llama.cpp Q4_K_M"}


QUANT_SHORT = {"none": "", "nf4": "NF4", "nf4-dq": "NF4-DQ", "fp4": "FP4", "int8": "int8",
               "gguf-f32": "llama.cpp f32", "gguf-f16": "llama.cpp f16", "gguf-q8_0": "llama.cpp Q8_0",
               "gguf-q4_k_m": "llama.cpp Q4_K_M"}


QUANT_BAR_COLORS = {"none": "tab:blue", "nf4": "tab:cyan", "nf4-dq": "tab:orange", "fp4": "tab:olive",
                    "int8": "tab:pink", "gguf-f32": "tab:gray", "gguf-f16": "tab:green", "gguf-q8_0": "tab:brown",
                    "gguf-q4_k_m": "tab:red"}


LEVEL_MARKERS = {"": "*", "unstructured": "o", "2:4": "s", "4:8": "D", "block": "^", "channel": "v", "layer": "P"}


#: hatch of healed variants per healing name (any other healing: "....")
HEALING_HATCHES = {"lora": "////", "kd": "xxxx"}


#: the default structured criterion (first-order Taylor); other criteria are families of their own
DEFAULT_IMPORTANCE = "element1"


METHOD_NAMES = {"dense": "dense", "magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}


#: a perplexity axis is logarithmic when max/min of its drawn values exceeds this
LOG_SPAN = 10.0


#: area (points^2) of the largest bubble of a bubble plot; areas are proportional to GMACs
MAX_BUBBLE_AREA = 360.0


def family_of(method: str, level: str, importance: str = "") -> str:
    """The method family a variant is coloured by: ``dense``, ``magnitude``, ``Wanda``, ``SparseGPT``
    (``SparseGPT 2:4`` for an N:M level), ``LLM-Pruner block`` / ``channel`` / ``layer`` (with the
    criterion appended when it is not the default first-order Taylor ``element1``, e.g.
    ``LLM-Pruner block (random)``)."""
    if method.startswith("llmpruner-") or method == "llm-pruner":
        imp = importance or (method.split("-", 1)[1] if "-" in method else "")
        name = f"LLM-Pruner {level}"
        return name if imp in ("", DEFAULT_IMPORTANCE) else f"{name} ({imp})"
    name = METHOD_NAMES.get(method, method)
    return name if level in ("", "unstructured") else f"{name} {level}"


def family_colors(families) -> dict[str, str]:
    """Colour of each family present: :data:`FAMILY_COLORS`, else the next of :data:`EXTRA_COLORS` in
    sorted order of the remaining names (deterministic for a given table)."""
    out = {f: FAMILY_COLORS[f] for f in families if f in FAMILY_COLORS}
    rest = sorted(f for f in set(families) if f not in FAMILY_COLORS)
    for i, f in enumerate(rest):
        out[f] = EXTRA_COLORS[i % len(EXTRA_COLORS)]
    return out


def label_color(color) -> tuple:
    """The text colour of a point label: its marker's colour darkened to 60%, so a label names the
    family even where markers of two families coincide, and a light colour stays readable."""
    from matplotlib.colors import to_rgb

    return tuple(0.6 * c for c in to_rgb(color))


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.4g}%"


def short_label(r) -> str:
    """Point label that the colour (family) and marker (quantization) complete: ``50%``, ``50% x2``,
    ``25% +lora``, ``dense``."""
    if r["method"] == "dense":
        return "dense"
    text = _pct(float(r["ratio"]))
    if int(r["repeat"]) > 1:
        text += f" x{int(r['repeat'])}"
    if r["healing"] != "none":
        text += f" +{r['healing']}"
    return text


def display_name(r, quant: bool = True) -> str:
    """Readable variant name, e.g. ``SparseGPT 50% x2``, ``LLM-Pruner block 25% +lora, NF4-DQ``."""
    if r["method"] == "dense":
        text = "dense"
    else:
        text = f"{r['family']} {short_label(r)}"
    if quant and r["quant"] != "none":
        text += f", {QUANT_SHORT.get(r['quant'], r['quant'])}"
    return text


def ordered_families(w: pd.DataFrame) -> list[str]:
    """The method families present in ``w`` (a table with a ``family`` column), in the order of the
    figures' legends (:data:`FAMILY_COLORS`; families it lacks last, by name)."""
    order = list(FAMILY_COLORS)
    fams = list(dict.fromkeys(w.family))
    return sorted(fams, key=lambda f: (order.index(f) if f in order else len(order), f))
