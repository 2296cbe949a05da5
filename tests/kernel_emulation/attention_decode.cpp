// attention_decode.cpp — kernels/attention_decode.cu (the source itself, compiled for the CPU
// through emu.h) against a double-precision softmax-attention reference, for every dtype
// (-DIM_DTYPE=1/2/3: bf16, f16, f32). Run by scripts/emulate-kernels; no GPU needed.
//
// Each case builds a paged KV cache with shuffled block ids, a batch that mixes decode sequences
// (one new token) with prefill sequences (whose output rows must stay untouched), a split plan as
// the host's split_plan_for makes it, and launches paged_decode_d{64,128,256} (+ the reduce when
// split). Covered: head_dim 64/128/256, GQA groups 1, 2, 3, 4, 5, 8 and 12 (head chunks 8 + 4),
// block sizes 16/32, contexts 1..700 not multiples of the block or split length, 1..3 splits.
// "poison": block 0, which no sequence uses, holds NaN/inf; it is the stand-in row the P·V loop
// loads for skipped keys, so a missing mask shows up as NaN. "badblk": one block-table entry is
// past num_blocks; the kernel skips those keys and so does the reference. "window W": a sliding
// window of W keys (each decode token sees its last W positions); the keys before a decode sequence's
// window hold NaN/inf, so a read before the window start shows up as NaN, and the split plan covers
// the window only, as the host plans it. "softcap C": scores bent to C tanh(s / C) before the softmax.
// "alibi M x S": ALiBi slopes of max bias M times S added per key distance (BLOOM, MPT, Falcon-RW).
// Tolerance: |got - want| / (1 + |want|) <= 2e-2 (bf16), 4e-3 (f16), 1e-5 (f32): one rounding of
// the output to T plus f32 accumulation (inputs are rounded to T before the reference sees them).
#include "emu.h"
#include <cstdio>
#include <random>
#include "attention_decode.cu"

static std::mt19937 rng(7);
static float rnd() { return std::normal_distribution<float>(0, 1)(rng); }
static float rt(float x) { return im::to_float(im::from_float(x)); }
static const double TOL = IM_DTYPE == IM_DTYPE_F32 ? 1e-5 : (IM_DTYPE == IM_DTYPE_BF16 ? 2e-2 : 4e-3);
static int failures = 0, cases = 0;

struct Plan { uint32_t splits, len; };
static Plan plan_for(uint32_t splits, uint32_t ctx) {
  ctx = std::max(ctx, 1u); splits = std::min(std::max(splits, 1u), 64u);
  uint32_t part = (ctx + splits - 1) / splits; part = (part + 127) / 128 * 128;
  return {(ctx + part - 1) / part, part};
}

