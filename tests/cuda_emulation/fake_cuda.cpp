// fake_cuda.cpp — an emulated CUDA stack (driver, NVRTC, cuBLAS) in one shared library, so that the
// CUDA backend's own tests (tests/cuda_*.rs) run on a machine without a GPU: scripts/emulate-cuda
// builds it and runs them with it first on LD_LIBRARY_PATH, under the names cudarc loads
// (libcuda.so, libnvrtc.so, libcublas.so, libcublasLt.so).
//
// What is real: everything on the Rust side — module compilation through NVRTC's API, the disk
// cache, launch configurations and argument lists, buffer sizes, stream order, cuBLAS calls, CUDA
// graph capture and replay — and the kernel sources themselves, which the "NVRTC" here compiles
// with g++ against tests/kernel_emulation/emu.h (one fiber per CUDA thread, mma.sync from the PTX
// ISA's fragment layouts) into a shared object that it hands back as the "CUBIN" (an ELF image, as
// a real CUBIN is). What is not: timing, the memory model, device limits beyond the few attributes
// below, and the hardware's arithmetic (GEMMs here accumulate in f32 in k order).
//
// Semantics kept strict where the real driver is strict, so a bug that would fail on a GPU fails
// here: device memory is host memory handed out by cuMemAlloc (kernels dereference it directly);
// device work is asynchronous, as on a GPU: kernel launches, device-to-device copies, memsets,
// GEMMs, graph launches, event records and host-to-device copies (their source read at the call,
// as the driver stages pageable memory) join one queue in issue order and run only when the host
// waits: stream, event or context synchronisation, a device-to-host copy (pageable: it returns
// complete), cuMemFree (which waits for the device, as cudaFree does), module unload. So a host
// that times or reads work without waiting for it sees it unfinished, as it would on a GPU
// (FAKE_CUDA_SYNC=1 runs work at issue instead). One queue for every stream is one of the orders a
// GPU may choose. When the stream is capturing, kernel launches, device-to-device copies, memsets
// and GEMMs are recorded with their argument values as of capture and replayed (queued like any
// other work) by cuGraphLaunch; host<->device copies, synchronisation and allocation or freeing
// during a capture fail with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate the capture, as
// the driver does for pageable memory (the capture mode decides whose allocations and
// synchronisations collide with it; this is stricter than the driver for the stream-ordered
// cuMemAllocAsync/cuMemFreeAsync, which it would record as graph nodes). Every entry point takes
// one process-wide lock: kernels run one at a time.
//
// Environment: FAKE_CUDA_MEMORY_MIB (device memory, default 2048), FAKE_CUDA_SMS (multiprocessors,
// default 8), FAKE_CUDA_EMU_DIR (emu.h's folder; default: where this file was built from),
// FAKE_CUDA_CXX (default g++), FAKE_CUDA_CXXFLAGS (extra flags for kernel modules, e.g.
// -fsanitize=address with libasan preloaded), FAKE_CUDA_SYNC=1 (work runs at issue),
// FAKE_CUDA_MEMORY_POOLS=0 (the device says it has no memory pools: cudarc then allocates and frees
// with cuMemAlloc/cuMemFree, which wait for the device, instead of the stream-ordered calls),
// FAKE_CUDA_KERNEL_US (each kernel launch and GEMM also takes this many microseconds of wall time
// when it runs: device time a test can tell from host time).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <elf.h>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#ifndef FAKE_CUDA_DEFAULT_EMU_DIR
#define FAKE_CUDA_DEFAULT_EMU_DIR "tests/kernel_emulation"
#endif
#ifndef FAKE_CUDA_ABI_DIR
#define FAKE_CUDA_ABI_DIR "tests/cuda_emulation"
#endif

