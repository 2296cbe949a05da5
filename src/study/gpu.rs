//! GPU studies: the CUDA backend opened once for a run, CUDA-event timing with an optional cold-L2
//! flush, and the ceilings measured on the device.
//!
//! - [`CudaSession`]: the CUDA backend of one compute dtype (bf16, f16 or f32) on one device,
//!   opened once (kernels compiled or loaded from the cache) and shared by every case. Ops of the
//!   `Backend` trait are set up through `runner::prepare_on`, exactly as on the CPU; argmax and
//!   sampling use the backend's GPU sampling kernels (`argmax_rows`, `sample_rows`) over logits in
//!   the compute dtype already on the device. Those two, and the decode step, copy their result to the host and
//!   synchronise, as the engine does, so their time includes that copy.
//! - [`EventClock`]: a `timing::Clock` that records CUDA events on the backend's stream around the
//!   calls and reads the time between them (`cuEventElapsedTime`, about 0.5 µs resolution). GPU ops
//!   are queued asynchronously, so the host clock would time the queueing, not the kernels. With a
//!   [`L2Flush`], every call is preceded by a memset of a buffer larger than the L2 cache, outside
//!   the timed region, and timed on its own (the sum of the per-call times is returned): every call
//!   then starts with a cold L2, as a kernel does after the rest of a forward pass has run. Without
//!   it, calls run back to back and operands that fit in L2 stay there between calls.
//! - [`CudaSession::measure_ceilings`]: device-to-device copy bandwidth (`cuMemcpyDtoDAsync` of at
//!   least 512 MiB, read + write bytes counted, best of N, event-timed) and the cuBLAS GEMM's FLOP/s
//!   in the compute dtype (the backend's own `linear`, m = n = k = 8192 for bf16/f16 and 4096 for
//!   f32, best of N, event-timed).
//! - [`CudaSession::spec`]: the vendor peak of the device by its name (`hardware::lookup`), with the
//!   dtype's compute peak (tensor-core bf16/f16, CUDA-core f32).
//!
//! Nothing here calls into cudarc before `CudaBackend::with_options` has probed the driver and the
//! libraries, so without a GPU every entry point returns "no CUDA device: <reason>".

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};

use crate::backend::cuda::{self, CudaBackend, CudaDtype, CudaOptions, GpuInfo};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::tensor_store::HostTensor;
use crate::report::kernels_results::SpecPeak;

use super::ceiling::Ceilings;
use super::ops::{Case, Op};
use super::roofline::Peak;
use super::runner::{self, RunFn};
use super::timing::Clock;
use super::variant::Variant;
use super::{Device, Dtype};

const MIB: usize = 1 << 20;

/// Smallest L2 flush buffer (larger than the L2 of every GPU in the spec table: H100 has 50 MiB).
pub const MIN_FLUSH_BYTES: usize = 256 * MIB;

/// Event pairs recorded before the host reads them back (cold-L2 timing).
const EVENT_CHUNK: usize = 64;

use crate::backend::cuda::{drv, err};

