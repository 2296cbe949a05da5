#!/usr/bin/env python3
"""PyTorch attention on the shapes of `infermeter kernels --sweep attention-acceptance`, timed the
way the kernel studies time ours, so the CUDA backend's attention can be put against it in one
session on one GPU (scripts/gpu/attention_ratios.py makes the table).

- Prefill: `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)` restricted
  to the flash backend (`torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)`), one
  sequence of L tokens, q [1, H, L, D], k/v [1, H_kv, L, D]. GQA through `enable_gqa=True` where
  this torch supports it with the flash backend; otherwise K/V are repeated to H heads before
  timing (outside the timed region), and each row's `gqa` field says which and why.
- Decode: one query token per sequence against contiguous K/V of the whole context (dense, no
  paging): q [B, H, 1, D], k/v [B, H_kv, C, D]. Two implementations (`--decode-impl`):
  `sdpa_flash` (the same SDPA call, not causal: the one query sees every key) and `matmul`
  (matmul-softmax-matmul with the query heads of a GQA group stacked against their KV head, so K
  and V are read once per KV head; the softmax in f32).

Timing follows src/study/timing.rs and src/study/gpu.rs: one cold call, one timed call to
calibrate, then runs of back-to-back calls lasting at least `--min-run-ms`; `--warmup` untimed
runs, then `--runs` timed runs; the median and the minimum per call. CUDA events are recorded on
the current stream around each run. With `--cold-l2`, every call is preceded by a write of a buffer
of max(2 × L2, 256 MiB) outside the timed region, and each call is timed on its own (a run's time
is the sum). Python dispatches each call in some microseconds of host time: without `--cold-l2`,
decode calls shorter than that are timed at the host's pace, not the GPU's; with it, the flush
(tens of microseconds on the GPU) keeps the stream busy while the host queues the timed call.

Bytes and FLOPs per call are the formulas of `attention_cost` in src/study/ops.rs, so GB/s and
TFLOP/s compare directly with our rows: bytes = seqs · (s · (2 · C · H_kv · D + 2 · q · H · D) +
4 · (q + ceil(C / block_size))) (K and V once per KV head, Q read and the output written, a
position per new token and the block-table entries our paged kernels read; SDPA reads no block
table, the term is kept so both sides count the same bytes); FLOPs = seqs · 4 · H · D ·
(q · C − q (q − 1) / 2).

Usage (on the GPU machine; no network needed):
    python3 scripts/gpu/sdpa_compare.py --cold-l2 --out sdpa.json
    python3 scripts/gpu/sdpa_compare.py --decode 1x4096,64x16384 --prefill 2048 --dtype f16
"""

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
import time

# The attention acceptance sweep (src/study/sweep.rs, Sweep::AttentionAcceptance).
DEFAULT_DECODE = "1x1024,1x4096,1x16384,16x1024,16x4096,16x16384,64x1024,64x4096,64x16384"
DEFAULT_PREFILL = "512,2048,8192"
IDX_BYTES = 4  # an integer of metadata (position, block-table entry), as in src/study/ops.rs
MIB = 1 << 20
MIN_FLUSH_BYTES = 256 * MIB  # src/study/gpu.rs MIN_FLUSH_BYTES
MAX_CALLS_PER_RUN = 1_000_000  # src/study/timing.rs


