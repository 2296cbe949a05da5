//! The shared driver of the kernel-study benches (`benches/<family>.rs`).
//!
//! Each bench target runs the default sweep of its op family (`infermeter::study::sweep`) under
//! criterion, on every device a study may target: the CPU backend always; CUDA when a GPU is usable
//! (otherwise it prints `skipped: no CUDA device: <reason>` and goes on, so `cargo bench` runs
//! everywhere). Every case declares its bytes and FLOPs per call as criterion `Throughput`
//! (elements = FLOPs), and is timed through `iter_custom`: with the host clock on the CPU, with
//! CUDA events on the GPU (the sum of the event-timed iterations, returned as a Duration). The
//! per-iteration times of criterion's measurement samples are kept; at the end the bench measures
//! each device's ceilings (CPU: streaming read bandwidth and CPU GEMM FLOP/s; GPU: device-to-device
//! copy bandwidth and cuBLAS GEMM FLOP/s) and prints, for every op and shape, the median time,
//! GB/s, GFLOP/s, the bound, the % of the measured ceiling and, on a GPU in the spec table, the %
//! of its spec peak.
//!
//! Environment: `INFERMETER_BENCH_COLD_L2=1` flushes the GPU's L2 before every timed call (outside
//! the timed region; calls are then timed one by one, so a bench takes longer);
//! `INFERMETER_BENCH_DTYPE=bf16|f16|f32` picks the GPU compute dtype (default bf16);
//! `INFERMETER_BENCH_CUDA_DEVICE` the device ordinal (default 0);
//! `INFERMETER_BENCH_ATTENTION=naive,auto,auto-1split` the CUDA attention implementations studied
//! side by side (default all; `study::variant`; the table gets their speed-up over naive);
//! `INFERMETER_BENCH_SWEEP=attention-acceptance` issue 5's attention shapes instead of the default
//! sweep (`study::sweep::Sweep`).
//!
//! Sample sizes and times are set low (10 samples, 0.3 s warmup, 1 s measurement) so that the whole
//! `cargo bench` finishes in minutes on a small machine; criterion's own options override them
//! (`cargo bench --bench norm -- --measurement-time 5 rmsnorm`).

use std::cell::RefCell;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use infermeter::study::ceiling::{measure_cpu, CeilingOptions};
use infermeter::study::gpu::{self, GpuCeilingOptions};
use infermeter::study::roofline::{self, Columns, Peak};
use infermeter::study::runner::{self, RunFn, Target};
use infermeter::study::sweep::Sweep;
use infermeter::study::timing::median;
use infermeter::study::variant::{self, Variant};
use infermeter::study::{Case, Device, Dtype, Family};

/// Criterion samples per case; the table uses the median of the last this-many samples (the
/// measurement phase, after criterion's warmup calls).
const SAMPLE_SIZE: usize = 10;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("error: {what}: {e}");
    std::process::exit(1)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// The GPU dtype and ordinal from the environment.
fn gpu_settings() -> (Dtype, usize) {
    let dtype = match std::env::var("INFERMETER_BENCH_DTYPE") {
        Ok(v) => Dtype::parse(&v).unwrap_or_else(|| {
            fail(
                "INFERMETER_BENCH_DTYPE",
                format!("`{v}` is not one of bf16, f16, f32"),
            )
        }),
        Err(_) => Device::Cuda.dtype(),
    };
    let ordinal = match std::env::var("INFERMETER_BENCH_CUDA_DEVICE") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            fail(
                "INFERMETER_BENCH_CUDA_DEVICE",
                format!("`{v}` is not an ordinal"),
            )
        }),
        Err(_) => 0,
    };
    (dtype, ordinal)
}

/// The named sweep and the CUDA attention variants from the environment.
fn sweep_settings() -> (Sweep, Vec<Variant>) {
    let sweep = match std::env::var("INFERMETER_BENCH_SWEEP") {
        Ok(v) => Sweep::parse(&v).unwrap_or_else(|e| fail("INFERMETER_BENCH_SWEEP", e)),
        Err(_) => Sweep::Default,
    };
    let variants = match std::env::var("INFERMETER_BENCH_ATTENTION") {
        Ok(v) => {
            variant::parse_list(&[v]).unwrap_or_else(|e| fail("INFERMETER_BENCH_ATTENTION", e))
        }
        Err(_) => Variant::ATTENTION.to_vec(),
    };
    (sweep, variants)
}

/// The studies of one device: its target (kept open for the ceilings), how the clock timed, and
/// the median time per call of each case.
struct Studied {
    target: Target,
    method: String,
    rows: Vec<(Case, f64)>,
}

