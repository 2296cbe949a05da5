#!/usr/bin/env python3
"""HF transformers `generate` on the same config, batch and lengths as `infermeter run`, so the
engine's ratio to it is measured in one session on one GPU, not guessed.

The model is built from `config.json` with random weights (as `--dummy-weights`), in bf16, on the
GPU. Prompts are random token ids of exactly `--input-len`; EOS is disabled and
`min_new_tokens == max_new_tokens`, so every request generates exactly `--output-len` tokens, greedy.
Two modes, each timed with CUDA synchronisation around `generate` after warmup runs:

- `eager`: the default dynamic KV cache, no compilation;
- `compile`: `cache_implementation="static"` and `torch.compile(model.forward, mode="reduce-overhead")`
  (CUDA graphs), transformers' documented fast path.

Per (mode, batch size): the median over `--repeats` of the time to generate 1 token (prefill + first
token) and of the time to generate `--output-len` tokens; decode tokens/s =
batch · (output_len − 1) / (total − prefill); output tokens/s = batch · output_len / total.

Usage: python3 scripts/gpu/hf_generate.py --model-dir models/llama-3.2-1b --batch-size 1,16 \\
           --input-len 128 --output-len 128 --out hf.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def gpu_facts():
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[0]
        name, driver, mem = [x.strip() for x in q.split(",")]
        return {"name": name, "driver": driver, "memory_total": mem}
    except Exception as e:  # noqa: BLE001 - the facts are best effort, the reason is recorded
        return {"error": str(e)}


def timed_generate(torch, model, ids, new_tokens):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
    )
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="a directory with config.json")
    ap.add_argument("--batch-size", default="1", help="comma-separated batch sizes")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    doc = {
        "kind": "hf_generate",
        "command": [sys.executable] + sys.argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpu": gpu_facts(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "model_dir": os.path.abspath(a.model_dir),
        "dtype": "bf16",
        "input_len": a.input_len,
        "output_len": a.output_len,
        "method": "median over repeats of wall time around generate() with torch.cuda.synchronize(); "
                  "prefill = generate 1 token; decode tokens/s = batch*(output_len-1)/(total-prefill)",
        "results": [],
    }

    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, a.out)  # atomic: an interrupted run keeps what it measured

    config = AutoConfig.from_pretrained(a.model_dir)
    torch.manual_seed(a.seed)
    for mode in a.modes.split(","):
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
        model.eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        if mode == "compile":
            model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        elif mode != "eager":
            sys.exit(f"unknown mode {mode!r} (eager, compile)")
        for bs in [int(x) for x in a.batch_size.split(",")]:
            g = torch.Generator(device="cuda").manual_seed(a.seed + bs)
            ids = torch.randint(100, config.vocab_size, (bs, a.input_len), device="cuda", generator=g)
            row = {"mode": mode, "batch_size": bs}
            try:
                with torch.inference_mode():
                    for _ in range(a.warmup):
                        timed_generate(torch, model, ids, 1)
                        timed_generate(torch, model, ids, a.output_len)
                    prefill = statistics.median(
                        timed_generate(torch, model, ids, 1) for _ in range(a.repeats))
                    total = statistics.median(
                        timed_generate(torch, model, ids, a.output_len) for _ in range(a.repeats))
                row.update({
                    "prefill_s": prefill,
                    "total_s": total,
                    "decode_tokens_per_s": bs * (a.output_len - 1) / (total - prefill)
                    if total > prefill else None,
                    "output_tokens_per_s": bs * a.output_len / total,
                    "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                })
            except Exception as e:  # noqa: BLE001 - recorded, the other cells go on
                row["error"] = f"{type(e).__name__}: {e}"
            doc["results"].append(row)
            save()
            print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    doc["complete"] = True
    save()


if __name__ == "__main__":
    main()
