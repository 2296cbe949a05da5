#!/usr/bin/env python3
"""Decode tokens/s of `infermeter run` results against the roofline.

A decode step of batch B over a mean context c reads every weight once and each sequence's K/V:

    bytes per step = W + B * c * kv_bytes_per_token
    W              = parameters read per step * bytes per element: all of them except the input
                     embedding table when it is not tied to the LM head, and GPT-2's position
                     table (decode gathers B rows of those)
    kv_bytes/token = 2 (K and V) * layers * kv_heads * head_dim * bytes per element
    c              = input_len + output_len / 2 (the mean context over the decode steps)
    FLOPs per step = B * (2 * parameters read + 4 * layers * heads * head_dim * c)
    roofline tok/s = B / max(bytes per step / bandwidth, FLOPs per step / compute)

with `bandwidth` and `compute` the measured ceilings of an `infermeter kernels` results file of the
same machine and dtype (GPU: device-to-device copy and the cuBLAS GEMM; CPU: streaming read and the
CPU matmul). Batch-1 decode is memory-bound everywhere; large batches on a CPU are compute-bound.
The achieved figure is the phase's engine-side `decode_tokens_per_s` (decode tokens / step time
attributed to decode). Beside it, the rate the clients saw: batch / mean TPOT (time per output
token after the first, per request), which also counts what happens between steps (scheduling,
bookkeeping, handing tokens out); the gap between the two is the engine's host time outside steps.

Usage:
    decode_roofline.py --kernels kernels.json --run graphs=run.json --run eager=run-eager.json \
        [--out roofline.json] [--markdown roofline.md]

Prints a Markdown table (one row per measured phase of every run file) and writes the same rows as
JSON. Standard library only.
"""
import argparse
import json
import sys

ELEM_BYTES = {"f32": 4, "bf16": 2, "f16": 2}


def fail(msg):
    print(f"decode_roofline.py: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: {e}")


def field(doc, path, keys):
    cur = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            fail(f"{path}: missing field `{'.'.join(keys)}`")
        cur = cur[k]
    return cur


def params_read(model, path):
    """Parameters one decode step reads."""
    cfg = field(model, path, ["config"])
    params = field(model, path, ["num_parameters"])
    h = field(cfg, path, ["hidden_size"])
    not_read = 0
    if not cfg.get("tie_word_embeddings", False):
        not_read += field(cfg, path, ["vocab_size"]) * h
    if cfg.get("arch") == "gpt2":
        not_read += field(cfg, path, ["max_context"]) * h
    dtype = field(model, path, ["dtype"])
    if dtype not in ELEM_BYTES:
        fail(f"{path}: model.dtype `{dtype}` is not one of {sorted(ELEM_BYTES)}")
    return params - not_read


def kv_bytes_per_token(model, path):
    cfg = field(model, path, ["config"])
    return (
        2
        * field(cfg, path, ["num_layers"])
        * field(cfg, path, ["num_kv_heads"])
        * field(cfg, path, ["head_dim"])
        * ELEM_BYTES[field(model, path, ["dtype"])]
    )


def attention_flops_per_token(model, path):
    """FLOPs of one query token's attention per key (QK^T and PV, every layer and head)."""
    cfg = field(model, path, ["config"])
    return (
        4
        * field(cfg, path, ["num_layers"])
        * field(cfg, path, ["num_heads"])
        * field(cfg, path, ["head_dim"])
    )