/// Run the studies of one op family.
pub fn main_for(family: Family) {
    let mut c = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .nresamples(10_000)
        .without_plots()
        .configure_from_args();
    let (sweep, variants) = sweep_settings();
    let family_cases = sweep
        .cases(&family.ops())
        .unwrap_or_else(|e| fail("building the sweep", e));
    if family_cases.is_empty() {
        println!(
            "{}: no case in the {} sweep (INFERMETER_BENCH_SWEEP)",
            family.name(),
            sweep.name()
        );
    }
    let kernel = family.kernel_file().unwrap_or("no kernel file");
    let cold_l2 = env_flag("INFERMETER_BENCH_COLD_L2");
    let (gpu_dtype, ordinal) = gpu_settings();
    let mut studied: Vec<Studied> = Vec::new();
    for device in Device::ALL {
        let dtype = match device {
            Device::Cpu => Dtype::F32,
            Device::Cuda => gpu_dtype,
        };
        let target = match Target::open(device, dtype, ordinal) {
            Ok(t) => t,
            Err(e) => {
                println!(
                    "{} ({kernel}) on {}: skipped: {}",
                    family.name(),
                    device.name(),
                    gpu::reason(&e)
                );
                continue;
            }
        };
        // CUDA attention: one case per implementation, naive first
        let cases = variant::expand(&family_cases, device, &variants);
        let mut clock = target
            .clock(cold_l2 && device == Device::Cuda)
            .unwrap_or_else(|e| fail("creating the clock", e));
        let method = clock.method();
        let mut rows: Vec<(Case, f64)> = Vec::new();
        let mut group = c.benchmark_group(format!(
            "{}/{}",
            family.name(),
            match device {
                Device::Cpu => device.name().to_string(),
                Device::Cuda => format!("cuda-{}", dtype.name()),
            }
        ));
        for case in &cases {
            if let Err(e) = target.check_memory(case) {
                println!("{}: skipped: {e}", case.id());
                continue;
            }
            let cost = case.cost(dtype);
            group.throughput(if cost.flops > 0 {
                Throughput::ElementsAndBytes {
                    elements: cost.flops,
                    bytes: cost.bytes,
                }
            } else {
                Throughput::Bytes(cost.bytes)
            });
            let per_iter: RefCell<Vec<f64>> = RefCell::new(Vec::new());
            // built on first use, so a case criterion filters out allocates nothing
            let mut prepared: Option<RunFn> = None;
            group.bench_function(case.id(), |b| {
                let run = prepared.get_or_insert_with(|| {
                    runner::prepare(&target, case).unwrap_or_else(|e| fail(&case.id(), e))
                });
                b.iter_custom(|iters| {
                    let elapsed = clock
                        .time(run, iters)
                        .unwrap_or_else(|e| fail(&case.id(), e));
                    per_iter
                        .borrow_mut()
                        .push(elapsed.as_secs_f64() / iters.max(1) as f64);
                    elapsed
                })
            });
            drop(prepared);
            let mut samples = per_iter.take();
            if !samples.is_empty() {
                let from = samples.len().saturating_sub(SAMPLE_SIZE);
                rows.push((case.clone(), median(&mut samples[from..])));
            }
        }
        group.finish();
        drop(clock);
        studied.push(Studied {
            target,
            method,
            rows,
        });
    }
    c.final_summary();
    for Studied {
        target,
        method,
        rows,
    } in &studied
    {
        if rows.is_empty() {
            continue;
        }
        let (ceilings, spec) = match target {
            Target::Cpu => (
                measure_cpu(&CeilingOptions::default())
                    .unwrap_or_else(|e| fail("measuring the CPU ceilings", e)),
                Err("none for CPUs (the spec table lists GPUs), so no % of spec peak".to_string()),
            ),
            Target::Cuda(s) => (
                s.measure_ceilings(&GpuCeilingOptions::default())
                    .unwrap_or_else(|e| fail("measuring the GPU ceilings", e)),
                s.spec(),
            ),
        };
        let dtype = target.dtype();
        let peak = Peak::from(&ceilings);
        let spec_peak = spec.as_ref().ok().map(Peak::from);
        println!(
            "\n== {} studies ({kernel}) on {}, {} ==",
            family.name(),
            target.device().name(),
            dtype.name()
        );
        if let Target::Cuda(s) = target {
            println!("GPU: {} ({})", s.gpu().name, s.gpu().arch());
        }
        println!("{}", roofline::describe_ceilings(&ceilings));
        match &spec {
            Ok(p) => println!(
                "  spec peak: {} {:.0} GB/s, {:.0} GFLOP/s {} (dense) [{}]",
                p.name,
                p.memory_gb_s,
                p.compute_gflop_s,
                dtype.name(),
                p.source
            ),
            Err(why) => println!("  spec peak: {why}"),
        }
        println!("  timing: {method}\n");
        let columns = Columns {
            spec: spec_peak.is_some(),
            variants: rows.iter().any(|(c, _)| c.variant.is_some()),
        };
        println!("{}", roofline::table_header(columns));
        let mut assessed = Vec::new();
        for (case, t) in rows {
            let a = roofline::assess(case.cost(dtype), *t, peak, spec_peak);
            let speedup = variant::speedup_over_baseline(case, *t, rows);
            println!("{}", roofline::table_line(case, *t, &a, speedup, columns));
            assessed.push(a);
        }
        let on_gpu = target.device() == Device::Cuda;
        if let Some(note) = roofline::above_ceiling_note(&assessed, on_gpu, on_gpu && cold_l2) {
            println!("\n{note}");
        }
        let summary = variant::summary(rows);
        if !summary.is_empty() {
            println!("\nvariants (median time per call; speed-up over the baseline: naive attention, eager step):");
            for line in summary {
                println!("{line}");
            }
        }
        println!();
    }
}
