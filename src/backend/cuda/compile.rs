//! Kernels compiled by NVRTC at run time, for the device's own architecture, and cached on disk.
//!
//! The sources (`kernels/*.cu`, `common.cuh`, `params.h`) are embedded in the binary with
//! `include_str!`, so a binary needs no source tree. Each kernel file is compiled once per compute
//! dtype (`-DIM_DTYPE=<id>`, see `kernels/common.cuh`); the two headers are handed to NVRTC as
//! in-memory headers, so `#include "common.cuh"` needs no `-I kernels`.
//!
//! CUBIN, not PTX: the NVRTC found at run time may be newer than the driver (a pip wheel next to an
//! older driver), and a driver rejects PTX of a newer ISA version than it knows ("unsupported PTX
//! version"). A CUBIN for the exact `sm_XX` is loaded without JIT, which CUDA's minor-version
//! compatibility guarantees within a major version. Only when this NVRTC cannot target the device's
//! architecture (a GPU newer than the NVRTC) is PTX for the newest architecture it knows emitted,
//! for the driver to JIT.
//!
//! Options, as `scripts/check-kernels` uses them (it checks the same files for sm_80/86/89/90 in CI):
//! `--gpu-architecture=sm_XX --std=c++17 -default-device -I<CUDA include dir> -DIM_DTYPE=<id>`.
//! The CUDA include dir provides `cuda_fp16.h` / `cuda_bf16.h` (NVRTC 13 has no built-in copies); it is
//! searched in `INFERMETER_CUDA_INCLUDE`, `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`, `/opt/cuda`,
//! `/usr/include`, then the pip wheels (`nvidia/cu13`, `nvidia/cu12`, `nvidia/cuda_runtime`) of
//! `$VIRTUAL_ENV` and of this repository's `.venv-cuda` (what `scripts/check-kernels` installs).
//!
//! Cache: `$INFERMETER_KERNEL_CACHE`, else `$XDG_CACHE_HOME/infermeter/kernels`, else
//! `~/.cache/infermeter/kernels` (`INFERMETER_KERNEL_CACHE=off` disables it). One file per
//! (kernel file, dtype, target arch, NVRTC version, hash of sources + headers + options), written
//! atomically (temporary file + rename); an unreadable or corrupt entry is recompiled, a failed write
//! only costs the next run a compile.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::sys;

use crate::error::{Error, Result};

/// One kernel file and the kernels it exports.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every kernel file, embedded at build time.
pub const KERNEL_FILES: &[KernelFile] = &[
    KernelFile {
        name: "activation.cu",
        source: include_str!("../../../kernels/activation.cu"),
        kernels: &[
            "gelu_new",
            "gelu_erf",
            "relu",
            "silu_mul",
            "gelu_tanh_mul",
            "softcap_inplace",
            "scale_inplace",
        ],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("../../../kernels/attention.cu"),
        kernels: &["paged_attention_naive"],
    },
    KernelFile {
        name: "attention_decode.cu",
        source: include_str!("../../../kernels/attention_decode.cu"),
        kernels: &[
            "paged_decode_d64",
            "paged_decode_d128",
            "paged_decode_d256",
            "paged_decode_reduce",
        ],
    },
    KernelFile {
        name: "attention_prefill.cu",
        source: include_str!("../../../kernels/attention_prefill.cu"),
        kernels: &[
            "flash_prefill_d64",
            "flash_prefill_d128",
            "flash_prefill_sync_d64",
            "flash_prefill_sync_d128",
        ],
    },
    KernelFile {
        name: "embedding.cu",
        source: include_str!("../../../kernels/embedding.cu"),
        kernels: &["embedding", "gather_logit_rows", "moe_combine"],
    },
    KernelFile {
        name: "kv_write.cu",
        source: include_str!("../../../kernels/kv_write.cu"),
        kernels: &["write_kv"],
    },
    KernelFile {
        name: "norm.cu",
        source: include_str!("../../../kernels/norm.cu"),
        kernels: &[
            "layernorm",
            "rmsnorm",
            "add_rmsnorm",
            "qk_rmsnorm",
            "add_inplace",
        ],
    },
    KernelFile {
        name: "rope.cu",
        source: include_str!("../../../kernels/rope.cu"),
        kernels: &["rope", "qk_norm_rope"],
    },
    KernelFile {
        name: "sampling.cu",
        source: include_str!("../../../kernels/sampling.cu"),
        kernels: &["argmax_rows", "sample_rows", "ban_tokens"],
    },
];

