// Stand-in for CUDA's cuda_fp16.h in the CPU emulation: IEEE half through the compiler's _Float16.
#pragma once
struct __half {
    _Float16 x;
};
inline float __half2float(__half h) { return (float)h.x; }
inline __half __float2half_rn(float f) { return {(_Float16)f}; }
struct __half2 {
    __half x, y;  // x in the low 16 bits
};
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