/// The message of an error without the "backend `cuda`: " prefix (e.g. "no CUDA device: ...").
pub fn reason(e: &Error) -> String {
    match e {
        Error::Backend { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// The CUDA backend in one of its dtypes.
#[derive(Debug, Clone)]
pub enum CudaStudyBackend {
    Bf16(CudaBackend<half::bf16>),
    F16(CudaBackend<half::f16>),
    F32(CudaBackend<f32>),
}

/// Run `$body` with `$b` bound to the backend of a [`CudaStudyBackend`] (each arm its own type).
macro_rules! with_backend {
    ($backend:expr, $b:ident => $body:expr) => {
        match $backend {
            CudaStudyBackend::Bf16($b) => $body,
            CudaStudyBackend::F16($b) => $body,
            CudaStudyBackend::F32($b) => $body,
        }
    };
}

/// One device and dtype, opened for a run of studies.
#[derive(Debug, Clone)]
pub struct CudaSession {
    backend: CudaStudyBackend,
    dtype: Dtype,
    stream: Arc<CudaStream>,
    gpu: GpuInfo,
    l2_bytes: Option<usize>,
}

impl CudaSession {
    /// Probe, open the backend of `dtype` on device `ordinal` and compile (or load) its kernels.
    /// Without a usable GPU: "no CUDA device: <reason>".
    pub fn open(dtype: Dtype, ordinal: usize) -> Result<Self> {
        let opts = CudaOptions {
            ordinal,
            ..CudaOptions::default()
        };
        let backend = match dtype {
            Dtype::Bf16 => CudaStudyBackend::Bf16(CudaBackend::with_options(&opts)?),
            Dtype::F16 => CudaStudyBackend::F16(CudaBackend::with_options(&opts)?),
            Dtype::F32 => CudaStudyBackend::F32(CudaBackend::with_options(&opts)?),
        };
        let (stream, gpu) = with_backend!(&backend, b => (b.stream().clone(), b.gpu().clone()));
        let l2_bytes = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0);
        Ok(Self {
            backend,
            dtype,
            stream,
            gpu,
            l2_bytes,
        })
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn gpu(&self) -> &GpuInfo {
        &self.gpu
    }

    pub fn backend(&self) -> &CudaStudyBackend {
        &self.backend
    }

    /// The stream every op of the backend is queued on (events are recorded on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's L2 cache size, when the driver tells it.
    pub fn l2_bytes(&self) -> Option<usize> {
        self.l2_bytes
    }

    /// Wait for everything queued.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronizing"))
    }

    /// (free, total) device memory now.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        with_backend!(&self.backend, b => b.mem_info())
    }

    /// `Err` with the reason when the case needs more device memory than is free (host memory for
    /// the f32 staging copies is checked too).
    pub fn check_memory(&self, case: &Case) -> Result<()> {
        runner::check_memory(case)?;
        let (free, _) = self.mem_info()?;
        check_device_memory(case, self.dtype, free)
    }

    /// Set a case up on the GPU: buffers uploaded, metadata prepared, a closure that queues one
    /// call (argmax, sampling and the decode step also wait for their result). A case with a
    /// variant runs on a clone of the backend set to it; a variant with no kernel of its own for
    /// the case here is refused with the reason (it would time the naive kernel again).
    pub fn prepare(&self, case: &Case) -> Result<RunFn> {
        if let Some(why) = case
            .variant
            .and_then(|v| v.unsupported_reason(case, self.dtype, self.gpu.compute_capability))
        {
            return Err(Error::Invalid(why));
        }
        self.check_memory(case)?;
        let run = with_backend!(&self.backend, b => match case.op {
            Op::Argmax | Op::Sample => prepare_gpu_sampling(b.clone(), case),
            _ => runner::prepare_on(with_variant(b.clone(), case.variant), case),
        })?;
        // uploads are queued on the stream: surface their errors here rather than in a timing
        self.synchronize()?;
        Ok(run)
    }

    /// A clock for this device, flushing L2 before every call when `cold_l2`.
    pub fn clock(&self, cold_l2: bool) -> Result<EventClock> {
        let flush = if cold_l2 {
            Some(L2Flush::new(&self.stream, self.l2_bytes)?)
        } else {
            None
        };
        EventClock::new(self.stream.clone(), flush)
    }

    /// The vendor peak of this device for the session's dtype, or why there is none.
    pub fn spec(&self) -> std::result::Result<SpecPeak, String> {
        spec_for(&self.gpu.name, self.dtype)
    }

    /// The GPU as results files record it (`hardware.gpus`): the device, the driver, the L2 size
    /// and how the kernels were obtained.
    pub fn describe(&self) -> serde_json::Value {
        let probe = cuda::probe(false);
        let mut v = serde_json::to_value(&self.gpu).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("driver_version".into(), probe.driver_version.into());
            o.insert(
                "driver_cuda_version".into(),
                probe.driver_cuda_version.into(),
            );
            o.insert("cuda_build_api".into(), probe.build_api.into());
            o.insert("cublas_version".into(), probe.cublas.version.into());
            o.insert("l2_cache_bytes".into(), self.l2_bytes.into());
            o.insert("dtype".into(), self.dtype.name().into());
            let compile =
                with_backend!(&self.backend, b => serde_json::to_value(b.compile_report()));
            o.insert("kernels".into(), compile.unwrap_or(serde_json::Value::Null));
        }
        v
    }

    /// Measure the device's ceilings: copy bandwidth and the cuBLAS GEMM's FLOP/s in the dtype.
    pub fn measure_ceilings(&self, opts: &GpuCeilingOptions) -> Result<Ceilings> {
        if opts.copies == 0 || opts.gemm_calls == 0 {
            return Err(Error::Invalid(
                "GPU ceilings need at least one copy and one GEMM call".into(),
            ));
        }
        let (free, _) = self.mem_info()?;
        let bytes = copy_bytes(opts.min_copy_bytes, self.l2_bytes, free);
        let mut clock = EventClock::new(self.stream.clone(), None)?;

        // device-to-device copy: read `bytes`, write `bytes`
        let best_copy = {
            let src = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(drv("allocating the copy source"))?;
            let mut dst = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(drv("allocating the copy target"))?;
            let stream = self.stream.clone();
            let mut copy = || -> Result<()> {
                stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(drv("cuMemcpyDtoDAsync"))
            };
            copy()?;
            best_of(&mut clock, &mut copy, opts.copies)?
        };
        let memory_gb_s = copy_gb_s(bytes, best_copy);

        let n = opts.gemm_n.unwrap_or_else(|| gemm_n_for(self.dtype));
        let best_gemm = with_backend!(&self.backend, b => {
            let up = |seed: u64| {
                b.upload(&crate::model::tensor_store::HostTensor::new(
                    vec![n * n],
                    runner::fill(n * n, seed, -1.0, 1.0),
                ))
            };
            let (x, w) = (up(11)?, up(12)?);
            let mut out = b.zeros(n * n)?;
            let mut gemm = || b.linear(&mut out, &x, &w, None, n, n, n);
            // the first call picks cuBLAS's algorithm and loads its kernels
            gemm()?;
            best_of(&mut clock, &mut gemm, opts.gemm_calls)?
        });
        let compute_gflop_s = gemm_gflop_s(n, best_gemm);
        Ok(Ceilings {
            device: Device::Cuda,
            memory_gb_s,
            memory_method: format!(
                "device-to-device copy (cuMemcpyDtoDAsync) of {} MiB (L2: {}), read + write bytes \
                 counted, best of {} copies, CUDA-event timed",
                bytes / MIB,
                self.l2_bytes
                    .map_or("unknown".into(), |l| format!("{} MiB", l / MIB)),
                opts.copies
            ),
            compute_gflop_s,
            compute_method: format!(
                "cuBLAS GEMM (the backend's linear, cublasGemmEx, f32 accumulation) at m = n = k = \
                 {n}, {}, best of {} calls, CUDA-event timed",
                self.dtype.name(),
                opts.gemm_calls
            ),
            memory_gb_s_one_thread: None,
            // one host thread drives the stream
            threads: 1,
        })
    }
}

