//! Probing for CUDA before touching it, and describing what was found.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` at run time and PANICS when a library is
//! missing (`CudaContext::new`, `CudaBlas::new`, the first NVRTC call), and a symbol the installed
//! library lacks panics at its first call. So nothing in the CUDA backend calls into cudarc before
//! [`probe`] has checked, in order:
//!
//! 1. the driver library is loadable (`driver::sys::is_culib_present`);
//! 2. `cuInit` succeeds (it fails cleanly without a GPU, e.g. in a container without devices);
//! 3. the driver supports the CUDA API level this binary was built for (12.2 by default, 13.0 with the
//!    `cuda-13` cargo feature): a 12.x driver under a `cuda-13` build would panic on 13.0-only symbols;
//! 4. at least one device is visible;
//! 5. NVRTC and cuBLAS load (`nvrtc::sys::is_culib_present`, `cublas::sys::is_culib_present`).
//!
//! Every failure is a typed error whose message starts with "no CUDA device: " and says what to do.

use cudarc::driver::{result as drv, sys as drv_sys};

use crate::error::{Error, Result};

/// The CUDA API level the cudarc bindings were built for: (major, minor).
pub const BUILD_API: (i32, i32) = if cfg!(feature = "cuda-13") {
    (13, 0)
} else {
    (12, 2)
};

/// The cargo feature that selects [`BUILD_API`] ("default" for the CUDA 12 build).
pub const BUILD_FEATURE: &str = if cfg!(feature = "cuda-13") {
    "cuda-13"
} else {
    "cuda-12 (default)"
};

/// "no CUDA device: <reason>", as a backend error.
pub fn no_device(reason: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: format!("no CUDA device: {reason}"),
    }
}

/// One GPU, as `infermeter info` and results files describe it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100
    pub compute_capability: (i32, i32),
    pub multiprocessors: u32,
    pub total_memory_bytes: usize,
    /// Free memory when it was described (needs a context; absent when creating one failed).
    pub free_memory_bytes: Option<usize>,
    /// The device's UUID as NVML and `nvidia-smi -L` spell it ("GPU-8-4-4-4-12" hex digits), from
    /// cuDeviceGetUuid: how telemetry finds the engine's GPU among NVML's (absent when the driver
    /// does not say).
    pub uuid: Option<String>,
}

impl GpuInfo {
    /// "sm_90"
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Whether a CUDA library loads, and its version when it does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LibraryStatus {
    pub loads: bool,
    /// "13.0" for NVRTC, "13.0.2" for cuBLAS
    pub version: Option<String>,
    /// The file names cudarc searches (through the dynamic loader, i.e. LD_LIBRARY_PATH).
    pub searched: Vec<String>,
}

/// Everything [`probe`] found: usable devices, or the reason there are none.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CudaProbe {
    /// The CUDA API level of this build, "12.2" or "13.0".
    pub build_api: String,
    /// The highest CUDA version the driver supports, e.g. "13.0" (cuDriverGetVersion).
    pub driver_cuda_version: Option<String>,
    /// The NVIDIA kernel module version, e.g. "580.65.06" (/proc/driver/nvidia/version).
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    pub nvrtc: LibraryStatus,
    pub cublas: LibraryStatus,
    pub cublaslt: LibraryStatus,
    /// Why CUDA is not usable ("no CUDA device: ..."); None when it is.
    pub error: Option<String>,
}

impl CudaProbe {
    pub fn usable(&self) -> bool {
        self.error.is_none()
    }
}

/// The file names cudarc tries for library `name` (through the dynamic loader), without its
/// Windows-style variants: `libnvrtc.so`, `libnvrtc.so.12`, ...
pub fn searched_names(name: &str) -> Vec<String> {
    let prefix = format!("lib{name}.so");
    cudarc::get_lib_name_candidates(name)
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        })
}

fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The driver's CUDA version (major, minor), where the driver is loaded and answers.
pub fn driver_cuda_version() -> Option<(i32, i32)> {
    if !driver_present() {
        return None;
    }
    let version = raw_driver_version().ok()?;
    Some((version / 1000, (version % 1000) / 10))
}

