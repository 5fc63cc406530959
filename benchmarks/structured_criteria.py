"""Structured-pruning criteria side by side on one model, from one run: level, ratio, criterion, parameters,
PTB perplexity.

Drives the library directly (no Snakemake): the base model is loaded once, every variant prunes a copy
with :func:`llm_compression.prune.structured.prune_structured` and is scored with
:func:`llm_compression.evaluate.perplexity.perplexity` on the same token stream.

Protocol: PTB test under the ``sparsegpt`` preset (sentences joined by spaces, non-overlapping 512-token
windows), first ``--max-tokens`` (default 4,096) tokens of the stream; calibration for every calibrated
criterion: LAMBADA test, ``--samples`` x ``--seqlen`` tokens (default 10 x 128, as LLM-Pruner), seed
``--calib-seed`` (0); first and last decoder layer kept (default layer range). The Taylor noise study
repeats channel-level Taylor with other calibration seeds and with 4x the samples.

    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/structured_criteria.py --out criteria.jsonl
    python benchmarks/structured_criteria.py --out criteria.jsonl --table   # the markdown table only

Rows already in ``--out`` (same key) are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

#: (level, ratios, criteria) of the main table
GRID = [
    ("layer", (0.25, 0.5), ("random", "block-influence", "angular", "element1")),
    ("block", (0.25, 0.5), ("activation", "contribution", "element1", "random")),
    ("channel", (0.2, 0.3), ("activation", "element1", "random")),
]
#: Taylor calibration-noise study: (level, ratios, calibration seeds, sample multipliers)
NOISE = ("channel", (0.3, 0.4), (0, 1, 2), (1, 4))  # channel 0.4 rows of the main table come from here


def rows(args) -> list[dict]:
    out = [{"level": "dense", "ratio": 0.0, "importance": "none", "calib_seed": None, "samples": None}]
    for level, ratios, crits in ([] if args.noise_only else GRID):
        for r in ratios:
            for c in crits:
                out.append({"level": level, "ratio": r, "importance": c, "calib_seed": args.calib_seed,
                            "samples": args.samples})
    if not args.no_noise:
        level, ratios, seeds, mults = NOISE
        seeds = args.noise_seeds or seeds
        mults = args.noise_mults or mults
        for r in ratios:
            for mult in mults:
                for s in seeds:
                    row = {"level": level, "ratio": r, "importance": "element1", "calib_seed": s,
                           "samples": args.samples * mult}
                    if row not in out:
                        out.append(row)
    return out


def _written(out: Path) -> set[str]:
    return {key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()} if out.exists() else set()


def key(row: dict) -> str:
    return f"{row['level']}|{row['ratio']}|{row['importance']}|{row['calib_seed']}|{row['samples']}"


def table(records: list[dict], calib_seed: int, samples: int) -> str:
    lines = ["| level | ratio | criterion | parameters | PTB perplexity | prune s |",
             "|---|---:|---|---:|---:|---:|"]
    main = [r for r in records if r["level"] == "dense"
            or (r["calib_seed"] == calib_seed and r["samples"] == samples)]
    levels = ["dense"] + [g[0] for g in GRID]
    crits = ["none", "element1", "random", "l2", "activation", "contribution", "block-influence", "angular"]
    main.sort(key=lambda r: (levels.index(r["level"]), r["ratio"], crits.index(r["importance"])
                             if r["importance"] in crits else len(crits)))
    for r in main:
        lines.append(f"| {r['level']} | {r['ratio']} | {r['importance']} | {r['parameters']:,} | "
                     f"{r['perplexity']:,.1f} | {r.get('prune_seconds', 0):.0f} |")
    noise = [r for r in records if r["level"] != "dense" and r not in main]
    if noise:
        lines += ["", "Taylor (element1) calibration-noise study:", "",
                  "| level | ratio | calibration samples x seqlen | seed | parameters | PTB perplexity |",
                  "|---|---:|---|---:|---:|---:|"]
        for r in sorted([r for r in records if r["importance"] == "element1" and r["level"] == NOISE[0]
                         and r["ratio"] in NOISE[1]], key=lambda r: (r["ratio"], r["samples"], r["calib_seed"])):
            lines.append(f"| {r['level']} | {r['ratio']} | {r['samples']} x {r['seqlen']} | {r['calib_seed']} | "
                         f"{r['parameters']:,} | {r['perplexity']:,.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON-lines file, one record per variant (appended)")
    ap.add_argument("--source", default="embedded:smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--calib-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-noise", action="store_true", help="skip the Taylor calibration-noise rows")
    ap.add_argument("--noise-only", action="store_true", help="only the Taylor calibration-noise rows")
    ap.add_argument("--noise-seeds", type=int, nargs="+", help=f"calibration seeds of the noise rows ({NOISE[2]})")
    ap.add_argument("--noise-mults", type=int, nargs="+", help=f"sample multipliers of the noise rows ({NOISE[3]})")
    ap.add_argument("--only", default=None, help="comma-separated levels to run (default all)")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    out = Path(args.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[key(r)] = r
    todo = [r for r in rows(args) if key(r) not in done
            and (args.only is None or r["level"] in args.only.split(",") or r["level"] == "dense")]
    if args.table or not todo:
        print(table(list(done.values()), args.calib_seed, args.samples))
        return

    import torch

    from llm_compression.data import load_text, sample_calibration, tokenize_stream
    from llm_compression.evaluate import perplexity_of_model
    from llm_compression.evaluate.perplexity import perplexity
    from llm_compression.models import load_source
    from llm_compression.prune.structured import count_parameters, needs_calibration, prune_structured

    torch.set_num_threads(args.threads)
    base, tok = load_source(args.source)
    dense_rec = next((r for r in done.values() if r["level"] == "dense"), None)
    if dense_rec is None:
        dense = perplexity_of_model(base, tok, dataset="ptb", preset="sparsegpt", max_tokens=args.max_tokens)
        protocol, dense_ppl = dense["protocol"], dense["metrics"]["perplexity"]
    else:  # resumed: the protocol and value of the dense row already written
        protocol, dense_ppl = dense_rec["protocol"], dense_rec["perplexity"]
    ptb = load_text("ptb", "test", join="space")
    ids = tokenize_stream(tok, ptb.text)[: args.max_tokens]
    lam = load_text("lambada", "test")
    calib_cache: dict = {}

    def calib(seed, samples):
        if (seed, samples) not in calib_cache:
            calib_cache[(seed, samples)] = sample_calibration(tok, lam.text, samples=samples, seqlen=args.seqlen,
                                                              seed=seed)
        return calib_cache[(seed, samples)]

    with out.open("a") as f:
        for row in todo:
            if key(row) in _written(out):  # another process of this script (same --out) did it meanwhile
                continue
            t0 = time.perf_counter()
            rec = dict(row, seqlen=args.seqlen, source=args.source, protocol=protocol,
                       calibration_corpus=lam.protocol)
            if row["level"] == "dense":
                rec.update(parameters=count_parameters(base), perplexity=dense_ppl,
                           prune_seconds=0.0)
            else:
                m = copy.deepcopy(base)
                cal = calib(row["calib_seed"], row["samples"]) if needs_calibration(row["importance"]) else None
                res = prune_structured(m, level=row["level"], ratio=row["ratio"], importance=row["importance"],
                                       calib_ids=cal, seed=0)
                with torch.no_grad():
                    p = perplexity(m, ids, seqlen=protocol["seqlen"])
                rec.update(parameters=res["parameters_after"], perplexity=p["perplexity"],
                           scored_tokens=p["scored_tokens"], prune_seconds=res["seconds"],
                           calibration_budget=res["calibration_budget"],
                           layers_removed=res.get("layers_removed"),
                           middle_layer=res["layer_shapes"][len(res["layer_shapes"]) // 2],
                           hidden_size=res["hidden_size"])
                del m
            rec["seconds"] = time.perf_counter() - t0
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(f"{row['level']} {row['ratio']} {row['importance']} seed={row['calib_seed']} "
                  f"n={row['samples']}: {rec['parameters']:,} params, ppl {rec['perplexity']:.1f} "
                  f"({rec['seconds']:.0f}s)", flush=True)
            done[key(rec)] = rec
    print(table(list(done.values()), args.calib_seed, args.samples))


if __name__ == "__main__":
    main()