/// `b` set to run `variant` (unchanged for `None`: the backend's own setting).
fn with_variant<T: CudaDtype>(mut b: CudaBackend<T>, variant: Option<Variant>) -> CudaBackend<T> {
    if let Some((attention, tuning)) = variant.and_then(Variant::cuda_settings) {
        b.set_attention_variant(attention);
        b.set_auto_tuning(tuning);
    }
    b
}

/// Best (shortest) time of `calls` single calls.
fn best_of(
    clock: &mut EventClock,
    run: &mut dyn FnMut() -> Result<()>,
    calls: usize,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..calls {
        best = best.min(clock.time(run, 1)?.as_secs_f64());
    }
    Ok(best)
}

/// The vendor peak of GPU `name` for `dtype` compute, or why there is none.
pub fn spec_for(name: &str, dtype: Dtype) -> std::result::Result<SpecPeak, String> {
    match super::hardware::lookup(name) {
        Some(s) => Ok(SpecPeak {
            name: s.name.into(),
            memory_gb_s: s.memory_gb_s,
            compute_gflop_s: s.peak_tflops(dtype) * 1e3,
            source: s.source.into(),
        }),
        None => Err(format!(
            "`{name}` is not in the GPU spec table (study::hardware), so GPU rows are compared \
             with the measured ceilings only"
        )),
    }
}