def attention_cost(s, seqs, q, c, h, nkv, d, block_size):
    """Bytes and FLOPs of one call: src/study/ops.rs `attention_cost`, term for term."""
    pairs = max(q * c - q * max(q - 1, 0) // 2, 0)
    blocks = -(-c // max(block_size, 1))
    return {
        "bytes": seqs * (s * (2 * c * nkv * d + 2 * q * h * d) + IDX_BYTES * (q + blocks)),
        "flops": seqs * 4 * h * d * pairs,
    }


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"`{text}` must be at least 1")
    return v


def int_list(text):
    """`512,2048` -> [512, 2048]; empty -> []."""
    return [positive_int(x.strip()) for x in text.split(",") if x.strip()]


def decode_list(text):
    """`1x1024,64x16384` -> [(1, 1024), (64, 16384)] as (batch, context)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"`{item}` is not BATCHxCONTEXT (e.g. 16x4096)")
        out.append((positive_int(parts[0]), positive_int(parts[1])))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="PyTorch SDPA (flash) and a dense decode on the attention acceptance shapes",
    )
    p.add_argument("--decode", type=decode_list, default=decode_list(DEFAULT_DECODE),
                   help=f"decode shapes, BATCHxCONTEXT comma-separated (default {DEFAULT_DECODE})")
    p.add_argument("--prefill", type=int_list, default=int_list(DEFAULT_PREFILL),
                   help=f"prefill lengths, comma-separated (default {DEFAULT_PREFILL})")
    p.add_argument("--heads", type=positive_int, default=32, help="query heads (default 32)")
    p.add_argument("--kv-heads", type=positive_int, default=8, help="KV heads (default 8)")
    p.add_argument("--head-dim", type=positive_int, default=128, help="head_dim (default 128)")
    p.add_argument("--block-size", type=positive_int, default=16,
                   help="KV block size in the byte formula's block-table term (default 16)")
    p.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    p.add_argument("--decode-impl", default="sdpa_flash,matmul",
                   help="decode implementations: sdpa_flash, matmul (default both)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs (default 2)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs (default 10)")
    p.add_argument("--min-run-ms", type=float, default=2.0,
                   help="shortest run; fast calls are batched (default 2)")
    p.add_argument("--cold-l2", action="store_true",
                   help="write a buffer larger than L2 before every call, outside the timed region")
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    p.add_argument("--out", default="sdpa-compare.json", help="results JSON")
    a = p.parse_args(argv)
    if a.heads % a.kv_heads:
        p.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    if a.warmup < 0 or not (a.min_run_ms >= 0):
        p.error("--warmup and --min-run-ms must be >= 0")
    impls = [x.strip() for x in a.decode_impl.split(",") if x.strip()]
    bad = [x for x in impls if x not in ("sdpa_flash", "matmul")]
    if bad:
        p.error(f"--decode-impl: unknown {', '.join(bad)} (sdpa_flash, matmul)")
    a.decode_impl = impls
    return a


def run_text(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    except Exception as e:  # noqa: BLE001 - best effort; the reason is recorded instead
        return f"unavailable: {e}"


def gpu_facts(torch, device):
    props = torch.cuda.get_device_properties(device)
    smi = run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader", f"--id={device}"]).strip()
    header = run_text(["nvidia-smi"])
    cuda_driver = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    fields = [x.strip() for x in smi.split(",")] if not smi.startswith("unavailable") else []
    return {
        "name": torch.cuda.get_device_name(device),
        "compute_capability": list(torch.cuda.get_device_capability(device)),
        "multiprocessors": props.multi_processor_count,
        "memory_total_bytes": props.total_memory,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        "driver_version": fields[1] if len(fields) >= 2 else smi,
        "driver_cuda_version": cuda_driver.group(1) if cuda_driver else None,
    }


class Timer:
    """CUDA-event timing of calls on the current stream, as src/study/gpu.rs EventClock."""

    def __init__(self, torch, cold_l2, l2_bytes):
        self.torch = torch
        self.flush_buf = None
        if cold_l2:
            n = max(2 * (l2_bytes or 0), MIN_FLUSH_BYTES)
            self.flush_buf = torch.empty(n, dtype=torch.uint8, device="cuda")

    def method(self):
        if self.flush_buf is None:
            return ("CUDA events recorded on the current stream around back-to-back calls; "
                    "per-call time = run time / calls")
        return (f"CUDA events around each call, after a write of a {self.flush_buf.numel() // MIB} "
                "MiB buffer (cold L2) outside the timed region; run time = sum of the calls' times; "
                "per-call time = run time / calls")

    def time(self, fn, calls):
        """Seconds for `calls` calls of `fn`."""
        ev = self.torch.cuda.Event
        if self.flush_buf is None:
            start, end = ev(enable_timing=True), ev(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        pairs = []
        for _ in range(calls):
            self.flush_buf.zero_()
            start, end = ev(enable_timing=True), ev(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        pairs[-1][1].synchronize()
        return sum(max(s.elapsed_time(e), 0.0) for s, e in pairs) / 1e3


def calls_per_run(min_run_s, per_call_s):
    per_call = per_call_s if per_call_s > 0 else 1e-9
    return max(1, min(MAX_CALLS_PER_RUN, int(-(-min_run_s // per_call))))


def measure(timer, fn, warmup, runs, min_run_s):
    """src/study/timing.rs measure_with: cold call, calibration, warmup, timed runs."""
    fn()
    timer.torch.cuda.synchronize()
    first = max(timer.time(fn, 1), 1e-9)
    calls = calls_per_run(min_run_s, first)
    for _ in range(warmup):
        timer.time(fn, calls)
    per_call = [timer.time(fn, calls) / calls for _ in range(runs)]
    return {
        "time_median_s": statistics.median(per_call),
        "time_min_s": min(per_call),
        "runs": runs,
        "calls_per_run": calls,
    }


def gqa_probe(torch, F, flash_only, dtype):
    """Whether SDPA's flash backend takes `enable_gqa=True` here; (bool, why not)."""
    q = torch.randn(1, 4, 16, 64, device="cuda", dtype=dtype)
    kv = torch.randn(1, 2, 16, 64, device="cuda", dtype=dtype)
    try:
        with flash_only():
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        torch.cuda.synchronize()
        return True, None
    except (TypeError, RuntimeError) as e:
        return False, str(e).splitlines()[0] if str(e) else type(e).__name__


def shape_of(a, seqs, q, c):
    return {
        "seqs": seqs,
        "query_len": q,
        "context_len": c,
        "num_heads": a.heads,
        "num_kv_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "block_size": a.block_size,
    }


def main(argv):
    a = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"error: PyTorch with torch.nn.attention is needed: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("skipped: no CUDA device: torch.cuda.is_available() is false", file=sys.stderr)
        return 2
    torch.cuda.set_device(a.device)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    elem = 2
    h, hkv, d = a.heads, a.kv_heads, a.head_dim
    group = h // hkv
    scale = d ** -0.5
    gpu = gpu_facts(torch, a.device)
    timer = Timer(torch, a.cold_l2, gpu["l2_cache_bytes"])

    def flash_only():
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)

    native_gqa, gqa_why = gqa_probe(torch, F, flash_only, dtype)
    gqa_note = ("enable_gqa=True (native GQA)" if native_gqa or group == 1 else
                f"K/V repeated to {h} heads before timing (enable_gqa with the flash backend "
                f"failed: {gqa_why})")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu['name']}, {a.dtype}; "
          f"GQA: {gqa_note}", file=sys.stderr)

    def kv_for_flash(k, v):
        """K/V as the flash call takes them, and the keyword arguments for GQA."""
        if group == 1:
            return k, v, {}
        if native_gqa:
            return k, v, {"enable_gqa": True}
        return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), {}

    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        # uniform in [-1, 1), as the studies' inputs
        return torch.rand(*shape, device="cuda", dtype=dtype, generator=gen) * 2 - 1

    # (op, impl, seqs, q, c, build): build() allocates the inputs and returns the call. SDPA calls
    # run inside one sdpa_kernel(FLASH_ATTENTION) context per case (entering it per call would add
    # host time to short calls).
    cases = []
    for length in a.prefill:
        def build(length=length):
            q, k, v = rand(1, h, length, d), rand(1, hkv, length, d), rand(1, hkv, length, d)
            k, v, kw = kv_for_flash(k, v)
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
        cases.append(("attention_prefill", "sdpa_flash", 1, length, length, build))
    for batch, ctx in a.decode:
        if "sdpa_flash" in a.decode_impl:
            def build(batch=batch, ctx=ctx):
                q, k, v = rand(batch, h, 1, d), rand(batch, hkv, ctx, d), rand(batch, hkv, ctx, d)
                k, v, kw = kv_for_flash(k, v)
                return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=False, **kw)
            cases.append(("attention_decode", "sdpa_flash", batch, 1, ctx, build))
        if "matmul" in a.decode_impl:
            def build(batch=batch, ctx=ctx):
                # q [B, H_kv, G, D]: the G query heads of a group against their KV head
                q = rand(batch, hkv, group, d)
                k, v = rand(batch, hkv, ctx, d), rand(batch, hkv, ctx, d)
                kt = k.transpose(-1, -2)  # [B, H_kv, D, C], a view

                def fn():
                    s = torch.matmul(q, kt).float() * scale  # [B, H_kv, G, C]
                    p = torch.softmax(s, dim=-1).to(dtype)
                    return torch.matmul(p, v)  # [B, H_kv, G, D]
                return fn
            cases.append(("attention_decode", "matmul", batch, 1, ctx, build))

    rows, skipped = [], []
    for op, impl, seqs, q, c, build in cases:
        shape = shape_of(a, seqs, q, c)
        label = f"{op} {impl} seqs={seqs},q={q},ctx={c}"
        backend = flash_only() if impl == "sdpa_flash" else contextlib.nullcontext()
        try:
            with backend:
                t = measure(timer, build(), a.warmup, a.runs, a.min_run_ms / 1e3)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError too; "No available kernel"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"{label}: skipped: {reason}", file=sys.stderr)
            skipped.append({"op": op, "impl": impl, "shape": shape, "reason": reason})
            torch.cuda.empty_cache()
            continue
        cost = attention_cost(elem, seqs, q, c, h, hkv, d, a.block_size)
        secs = t["time_median_s"]
        row = {
            "op": op,
            "impl": impl,
            "shape": shape,
            "dtype": a.dtype,
            "gqa": (gqa_note if impl == "sdpa_flash" else
                    "query heads grouped per KV head: [B, H_kv, G, D] @ [B, H_kv, D, C]"),
            **t,
            "time_median_ms": secs * 1e3,
            **cost,
            "achieved_gb_s": cost["bytes"] / secs / 1e9,
            "achieved_tflop_s": cost["flops"] / secs / 1e12,
        }
        rows.append(row)
        print(f"{label:<52} {secs * 1e3:>9.3f} ms {row['achieved_gb_s']:>8.1f} GB/s "
              f"{row['achieved_tflop_s']:>7.2f} TFLOP/s", file=sys.stderr)
        torch.cuda.empty_cache()

    doc = {
        "kind": "sdpa_compare",
        "command": ["python3", sys.argv[0], *argv],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python": platform.python_version(),
        "gpu": gpu,
        "dtype": a.dtype,
        "gqa": gqa_note,
        "implementations": {
            "sdpa_flash": "torch.nn.functional.scaled_dot_product_attention under "
                          "sdpa_kernel(SDPBackend.FLASH_ATTENTION); prefill is_causal=True, decode "
                          "one query per sequence against contiguous K/V of the context",
            "matmul": "decode: matmul(q, kᵀ) · scale → softmax in f32 → matmul(p, v), query heads "
                      "grouped per KV head, contiguous K/V",
        },
        "cost_formula": "src/study/ops.rs attention_cost: bytes = seqs·(s·(2·C·H_kv·D + 2·q·H·D) "
                        "+ 4·(q + ceil(C/block_size))), FLOPs = seqs·4·H·D·(q·C − q(q−1)/2)",
        "timing": {
            "method": timer.method(),
            "warmup_runs": a.warmup,
            "runs": a.runs,
            "min_run_s": a.min_run_ms / 1e3,
            "cold_l2": a.cold_l2,
        },
        "rows": rows,
        "skipped": skipped,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"{len(rows)} rows, {len(skipped)} skipped; results: {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
