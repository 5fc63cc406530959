"""Markdown table of structured-pruning variants: perplexity (with its protocol), parameters, achieved ratio.

    python benchmarks/structured_table.py results/smollm2-135m [ppl-ptb]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1])
    ev = sys.argv[2] if len(sys.argv) > 2 else "ppl-ptb"
    rows = []
    for mf in sorted((root / "metrics").glob(f"*/none/none/{ev}.json")):
        seg = mf.parts[-4]
        m = json.loads(mf.read_text())
        cost_f = mf.with_name("cost.json")
        params = json.loads(cost_f.read_text())["metrics"]["parameters"] if cost_f.exists() else None
        comp_f = root / ("base" if seg == "dense" else f"pruned/{seg}") / "compression.json"
        st = ((json.loads(comp_f.read_text()).get("result") or {}).get("structured") or {}) if comp_f.exists() else {}
        p = m["protocol"]
        rows.append((seg, m["metrics"]["perplexity"], params, st.get("parameter_ratio"), st.get("hidden_size"),
                     (st.get("layer_shapes") or [{}])[len(st.get("layer_shapes") or [{}]) // 2],
                     st.get("loader", ""), f"{p['scored_tokens']} tok/{p['seqlen']}",
                     m["runtime"]["tokens_per_second"]))
    print(f"| variant | {ev} | parameters | removed (achieved) | hidden | middle layer q/kv heads, MLP | reload | "
          "protocol | eval tok/s (1 thread, shared CPU) |")
    print("|---|---:|---:|---:|---:|---|---|---|---:|")
    for seg, ppl, params, ratio, hidden, mid, loader, proto, tps in rows:
        shape = f"{mid.get('num_attention_heads')}/{mid.get('num_key_value_heads')}, {mid.get('intermediate_size')}" \
            if mid else ""
        print(f"| {seg} | {ppl:.2f} | {params if params is not None else ''} | "
              f"{'' if ratio is None else f'{ratio:.4f}'} | {hidden or ''} | {shape} | {loader} | {proto} | {tps:.1f} |")


if __name__ == "__main__":
    main()