impl From<&SpecPeak> for Peak {
    fn from(s: &SpecPeak) -> Self {
        Peak {
            memory_gb_s: s.memory_gb_s,
            compute_gflop_s: s.compute_gflop_s,
        }
    }
}

/// How hard to measure the GPU ceilings.
#[derive(Debug, Clone, Copy)]
pub struct GpuCeilingOptions {
    /// Smallest copy buffer (each of source and target).
    pub min_copy_bytes: usize,
    /// Timed copies (the best counts), after one untimed.
    pub copies: usize,
    /// Side of the square GEMM; None: [`gemm_n_for`] the dtype.
    pub gemm_n: Option<usize>,
    /// Timed GEMM calls (the best counts), after one untimed.
    pub gemm_calls: usize,
}

impl Default for GpuCeilingOptions {
    fn default() -> Self {
        Self {
            min_copy_bytes: 512 * MIB,
            copies: 10,
            gemm_n: None,
            gemm_calls: 10,
        }
    }
}

/// Side of the ceiling GEMM: 8192 for bf16/f16 (tensor cores need a large shape to saturate),
/// 4096 for f32 (CUDA cores; 8192³ would take about 60 ms a call on an A100).
pub fn gemm_n_for(dtype: Dtype) -> usize {
    match dtype {
        Dtype::Bf16 | Dtype::F16 => 8192,
        Dtype::F32 => 4096,
    }
}

/// Bytes of each of the copy's two buffers: at least `min_bytes` and 8× the L2, at most a quarter
/// of the free memory (both buffers then take half of it), never below 64 MiB.
pub fn copy_bytes(min_bytes: usize, l2: Option<usize>, free: usize) -> usize {
    let want = min_bytes.max(8 * l2.unwrap_or(0));
    want.min(free / 4).max(64 * MIB)
}

/// GB/s of a copy of `bytes` taking `seconds`: the copy reads and writes every byte.
pub fn copy_gb_s(bytes: usize, seconds: f64) -> f64 {
    2.0 * bytes as f64 / seconds.max(1e-12) / 1e9
}

/// GFLOP/s of an n × n × n GEMM taking `seconds` (2 n³ FLOPs).
pub fn gemm_gflop_s(n: usize, seconds: f64) -> f64 {
    2.0 * (n as f64).powi(3) / seconds.max(1e-12) / 1e9
}

/// Bytes of the L2 flush buffer: twice the L2, at least [`MIN_FLUSH_BYTES`].
pub fn flush_bytes(l2: Option<usize>) -> usize {
    (2 * l2.unwrap_or(0)).max(MIN_FLUSH_BYTES)
}

/// Device bytes a case allocates in `dtype`: the runner's f32 estimate scaled to the element size,
/// plus its variant's scratch (split-KV decode's partial results).
pub fn device_alloc_bytes(case: &Case, dtype: Dtype) -> u64 {
    let scratch = case.variant.map_or(0, |v| v.scratch_bytes(case));
    case.alloc_bytes() / 4 * dtype.bytes() + scratch
}

