//! The shared driver of the kernel-study benches (`benches/<family>.rs`).
//!
//! Each bench target runs the default sweep of its op family (`infermeter::study::sweep`) under
//! criterion, on every device a study may target: the CPU backend always; CUDA is skipped with the
//! printed reason while the build has no CUDA backend. Every case declares its bytes and FLOPs per
//! call as criterion `Throughput` (elements = FLOPs), and is timed through `iter_custom` so the
//! per-iteration times of criterion's measurement samples are kept; at the end the bench measures
//! the CPU's ceilings (streaming read bandwidth, CPU GEMM FLOP/s) and prints, for every op and
//! shape, the median time, GB/s, GFLOP/s, the bound and the % of the measured ceiling.
//!
//! Sample sizes and times are set low (10 samples, 0.3 s warmup, 1 s measurement) so that the whole
//! `cargo bench` finishes in minutes on a small machine; criterion's own options override them
//! (`cargo bench --bench norm -- --measurement-time 5 rmsnorm`).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use infermeter::study::ceiling::{measure_cpu, CeilingOptions};
use infermeter::study::roofline::{self, Peak};
use infermeter::study::runner::{self, RunFn};
use infermeter::study::timing::median;
use infermeter::study::{sweep, Case, Device, Family};

/// Criterion samples per case; the table uses the median of the last this-many samples (the
/// measurement phase, after criterion's warmup calls).
const SAMPLE_SIZE: usize = 10;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("error: {what}: {e}");
    std::process::exit(1)
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
    let cases =
        sweep::default_cases(&family.ops()).unwrap_or_else(|e| fail("building the sweep", e));
    let kernel = family.kernel_file().unwrap_or("no kernel file");
    let mut rows: Vec<(Case, f64)> = Vec::new();
    for device in Device::ALL {
        if let Err(e) = device.availability() {
            println!(
                "{} ({kernel}) on {}: skipped: {e}",
                family.name(),
                device.name()
            );
            continue;
        }
        let dtype = device.dtype();
        let mut group = c.benchmark_group(format!("{}/{}", family.name(), device.name()));
        for case in &cases {
            if let Err(e) = runner::check_memory(case) {
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
                    runner::prepare(device, case).unwrap_or_else(|e| fail(&case.id(), e))
                });
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        if let Err(e) = run() {
                            fail(&case.id(), e);
                        }
                    }
                    let elapsed = t.elapsed();
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
    }
    c.final_summary();
    if rows.is_empty() {
        return;
    }
    // every row so far is a CPU row; GPU rows will divide by the GPU's own ceilings and spec
    let ceilings =
        measure_cpu(&CeilingOptions::default()).unwrap_or_else(|e| fail("measuring ceilings", e));
    let peak = Peak::from(&ceilings);
    println!("\n== {} studies ({kernel}) ==", family.name());
    println!("{}", roofline::describe_ceilings(&ceilings));
    println!("  spec peak: none for CPUs (the spec table lists GPUs), so no % of spec peak\n");
    println!("{}", roofline::table_header(false));
    for (case, t) in &rows {
        let a = roofline::assess(case.cost(Device::Cpu.dtype()), *t, peak, None);
        println!("{}", roofline::table_line(case, *t, &a, false));
    }
    println!();
}
