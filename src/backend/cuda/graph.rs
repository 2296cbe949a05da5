//! Recorded steps (CUDA graphs): stream capture of the ops one forward step queues, and replay.
//!
//! A decode step of a small model is hundreds of short kernels and GEMMs (a 16-layer Llama: about
//! 12 per layer); launched one by one from the host, the launch overhead (a few µs each) is a large
//! part of a batch-1 step. Recording the step once and replaying it launches the whole step with
//! one call. What a replay reads is fixed at recording time: the kernels' arguments (sizes, launch
//! plans) and the device addresses of every buffer. `model::graphs` arranges the rest: steps padded
//! to a bucket of fixed shape, metadata refilled in place (`Backend::refill`), buffers that never
//! move while a graph holds them (workspace reserved, the backend's epoch checked).
//!
//! Recording uses `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`: other threads may go on using CUDA (the
//! NVML sampler, another backend); only this thread's calls on the captured stream are recorded,
//! and an operation that is illegal during capture (a synchronisation, a copy from pageable host
//! memory, freeing memory that is not a graph allocation) invalidates the capture, which then fails
//! with an error instead of recording a partial step. (An allocation would be recorded as a graph
//! memory node; the step allocates nothing because its eager run just before grew every buffer.)

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{CudaGraph, CudaStream};

use super::{drv, err};
use crate::error::Result;

/// One recorded step, replayed on the stream it was recorded on.
pub struct StepGraph {
    graph: CudaGraph,
}

// SAFETY: CudaGraph holds raw CUgraph/CUgraphExec handles, which the driver does not synchronise
// internally. A StepGraph is only used by the thread that holds the model's step lock
// (`model::forward` keeps graphs behind the same Mutex as the workspace), so calls on one graph are
// serialised; moving it to another thread between calls is allowed by the driver.
unsafe impl Send for StepGraph {}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGraph")
    }
}

impl StepGraph {
    /// Queue the recorded step on its stream.
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(drv("cuGraphLaunch"))
    }
}

/// Record what `record` queues on `stream` into an instantiated, uploaded graph. The capture is
/// ended whatever `record` returns (a stream left capturing would fail every later call); an error
/// of `record` comes first, then the driver's.
pub fn capture(
    stream: &Arc<CudaStream>,
    record: &mut dyn FnMut() -> Result<()>,
) -> Result<StepGraph> {
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(drv("cuStreamBeginCapture"))?;
    let recorded = record();
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    if ended.is_err() && still_capturing(stream) {
        // cudarc's end_capture first hands back an error stored earlier by a Drop (and clears
        // it) without calling cuStreamEndCapture: end the capture for real, keep the first error
        let again = stream.end_capture(CUgraphInstantiate_flags(0));
        if again.is_err() || still_capturing(stream) {
            return Err(err(
                "the step capture could not be ended: the stream is left capturing",
            ));
        }
    }
    recorded?;
    let graph = ended
        .map_err(drv("cuStreamEndCapture / cuGraphInstantiate"))?
        .ok_or_else(|| err("the step capture recorded no graph"))?;
    // the first launch would otherwise pay for moving the graph's resources to the device
    graph.upload().map_err(drv("cuGraphUpload"))?;
    Ok(StepGraph { graph })
}

/// Whether `stream` is (still) in a capture, valid or invalidated.
fn still_capturing(stream: &CudaStream) -> bool {
    !matches!(
        stream.capture_status(),
        Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}