/// cuDriverGetVersion (e.g. 13000). Call only when the driver library is present; needs no cuInit.
fn raw_driver_version() -> std::result::Result<i32, drv::DriverError> {
    let mut version = 0;
    // SAFETY: the caller checked that the driver is present; the call exists in every driver.
    unsafe { drv_sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(version)
}

/// Why kernels compiled by NVRTC `nvrtc` (major, minor) may not load on a driver of CUDA
/// `driver`: an NVRTC of a newer major version than the driver makes images the driver does not
/// know. `None` when the versions fit.
pub fn nvrtc_driver_mismatch(nvrtc: (i32, i32), driver: (i32, i32)) -> Option<String> {
    (nvrtc.0 > driver.0).then(|| {
        format!(
            "NVRTC {}.{} is newer than the driver (CUDA {}.{}): put an NVRTC of CUDA {}.x or older \
             first on LD_LIBRARY_PATH (or update the driver)",
            nvrtc.0, nvrtc.1, driver.0, driver.1, driver.0
        )
    })
}

/// The NVIDIA kernel module version from /proc (no NVML needed); None without the driver.
pub fn kernel_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 ..."
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

fn driver_present() -> bool {
    // SAFETY: only tries dlopen on the candidate names; loads nothing else.
    unsafe { drv_sys::is_culib_present() }
}

/// NVRTC: loads? version?
pub fn nvrtc_status() -> LibraryStatus {
    use cudarc::nvrtc::sys;
    // SAFETY: dlopen of the candidates only.
    let loads = unsafe { sys::is_culib_present() };
    let version = loads.then(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the library is present; nvrtcVersion has existed since NVRTC 7.
        let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        (rc == sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{major}.{minor}"))
    });
    LibraryStatus {
        loads,
        version: version.flatten(),
        searched: searched_names("nvrtc"),
    }
}

/// cuBLAS: loads? version? (cublasGetProperty needs no handle, hence no device.)
pub fn cublas_status() -> LibraryStatus {
    use cudarc::cublas::sys;
    // SAFETY: dlopen of the candidates only.
    let loads = unsafe { sys::is_culib_present() };
    let version = loads.then(|| {
        let mut parts = [0i32; 3];
        let props = [
            sys::libraryPropertyType::MAJOR_VERSION,
            sys::libraryPropertyType::MINOR_VERSION,
            sys::libraryPropertyType::PATCH_LEVEL,
        ];
        for (p, v) in props.into_iter().zip(parts.iter_mut()) {
            // SAFETY: the library is present; cublasGetProperty exists since CUDA 8.
            let rc = unsafe { sys::cublasGetProperty(p, v) };
            if rc != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return None;
            }
        }
        Some(format!("{}.{}.{}", parts[0], parts[1], parts[2]))
    });
    LibraryStatus {
        loads,
        version: version.flatten(),
        searched: searched_names("cublas"),
    }
}

/// cuBLASLt: loads? version?
pub fn cublaslt_status() -> LibraryStatus {
    use cudarc::cublaslt::sys;
    // SAFETY: dlopen of the candidates only.
    let loads = unsafe { sys::is_culib_present() };
    let version = loads.then(|| {
        // SAFETY: present; cublasLtGetVersion exists since cuBLASLt 10.1.
        let v = unsafe { sys::cublasLtGetVersion() };
        // major * 10000 + minor * 100 + patch
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    });
    LibraryStatus {
        loads,
        version,
        searched: searched_names("cublasLt"),
    }
}

fn missing_library(what: &str, status: &LibraryStatus) -> String {
    let major = BUILD_API.0;
    let other = if major == 13 {
        "a CUDA 12 driver stack: rebuild with the default features (cuda-12)"
    } else {
        "CUDA 13 libraries only: rebuild with `--no-default-features --features cuda-13`"
    };
    format!(
        "{what} did not load (searched {}; put its folder on LD_LIBRARY_PATH). This build uses the \
         CUDA {major} libraries (e.g. `pip install nvidia-cuda-nvrtc-cu{major} nvidia-cublas-cu{major}` or \
         a CUDA {major} toolkit); for {other}",
        status.searched.join(", ")
    )
}