namespace {

// ---- CUDA's numbers (cuda.h, nvrtc.h, cublas_api.h, library_types.h) ------------------------------
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};
enum : int { NVRTC_SUCCESS = 0, NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_INVALID_PROGRAM = 4, NVRTC_ERROR_COMPILATION = 6 };
enum : int { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum : int { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum : int { CUBLAS_COMPUTE_32F = 68 };

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

std::recursive_mutex& lock() {
    static std::recursive_mutex m;
    return m;
}
#define LOCKED std::lock_guard<std::recursive_mutex> guard(lock())

size_t env_size(const char* name, size_t fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

// ---- memory -----------------------------------------------------------------------------------------
size_t total_memory() { return env_size("FAKE_CUDA_MEMORY_MIB", 2048) << 20; }
std::map<uintptr_t, size_t>& allocations() {
    static std::map<uintptr_t, size_t> a;
    return a;
}
size_t allocated = 0;

// ---- streams, capture and graphs ----------------------------------------------------------------
enum : int { CAPTURE_MODE_GLOBAL = 0, CAPTURE_MODE_THREAD_LOCAL = 1, CAPTURE_MODE_RELAXED = 2 };
struct Stream {
    bool capturing = false;
    bool invalidated = false;
    int mode = CAPTURE_MODE_GLOBAL;
    std::thread::id thread;  // the capturing thread
    std::vector<std::function<void()>> recorded;
};
Stream default_stream;
Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &default_stream; }
std::vector<Stream*> capturing;  // streams in a capture

struct Graph {
    std::vector<std::function<void()>> nodes;
};

// Device work issued and not yet run, in issue order (every stream's).
std::vector<std::function<void()>>& pending() {
    static std::vector<std::function<void()>> q;
    return q;
}
bool synchronous() {
    static const bool sync = env_size("FAKE_CUDA_SYNC", 0) != 0;
    return sync;
}

// The host waits for the device: run everything issued so far.
void drain() {
    // work may not issue more work, but take the queue first all the same
    std::vector<std::function<void()>> q;
    q.swap(pending());
    for (auto& w : q) w();
}

// The device time FAKE_CUDA_KERNEL_US adds to a kernel or GEMM when it runs.
void device_time() {
    static const size_t us = env_size("FAKE_CUDA_KERNEL_US", 0);
    if (us) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// Issue work: recorded when the stream is capturing, else queued until the host waits.
CUresult enqueue(void* s, std::function<void()> work) {
    Stream* st = stream_of(s);
    if (st->capturing) {
        st->recorded.push_back(std::move(work));
        return CUDA_SUCCESS;
    }
    if (synchronous()) {
        work();
    } else {
        pending().push_back(std::move(work));
    }
    return CUDA_SUCCESS;
}

// Whether an operation a capture does not allow must fail now (it then invalidates the capture it
// collides with): one on a capturing stream always; an "unsafe" call that names no stream
// (allocation, free, context synchronisation: any_stream) while a capture in global mode is in
// progress on any thread, or in thread-local mode on this thread. Relaxed captures allow them.
bool refuse_during_capture(void* s, bool any_stream) {
    Stream* st = stream_of(s);
    if (st->capturing) {
        st->invalidated = true;
        return true;
    }
    if (!any_stream) return false;
    bool refuse = false;
    for (Stream* c : capturing) {
        const bool applies = c->mode == CAPTURE_MODE_GLOBAL ||
                             (c->mode == CAPTURE_MODE_THREAD_LOCAL && c->thread == std::this_thread::get_id());
        if (applies) {
            c->invalidated = true;
            refuse = true;
        }
    }
    return refuse;
}

// ---- modules ------------------------------------------------------------------------------------------
struct FakeCudaClosure;
struct Module {
    void* handle = nullptr;
    FakeCudaClosure* (*bind)(const char*, void**) = nullptr;
    void (*run)(FakeCudaClosure*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned) = nullptr;
    void (*free)(FakeCudaClosure*) = nullptr;
    std::string path;
};
struct Function {
    Module* module;
    std::string name;
};

struct Event {
    std::chrono::steady_clock::time_point at = std::chrono::steady_clock::now();
};

// ---- NVRTC ----------------------------------------------------------------------------------------
struct Program {
    std::string source, name;
    std::vector<std::pair<std::string, std::string>> headers;  // include name, text
    std::string log;
    std::vector<char> image;  // CUBIN targets (sm_XX): the module's shared object
    std::string ptx;          // PTX targets (compute_XX): see ptx_text
};

constexpr char PTX_MAGIC[] = "// emulated PTX";

// What the emulated NVRTC returns for a PTX target: a text with the `.target` and an `.entry` line
// per kernel (as real PTX has) and the module's shared object in hex, which cuModuleLoadData "JIT-compiles" back.
std::string ptx_text(const std::string& arch, const std::vector<std::string>& kernels, const std::vector<char>& image) {
    std::string t = std::string(PTX_MAGIC) + " (tests/cuda_emulation/fake_cuda.cpp)\n.target sm_" + arch + "\n";
    for (auto& k : kernels) t += ".entry " + k + "\n";
    t += "// image ";
    static const char* hex = "0123456789abcdef";
    for (unsigned char c : image) {
        t += hex[c >> 4];
        t += hex[c & 15];
    }
    return t + "\n";
}

std::vector<char> image_of_ptx(const char* text) {
    std::vector<char> out;
    const char* p = std::strstr(text, "// image ");
    if (!p) return out;
    p += 9;
    auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
    for (; p[0] && p[0] != '\n' && p[1]; p += 2) out.push_back(char(nibble(p[0]) << 4 | nibble(p[1])));
    return out;
}

std::string emu_dir() {
    const char* v = std::getenv("FAKE_CUDA_EMU_DIR");
    return v && *v ? v : FAKE_CUDA_DEFAULT_EMU_DIR;
}

bool write_file(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
    return bool(f);
}

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// The exported kernels of a source: `extern "C" __global__ void [__launch_bounds__(...)] name(`.
std::vector<std::string> kernel_names(const std::string& source) {
    std::vector<std::string> names;
    static const std::regex re(R"(extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\()");
    for (auto it = std::sregex_iterator(source.begin(), source.end(), re); it != std::sregex_iterator(); ++it)
        names.push_back((*it)[1]);
    return names;
}

int compile_program(Program& p, int num_options, const char* const* options) {
    std::string dtype;
    bool ptx_target = false;
    std::string arch = "80";
    for (int i = 0; i < num_options; ++i) {
        const std::string o = options[i];
        if (o.rfind("-DIM_DTYPE=", 0) == 0) dtype = o.substr(11);
        if (o.rfind("--gpu-architecture=compute_", 0) == 0) {
            ptx_target = true;
            arch = o.substr(27);
        }
    }
    char tmpl[] = "/tmp/fake-nvrtc-XXXXXX";
    if (!mkdtemp(tmpl)) {
        p.log = "fake NVRTC: mkdtemp failed";
        return NVRTC_ERROR_COMPILATION;
    }
    const std::string dir = tmpl;
    bool ok = write_file(dir + "/" + p.name, p.source);
    for (auto& [name, text] : p.headers) ok &= write_file(dir + "/" + name, text);
    std::string wrapper = "#include \"emu.h\"\n#include \"kernel_abi.h\"\n#include \"" + p.name + "\"\n";
    wrapper += "extern \"C\" FakeCudaClosure* fake_cuda_bind(const char* kernel_name, void** params) {\n";
    for (auto& k : kernel_names(p.source)) wrapper += "    FAKE_CUDA_KERNEL(" + k + ")\n";
    wrapper += "    return nullptr;\n}\n";
    wrapper += "extern \"C\" void fake_cuda_run(FakeCudaClosure* c, unsigned gx, unsigned gy, unsigned gz, unsigned bx, "
               "unsigned by, unsigned bz) { c->run(dim3{gx, gy, gz}, dim3{bx, by, bz}); }\n";
    wrapper += "extern \"C\" void fake_cuda_free(FakeCudaClosure* c) { delete c; }\n";
    ok &= write_file(dir + "/fake_cuda_module.cpp", wrapper);
    if (!ok) {
        p.log = "fake NVRTC: could not write the sources under " + dir;
        return NVRTC_ERROR_COMPILATION;
    }
    const char* cxx = std::getenv("FAKE_CUDA_CXX");
    const char* extra = std::getenv("FAKE_CUDA_CXXFLAGS");
    // -march=native: a module runs where it is built; F16C makes each half conversion one
    // instruction (libgcc's software conversion was a third of an f16 test's run time).
    const std::string cmd = std::string(cxx && *cxx ? cxx : "g++") + " -std=c++20 -O1 -march=native -w -shared -fPIC " +
                            (extra ? extra : "") + " -I" + dir + " -I" + emu_dir() + " -I" + FAKE_CUDA_ABI_DIR +
                            (dtype.empty() ? "" : " -DIM_DTYPE=" + dtype) + " " + dir + "/fake_cuda_module.cpp -o " +
                            dir + "/module.so > " + dir + "/log.txt 2>&1";
    const int rc = std::system(cmd.c_str());
    p.log = read_text(dir + "/log.txt");
    if (rc != 0) {
        p.log = "fake NVRTC (g++ through emu.h) failed: " + cmd + "\n" + p.log;
        return NVRTC_ERROR_COMPILATION;
    }
    const std::string image = read_text(dir + "/module.so");
    p.image.assign(image.begin(), image.end());
    if (ptx_target) {
        p.ptx = ptx_text(arch, kernel_names(p.source), p.image);
        p.image.clear();
    }
    std::system(("rm -rf " + dir).c_str());
    return NVRTC_SUCCESS;
}

// Size of an ELF image from its header: the section header table is its last part.
size_t elf_size(const void* image) {
    const auto* h = static_cast<const Elf64_Ehdr*>(image);
    if (std::memcmp(h->e_ident, ELFMAG, SELFMAG) != 0 || h->e_ident[EI_CLASS] != ELFCLASS64) return 0;
    return size_t(h->e_shoff) + size_t(h->e_shnum) * h->e_shentsize;
}

// ---- cuBLAS ------------------------------------------------------------------------------------------
struct BlasHandle {
    void* stream = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};

float load_element(const void* base, int type, size_t i) {
    switch (type) {
        case CUDA_R_32F: return static_cast<const float*>(base)[i];
        case CUDA_R_16F: return float(static_cast<const _Float16*>(base)[i]);
        default: {  // CUDA_R_16BF
            uint32_t u = uint32_t(static_cast<const uint16_t*>(base)[i]) << 16;
            float f;
            std::memcpy(&f, &u, 4);
            return f;
        }
    }
}

void store_element(void* base, int type, size_t i, float v) {
    switch (type) {
        case CUDA_R_32F: static_cast<float*>(base)[i] = v; break;
        case CUDA_R_16F: static_cast<_Float16*>(base)[i] = (_Float16)v; break;
        default: {  // CUDA_R_16BF, round to nearest even
            uint32_t u;
            std::memcpy(&u, &v, 4);
            if ((u & 0x7fffffffu) > 0x7f800000u) {
                static_cast<uint16_t*>(base)[i] = 0x7fc0;
                break;
            }
            u += 0x7fffu + ((u >> 16) & 1u);
            static_cast<uint16_t*>(base)[i] = uint16_t(u >> 16);
        }
    }
}

}  // namespace

extern "C" {

// ==== driver ==========================================================================================
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, size_t(len), "Emulated CUDA device (CPU, tests/cuda_emulation)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) { *bytes = total_memory(); return CUDA_SUCCESS; }
CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice) { std::memset(uuid, 0x5a, 16); return CUDA_SUCCESS; }
CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }
CUresult cuDeviceGetPCIBusId(char* id, int len, CUdevice) {
    std::snprintf(id, size_t(len), "0000:00:00.0");
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 1: *v = 1024; break;                                    // MAX_THREADS_PER_BLOCK
        case 2: case 3: *v = 1024; break;                            // MAX_BLOCK_DIM_X/Y
        case 4: *v = 64; break;                                      // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;                              // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;                           // MAX_GRID_DIM_Y/Z
        case 8: *v = 49152; break;                                   // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;                                     // WARP_SIZE
        case 12: *v = 65536; break;                                  // MAX_REGISTERS_PER_BLOCK
        case 13: *v = 1410000; break;                                // CLOCK_RATE (kHz)
        case 16: *v = int(env_size("FAKE_CUDA_SMS", 8)); break;      // MULTIPROCESSOR_COUNT
        case 36: *v = 1215000; break;                                // MEMORY_CLOCK_RATE (kHz)
        case 37: *v = 5120; break;                                   // GLOBAL_MEMORY_BUS_WIDTH
        case 38: *v = 40 << 20; break;                               // L2_CACHE_SIZE
        case 39: *v = 2048; break;                                   // MAX_THREADS_PER_MULTIPROCESSOR
        case 41: *v = 1; break;                                      // UNIFIED_ADDRESSING
        case 75: *v = 8; break;                                      // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;                                      // COMPUTE_CAPABILITY_MINOR
        case 81: *v = 167936; break;                                 // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 82: *v = 65536; break;                                  // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 97: *v = 166912; break;                                 // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: *v = 32; break;                                    // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 115: *v = int(env_size("FAKE_CUDA_MEMORY_POOLS", 1)); break; // MEMORY_POOLS_SUPPORTED, as on GPUs
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}

static int primary_context;  // its address is the one context
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) { *ctx = &primary_context; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxGetState(CUdevice, unsigned* flags, int* active) { *flags = 0; *active = 1; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = &primary_context; return CUDA_SUCCESS; }
CUresult cuCtxPushCurrent_v2(void*) { return CUDA_SUCCESS; }
CUresult cuCtxPopCurrent_v2(void** ctx) { if (ctx) *ctx = &primary_context; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice* d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxSetFlags(unsigned) { return CUDA_SUCCESS; }
CUresult cuCtxGetFlags(unsigned* f) { *f = 0; return CUDA_SUCCESS; }
CUresult cuCtxGetApiVersion(void*, unsigned* v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize() {
    LOCKED;
    if (refuse_during_capture(nullptr, true)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    drain();
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    static thread_local char buf[64];
    std::snprintf(buf, sizeof buf, "emulated CUDA error %d", e);
    *s = buf;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        default: return cuGetErrorString(e, s);
    }
    return CUDA_SUCCESS;
}

// ---- memory ---------------------------------------------------------------------------------------
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    *total = total_memory();
    *free_bytes = *total > allocated ? *total - allocated : 0;
    return CUDA_SUCCESS;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCKED;
    if (refuse_during_capture(nullptr, true)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (allocated + bytes > total_memory()) return CUDA_ERROR_OUT_OF_MEMORY;
    void* m = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    allocations()[uintptr_t(m)] = bytes;
    allocated += bytes;
    *p = CUdeviceptr(uintptr_t(m));
    return CUDA_SUCCESS;
}
// Return an allocation (device work that used it has run).
CUresult release(CUdeviceptr p) {
    auto it = allocations().find(uintptr_t(p));
    if (it == allocations().end()) return CUDA_ERROR_INVALID_VALUE;
    allocated -= it->second;
    allocations().erase(it);
    std::free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    if (refuse_during_capture(nullptr, true)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    drain();  // work issued on this memory runs before it is freed
    return release(p);
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* s) {
    LOCKED;
    if (refuse_during_capture(s, false)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return cuMemAlloc_v2(p, bytes);
}
CUresult cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCKED;
    if (refuse_during_capture(s, false)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (allocations().count(uintptr_t(p)) == 0) return CUDA_ERROR_INVALID_VALUE;
    return enqueue(s, [p] { release(p); });  // stream-ordered
}
CUresult cuMemAllocHost_v2(void** p, size_t bytes) { *p = std::malloc(std::max<size_t>(bytes, 1)); return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY; }
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) { return cuMemAllocHost_v2(p, bytes); }
CUresult cuMemFreeHost(void* p) { std::free(p); return CUDA_SUCCESS; }

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    LOCKED;
    if (refuse_during_capture(s, false)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    // pageable memory is staged at the call: the host may reuse its buffer at once
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + n);
    return enqueue(s, [=] { std::memcpy(reinterpret_cast<void*>(dst), staged->data(), n); });
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    LOCKED;
    if (refuse_during_capture(s, false)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    drain();  // into pageable memory the copy returns complete, after the work issued before it
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    LOCKED;
    return enqueue(s, [=] { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n); });
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoDAsync_v2(dst, src, n, nullptr); }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void* s) {
    LOCKED;
    return enqueue(s, [=] { std::memset(reinterpret_cast<void*>(p), v, n); });
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, void* s) {
    LOCKED;
    return enqueue(s, [=] { for (size_t i = 0; i < n; ++i) reinterpret_cast<unsigned*>(p)[i] = v; });
}
CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) { return cuMemsetD32Async(p, v, n, nullptr); }

// ---- streams and events -------------------------------------------------------------------------------
CUresult cuStreamCreate(void** s, unsigned) { *s = new Stream; return CUDA_SUCCESS; }
CUresult cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
CUresult cuStreamDestroy_v2(void* s) {
    LOCKED;
    drain();
    if (s) delete static_cast<Stream*>(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(void* s) {
    LOCKED;
    if (refuse_during_capture(s, false)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    drain();
    return CUDA_SUCCESS;
}
// queries complete the work: a GPU may have finished it by then
CUresult cuStreamQuery(void*) {
    LOCKED;
    drain();
    return CUDA_SUCCESS;
}
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
CUresult cuEventCreate(void** e, unsigned) { *e = new Event; return CUDA_SUCCESS; }
CUresult cuEventDestroy_v2(void* e) {
    LOCKED;
    drain();  // a queued record writes the event
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}
// The event takes the time at which the device reaches it in the queue.
CUresult cuEventRecord(void* e, void* s) {
    LOCKED;
    if (stream_of(s)->capturing) return CUDA_SUCCESS;
    auto* ev = static_cast<Event*>(e);
    return enqueue(s, [ev] { ev->at = std::chrono::steady_clock::now(); });
}
CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
CUresult cuEventSynchronize(void*) {
    LOCKED;
    drain();
    return CUDA_SUCCESS;
}
CUresult cuEventQuery(void* e) { return cuEventSynchronize(e); }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    LOCKED;
    drain();
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->at - static_cast<Event*>(a)->at).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---- modules and launches ---------------------------------------------------------------------------
CUresult cuModuleLoadData(void** module, const void* image) {
    LOCKED;
    std::vector<char> from_ptx;
    if (std::strncmp(static_cast<const char*>(image), PTX_MAGIC, sizeof PTX_MAGIC - 1) == 0) {
        from_ptx = image_of_ptx(static_cast<const char*>(image));
        if (from_ptx.empty()) return CUDA_ERROR_INVALID_IMAGE;
        image = from_ptx.data();
    }
    const size_t size = elf_size(image);
    if (size == 0) return CUDA_ERROR_INVALID_IMAGE;
    char path[] = "/tmp/fake-cuda-module-XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) return CUDA_ERROR_INVALID_IMAGE;
    const bool written = write(fd, image, size) == ssize_t(size);
    close(fd);
    if (!written) return CUDA_ERROR_INVALID_IMAGE;
    auto* m = new Module;
    m->path = path;
    m->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    unlink(path);
    if (!m->handle) {
        std::fprintf(stderr, "fake CUDA: dlopen of a kernel module failed: %s\n", dlerror());
        delete m;
        return CUDA_ERROR_INVALID_IMAGE;
    }
    m->bind = reinterpret_cast<decltype(m->bind)>(dlsym(m->handle, "fake_cuda_bind"));
    m->run = reinterpret_cast<decltype(m->run)>(dlsym(m->handle, "fake_cuda_run"));
    m->free = reinterpret_cast<decltype(m->free)>(dlsym(m->handle, "fake_cuda_free"));
    if (!m->bind || !m->run || !m->free) {
        dlclose(m->handle);
        delete m;
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = m;
    return CUDA_SUCCESS;
}
CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned, void*, void*) { return cuModuleLoadData(module, image); }
CUresult cuModuleUnload(void* module) {
    LOCKED;
    drain();  // queued launches hold the module's closures
    auto* m = static_cast<Module*>(module);
    dlclose(m->handle);
    delete m;
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    LOCKED;
    auto* m = static_cast<Module*>(module);
    if (!m->bind(name, nullptr)) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{m, name};
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attr, void*) {
    switch (attr) {
        case 0: *v = 1024; break;  // MAX_THREADS_PER_BLOCK
        case 4: *v = 64; break;    // NUM_REGS
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(void*, int, int) { return CUDA_SUCCESS; }
CUresult cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int block, size_t) {
    *n = block > 0 ? std::max(1, 2048 / block) : 0;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, void* s, void** params, void** extra) {
    LOCKED;
    auto* fn = static_cast<Function*>(f);
    if (extra || shared_bytes > 0 || by != 1 || bz != 1 || bx == 0 || bx > 1024 || gx == 0 || gy == 0 || gz == 0 ||
        gy > 65535 || gz > 65535) {
        std::fprintf(stderr, "fake CUDA: launch of %s with grid (%u, %u, %u) block (%u, %u, %u) shared %u refused\n",
                     fn->name.c_str(), gx, gy, gz, bx, by, bz, shared_bytes);
        return CUDA_ERROR_INVALID_VALUE;
    }
    FakeCudaClosure* call = fn->module->bind(fn->name.c_str(), params);
    if (!call) return CUDA_ERROR_NOT_FOUND;
    Module* m = fn->module;
    std::shared_ptr<FakeCudaClosure> owned(call, [m](FakeCudaClosure* c) { m->free(c); });
    return enqueue(s, [m, owned, gx, gy, gz, bx] {
        m->run(owned.get(), gx, gy, gz, bx, 1, 1);
        device_time();
    });
}

// ---- capture and graphs --------------------------------------------------------------------------------
CUresult cuStreamBeginCapture_v2(void* s, int mode) {
    LOCKED;
    Stream* st = stream_of(s);
    // the legacy NULL stream cannot be captured
    if (!s || st->capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    st->capturing = true;
    st->invalidated = false;
    st->mode = mode;
    st->thread = std::this_thread::get_id();
    st->recorded.clear();
    capturing.push_back(st);
    return CUDA_SUCCESS;
}
CUresult cuStreamBeginCapture(void* s, int mode) { return cuStreamBeginCapture_v2(s, mode); }
CUresult cuStreamEndCapture(void* s, void** graph) {
    LOCKED;
    Stream* st = stream_of(s);
    if (!st->capturing) return CUDA_ERROR_INVALID_VALUE;
    st->capturing = false;
    capturing.erase(std::find(capturing.begin(), capturing.end(), st));
    if (st->invalidated) {
        st->recorded.clear();
        *graph = nullptr;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = new Graph{std::move(st->recorded)};
    st->recorded.clear();
    return CUDA_SUCCESS;
}
CUresult cuStreamIsCapturing(void* s, int* status) {
    LOCKED;
    Stream* st = stream_of(s);
    *status = st->capturing ? (st->invalidated ? 2 : 1) : 0;
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    *exec = new Graph(*static_cast<Graph*>(graph));
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiate_v2(void** exec, void* graph, void*, char*, size_t) { return cuGraphInstantiateWithFlags(exec, graph, 0); }
CUresult cuGraphUpload(void*, void*) { return CUDA_SUCCESS; }
CUresult cuGraphLaunch(void* exec, void* s) {
    LOCKED;
    Stream* st = stream_of(s);
    if (st->capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    for (auto& node : static_cast<Graph*>(exec)->nodes) enqueue(s, node);
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(void* exec) { delete static_cast<Graph*>(exec); return CUDA_SUCCESS; }
CUresult cuGraphDestroy(void* graph) { delete static_cast<Graph*>(graph); return CUDA_SUCCESS; }

// ==== NVRTC =============================================================================================
int nvrtcVersion(int* major, int* minor) {
    // A version no real NVRTC has, so the kernel cache never hands these images to a real driver.
    *major = 99;
    *minor = 0;
    return NVRTC_SUCCESS;
}
int nvrtcGetNumSupportedArchs(int* n) { *n = 1; return NVRTC_SUCCESS; }
int nvrtcGetSupportedArchs(int* archs) { archs[0] = 80; return NVRTC_SUCCESS; }
const char* nvrtcGetErrorString(int rc) {
    switch (rc) {
        case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
        case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
        case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
        default: return "NVRTC_ERROR (emulated)";
    }
}
int nvrtcCreateProgram(void** prog, const char* src, const char* name, int num_headers, const char* const* headers,
                       const char* const* include_names) {
    if (!prog || !src) return NVRTC_ERROR_INVALID_INPUT;
    auto* p = new Program;
    p->source = src;
    p->name = name ? name : "kernel.cu";
    for (int i = 0; i < num_headers; ++i) p->headers.emplace_back(include_names[i], headers[i]);
    *prog = p;
    return NVRTC_SUCCESS;
}
int nvrtcCompileProgram(void* prog, int num_options, const char* const* options) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    return compile_program(*static_cast<Program*>(prog), num_options, options);
}
int nvrtcGetCUBINSize(void* prog, size_t* n) { *n = static_cast<Program*>(prog)->image.size(); return NVRTC_SUCCESS; }
int nvrtcGetCUBIN(void* prog, char* out) {
    auto& img = static_cast<Program*>(prog)->image;
    std::memcpy(out, img.data(), img.size());
    return NVRTC_SUCCESS;
}
int nvrtcGetPTXSize(void* prog, size_t* n) { *n = static_cast<Program*>(prog)->ptx.size() + 1; return NVRTC_SUCCESS; }
int nvrtcGetPTX(void* prog, char* out) {
    auto& ptx = static_cast<Program*>(prog)->ptx;
    std::memcpy(out, ptx.c_str(), ptx.size() + 1);
    return NVRTC_SUCCESS;
}
int nvrtcGetProgramLogSize(void* prog, size_t* n) { *n = static_cast<Program*>(prog)->log.size() + 1; return NVRTC_SUCCESS; }
int nvrtcGetProgramLog(void* prog, char* out) {
    auto& log = static_cast<Program*>(prog)->log;
    std::memcpy(out, log.c_str(), log.size() + 1);
    return NVRTC_SUCCESS;
}
int nvrtcDestroyProgram(void** prog) {
    delete static_cast<Program*>(*prog);
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

// ==== cuBLAS =============================================================================================
int cublasCreate_v2(void** h) { *h = new BlasHandle; return CUBLAS_STATUS_SUCCESS; }
int cublasDestroy_v2(void* h) {
    LOCKED;
    drain();
    delete static_cast<BlasHandle*>(h);
    return CUBLAS_STATUS_SUCCESS;
}
int cublasSetStream_v2(void* h, void* s) { static_cast<BlasHandle*>(h)->stream = s; return CUBLAS_STATUS_SUCCESS; }
int cublasGetStream_v2(void* h, void** s) { *s = static_cast<BlasHandle*>(h)->stream; return CUBLAS_STATUS_SUCCESS; }
int cublasSetWorkspace_v2(void* h, void* w, size_t bytes) {
    static_cast<BlasHandle*>(h)->workspace = w;
    static_cast<BlasHandle*>(h)->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}
int cublasSetMathMode(void*, int) { return CUBLAS_STATUS_SUCCESS; }
int cublasSetPointerMode_v2(void*, int) { return CUBLAS_STATUS_SUCCESS; }
int cublasGetProperty(int type, int* v) {
    *v = type == 0 ? 13 : 0;  // MAJOR_VERSION 13, MINOR 0, PATCH 0
    return CUBLAS_STATUS_SUCCESS;
}
size_t cublasLtGetVersion() { return 130000; }
int cublasLtCreate(void** h) { *h = new int(0); return CUBLAS_STATUS_SUCCESS; }
int cublasLtDestroy(void* h) { delete static_cast<int*>(h); return CUBLAS_STATUS_SUCCESS; }

// C (m x n, column-major) = alpha op(A) op(B) + beta C, f32 accumulation; host pointer mode.
int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int atype,
                 int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc,
                 int compute, int) {
    LOCKED;
    auto ok_type = [](int t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; };
    if (compute != CUBLAS_COMPUTE_32F || !ok_type(atype) || !ok_type(btype) || !ok_type(ctype))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || transa < 0 || transa > 1 || transb < 0 || transb > 1 ||
        lda < std::max(1, transa ? k : m) || ldb < std::max(1, transb ? n : k) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    auto* h = static_cast<BlasHandle*>(handle);
    enqueue(h->stream, [=] {
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                float acc = 0.f;
                for (int l = 0; l < k; ++l) {
                    const size_t ai = transa ? size_t(l) + size_t(i) * lda : size_t(i) + size_t(l) * lda;
                    const size_t bi = transb ? size_t(j) + size_t(l) * ldb : size_t(l) + size_t(j) * ldb;
                    acc += load_element(A, atype, ai) * load_element(B, btype, bi);
                }
                const size_t ci = size_t(i) + size_t(j) * ldc;
                const float prev = be != 0.f ? load_element(C, ctype, ci) : 0.f;
                store_element(C, ctype, ci, al * acc + be * prev);
            }
        device_time();
    });
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