// seqs: (new tokens, context) per sequence; decode sequences have 1 new token.
void run_case(uint32_t D, uint32_t H, uint32_t Hkv, uint32_t bs, std::vector<std::pair<uint32_t, uint32_t>> seqs,
              uint32_t want_splits, bool poison, bool bad_block, uint32_t window = 0, float softcap = 0.f,
              float alibi = 0.f, float alibi_scale = 1.f) {
  uint32_t G = H / Hkv;
  uint32_t ns = seqs.size(), max_ctx = 0, max_blocks = 0;
  std::vector<uint32_t> qsl(ns + 1, 0), lens(ns), dec;
  for (uint32_t s = 0; s < ns; ++s) {
    qsl[s + 1] = qsl[s] + seqs[s].first; lens[s] = seqs[s].second;
    max_blocks = std::max(max_blocks, (lens[s] + bs - 1) / bs);
    if (seqs[s].first == 1) { dec.push_back(s); max_ctx = std::max(max_ctx, window ? std::min(lens[s], window) : lens[s]); }
  }
  max_blocks += 1;  // a spare column
  uint32_t num_tokens = qsl[ns];
  // block 0 is never used by a sequence: with `poison` it holds NaN/inf (the stand-in row for skipped keys)
  uint32_t num_blocks = 1;
  std::vector<uint32_t> table(ns * max_blocks, 0);
  for (uint32_t s = 0; s < ns; ++s) for (uint32_t b = 0; b < (lens[s] + bs - 1) / bs; ++b) table[s * max_blocks + b] = num_blocks++;
  // shuffle block ids (keep 0 out)
  std::vector<uint32_t> perm(num_blocks); for (uint32_t i = 0; i < num_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin() + 1, perm.end(), rng);
  for (auto& b : table) b = perm[b];
  // an unmapped block (id >= num_blocks) in one decode sequence: the kernel skips its keys
  uint32_t bad_seq = ~0u, bad_col = 0;
  if (bad_block && !dec.empty()) {
    bad_seq = dec[dec.size() / 2];
    uint32_t nb = (lens[bad_seq] + bs - 1) / bs; bad_col = nb > 1 ? 1 : 0;
    table[bad_seq * max_blocks + bad_col] = num_blocks + 5;
  }
  size_t cache_len = size_t(num_blocks) * bs * Hkv * D;
  std::vector<float> kf(cache_len), vf(cache_len);
  for (auto& x : kf) x = rt(rnd()); for (auto& x : vf) x = rt(rnd());
  if (poison) for (size_t i = 0; i < size_t(bs) * Hkv * D; ++i) { kf[i] = NAN; vf[i] = (i % 2) ? INFINITY : NAN; }
  auto first_key = [&](uint32_t ctx) { return window && ctx > window ? ctx - window : 0u; };
  for (uint32_t s : dec) for (uint32_t j = 0; j < first_key(lens[s]); ++j) {
    uint32_t b = table[s * max_blocks + j / bs];
    if (b >= num_blocks) continue;
    for (size_t e = 0; e < size_t(Hkv) * D; ++e) { size_t o = (size_t(b) * bs + j % bs) * Hkv * D + e; kf[o] = NAN; vf[o] = INFINITY; }
  }
  uint32_t q_stride = (H + 2 * Hkv) * D, out_stride = H * D;
  std::vector<float> qf(size_t(num_tokens) * q_stride);
  for (auto& x : qf) x = rt(rnd() * 2);
  std::vector<T> kt(cache_len), vt(cache_len), qt(qf.size()), ot(size_t(num_tokens) * out_stride, im::from_float(-7.f));
  for (size_t i = 0; i < cache_len; ++i) { kt[i] = im::from_float(kf[i]); vt[i] = im::from_float(vf[i]); }
  for (size_t i = 0; i < qf.size(); ++i) qt[i] = im::from_float(qf[i]);
  Plan pl = plan_for(want_splits, max_ctx);
  float scale = 1.f / std::sqrt(float(D));
  DecodeAttentionParams p{};
  p.kv = {num_blocks, bs, Hkv, D}; p.num_decode = dec.size(); p.num_seqs = ns; p.num_heads = H;
  p.max_blocks_per_seq = max_blocks; p.q_stride = q_stride; p.out_stride = out_stride;
  p.num_splits = pl.splits; p.partition_len = pl.len; p.scale = scale; p.window = window; p.softcap = softcap;
  p.alibi_max_bias = alibi; p.alibi_scale = alibi_scale;
  uint32_t gc = G > 4 ? 8 : (G > 2 ? 4 : G);
  uint32_t chunks = (G + gc - 1) / gc;
  std::vector<float> pacc(size_t(dec.size()) * H * pl.splits * D, NAN), pml(size_t(dec.size()) * H * pl.splits * 2, NAN);
  dim3 grid; grid.x = dec.size(); grid.y = Hkv * chunks; grid.z = pl.splits;
  dim3 blk; blk.x = IM_DECODE_THREADS;
  auto kern = D == 64 ? paged_decode_d64 : (D == 128 ? paged_decode_d128 : paged_decode_d256);
  launch(grid, blk, [&] { kern(ot.data(), pacc.data(), pml.data(), qt.data(), kt.data(), vt.data(), qsl.data(), lens.data(), table.data(), dec.data(), p); });
  if (pl.splits > 1) {
    dim3 g2; g2.x = dec.size(); g2.y = H; dim3 b2; b2.x = IM_DECODE_REDUCE_THREADS;
    launch(g2, b2, [&] { paged_decode_reduce(ot.data(), pacc.data(), pml.data(), qsl.data(), lens.data(), dec.data(), p); });
  }
  // reference
  double worst = 0; bool nan = false;
  for (uint32_t i = 0; i < dec.size(); ++i) {
    uint32_t s = dec[i], t = qsl[s], ctx = lens[s];
    for (uint32_t h = 0; h < H; ++h) {
      uint32_t kvh = h / G;
      std::vector<double> sc; std::vector<size_t> offs;
      for (uint32_t j = first_key(ctx); j < ctx; ++j) {
        uint32_t b = table[s * max_blocks + j / bs];
        if (b >= num_blocks) continue;
        size_t off = ((size_t(b) * bs + j % bs) * Hkv + kvh) * D;
        double d = 0; for (uint32_t e = 0; e < D; ++e) d += double(qf[size_t(t) * q_stride + h * D + e]) * kf[off + e];
        double sd = d * scale;
        if (softcap > 0) sd = softcap * std::tanh(sd / softcap);
        if (alibi > 0) sd += ref_alibi_slope(h, H, alibi, alibi_scale) * (double(j) - double(ctx - 1));
        sc.push_back(sd); offs.push_back(off);
      }
      double m = -INFINITY; for (double x : sc) m = std::max(m, x);
      double l = 0; for (double x : sc) l += std::exp(x - m);
      for (uint32_t e = 0; e < D; ++e) {
        double o = 0; for (size_t k = 0; k < sc.size(); ++k) o += std::exp(sc[k] - m) / l * vf[offs[k] + e];
        if (sc.empty()) o = 0;
        float got = im::to_float(ot[size_t(t) * out_stride + h * D + e]);
        if (std::isnan(got)) nan = true;
        double err = std::fabs(got - o) / (1 + std::fabs(o));
        if (!(err <= worst)) worst = err;
      }
    }
  }
  // rows of prefill sequences are untouched
  bool untouched = true;
  for (uint32_t s = 0; s < ns; ++s) if (seqs[s].first != 1)
    for (uint32_t t = qsl[s]; t < qsl[s + 1]; ++t) for (uint32_t c = 0; c < out_stride; ++c) untouched &= im::to_float(ot[size_t(t) * out_stride + c]) == -7.f;
  bool ok = worst <= TOL && !nan && untouched;
  cases++; if (!ok) failures++;
  char win[80] = "";
  if (window || softcap > 0 || alibi > 0)
    snprintf(win, sizeof win, " window %u softcap %g alibi %g x %g", window, softcap, alibi, alibi_scale);
  printf("D%-3u H%-2u Hkv%-2u bs%-2u splits %2u x %-5u ndec %zu max_keys %-5u%s%s%s  %s err %.3g%s%s\n", D, H, Hkv, bs, pl.splits, pl.len, dec.size(), max_ctx,
         poison ? " poison" : "", bad_block ? " badblk" : "", win, ok ? "ok  " : "FAIL", worst, nan ? " NaN" : "", untouched ? "" : " prefill rows written");
}