/// The driver is present, initialised and new enough; returns its CUDA version (e.g. 13000).
fn init_driver() -> Result<i32> {
    if !driver_present() {
        return Err(no_device(format!(
            "the CUDA driver library was not found (searched {}): no NVIDIA driver on this machine",
            searched_names("cuda").join(", ")
        )));
    }
    drv::init().map_err(|e| no_device(format!("cuInit failed: {e}")))?;
    let version =
        raw_driver_version().map_err(|e| no_device(format!("cuDriverGetVersion failed: {e}")))?;
    let (major, minor) = (version / 1000, (version % 1000) / 10);
    if (major, minor) < BUILD_API {
        return Err(no_device(format!(
            "the driver supports CUDA {major}.{minor}, but this binary was built for the CUDA {}.{} API \
             (cargo feature {BUILD_FEATURE}){}",
            BUILD_API.0,
            BUILD_API.1,
            if BUILD_API.0 == 13 {
                ": rebuild with the default features (cuda-12) for CUDA 12 drivers"
            } else {
                ": update the driver to 535 or newer"
            }
        )));
    }
    Ok(version)
}

/// Describe device `ordinal` without a context (free memory is filled in later by whoever creates
/// one).
fn describe(ordinal: usize) -> Result<GpuInfo> {
    let e =
        |what: &str, err: drv::DriverError| no_device(format!("device {ordinal}: {what}: {err}"));
    let dev = drv::device::get(ordinal as i32).map_err(|err| e("cuDeviceGet", err))?;
    let name = drv::device::get_name(dev).map_err(|err| e("cuDeviceGetName", err))?;
    let attr = |a| {
        // SAFETY: dev is a valid device handle from cuDeviceGet.
        unsafe { drv::device::get_attribute(dev, a) }.map_err(|err| e("cuDeviceGetAttribute", err))
    };
    use drv_sys::CUdevice_attribute as A;
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    // SAFETY: as above.
    let total = unsafe { drv::device::total_mem(dev) }.map_err(|err| e("cuDeviceTotalMem", err))?;
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        multiprocessors: sms.max(1) as u32,
        total_memory_bytes: total,
        free_memory_bytes: None,
        uuid: drv::device::get_uuid(dev)
            .ok()
            .map(|u| format_uuid(&u.bytes)),
    })
}

/// NVML's spelling of a device UUID: "GPU-" and the 16 bytes as 8-4-4-4-12 lower-case hex digits
/// (cuDeviceGetUuid gives the bytes in that order).
pub fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..].concat()
    )
}

/// Check that CUDA is usable (driver, device, NVRTC, cuBLAS) without panicking, and describe the
/// devices. `with_free_memory` creates a context per device to read its free memory (what
/// `infermeter info` shows); the backend reads it from its own context instead.
pub fn probe(with_free_memory: bool) -> CudaProbe {
    let mut p = CudaProbe {
        build_api: format!("{}.{}", BUILD_API.0, BUILD_API.1),
        driver_cuda_version: None,
        driver_version: kernel_driver_version(),
        gpus: Vec::new(),
        nvrtc: nvrtc_status(),
        cublas: cublas_status(),
        cublaslt: cublaslt_status(),
        error: None,
    };
    if let Err(e) = probe_devices(&mut p, with_free_memory) {
        p.error = Some(e.to_string_without_prefix());
        return p;
    }
    if !p.nvrtc.loads {
        p.error = Some(no_device_msg(&missing_library(
            "NVRTC (libnvrtc)",
            &p.nvrtc,
        )));
    } else if !p.cublas.loads {
        p.error = Some(no_device_msg(&missing_library(
            "cuBLAS (libcublas)",
            &p.cublas,
        )));
    }
    p
}

