#!/usr/bin/env python3
"""The attention comparison table of issue 5: our CUDA attention variants against each other, against
PyTorch SDPA, and against the GPU's measured copy bandwidth.

Inputs: an `infermeter kernels --backend cuda` results file with attention rows in several variants
(`variant`: naive, auto, auto-sync, auto-1split) and the JSON of scripts/gpu/sdpa_compare.py over the same
shapes. Rows are matched by op and shape (sequences, new tokens, context, heads, KV heads,
head_dim). Per shape:

- prefill: median time of naive, auto and auto-sync (the flash kernel without its cp.async
  pipeline), auto's speed-up over naive (naive time / auto time), the pipeline's gain (auto-sync
  time / auto time), auto's TFLOP/s, SDPA flash's TFLOP/s and their ratio (target: auto ≥ 0.8 ×
  SDPA flash);
- decode: median time of naive, auto and auto-1split, their speed-ups over naive, auto's GB/s as a
  % of the measured device-to-device copy bandwidth (`ceilings.memory_gb_s` of our file; target:
  ≥ 85 % at contexts ≥ 4k), and auto's GB/s against each PyTorch decode of the SDPA file.

TFLOP/s and GB/s are recomputed from each row's `flops`, `bytes` and `time_median_s`; both files
count them with src/study/ops.rs `attention_cost`. A target is met (true), missed (false), or
unknown (null: a row is missing, or the target does not apply to the shape).

Python standard library only. Usage:
    python3 scripts/gpu/attention_ratios.py --ours kernels-attention-bf16.json \\
        --sdpa sdpa-compare.json --out-md attention-ratios.md --out-json attention-ratios.json
"""

import argparse
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts for results_io
from results_io import (  # noqa: E402
    InputError, attention_label, attention_options, emit, field, fmt, load, rows_of,
    with_attention_options)

SHAPE_KEYS = ("seqs", "query_len", "context_len", "num_heads", "num_kv_heads", "head_dim")
VARIANTS = ("naive", "auto", "auto-sync", "auto-1split")
PREFILL, DECODE = "attention_prefill", "attention_decode"


def shape_key(row, where):
    """The shape's sizes, then its sliding window and soft-cap (0: none), which no SDPA row has."""
    shape = row.get("shape") if isinstance(row, dict) else None
    if not isinstance(shape, dict):
        raise InputError(f"{where}.shape: missing")
    sizes = tuple(field(shape, k, f"{where}.shape", (int,)) for k in SHAPE_KEYS)
    return sizes + attention_options(shape, where)


def shape_of(key):
    """The shape dict of a shape_key (`window` and `softcap` only where set)."""
    n = len(SHAPE_KEYS)
    return with_attention_options(dict(zip(SHAPE_KEYS, key[:n])), key[n:])



def measured(row, where):
    """Time, GB/s and TFLOP/s of a row, from its bytes, FLOPs and median time."""
    t = field(row, "time_median_s", where)
    if t <= 0:
        raise InputError(f"{where}.time_median_s: must be > 0, found {t}")
    b, f = field(row, "bytes", where, (int,)), field(row, "flops", where, (int,))
    return {"time_s": t, "gb_s": b / t / 1e9, "tflop_s": f / t / 1e12}


def ours_by_shape(doc, path):
    """{(op, shape): {variant: measured}} and {(op, shape): {variant: skip reason}}."""
    found, skipped = {}, {}
    for where, row in rows_of(doc, path):
        if not isinstance(row, dict) or row.get("op") not in (PREFILL, DECODE):
            continue
        variant = row.get("variant")
        if variant is None:
            continue  # the CPU reference, or a file from before the variants
        if variant not in VARIANTS:
            if re.match(r"^auto-[0-9]+split$", str(variant)):
                continue  # other forced split counts: scripts/gpu/split_sweep.py's table
            raise InputError(f"{where}.variant: unknown `{variant}` ({', '.join(VARIANTS)})")
        found.setdefault((row["op"], shape_key(row, where)), {})[variant] = measured(row, where)
    for i, s in enumerate(doc.get("skipped") or []):
        if isinstance(s, dict) and s.get("op") in (PREFILL, DECODE) and s.get("variant"):
            key = (s["op"], shape_key(s, f"{path}: skipped[{i}]"))
            skipped.setdefault(key, {})[s["variant"]] = str(s.get("reason", ""))
    if not found:
        raise InputError(f"{path}: rows: no attention row with a `variant` (run `infermeter "
                         "kernels --backend cuda --op attention`; CPU files have one implementation)")
    return found, skipped


def sdpa_by_shape(doc, path):
    """{(op, shape): {impl: measured}}."""
    out = {}
    for where, row in rows_of(doc, path):
        if not isinstance(row, dict) or row.get("op") not in (PREFILL, DECODE):
            raise InputError(f"{where}.op: expected {PREFILL} or {DECODE}")
        impl = row.get("impl")
        if not isinstance(impl, str):
            raise InputError(f"{where}.impl: missing")
        out.setdefault((row["op"], shape_key(row, where)), {})[impl] = measured(row, where)
    return out


