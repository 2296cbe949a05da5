// attention_prefill.cpp — kernels/attention_prefill.cu (the tensor-core flash prefill, the source
// itself, compiled for the CPU through emu.h, whose mma.sync follows the PTX ISA's fragment layouts)
// against a double-precision causal softmax-attention reference, for bf16 and f16. Run by
// scripts/emulate-kernels; no GPU needed.
//
// Each case builds a paged KV cache with shuffled block ids and a batch that mixes prefill sequences
// (q_len >= 2 new tokens, the last q_len of a context of ctx tokens: whole prompts and chunks over a
// cached prefix) with decode sequences (one new token, whose output rows must stay untouched), makes
// the tile list as the host's prefill_tiles does (src/backend/cuda/attention.rs) and launches both
// kernels of each head_dim: flash_prefill_d{64,128} (K/V tiles through the cp.async pipeline, whose
// copies emu.h performs at the latest moment allowed, so a read before its wait fails) and
// flash_prefill_sync_d{64,128} (loads through registers). Covered: head_dim 64/128, GQA groups 1, 4 and 8, block sizes 16/32, query
// lengths across the 64-row query tile and the 64/32-key K/V tiles (2, 3, 37, 63, 64, 65, 130, 200),
// prefixes not multiples of the block size. Poison: every cache slot no sequence owns (unused blocks
// and the tails of last blocks) holds NaN/inf, so a read past the context shows up as NaN.
// "window W": a sliding window of W keys; the keys before a sequence's first new row's window (which
// no row of the sequence sees) hold NaN/inf too, so a read before the window shows up as NaN.
// "softcap C": scores bent to C tanh(s / C) before the softmax (Gemma 2). "alibi M x S": ALiBi slopes
// of max bias M times S added per key distance (BLOOM, MPT, Falcon-RW).
// Tolerance: |got - want| / (1 + |want|) <= 2e-2 (bf16), 4e-3 (f16): the probabilities are rounded to
// T before P V (as FlashAttention does) plus one rounding of the output (inputs are rounded to T
// before the reference sees them).
// f32: the module's prefill kernels are empty by design (the host runs paged_attention_naive for f32
// prefill); the f32 build checks that a launch writes nothing.
#include "emu.h"
#include <cstdio>
#include <random>
#include <utility>
#include "attention_prefill.cu"

static std::mt19937 rng(11);
static float rnd() { return std::normal_distribution<float>(0, 1)(rng); }
static float rt(float x) { return im::to_float(im::from_float(x)); }
static const double TOL = IM_DTYPE == IM_DTYPE_BF16 ? 2e-2 : 4e-3;
static int failures = 0, cases = 0;

// The host's tile list: per sequence with >= 2 new tokens, its query tiles last first.
static std::vector<uint32_t> prefill_tiles(const std::vector<uint32_t>& qsl) {
  std::vector<uint32_t> tiles;
  for (uint32_t s = 0; s + 1 < qsl.size(); ++s) {
    uint32_t n = qsl[s + 1] - qsl[s];
    if (n >= 2) for (uint32_t m = (n + IM_PREFILL_BLOCK_M - 1) / IM_PREFILL_BLOCK_M; m-- > 0;) { tiles.push_back(s); tiles.push_back(m); }
  }
  return tiles;
}