fn no_device_msg(reason: &str) -> String {
    format!("no CUDA device: {reason}")
}

trait BackendMsg {
    fn to_string_without_prefix(&self) -> String;
}

impl BackendMsg for Error {
    /// The message without the "backend `cuda`: " prefix of the Display impl.
    fn to_string_without_prefix(&self) -> String {
        match self {
            Error::Backend { msg, .. } => msg.clone(),
            other => other.to_string(),
        }
    }
}

fn probe_devices(p: &mut CudaProbe, with_free_memory: bool) -> Result<()> {
    let version = init_driver()?;
    p.driver_cuda_version = Some(version_string(version));
    let count =
        drv::device::get_count().map_err(|e| no_device(format!("cuDeviceGetCount failed: {e}")))?;
    if count <= 0 {
        return Err(no_device(
            "the driver is installed but sees no GPU (check CUDA_VISIBLE_DEVICES and the container's device access)",
        ));
    }
    for ordinal in 0..count as usize {
        let mut info = describe(ordinal)?;
        if with_free_memory {
            if let Ok(ctx) = cudarc::driver::CudaContext::new(ordinal) {
                info.free_memory_bytes = ctx.mem_get_info().ok().map(|(free, _)| free);
            }
        }
        p.gpus.push(info);
    }
    Ok(())
}

/// Probe and require device `ordinal` with NVRTC and cuBLAS: what the backend calls before anything
/// else. Returns the device's description.
pub fn require(ordinal: usize) -> Result<GpuInfo> {
    let p = probe(false);
    if let Some(e) = p.error {
        return Err(Error::Backend {
            backend: "cuda",
            msg: e,
        });
    }
    let count = p.gpus.len();
    p.gpus
        .into_iter()
        .find(|g| g.ordinal == ordinal)
        .ok_or_else(|| {
            no_device(format!(
                "device {ordinal} requested, but the driver sees {count} (ordinals 0..{count})"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_spelled_as_nvml_spells_them() {
        let bytes: [u8; 16] = [
            0x8f, 0x1e, 0x2c, 0x3a, 0xaa, 0xaa, 0xbb, 0xbb, 0xcc, 0xcc, 0x01, 0x23, 0x45, 0x67,
            0x89, 0xab,
        ];
        let c = bytes.map(|b| b as std::ffi::c_char);
        assert_eq!(format_uuid(&c), "GPU-8f1e2c3a-aaaa-bbbb-cccc-0123456789ab");
    }

    #[test]
    fn nvrtc_newer_than_the_driver_is_named() {
        assert_eq!(nvrtc_driver_mismatch((12, 8), (13, 0)), None);
        assert_eq!(nvrtc_driver_mismatch((13, 0), (13, 0)), None);
        assert_eq!(nvrtc_driver_mismatch((12, 9), (12, 2)), None);
        let why = nvrtc_driver_mismatch((13, 0), (12, 4)).unwrap();
        assert!(
            why.contains("NVRTC 13.0 is newer than the driver (CUDA 12.4)")
                && why.contains("CUDA 12.x or older"),
            "{why}"
        );
    }

    #[test]
    fn version_strings() {
        assert_eq!(version_string(13000), "13.0");
        assert_eq!(version_string(12020), "12.2");
        assert_eq!(version_string(12080), "12.8");
    }

    /// On a machine without a driver the probe reports a clean reason instead of panicking; on a GPU
    /// machine it finds devices. Either way it returns.
    #[test]
    fn probe_never_panics() {
        let p = probe(false);
        match &p.error {
            Some(e) => {
                assert!(e.starts_with("no CUDA device: "), "{e}");
                eprintln!("probe: {e}");
            }
            None => assert!(!p.gpus.is_empty()),
        }
        if !driver_present() {
            assert!(p.error.is_some() && p.gpus.is_empty());
            let e = require(0).unwrap_err().to_string();
            assert!(e.contains("no CUDA device: "), "{e}");
        }
    }
}
