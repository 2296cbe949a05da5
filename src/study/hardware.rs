//! Vendor peak figures of the GPUs the engine targets: what "% of spec peak" divides by.
//!
//! All compute figures are **dense** (NVIDIA's datasheets print tensor-core figures "with
//! sparsity"; the dense figure is half of that). `fp32` is the non-tensor (CUDA-core) FP32 rate,
//! `tf32` the tensor-core TF32 rate, `bf16` / `fp16` the tensor-core rates with FP32 accumulate.
//! Memory bandwidth is the datasheet's peak DRAM (HBM or GDDR) bandwidth in GB/s (10⁹ bytes per
//! second). Boost-clock figures; a GPU at its power or thermal limit runs below them, which is one
//! reason the measured ceilings exist beside these.
//!
//! Sources (NVIDIA datasheets and product pages, figures as printed there):
//! - A10: "NVIDIA A10 Tensor Core GPU" datasheet: FP32 31.2 TF, TF32 62.5 | 125* TF, BF16 and
//!   FP16 125 | 250* TF, 600 GB/s GDDR6.
//!   <https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/datasheet-new/nvidia-a10-datasheet.pdf>
//! - A100: "NVIDIA A100 Tensor Core GPU" datasheet: FP32 19.5 TF, TF32 156 | 312* TF, BF16 and
//!   FP16 312 | 624* TF; bandwidth 1,555 GB/s (40GB PCIe and SXM), 1,935 GB/s (80GB PCIe),
//!   2,039 GB/s (80GB SXM).
//!   <https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf>
//! - L4: "NVIDIA L4 Tensor Core GPU" datasheet: FP32 30.3 TF, TF32 120* TF, BF16 and FP16 242* TF
//!   (printed with sparsity only: dense is half), 300 GB/s GDDR6.
//!   <https://www.nvidia.com/en-us/data-center/l4/>
//! - H100: "NVIDIA H100 Tensor Core GPU" datasheet, SXM / PCIe: FP32 67 / 51 TF, TF32 989* / 756*
//!   TF, BF16 and FP16 1,979* / 1,513* TF, 3.35 / 2 TB/s.
//!   <https://www.nvidia.com/en-us/data-center/h100/>
//! - H200: "NVIDIA H200 Tensor Core GPU" product page and datasheet, SXM: FP32 67 TF, TF32 989*
//!   TF, BF16 and FP16 1,979* TF, 4.8 TB/s HBM3e. <https://www.nvidia.com/en-us/data-center/h200/>
//!
//! (* = with sparsity, as printed; the table below holds half of it.)
//!
//! CPUs have no entry: vendors do not publish a sustained memory-bandwidth and FLOP figure per SKU
//! and VM shape in a way a table could hold, so CPU studies report only the measured ceilings.

use super::Dtype;

/// Peak figures of one GPU model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GpuSpec {
    /// The name this table uses.
    pub name: &'static str,
    /// Device names as NVML / `nvidia-smi` report them.
    pub device_names: &'static [&'static str],
    /// Peak DRAM bandwidth, GB/s.
    pub memory_gb_s: f64,
    /// Dense TFLOP/s.
    pub fp32_tflops: f64,
    pub tf32_tflops: f64,
    pub bf16_tflops: f64,
    pub fp16_tflops: f64,
    /// The datasheet the figures come from.
    pub source: &'static str,
}

impl GpuSpec {
    /// Dense peak for `dtype` compute: tensor-core BF16/FP16, or CUDA-core FP32 for f32.
    pub fn peak_tflops(&self, dtype: Dtype) -> f64 {
        match dtype {
            Dtype::F32 => self.fp32_tflops,
            Dtype::Bf16 => self.bf16_tflops,
            Dtype::F16 => self.fp16_tflops,
        }
    }
}

const A10_SHEET: &str = "NVIDIA A10 Tensor Core GPU datasheet";
const A100_SHEET: &str = "NVIDIA A100 Tensor Core GPU datasheet";
const L4_SHEET: &str = "NVIDIA L4 Tensor Core GPU datasheet";
const H100_SHEET: &str = "NVIDIA H100 Tensor Core GPU datasheet";
const H200_SHEET: &str = "NVIDIA H200 Tensor Core GPU datasheet";