/// The headers the kernel files include, by include name.
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("params.h", include_str!("../../../kernels/params.h")),
];

/// What NVRTC emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Machine code for `sm_<arch>` (e.g. 90), loaded without JIT.
    Cubin(u32),
    /// PTX for `compute_<arch>`, JIT-compiled by the driver.
    Ptx(u32),
}

impl Target {
    /// "sm_90" / "compute_90"
    pub fn arch_name(&self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }

    fn extension(&self) -> &'static str {
        match self {
            Target::Cubin(_) => "cubin",
            Target::Ptx(_) => "ptx",
        }
    }
}

/// A compiled module image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

impl Image {
    fn bytes(&self) -> &[u8] {
        match self {
            Image::Cubin(b) => b,
            Image::Ptx(s) => s.as_bytes(),
        }
    }

    /// Into what cudarc's `CudaContext::load_module` takes.
    pub fn into_module_source(self) -> cudarc::nvrtc::Ptx {
        match self {
            Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b),
            Image::Ptx(s) => cudarc::nvrtc::Ptx::from_src(s),
        }
    }
}

/// One compiled kernel file.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub file: &'static str,
    pub target: Target,
    pub image: Image,
    /// Loaded from the on-disk cache rather than compiled now.
    pub from_cache: bool,
    /// NVRTC's program log (empty for a clean compile; warnings otherwise).
    pub log: String,
}

fn nvrtc_err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.into(),
    }
}

fn nvrtc_error_string(rc: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a static string for every result code.
    let p = unsafe { sys::nvrtcGetErrorString(rc) };
    if p.is_null() {
        format!("{rc:?}")
    } else {
        // SAFETY: non-null, NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// 64-bit FNV-1a: a stable content hash for cache keys (not a security boundary: the cache is the
/// user's own directory).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // separator, so ("ab", "c") and ("a", "bc") differ
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Does `dir` hold the half-precision headers the kernels include?
fn has_fp16_headers(dir: &Path) -> bool {
    dir.join("cuda_fp16.h").is_file() && dir.join("cuda_bf16.h").is_file()
}

/// Candidate CUDA include directories, in order of preference (see the module docs).
fn include_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("INFERMETER_CUDA_INCLUDE") {
        c.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(p) = std::env::var_os(var) {
            c.push(PathBuf::from(p).join("include"));
        }
    }
    c.push("/usr/local/cuda/include".into());
    c.push("/opt/cuda/include".into());
    c.push("/usr/include".into());
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(v.into());
    }
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-cuda"));
    for venv in venvs {
        let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
            continue;
        };
        for e in entries.flatten() {
            let site = e.path().join("site-packages").join("nvidia");
            for sub in ["cu13", "cu12", "cuda_runtime"] {
                c.push(site.join(sub).join("include"));
            }
        }
    }
    c
}

/// The first CUDA include directory with cuda_fp16.h and cuda_bf16.h, plus its `cccl` subfolder
/// when there is one (the CUDA 13 wheels keep `nv/target` there). Empty when none is found: NVRTC's
/// built-in headers (where the NVRTC has them) are then the only hope, and a failed compile says so.
pub fn cuda_include_dirs() -> Vec<PathBuf> {
    for dir in include_candidates() {
        if has_fp16_headers(&dir) {
            let mut v = vec![dir.clone()];
            let cccl = dir.join("cccl");
            if cccl.is_dir() {
                v.push(cccl);
            }
            return v;
        }
    }
    Vec::new()
}

/// Where compiled kernels are cached; None when caching is off or no home directory is known.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("INFERMETER_KERNEL_CACHE") {
        let s = v.to_string_lossy();
        if s.is_empty() || s == "off" || s == "0" {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("infermeter").join("kernels"))
}