def ratio(num, den):
    return num / den if num is not None and den else None


def at_least(value, target):
    return None if value is None else value >= target


def compute(ours, ours_path, sdpa, sdpa_path, prefill_target, decode_pct_target, decode_min_ctx):
    """The comparison as a JSON-ready dict (see the module docs)."""
    ceilings = ours.get("ceilings")
    d2d = field(ceilings, "memory_gb_s", f"{ours_path}: ceilings", (int, float))
    found, skipped = ours_by_shape(ours, ours_path)
    theirs = sdpa_by_shape(sdpa, sdpa_path)
    notes = []
    if ours.get("dtype") != sdpa.get("dtype"):
        notes.append(f"dtypes differ: ours {ours.get('dtype')}, SDPA {sdpa.get('dtype')}")
    our_cold = "cold L2" in str((ours.get("timing") or {}).get("method", ""))
    their_cold = bool((sdpa.get("timing") or {}).get("cold_l2"))
    if our_cold != their_cold:
        notes.append(f"L2 differs: ours {'cold' if our_cold else 'warm'}, SDPA "
                     f"{'cold' if their_cold else 'warm'}")

    prefill, decode = [], []
    for (op, key), variants in found.items():
        shape = shape_of(key)
        t = {v: (variants.get(v) or {}).get("time_s") for v in VARIANTS}
        auto = variants.get("auto")
        missing = {v: r for v, r in skipped.get((op, key), {}).items() if v not in variants}
        row = {
            "shape": shape,
            "naive_ms": t["naive"] and t["naive"] * 1e3,
            "auto_ms": t["auto"] and t["auto"] * 1e3,
            "auto_speedup_over_naive": ratio(t["naive"], t["auto"]),
        }
        other = theirs.get((op, key), {})
        if op == PREFILL:
            flash = other.get("sdpa_flash")
            vs = ratio(auto and auto["tflop_s"], flash and flash["tflop_s"])
            row.update({
                "auto_sync_ms": t["auto-sync"] and t["auto-sync"] * 1e3,
                "pipeline_speedup": ratio(t["auto-sync"], t["auto"]),
                "auto_tflop_s": auto and auto["tflop_s"],
                "sdpa_flash_ms": flash and flash["time_s"] * 1e3,
                "sdpa_flash_tflop_s": flash and flash["tflop_s"],
                "auto_vs_sdpa_flash": vs,
                "target_met": at_least(vs, prefill_target),
            })
            prefill.append(row)
        else:
            pct = ratio(auto and auto["gb_s"] * 100.0, d2d)
            applies = shape["context_len"] >= decode_min_ctx
            row.update({
                "auto_1split_ms": t["auto-1split"] and t["auto-1split"] * 1e3,
                "auto_1split_speedup_over_naive": ratio(t["naive"], t["auto-1split"]),
                "auto_gb_s": auto and auto["gb_s"],
                "auto_pct_of_d2d": pct,
                "target_applies": applies,
                "target_met": at_least(pct, decode_pct_target) if applies else None,
                "pytorch": {
                    impl: {"ms": m["time_s"] * 1e3, "gb_s": m["gb_s"],
                           "auto_gb_s_ratio": ratio(auto and auto["gb_s"], m["gb_s"])}
                    for impl, m in sorted(other.items())
                },
            })
            decode.append(row)
        if missing:
            row["skipped"] = missing
    prefill.sort(key=lambda r: tuple(r["shape"][k] for k in SHAPE_KEYS))
    decode.sort(key=lambda r: tuple(r["shape"][k] for k in SHAPE_KEYS))

    def tally(rows):
        judged = [r["target_met"] for r in rows if r["target_met"] is not None]
        applies = [r for r in rows if r.get("target_applies", True)]
        return {"met": sum(judged), "judged": len(judged), "shapes": len(applies)}

    return {
        "kind": "attention_ratios",
        "inputs": {"ours": ours_path, "sdpa": sdpa_path},
        "gpu": ((ours.get("hardware") or {}).get("gpus") or [{}])[0].get("name"),
        "dtype": ours.get("dtype"),
        "d2d_gb_s": d2d,
        "torch_version": sdpa.get("torch_version"),
        "targets": {
            "prefill_auto_vs_sdpa_flash_tflop_s": prefill_target,
            "decode_auto_pct_of_d2d": decode_pct_target,
            "decode_min_context": decode_min_ctx,
        },
        "prefill": prefill,
        "decode": decode,
        "summary": {"prefill": tally(prefill), "decode": tally(decode)},
        "notes": notes,
    }


def fmt_ms(v):
    """Milliseconds with 4 significant digits (decode calls are microseconds, prefills tens of ms)."""
    return "—" if v is None else f"{v:.4g}"


def verdict(met):
    return {True: "yes", False: "**no**", None: "—"}[met]