// seqs: (new tokens, context) per sequence.
void run_case(uint32_t D, uint32_t H, uint32_t Hkv, uint32_t bs, std::vector<std::pair<uint32_t, uint32_t>> seqs,
              uint32_t window = 0, float softcap = 0.f, float alibi = 0.f, float alibi_scale = 1.f) {
  auto first_key = [&](uint32_t pos) { return window && pos + 1 > window ? pos + 1 - window : 0u; };
  uint32_t G = H / Hkv, ns = seqs.size(), max_blocks = 0;
  std::vector<uint32_t> qsl(ns + 1, 0), lens(ns);
  for (uint32_t s = 0; s < ns; ++s) {
    qsl[s + 1] = qsl[s] + seqs[s].first; lens[s] = seqs[s].second;
    max_blocks = std::max(max_blocks, (lens[s] + bs - 1) / bs);
  }
  max_blocks += 1;  // a spare column
  uint32_t num_tokens = qsl[ns], num_blocks = 1;  // block 0 belongs to no sequence
  std::vector<uint32_t> table(ns * max_blocks, 0);
  for (uint32_t s = 0; s < ns; ++s) for (uint32_t b = 0; b < (lens[s] + bs - 1) / bs; ++b) table[s * max_blocks + b] = num_blocks++;
  std::vector<uint32_t> perm(num_blocks); for (uint32_t i = 0; i < num_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin() + 1, perm.end(), rng);
  for (auto& b : table) b = perm[b];

  // every slot poisoned, then the sequences' own positions filled
  size_t cache_len = size_t(num_blocks) * bs * Hkv * D;
  std::vector<float> kf(cache_len), vf(cache_len);
  for (size_t i = 0; i < cache_len; ++i) { kf[i] = NAN; vf[i] = (i % 2) ? INFINITY : NAN; }
  auto slot = [&](uint32_t s, uint32_t j, uint32_t kvh) { return ((size_t(table[s * max_blocks + j / bs]) * bs + j % bs) * Hkv + kvh) * D; };
  for (uint32_t s = 0; s < ns; ++s) for (uint32_t j = first_key(lens[s] - seqs[s].first); j < lens[s]; ++j) for (uint32_t kvh = 0; kvh < Hkv; ++kvh)
    for (uint32_t e = 0; e < D; ++e) { kf[slot(s, j, kvh) + e] = rt(rnd()); vf[slot(s, j, kvh) + e] = rt(rnd()); }
  uint32_t q_stride = (H + 2 * Hkv) * D, out_stride = H * D;
  std::vector<float> qf(size_t(num_tokens) * q_stride);
  for (auto& x : qf) x = rt(rnd() * 2);
  std::vector<T> kt(cache_len), vt(cache_len), qt(qf.size());
  for (size_t i = 0; i < cache_len; ++i) { kt[i] = im::from_float(kf[i]); vt[i] = im::from_float(vf[i]); }
  for (size_t i = 0; i < qf.size(); ++i) qt[i] = im::from_float(qf[i]);

  std::vector<uint32_t> tiles = prefill_tiles(qsl);
  float scale = 1.f / std::sqrt(float(D));
  PrefillAttentionParams p{};
  p.kv = {num_blocks, bs, Hkv, D}; p.num_tiles = tiles.size() / 2; p.num_seqs = ns; p.num_heads = H;
  p.max_blocks_per_seq = max_blocks; p.q_stride = q_stride; p.out_stride = out_stride; p.scale = scale;
  p.window = window; p.softcap = softcap; p.alibi_max_bias = alibi; p.alibi_scale = alibi_scale;
  dim3 grid; grid.x = p.num_tiles; grid.y = H;
  dim3 blk; blk.x = IM_PREFILL_THREADS;
  for (bool pipelined : {true, false}) {
    auto kern = pipelined ? (D == 64 ? flash_prefill_d64 : flash_prefill_d128)
                          : (D == 64 ? flash_prefill_sync_d64 : flash_prefill_sync_d128);
    const char* name = pipelined ? "cp.async" : "sync    ";
    std::vector<T> ot(size_t(num_tokens) * out_stride, im::from_float(-7.f));
    launch(grid, blk, [&] { kern(ot.data(), qt.data(), kt.data(), vt.data(), qsl.data(), lens.data(), table.data(), tiles.data(), p); });

    cases++;
    if (IM_DTYPE == IM_DTYPE_F32) {  // empty kernels: nothing may be written
      bool untouched = true;
      for (T x : ot) untouched &= im::to_float(x) == -7.f;
      if (!untouched) failures++;
      printf("%s D%-3u H%-2u Hkv%-2u bs%-2u f32: %s\n", name, D, H, Hkv, bs, untouched ? "ok   (empty kernel wrote nothing)" : "FAIL (the f32 kernel wrote output)");
      continue;
    }
    double worst = 0; bool nan = false, untouched = true;
    for (uint32_t s = 0; s < ns; ++s) {
      uint32_t q_len = qsl[s + 1] - qsl[s], ctx = lens[s];
      for (uint32_t r = 0; r < q_len; ++r) {
        uint32_t t = qsl[s] + r, pos = ctx - q_len + r;
        for (uint32_t h = 0; h < H; ++h) {
          if (q_len < 2) {  // a decode row: the prefill kernel leaves it alone
            for (uint32_t e = 0; e < D; ++e) untouched &= im::to_float(ot[size_t(t) * out_stride + h * D + e]) == -7.f;
            continue;
          }
          uint32_t kvh = h / G;
          const uint32_t lo = first_key(pos);
          std::vector<double> sc(pos + 1, -INFINITY);
          double m = -INFINITY;
          for (uint32_t j = lo; j <= pos; ++j) {
            double d = 0; for (uint32_t e = 0; e < D; ++e) d += double(qf[size_t(t) * q_stride + h * D + e]) * kf[slot(s, j, kvh) + e];
            sc[j] = d * scale;
            if (softcap > 0) sc[j] = softcap * std::tanh(sc[j] / softcap);
            if (alibi > 0) sc[j] += ref_alibi_slope(h, H, alibi, alibi_scale) * (double(j) - double(pos));
            m = std::max(m, sc[j]);
          }
          double l = 0; for (uint32_t j = lo; j <= pos; ++j) l += std::exp(sc[j] - m);
          for (uint32_t e = 0; e < D; ++e) {
            double o = 0; for (uint32_t j = lo; j <= pos; ++j) o += std::exp(sc[j] - m) / l * vf[slot(s, j, kvh) + e];
            float got = im::to_float(ot[size_t(t) * out_stride + h * D + e]);
            if (std::isnan(got)) nan = true;
            double err = std::fabs(got - o) / (1 + std::fabs(o));
            if (!(err <= worst)) worst = err;
          }
        }
      }
    }
    bool ok = worst <= TOL && !nan && untouched;
    if (!ok) failures++;
    printf("%s D%-3u H%-2u Hkv%-2u bs%-2u tiles %-3u seqs", name, D, H, Hkv, bs, p.num_tiles);
    for (auto [n, c] : seqs) printf(" %u/%u", n, c);
    if (window) printf(" window %u", window);
    if (softcap > 0) printf(" softcap %g", softcap);
    if (alibi > 0) printf(" alibi %g x %g", alibi, alibi_scale);
    printf("  %s err %.3g%s%s\n", ok ? "ok  " : "FAIL", worst, nan ? " NaN" : "", untouched ? "" : " decode rows written");
  }
}