/// The spec table.
pub const GPU_SPECS: &[GpuSpec] = &[
    GpuSpec {
        name: "A10",
        device_names: &["NVIDIA A10"],
        memory_gb_s: 600.0,
        fp32_tflops: 31.2,
        tf32_tflops: 62.5,
        bf16_tflops: 125.0,
        fp16_tflops: 125.0,
        source: A10_SHEET,
    },
    GpuSpec {
        name: "A100 40GB",
        device_names: &["NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"],
        memory_gb_s: 1555.0,
        fp32_tflops: 19.5,
        tf32_tflops: 156.0,
        bf16_tflops: 312.0,
        fp16_tflops: 312.0,
        source: A100_SHEET,
    },
    GpuSpec {
        name: "A100 80GB SXM",
        device_names: &["NVIDIA A100-SXM4-80GB"],
        memory_gb_s: 2039.0,
        fp32_tflops: 19.5,
        tf32_tflops: 156.0,
        bf16_tflops: 312.0,
        fp16_tflops: 312.0,
        source: A100_SHEET,
    },
    GpuSpec {
        name: "A100 80GB PCIe",
        device_names: &["NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-80GB"],
        memory_gb_s: 1935.0,
        fp32_tflops: 19.5,
        tf32_tflops: 156.0,
        bf16_tflops: 312.0,
        fp16_tflops: 312.0,
        source: A100_SHEET,
    },
    GpuSpec {
        name: "L4",
        device_names: &["NVIDIA L4"],
        memory_gb_s: 300.0,
        fp32_tflops: 30.3,
        tf32_tflops: 60.0,
        bf16_tflops: 121.0,
        fp16_tflops: 121.0,
        source: L4_SHEET,
    },
    GpuSpec {
        name: "H100 SXM",
        device_names: &["NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB"],
        memory_gb_s: 3350.0,
        fp32_tflops: 67.0,
        tf32_tflops: 494.5,
        bf16_tflops: 989.5,
        fp16_tflops: 989.5,
        source: H100_SHEET,
    },
    GpuSpec {
        name: "H100 PCIe",
        device_names: &["NVIDIA H100 PCIe"],
        memory_gb_s: 2000.0,
        fp32_tflops: 51.0,
        tf32_tflops: 378.0,
        bf16_tflops: 756.5,
        fp16_tflops: 756.5,
        source: H100_SHEET,
    },
    GpuSpec {
        name: "H200",
        device_names: &["NVIDIA H200"],
        memory_gb_s: 4800.0,
        fp32_tflops: 67.0,
        tf32_tflops: 494.5,
        bf16_tflops: 989.5,
        fp16_tflops: 989.5,
        source: H200_SHEET,
    },
];

/// The spec of a device by the name the driver reports (exact, case-insensitive, spaces trimmed),
/// or by this table's own name.
pub fn lookup(device_name: &str) -> Option<&'static GpuSpec> {
    let want = device_name.trim();
    GPU_SPECS.iter().find(|s| {
        s.name.eq_ignore_ascii_case(want)
            || s.device_names.iter().any(|n| n.eq_ignore_ascii_case(want))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_driver_names_exactly() {
        assert_eq!(lookup("NVIDIA A100-SXM4-80GB").unwrap().memory_gb_s, 2039.0);
        assert_eq!(lookup("nvidia a10").unwrap().name, "A10");
        assert_eq!(lookup("NVIDIA H100 80GB HBM3").unwrap().name, "H100 SXM");
        assert_eq!(lookup("H200").unwrap().memory_gb_s, 4800.0);
        // the A10 entry must not swallow A100s, nor H200 the NVL part
        assert!(lookup("NVIDIA A100").is_none());
        assert!(lookup("NVIDIA H200 NVL").is_none());
    }

    #[test]
    fn dense_figures_are_half_the_sparse_ones_and_consistent() {
        for s in GPU_SPECS {
            assert!(s.memory_gb_s > 0.0 && s.fp32_tflops > 0.0, "{}", s.name);
            assert!(
                s.bf16_tflops >= s.tf32_tflops && s.tf32_tflops >= s.fp32_tflops,
                "{}",
                s.name
            );
            assert_eq!(s.peak_tflops(Dtype::Bf16), s.bf16_tflops);
        }
        // H100 SXM: 1,979 TFLOPS with sparsity → 989.5 dense
        assert_eq!(lookup("H100 SXM").unwrap().bf16_tflops * 2.0, 1979.0);
    }
}