int main() {
  printf("dtype %d\n", IM_DTYPE);
  const std::vector<uint32_t> ds = {64, 128, 256};
  for (uint32_t D : ds) {
    run_case(D, 4, 4, 16, {{1, 1}, {1, 17}, {1, 130}}, 1, true, false);            // G 1
    run_case(D, 8, 4, 32, {{1, 300}, {3, 40}, {1, 129}, {1, 5}}, 3, true, true);   // G 2, mixed, splits
    run_case(D, 12, 4, 16, {{1, 257}, {1, 33}}, 2, false, false);                   // G 3
    run_case(D, 8, 2, 16, {{1, 700}, {2, 9}, {1, 128}}, 5, true, true);             // G 4
    run_case(D, 10, 2, 32, {{1, 400}}, 1, true, true);                              // G 5
    run_case(D, 16, 2, 16, {{1, 520}, {1, 31}}, 4, true, false);                    // G 8
    run_case(D, 24, 2, 16, {{1, 260}, {4, 20}, {1, 2}}, 2, true, true);             // G 12: chunks 8+4
    // sliding windows: shorter than some contexts (not a multiple of the block or split length),
    // equal to one, longer than the others; one and several splits over the window
    run_case(D, 8, 2, 16, {{1, 700}, {1, 37}, {3, 90}, {1, 300}}, 3, true, true, 300);  // G 4
    run_case(D, 4, 4, 32, {{1, 129}, {1, 1}, {1, 64}}, 1, true, false, 37);             // G 1
    run_case(D, 16, 2, 16, {{1, 1000}, {1, 2}}, 4, false, false, 513);                  // G 8
    // soft-capped scores (Gemma 2), alone and under a window, one and several splits
    run_case(D, 8, 2, 16, {{1, 300}, {1, 17}}, 1, true, false, 0, 0.5f);                // G 4
    run_case(D, 12, 4, 32, {{1, 700}, {2, 9}, {1, 90}}, 3, true, true, 200, 1.5f);      // G 3
    // ALiBi: BLOOM's slopes over 8 heads (G 4, several splits); 12 heads (not a power of two) in
    // Falcon-RW's scaled form under a window; 24 heads with a soft-cap (chunks 8 + 4)
    run_case(D, 8, 2, 16, {{1, 700}, {2, 9}, {1, 37}}, 3, true, true, 0, 0.f, 8.f);          // G 4
    run_case(D, 12, 4, 32, {{1, 300}, {1, 5}}, 2, true, false, 200, 0.f, 8.f, 0.125f);      // G 3
    run_case(D, 24, 2, 16, {{1, 260}, {4, 20}, {1, 2}}, 2, true, false, 0, 1.5f, 4.f);      // G 12
  }
  printf("%s: %d of %d cases failed\n", failures ? "FAILED" : "PASSED", failures, cases);
  return failures != 0;
}