int main() {
  printf("dtype %d (seqs: new tokens/context)\n", IM_DTYPE);
  for (uint32_t D : {64u, 128u}) {
    run_case(D, 4, 4, 16, {{37, 37}, {1, 20}, {2, 2}, {65, 65}});     // G 1: whole prompts, a decode row
    run_case(D, 8, 2, 32, {{64, 100}, {3, 300}, {130, 130}});         // G 4: chunks over cached prefixes
    run_case(D, 8, 1, 16, {{63, 63}, {200, 233}, {1, 7}});            // G 8: 4 query tiles, prefix 33
    // sliding windows: shorter than a query tile, than a K/V tile, not a multiple of either or of
    // the block size; over whole prompts and chunks after a cached prefix
    run_case(D, 4, 4, 16, {{130, 130}, {37, 37}, {1, 20}, {64, 100}}, 5);   // rows see 5 keys
    run_case(D, 8, 2, 32, {{200, 233}, {3, 300}, {65, 65}}, 50);             // G 4
    run_case(D, 8, 1, 16, {{130, 400}, {70, 70}}, 100);                      // G 8: window > BM
    // soft-capped scores (Gemma 2), alone and under a window
    run_case(D, 8, 2, 16, {{130, 130}, {64, 100}, {1, 9}}, 0, 0.5f);        // G 4
    run_case(D, 4, 4, 32, {{200, 233}, {37, 37}}, 50, 1.5f);                 // G 1
    // ALiBi: BLOOM's slopes (8 heads); 12 heads in Falcon-RW's scaled form under a window; with a
    // soft-cap
    run_case(D, 8, 2, 16, {{130, 130}, {64, 100}, {1, 9}}, 0, 0.f, 8.f);                // G 4
    run_case(D, 12, 3, 32, {{200, 233}, {37, 37}}, 50, 0.f, 8.f, 0.125f);               // G 4
    run_case(D, 4, 4, 16, {{65, 65}, {3, 300}}, 0, 1.5f, 4.f);                           // G 1
  }
  printf("%s: %d of %d cases failed\n", failures ? "FAILED" : "PASSED", failures, cases);
  return failures != 0;
}
