// Stand-in for CUDA's cuda_bf16.h in the CPU emulation: bf16 storage with round-to-nearest-even.
#pragma once
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 {
    unsigned short x;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;  // x in the low 16 bits
};
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