/// `Err` with the reason when a case needs more than 80 % of `free` device bytes.
pub fn check_device_memory(case: &Case, dtype: Dtype, free: usize) -> Result<()> {
    let need = device_alloc_bytes(case, dtype);
    if need as f64 > free as f64 * 0.8 {
        return Err(Error::Invalid(format!(
            "too large for this GPU: needs about {:.1} GiB in {}, more than 80% of the {:.1} GiB \
             free",
            need as f64 / (1u64 << 30) as f64,
            dtype.name(),
            free as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Milliseconds from `cuEventElapsedTime` as a Duration (negative or NaN: zero).
pub fn ms_to_duration(ms: f32) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_secs_f64(f64::from(ms) / 1e3)
    } else {
        Duration::ZERO
    }
}

/// The sum of event-timed intervals, in milliseconds, as a Duration.
pub fn sum_ms(intervals: impl IntoIterator<Item = f32>) -> Duration {
    intervals.into_iter().map(ms_to_duration).sum()
}

/// A buffer larger than the L2 cache; writing it evicts whatever a previous call left there.
pub struct L2Flush {
    buf: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

impl L2Flush {
    pub fn new(stream: &Arc<CudaStream>, l2: Option<usize>) -> Result<Self> {
        let bytes = flush_bytes(l2);
        let buf = stream.alloc_zeros::<u8>(bytes).map_err(|e| {
            err(format!(
                "allocating the {} MiB L2 flush buffer: {e}",
                bytes / MIB
            ))
        })?;
        Ok(Self {
            buf,
            stream: stream.clone(),
        })
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Queue a memset of the whole buffer.
    pub fn flush(&mut self) -> Result<()> {
        self.stream
            .memset_zeros(&mut self.buf)
            .map_err(drv("L2 flush (cuMemsetD8Async)"))
    }
}

/// CUDA-event timing on one stream (see the module docs).
pub struct EventClock {
    stream: Arc<CudaStream>,
    /// start/end pairs, reused
    events: Vec<(CudaEvent, CudaEvent)>,
    flush: Option<L2Flush>,
}

impl EventClock {
    pub fn new(stream: Arc<CudaStream>, flush: Option<L2Flush>) -> Result<Self> {
        let pairs = if flush.is_some() { EVENT_CHUNK } else { 1 };
        let ctx = stream.context().clone();
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(drv("creating a timing event"))
        };
        let events = (0..pairs)
            .map(|_| Ok((event()?, event()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stream,
            events,
            flush,
        })
    }

    /// Whether every call is preceded by an L2 flush.
    pub fn cold_l2(&self) -> bool {
        self.flush.is_some()
    }

    fn elapsed(start: &CudaEvent, end: &CudaEvent) -> Result<f32> {
        start
            .elapsed_ms(end)
            .map_err(drv("cuEventElapsedTime (a kernel may have failed)"))
    }
}

impl Clock for EventClock {
    fn time(&mut self, run: &mut dyn FnMut() -> Result<()>, calls: u64) -> Result<Duration> {
        let Some(flush) = self.flush.as_mut() else {
            let (start, end) = &self.events[0];
            start.record(&self.stream).map_err(drv("cuEventRecord"))?;
            for _ in 0..calls {
                run()?;
            }
            end.record(&self.stream).map_err(drv("cuEventRecord"))?;
            return Ok(ms_to_duration(Self::elapsed(start, end)?));
        };
        // cold L2: flush, then time each call on its own; read the events back in chunks so the
        // host never waits between calls
        let mut total = Duration::ZERO;
        let mut left = calls;
        while left > 0 {
            let n = left.min(self.events.len() as u64) as usize;
            for (start, end) in &self.events[..n] {
                flush.flush()?;
                start.record(&self.stream).map_err(drv("cuEventRecord"))?;
                run()?;
                end.record(&self.stream).map_err(drv("cuEventRecord"))?;
            }
            let ms = self.events[..n]
                .iter()
                .map(|(s, e)| Self::elapsed(s, e))
                .collect::<Result<Vec<f32>>>()?;
            total += sum_ms(ms);
            left -= n as u64;
        }
        Ok(total)
    }

    fn method(&self) -> String {
        match &self.flush {
            None => "CUDA events recorded on the backend's stream around back-to-back calls; \
                     per-call time = run time / calls"
                .into(),
            Some(f) => format!(
                "CUDA events around each call, after a memset of a {} MiB buffer (cold L2) outside \
                 the timed region; run time = sum of the calls' times; per-call time = run time / \
                 calls",
                f.bytes() / MIB
            ),
        }
    }
}

/// Argmax or sampling over logits rows in the compute dtype (as the LM head leaves them) with the
/// GPU sampling kernels.
fn prepare_gpu_sampling<T: CudaDtype>(b: CudaBackend<T>, case: &Case) -> Result<RunFn> {
    let (rows, vocab, params) = runner::sampling_shape(case)?;
    // logits spread like a model's (as the CPU study's)
    let len = rows * vocab;
    let logits = b.upload(&HostTensor::new(
        vec![len],
        runner::fill(len, 7, -12.0, 12.0),
    ))?;
    match params {
        None => Ok(Box::new(move || {
            std::hint::black_box(b.argmax_rows(&logits, rows, vocab)?);
            Ok(())
        })),
        Some(p) => {
            p.validate()?;
            // a fixed uniform draw per row, spread over (0, 1)
            let row_params: Vec<_> = (0..rows)
                .map(|r| cuda::sampling_row_params(&p, (r as f32 + 0.5) / rows as f32))
                .collect();
            Ok(Box::new(move || {
                std::hint::black_box(b.sample_rows(&logits, &row_params, vocab)?);
                Ok(())
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_arithmetic() {
        // 1 GiB copied in 1 ms: 2 GiB moved → 2147.48 GB/s
        let g = copy_gb_s(1 << 30, 1e-3);
        assert!(
            (g - 2.0 * (1u64 << 30) as f64 / 1e-3 / 1e9).abs() < 1e-6,
            "{g}"
        );
        // 8192³ in 1.1 ms: 2·8192³ / 1.1e-3 ≈ 999.6 TFLOP/s
        let f = gemm_gflop_s(8192, 1.1e-3);
        assert!(
            (f - 2.0 * 8192f64.powi(3) / 1.1e-3 / 1e9).abs() < 1e-3,
            "{f}"
        );
        assert!(copy_gb_s(1, 0.0).is_finite() && gemm_gflop_s(1, 0.0).is_finite());
        assert_eq!(gemm_n_for(Dtype::Bf16), 8192);
        assert_eq!(gemm_n_for(Dtype::F16), 8192);
        assert_eq!(gemm_n_for(Dtype::F32), 4096);
    }

    #[test]
    fn copy_and_flush_buffer_sizes() {
        let gib = 1usize << 30;
        // H100: 50 MiB of L2, 80 GiB free: 512 MiB (8 × 50 MiB = 400 MiB is less)
        assert_eq!(copy_bytes(512 * MIB, Some(50 * MIB), 80 * gib), 512 * MIB);
        // a huge L2 raises it
        assert_eq!(copy_bytes(512 * MIB, Some(128 * MIB), 80 * gib), 1024 * MIB);
        // little free memory caps it at a quarter, but not below 64 MiB
        assert_eq!(copy_bytes(512 * MIB, None, gib), 256 * MIB);
        assert_eq!(copy_bytes(512 * MIB, None, 0), 64 * MIB);
        // flush: twice the L2, at least 256 MiB
        assert_eq!(flush_bytes(Some(50 * MIB)), 256 * MIB);
        assert_eq!(flush_bytes(Some(40 * MIB)), 256 * MIB);
        assert_eq!(flush_bytes(Some(200 * MIB)), 400 * MIB);
        assert_eq!(flush_bytes(None), MIN_FLUSH_BYTES);
    }

    #[test]
    fn event_times_accumulate_into_a_duration() {
        assert_eq!(ms_to_duration(1.5), Duration::from_micros(1500));
        assert_eq!(ms_to_duration(-1.0), Duration::ZERO);
        assert_eq!(ms_to_duration(f32::NAN), Duration::ZERO);
        let d = sum_ms([0.25f32, 0.5, 0.25]);
        assert!((d.as_secs_f64() - 1e-3).abs() < 1e-9, "{d:?}");
        assert_eq!(sum_ms(Vec::<f32>::new()), Duration::ZERO);
    }

    #[test]
    fn spec_peak_by_dtype() {
        let s = spec_for("NVIDIA H100 80GB HBM3", Dtype::Bf16).unwrap();
        assert_eq!(s.name, "H100 SXM");
        assert_eq!((s.memory_gb_s, s.compute_gflop_s), (3350.0, 989_500.0));
        let s = spec_for("NVIDIA A100-SXM4-80GB", Dtype::F32).unwrap();
        assert_eq!(s.compute_gflop_s, 19_500.0);
        assert_eq!(Peak::from(&s).memory_gb_s, 2039.0);
        let e = spec_for("NVIDIA GeForce RTX 4090", Dtype::F16).unwrap_err();
        assert!(e.contains("not in the GPU spec table"), "{e}");
    }

    #[test]
    fn device_memory_is_scaled_to_the_dtype() {
        let cfg = crate::model::open("tiny-llama").unwrap().config;
        let case = crate::study::sweep::model_cases(
            "tiny-llama",
            &cfg,
            &[Op::Matmul],
            &crate::study::sweep::SweepSpec::for_one_model(),
        )
        .remove(0);
        assert_eq!(
            device_alloc_bytes(&case, Dtype::Bf16) * 2,
            device_alloc_bytes(&case, Dtype::F32)
        );
        assert!(check_device_memory(&case, Dtype::Bf16, usize::MAX).is_ok());
        let e = check_device_memory(&case, Dtype::Bf16, 16).unwrap_err();
        assert!(e.to_string().contains("too large for this GPU"), "{e}");
    }

    #[test]
    fn the_largest_acceptance_decode_fits_an_80_gib_gpu() {
        use crate::study::sweep::Sweep;
        let cases = Sweep::AttentionAcceptance
            .cases(&[Op::AttentionDecode])
            .unwrap();
        let biggest = crate::study::variant::expand(
            &cases[cases.len() - 1..],
            Device::Cuda,
            &Variant::ATTENTION,
        );
        let gib = 1u64 << 30;
        for case in &biggest {
            // 64 × 16k keys: K and V of 8 KV heads of 128 in bf16 are 4 GiB (+ scratch for auto)
            let need = device_alloc_bytes(case, Dtype::Bf16);
            assert!(need > 4 * gib && need < 5 * gib, "{}: {need}", case.id());
            assert!(check_device_memory(case, Dtype::Bf16, 78 * gib as usize).is_ok());
            assert!(check_device_memory(case, Dtype::Bf16, 4 * gib as usize).is_err());
        }
        assert!(
            device_alloc_bytes(&biggest[1], Dtype::Bf16)
                > device_alloc_bytes(&biggest[0], Dtype::Bf16),
            "auto counts its split-KV scratch"
        );
    }

    #[test]
    fn opening_without_a_gpu_says_why() {
        if cuda::probe(false).usable() {
            return; // a GPU machine
        }
        let e = CudaSession::open(Dtype::Bf16, 0).unwrap_err();
        assert!(reason(&e).starts_with("no CUDA device: "), "{e}");
    }
}