/// NVRTC, loaded and described; compiles kernel files (through the cache).
#[derive(Debug, Clone)]
pub struct Compiler {
    /// (major, minor)
    pub version: (i32, i32),
    /// Real architectures this NVRTC can emit CUBIN for (e.g. 75, 80, 86, 89, 90, ...).
    pub supported_archs: Vec<u32>,
    pub include_dirs: Vec<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

impl Compiler {
    /// Load NVRTC (after checking that it is present: cudarc panics otherwise).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        // SAFETY: dlopen of the candidate names only.
        if !unsafe { sys::is_culib_present() } {
            return Err(nvrtc_err(format!(
                "NVRTC not found (searched {}; add its folder to LD_LIBRARY_PATH)",
                super::device::searched_names("nvrtc").join(", ")
            )));
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: library present.
        let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_err(format!(
                "nvrtcVersion failed: {}",
                nvrtc_error_string(rc)
            )));
        }
        let mut n = 0;
        // SAFETY: library present; these exist since NVRTC 11.2 (older: assume nothing is listed).
        let supported_archs = if unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
            == sys::nvrtcResult::NVRTC_SUCCESS
            && n > 0
        {
            let mut archs = vec![0i32; n as usize];
            // SAFETY: archs has room for n entries.
            let rc = unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) };
            if rc == sys::nvrtcResult::NVRTC_SUCCESS {
                archs
                    .into_iter()
                    .filter(|&a| a > 0)
                    .map(|a| a as u32)
                    .collect()
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        };
        Ok(Self {
            version: (major, minor),
            supported_archs,
            include_dirs: cuda_include_dirs(),
            cache_dir,
        })
    }

    /// "13.0"
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// CUBIN for the device's own architecture when this NVRTC knows it; otherwise PTX for the newest
    /// architecture it knows below the device's (the driver JIT-compiles it).
    pub fn target_for(&self, compute_capability: (i32, i32)) -> Result<Target> {
        let arch = (compute_capability.0 * 10 + compute_capability.1).max(0) as u32;
        if self.supported_archs.is_empty() || self.supported_archs.contains(&arch) {
            return Ok(Target::Cubin(arch));
        }
        match self
            .supported_archs
            .iter()
            .copied()
            .filter(|&a| a <= arch)
            .max()
        {
            Some(a) => Ok(Target::Ptx(a)),
            None => Err(nvrtc_err(format!(
                "NVRTC {} cannot compile for sm_{arch} (it supports {:?})",
                self.version_string(),
                self.supported_archs
            ))),
        }
    }

    /// The NVRTC options for one compile.
    pub fn options(&self, dtype_id: u32, target: Target) -> Vec<String> {
        let mut o = vec![
            format!("--gpu-architecture={}", target.arch_name()),
            "--std=c++17".into(),
            "-default-device".into(),
        ];
        for d in &self.include_dirs {
            o.push(format!("-I{}", d.display()));
        }
        o.push(format!("-DIM_DTYPE={dtype_id}"));
        o
    }

    /// The cache file of (file, dtype, target) under the current sources and options.
    pub fn cache_path(
        &self,
        file: &KernelFile,
        dtype: &str,
        dtype_id: u32,
        target: Target,
    ) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let opts = self.options(dtype_id, target).join("\0");
        let mut parts: Vec<&[u8]> = vec![file.name.as_bytes(), file.source.as_bytes()];
        for (name, text) in HEADERS {
            parts.push(name.as_bytes());
            parts.push(text.as_bytes());
        }
        parts.push(opts.as_bytes());
        let hash = fnv1a64(&parts);
        let stem = file.name.trim_end_matches(".cu");
        Some(dir.join(format!(
            "{stem}.{dtype}.{}.nvrtc{}.{hash:016x}.{}",
            target.arch_name(),
            self.version_string(),
            target.extension()
        )))
    }

    /// Compile one kernel file for one dtype, through the cache.
    pub fn compile(
        &self,
        file: &KernelFile,
        dtype: &str,
        dtype_id: u32,
        target: Target,
    ) -> Result<Compiled> {
        let path = self.cache_path(file, dtype, dtype_id, target);
        if let Some(image) = path.as_deref().and_then(|p| read_cached(p, target)) {
            return Ok(Compiled {
                file: file.name,
                target,
                image,
                from_cache: true,
                log: String::new(),
            });
        }
        let (image, log) = self.compile_uncached(file, dtype_id, target)?;
        if let Some(p) = &path {
            if let Err(e) = write_atomically(p, image.bytes()) {
                eprintln!(
                    "warning: could not cache compiled kernels at {}: {e}",
                    p.display()
                );
            }
        }
        Ok(Compiled {
            file: file.name,
            target,
            image,
            from_cache: false,
            log,
        })
    }

    /// Compile without the cache: returns the image and NVRTC's log.
    pub fn compile_uncached(
        &self,
        file: &KernelFile,
        dtype_id: u32,
        target: Target,
    ) -> Result<(Image, String)> {
        let fail = |what: &str, rc: sys::nvrtcResult, log: &str| {
            nvrtc_err(
                format!(
                    "NVRTC {} compiling kernels/{} (IM_DTYPE={dtype_id}, {}): {what}: {}{}{}",
                    self.version_string(),
                    file.name,
                    target.arch_name(),
                    nvrtc_error_string(rc),
                    if log.is_empty() { "" } else { "\n" },
                    log,
                ) + &if log.contains("could not open source file") {
                    format!(
                    "\n(no CUDA include folder with cuda_fp16.h and cuda_bf16.h was found{}; set \
                     INFERMETER_CUDA_INCLUDE or CUDA_HOME, or `pip install nvidia-cuda-runtime-cu12` / \
                     `nvidia-cuda-runtime` for CUDA 13)",
                    if self.include_dirs.is_empty() {
                        String::new()
                    } else {
                        format!(" usable with this NVRTC; used {:?}", self.include_dirs)
                    }
                )
                } else {
                    String::new()
                },
            )
        };
        let to_c =
            |s: &str| CString::new(s).map_err(|_| nvrtc_err(format!("NUL byte in {}", file.name)));
        let src = to_c(file.source)?;
        let name = to_c(file.name)?;
        let header_texts: Vec<CString> = HEADERS
            .iter()
            .map(|(_, t)| to_c(t))
            .collect::<Result<_>>()?;
        let header_names: Vec<CString> = HEADERS
            .iter()
            .map(|(n, _)| to_c(n))
            .collect::<Result<_>>()?;
        let header_ptrs: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
        let options: Vec<CString> = self
            .options(dtype_id, target)
            .iter()
            .map(|o| to_c(o))
            .collect::<Result<_>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|c| c.as_ptr()).collect();

        let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string for the duration of the call; the
        // header arrays have HEADERS.len() entries.
        let rc = unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                HEADERS.len() as i32,
                header_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
            )
        };
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(fail("nvrtcCreateProgram", rc, ""));
        }
        let program = Program(prog);
        // SAFETY: valid program; options outlive the call.
        let rc = unsafe {
            sys::nvrtcCompileProgram(program.0, option_ptrs.len() as i32, option_ptrs.as_ptr())
        };
        let log = program.log();
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(fail("compile failed", rc, &log));
        }
        let image = match target {
            Target::Cubin(_) => {
                let mut size = 0usize;
                // SAFETY: valid compiled program.
                let rc = unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) };
                if rc != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    return Err(fail("nvrtcGetCUBINSize", rc, &log));
                }
                let mut buf = vec![0u8; size];
                // SAFETY: buf has `size` bytes.
                let rc = unsafe { sys::nvrtcGetCUBIN(program.0, buf.as_mut_ptr() as *mut c_char) };
                if rc != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(fail("nvrtcGetCUBIN", rc, &log));
                }
                Image::Cubin(buf)
            }
            Target::Ptx(_) => {
                let mut size = 0usize;
                // SAFETY: valid compiled program.
                let rc = unsafe { sys::nvrtcGetPTXSize(program.0, &mut size) };
                if rc != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    return Err(fail("nvrtcGetPTXSize", rc, &log));
                }
                let mut buf = vec![0u8; size];
                // SAFETY: buf has `size` bytes.
                let rc = unsafe { sys::nvrtcGetPTX(program.0, buf.as_mut_ptr() as *mut c_char) };
                if rc != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(fail("nvrtcGetPTX", rc, &log));
                }
                while buf.last() == Some(&0) {
                    buf.pop();
                }
                Image::Ptx(String::from_utf8_lossy(&buf).into_owned())
            }
        };
        Ok((image, log))
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: valid program.
        if unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
            || size <= 1
        {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        // SAFETY: buf has `size` bytes.
        if unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .trim()
            .to_string()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: a program from nvrtcCreateProgram, destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// A cached image, if the file exists and looks like one (ELF for a cubin, text for PTX).
fn read_cached(path: &Path, target: Target) -> Option<Image> {
    let bytes = std::fs::read(path).ok()?;
    match target {
        Target::Cubin(_) if bytes.starts_with(b"\x7fELF") => Some(Image::Cubin(bytes)),
        Target::Ptx(_) => {
            let s = String::from_utf8(bytes).ok()?;
            s.contains(".target").then_some(Image::Ptx(s))
        }
        _ => None,
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so readers
/// (other processes and threads sharing the cache) never see half a file. The temporary name is
/// unique per process and call: two threads compiling the same kernel must not write one file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .map_or("kernel".into(), |n| n.to_string_lossy()),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Remove a cache entry that the driver refused to load (so the next run recompiles it).
pub fn evict(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_embedded_with_its_exports() {
        for f in KERNEL_FILES {
            assert!(f.source.contains("#include \"common.cuh\""), "{}", f.name);
            for k in f.kernels {
                assert!(
                    f.source.contains(&format!(" {k}(")),
                    "{} does not define {k}",
                    f.name
                );
            }
        }
        let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "cu"))
            .count();
        assert_eq!(
            on_disk,
            KERNEL_FILES.len(),
            "a kernels/*.cu file is not embedded"
        );
    }

    #[test]
    fn hash_separates_parts_and_is_stable() {
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        assert_eq!(fnv1a64(&[b"x"]), fnv1a64(&[b"x"]));
    }

    #[test]
    fn cache_key_changes_with_dtype_arch_and_nvrtc_version() {
        let c = Compiler {
            version: (13, 0),
            supported_archs: vec![75, 80, 86, 89, 90],
            include_dirs: Vec::new(),
            cache_dir: Some("/tmp/x".into()),
        };
        let f = &KERNEL_FILES[0];
        let a = c.cache_path(f, "bf16", 1, Target::Cubin(90)).unwrap();
        assert!(
            a.to_string_lossy()
                .contains("activation.bf16.sm_90.nvrtc13.0."),
            "{a:?}"
        );
        assert_ne!(a, c.cache_path(f, "f16", 2, Target::Cubin(90)).unwrap());
        assert_ne!(a, c.cache_path(f, "bf16", 1, Target::Cubin(80)).unwrap());
        let newer = Compiler {
            version: (13, 1),
            ..c.clone()
        };
        assert_ne!(
            a,
            newer.cache_path(f, "bf16", 1, Target::Cubin(90)).unwrap()
        );
        // targets: the device's own arch when known, else PTX for the newest known below it
        assert_eq!(c.target_for((8, 6)).unwrap(), Target::Cubin(86));
        assert_eq!(c.target_for((12, 0)).unwrap(), Target::Ptx(90));
        assert!(c.target_for((6, 0)).is_err());
    }

    #[test]
    fn atomic_write_and_corrupt_entries() {
        let dir = tempfile_dir();
        let p = dir.join("sub").join("k.cubin");
        write_atomically(&p, b"\x7fELFabc").unwrap();
        assert_eq!(
            read_cached(&p, Target::Cubin(90)),
            Some(Image::Cubin(b"\x7fELFabc".to_vec()))
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(read_cached(&p, Target::Cubin(90)), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "infermeter-compile-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