def markdown(r):
    t = r["targets"]
    s = r["summary"]
    lines = [
        f"# Attention: ours vs naive vs PyTorch SDPA ({r['gpu'] or 'GPU'}, {r['dtype']})",
        "",
        f"Inputs: `{r['inputs']['ours']}` (infermeter kernels), `{r['inputs']['sdpa']}` (torch "
        f"{r['torch_version']}). Measured device-to-device copy bandwidth: "
        f"{r['d2d_gb_s']:.0f} GB/s. Speed-up = naive time / variant time; pipeline × = auto-sync "
        "time / auto time (what the cp.async K/V pipeline buys).",
        "",
        f"## Prefill (target: auto ≥ {t['prefill_auto_vs_sdpa_flash_tflop_s']} × SDPA flash "
        f"TFLOP/s; met on {s['prefill']['met']} of {s['prefill']['judged']} judged)",
        "",
        "| seqs × tokens | heads | naive ms | auto ms | auto × naive | auto-sync ms | "
        "pipeline × | auto TFLOP/s | SDPA flash ms | SDPA flash TFLOP/s | auto / SDPA | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["prefill"]:
        sh = row["shape"]
        lines.append(
            f"| {sh['seqs']} × {sh['query_len']}{attention_label(sh)} | "
            f"{sh['num_heads']}/{sh['num_kv_heads']}, d {sh['head_dim']} | {fmt_ms(row['naive_ms'])} | {fmt_ms(row['auto_ms'])} | "
            f"{fmt(row['auto_speedup_over_naive'], 2, '×')} | {fmt_ms(row['auto_sync_ms'])} | "
            f"{fmt(row['pipeline_speedup'], 2, '×')} | {fmt(row['auto_tflop_s'], 1)} | "
            f"{fmt_ms(row['sdpa_flash_ms'])} | {fmt(row['sdpa_flash_tflop_s'], 1)} | "
            f"{fmt(row['auto_vs_sdpa_flash'], 2)} | {verdict(row['target_met'])} |")
    impls = sorted({i for row in r["decode"] for i in row["pytorch"]})
    lines += [
        "",
        f"## Decode (target: auto ≥ {t['decode_auto_pct_of_d2d']:g} % of the copy bandwidth at "
        f"contexts ≥ {t['decode_min_context']}; met on {s['decode']['met']} of "
        f"{s['decode']['judged']} judged)",
        "",
        "| batch × context | naive ms | auto ms | auto-1split ms | auto × naive | "
        "1split × naive | auto GB/s | % of D2D | met | "
        + " | ".join(f"{i} GB/s | auto / {i}" for i in impls) + (" |" if impls else ""),
        "|---|---|---|---|---|---|---|---|---|" + "---|---|" * len(impls),
    ]
    for row in r["decode"]:
        sh = row["shape"]
        cells = [
            f"{sh['seqs']} × {sh['context_len']}{attention_label(sh)}", fmt_ms(row["naive_ms"]), fmt_ms(row["auto_ms"]),
            fmt_ms(row["auto_1split_ms"]), fmt(row["auto_speedup_over_naive"], 2, "×"),
            fmt(row["auto_1split_speedup_over_naive"], 2, "×"), fmt(row["auto_gb_s"], 0),
            fmt(row["auto_pct_of_d2d"], 1, " %"),
            verdict(row["target_met"]) if row["target_applies"] else "n/a",
        ]
        for i in impls:
            p = row["pytorch"].get(i) or {}
            cells += [fmt(p.get("gb_s"), 0), fmt(p.get("auto_gb_s_ratio"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [(row["shape"], v, why) for row in r["prefill"] + r["decode"]
               for v, why in row.get("skipped", {}).items()]
    if skipped or r["notes"]:
        lines += ["", "Notes:", ""]
        lines += [f"- {n}" for n in r["notes"]]
        lines += [f"- {v} did not run at seqs={sh['seqs']}, q={sh['query_len']}, "
                  f"ctx={sh['context_len']}{attention_label(sh)}: {why}" for sh, v, why in skipped]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ours", required=True, help="infermeter kernels results file (CUDA)")
    p.add_argument("--sdpa", required=True, help="scripts/gpu/sdpa_compare.py output")
    p.add_argument("--out-md", help="write the Markdown table here (it is printed either way)")
    p.add_argument("--out-json", help="write the ratios as JSON here")
    p.add_argument("--prefill-target", type=float, default=0.8,
                   help="auto TFLOP/s ÷ SDPA flash TFLOP/s to meet (default 0.8)")
    p.add_argument("--decode-target-pct", type=float, default=85.0,
                   help="auto GB/s as %% of the copy bandwidth to meet (default 85)")
    p.add_argument("--decode-target-min-context", type=int, default=4096,
                   help="shortest decode context the decode target applies to (default 4096)")
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    try:
        ours = load(a.ours, "kernels")
        sdpa = load(a.sdpa, "sdpa_compare")
        result = compute(ours, a.ours, sdpa, a.sdpa, a.prefill_target, a.decode_target_pct,
                         a.decode_target_min_context)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return emit(markdown(result), result, a.out_md, a.out_json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
