#!/usr/bin/env python3
"""Where the split-KV decode's split heuristic stands: `auto` against the same kernel forced to N
splits, per decode shape, from one `infermeter kernels --backend cuda` results file.

Input: a kernels results file with attention_decode rows in the variants `auto` and
`auto-<N>split` (scripts/gpu/session splits writes one; `naive` rows, if any, are shown as the
baseline). Each split-KV row carries `decode_splits`, the splits it launched (for `auto`: the
heuristic's choice; for `auto-<N>split`: N, or fewer where the context has fewer key groups).

Per shape (sequences × context, heads, head_dim, block size): every variant's median time and
GB/s (the row's `bytes` over its time: the K/V and q/out traffic, not the split scratch), the
fastest forced split count, and `auto`'s time over that best time (1.00: the heuristic found the
best of the counts tried; 1.25: it is 25 % slower than it could be). A shape whose best forced
count beats `auto` by more than --tolerance is flagged: the heuristic's constants
(src/backend/cuda/attention.rs: TARGET_WAVES, MIN_SPLIT_KEYS, MIN_SPLIT_BLOCKS) want tuning there.

Python standard library only. Usage:
    python3 scripts/gpu/split_sweep.py --kernels kernels-splits-bf16.json \\
        --out-md split-sweep.md --out-json split-sweep.json
"""

import argparse
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts for results_io
from results_io import (  # noqa: E402
    InputError, attention_label, attention_options, emit, field, fmt, load, rows_of,
    with_attention_options)

DECODE = "attention_decode"
SHAPE_KEYS = ("seqs", "context_len", "num_heads", "num_kv_heads", "head_dim", "block_size")
FORCED = re.compile(r"^auto-([0-9]+)split$")


def by_shape(doc, path):
    """{shape key: {variant: {time_s, gb_s, splits}}} over the file's decode rows."""
    found = {}
    for where, row in rows_of(doc, path):
        if not isinstance(row, dict) or row.get("op") != DECODE or row.get("variant") is None:
            continue
        variant = row["variant"]
        if variant not in ("naive", "auto") and not FORCED.match(str(variant)):
            raise InputError(f"{where}.variant: `{variant}` is not a decode attention variant "
                             "(naive, auto, auto-<N>split)")
        shape = field(row, "shape", where, (dict,))
        # the sizes, then the window and soft-cap (0: none, so keys sort)
        key = tuple(field(shape, k, f"{where}.shape", (int,)) for k in SHAPE_KEYS)
        key += attention_options(shape, where)
        t = field(row, "time_median_s", where)
        if t <= 0:
            raise InputError(f"{where}.time_median_s: must be > 0, found {t}")
        splits = None
        if variant != "naive":
            splits = field(row, "decode_splits", where, (int,))
        found.setdefault(key, {})[variant] = {
            "time_s": t,
            "gb_s": field(row, "bytes", where, (int,)) / t / 1e9,
            "splits": splits,
        }
    if not found:
        raise InputError(f"{path}: rows: no attention_decode row with a variant (run `infermeter "
                         "kernels --backend cuda --op attention_decode --attention "
                         "auto,auto-1split,auto-2split,...`)")
    return found


def compute(doc, path, tolerance):
    """The comparison as a JSON-ready dict (see the module docs)."""
    shapes = []
    for key, variants in sorted(by_shape(doc, path).items()):
        n = len(SHAPE_KEYS)
        shape = with_attention_options(dict(zip(SHAPE_KEYS, key[:n])), key[n:])
        forced = {name: m for name, m in variants.items() if FORCED.match(name)}
        auto = variants.get("auto")
        best_name = min(forced, key=lambda n: forced[n]["time_s"]) if forced else None
        best = forced.get(best_name)
        auto_over_best = auto["time_s"] / best["time_s"] if auto and best else None
        shapes.append({
            "shape": shape,
            "auto": auto,
            "naive": variants.get("naive"),
            "forced": dict(sorted(forced.items(), key=lambda kv: int(FORCED.match(kv[0])[1]))),
            "best_forced": best_name,
            "best_forced_splits": best and best["splits"],
            "auto_time_over_best": auto_over_best,
            "heuristic_off": None if auto_over_best is None else auto_over_best > 1 + tolerance,
        })
    judged = [s["heuristic_off"] for s in shapes if s["heuristic_off"] is not None]
    gpus = (doc.get("hardware") or {}).get("gpus") or [{}]
    return {
        "kind": "split_sweep",
        "input": path,
        "gpu": gpus[0].get("name") if isinstance(gpus[0], dict) else None,
        "dtype": doc.get("dtype"),
        "tolerance": tolerance,
        "shapes": shapes,
        "summary": {"shapes": len(shapes), "judged": len(judged), "heuristic_off": sum(judged)},
    }


def us(m):
    """Microseconds: 4 significant digits, whole numbers from 1000 on (no exponents)."""
    if m is None:
        return "—"
    v = m["time_s"] * 1e6
    return f"{v:.4g}" if v < 1000 else f"{v:.0f}"


def markdown(r):
    names = []
    for s in r["shapes"]:
        names += [n for n in s["forced"] if n not in names]
    names.sort(key=lambda n: int(FORCED.match(n)[1]))
    s = r["summary"]
    lines = [
        f"# Split-KV decode: the split heuristic against forced split counts "
        f"({r['gpu'] or 'GPU'}, {r['dtype']})",
        "",
        f"Input: `{r['input']}`. Times in µs (median per call). `auto` × best = auto's time over the "
        f"fastest forced count's; flagged above {1 + r['tolerance']:.2f} "
        f"({s['heuristic_off']} of {s['judged']} shapes).",
        "",
        "| seqs × context | heads, d | naive | auto (splits) | auto GB/s | "
        + " | ".join(names) + (" | " if names else "") + "best | auto × best |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in r["shapes"]:
        sh, auto = row["shape"], row["auto"]
        cells = [
            f"{sh['seqs']} × {sh['context_len']}" + attention_label(sh),
            f"{sh['num_heads']}/{sh['num_kv_heads']}, {sh['head_dim']}",
            us(row["naive"]),
            "—" if auto is None else f"{us(auto)} ({auto['splits']})",
            fmt(auto and auto["gb_s"], 0),
        ]
        for n in names:
            m = row["forced"].get(n)
            launched = "" if m is None or f"auto-{m['splits']}split" == n else f" ({m['splits']})"
            cells.append(us(m) + launched)
        off = row["heuristic_off"]
        cells += [
            "—" if row["best_forced"] is None
            else f"{row['best_forced_splits']} splits",
            fmt(row["auto_time_over_best"], 2, "×") + (" **off**" if off else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A forced count in parentheses: the splits launched where the context allowed "
              "fewer than named."]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", required=True, help="infermeter kernels results file (CUDA)")
    p.add_argument("--out-md", help="write the Markdown table here (it is printed either way)")
    p.add_argument("--out-json", help="write the comparison as JSON here")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="flag shapes where auto is slower than the best forced count by more "
                        "than this fraction (default 0.05)")
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    try:
        result = compute(load(a.kernels, "kernels"), a.kernels, a.tolerance)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return emit(markdown(result), result, a.out_md, a.out_json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