def rows_of(label, run, path, bandwidth_gb_s, compute_gflop_s):
    model = field(run, path, ["model"])
    n = params_read(model, path)
    w = n * ELEM_BYTES[model["dtype"]]
    kv = kv_bytes_per_token(model, path)
    attn = attention_flops_per_token(model, path)
    rows = []
    for p in field(run, path, ["phases"]):
        if p.get("warmup"):
            continue
        params = p.get("params") or {}
        if not all(k in params for k in ("batch_size", "input_len", "output_len")):
            continue  # stream or workload phases: no fixed batch and lengths
        es = p.get("engine_summary")
        if not es:
            fail(f"{path}: phase `{p.get('name')}` has no engine_summary (interrupted run?)")
        b = params["batch_size"]
        ctx = params["input_len"] + params["output_len"] / 2
        step_bytes = w + b * ctx * kv
        step_flops = b * (2 * n + attn * ctx)
        memory_s = step_bytes / (bandwidth_gb_s * 1e9)
        compute_s = step_flops / (compute_gflop_s * 1e9)
        roof = b / max(memory_s, compute_s)
        achieved = es["decode_tokens_per_s"]
        tpot = (((p.get("summary") or {}).get("latency") or {}).get("tpot") or {}).get("mean")
        if not isinstance(tpot, (int, float)) or tpot <= 0:
            fail(f"{path}: phase `{p.get('name')}` has no positive summary.latency.tpot.mean")
        client = b / tpot
        graphs = p.get("graphs") or {}
        rows.append(
            {
                "run": label,
                "file": path,
                "phase": p.get("name"),
                "batch_size": b,
                "input_len": params["input_len"],
                "output_len": params["output_len"],
                "cuda_graphs": bool(run.get("engine", {}).get("cuda_graphs", False)),
                "graph_steps_replayed": graphs.get("replayed"),
                "decode_tokens_per_s": achieved,
                "weight_bytes_per_step": w,
                "kv_bytes_per_step": b * ctx * kv,
                "flops_per_step": step_flops,
                "bound": "memory" if memory_s >= compute_s else "compute",
                "achieved_gb_s": achieved / b * step_bytes / 1e9,
                "roofline_tokens_per_s": roof,
                "pct_of_roofline": 100.0 * achieved / roof,
                "tpot_tokens_per_s": client,
                "tpot_pct_of_roofline": 100.0 * client / roof,
            }
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", required=True, help="infermeter kernels results (the ceiling)")
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=FILE",
                    help="infermeter run results, labelled (repeat)")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--markdown", help="write the table here too")
    a = ap.parse_args(argv)

    kernels = load(a.kernels)
    bw = field(kernels, a.kernels, ["ceilings", "memory_gb_s"])
    flops = field(kernels, a.kernels, ["ceilings", "compute_gflop_s"])
    method = kernels["ceilings"].get("memory_method", "?")
    compute_method = kernels["ceilings"].get("compute_method", "?")
    for name, v in (("memory_gb_s", bw), ("compute_gflop_s", flops)):
        if not isinstance(v, (int, float)) or v <= 0:
            fail(f"{a.kernels}: ceilings.{name} must be a positive number, got {v!r}")
    rows = []
    for spec in a.run:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            fail(f"--run `{spec}`: expected LABEL=FILE")
        rows += rows_of(label, load(path), path, bw, flops)
    if not rows:
        fail("no measured grid phases in the run files")

    lines = [
        f"Memory ceiling: {bw:.1f} GB/s ({method}); compute ceiling: {flops:.0f} GFLOP/s "
        f"({compute_method}); from {a.kernels}",
        "",
        "| run | batch | in/out | graphs | decode tok/s | roofline tok/s | bound | % of roofline "
        "| GB/s | batch / TPOT | % of roofline |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = "on" if r["cuda_graphs"] else "off"
        lines.append(
            f"| {r['run']} | {r['batch_size']} | {r['input_len']}/{r['output_len']} | {g} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['roofline_tokens_per_s']:.1f} | {r['bound']} | "
            f"{r['pct_of_roofline']:.1f}% | {r['achieved_gb_s']:.1f} | "
            f"{r['tpot_tokens_per_s']:.1f} | {r['tpot_pct_of_roofline']:.1f}% |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if a.out:
        doc = {
            "command": sys.argv,
            "kernels_file": a.kernels,
            "memory_gb_s": bw,
            "memory_method": method,
            "compute_gflop_s": flops,
            "compute_method": compute_method,
            "rows": rows,
        }
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
