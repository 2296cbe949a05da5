//! Driving the engine in-process through one phase of a workload: requests are added at their
//! scheduled arrival instants (precomputed, so any lag shows as `client_queue`), the engine steps
//! while it has work, and every request and step is recorded on the engine's clock.

use std::collections::HashMap;
use std::time::Duration;

use super::core::{Engine, EngineRequest, FinishedRequest, StepRecord};
use super::sampling::SamplingParams;
use crate::backend::Backend;
use crate::error::Result;
use crate::kv::RequestId;
use crate::metrics::RequestRecord;
use crate::report::results::EngineRequestRecord;

/// A request of a phase: its tokens and when it arrives (seconds after the phase starts).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub arrival_s: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct PhaseOptions {
    /// Sampling of every request; request i uses seed `sampling.seed + i`.
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
    pub save_output_ids: bool,
}

/// What a phase produced, times on the engine's clock.
#[derive(Debug, Clone, Default)]
pub struct PhaseOutcome {
    pub started_s: f64,
    pub ended_s: f64,
    pub requests: Vec<EngineRequestRecord>,
    pub steps: Vec<StepRecord>,
}

/// Progress callback events.
pub enum PhaseEvent<'a> {
    /// A request finished (or was rejected); the outcome so far is complete up to it.
    RequestDone(&'a PhaseOutcome),
}

/// Run `reqs` through the engine until all are done.
pub fn run_phase<B: Backend>(
    engine: &mut Engine<B>,
    reqs: &[PlannedRequest],
    opts: PhaseOptions,
    mut on_event: impl FnMut(PhaseEvent),
) -> Result<PhaseOutcome> {
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| reqs[a].arrival_s.total_cmp(&reqs[b].arrival_s));
    let start = engine.now_s();
    let mut out = PhaseOutcome {
        started_s: start,
        ..Default::default()
    };
    // engine id -> (index in reqs, scheduled instant, send instant)
    let mut live: HashMap<RequestId, (usize, f64, f64)> = HashMap::new();
    let mut next = 0;
    loop {
        let now = engine.now_s();
        while next < order.len() && start + reqs[order[next]].arrival_s <= now {
            let i = order[next];
            let r = &reqs[i];
            let scheduled_s = start + r.arrival_s;
            let send_s = engine.now_s();
            let sampling = SamplingParams {
                seed: opts.sampling.seed.wrapping_add(i as u64),
                ..opts.sampling
            };
            match engine.add_request(EngineRequest {
                prompt_ids: r.prompt_ids.clone(),
                max_tokens: r.max_tokens,
                sampling,
                ignore_eos: opts.ignore_eos,
            }) {
                Ok(id) => {
                    live.insert(id, (i, scheduled_s, send_s));
                }
                Err(e) => {
                    // A bad request is recorded and the run goes on.
                    out.requests
                        .push(rejected(i, r, scheduled_s, send_s, e.to_string()));
                    on_event(PhaseEvent::RequestDone(&out));
                }
            }
            next += 1;
        }
        if !engine.has_unfinished() {
            if next == order.len() {
                break;
            }
            // idle until the next arrival
            let wait = start + reqs[order[next]].arrival_s - engine.now_s();
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.05)));
            }
            continue;
        }
        let step = engine.step()?;
        if let Some(rec) = step.record {
            out.steps.push(rec);
        }
        for f in step.finished {
            let (i, scheduled_s, send_s) = live.remove(&f.id).expect("finished request was live");
            out.requests.push(finished(
                i,
                &reqs[i],
                scheduled_s,
                send_s,
                f,
                opts.save_output_ids,
            ));
            on_event(PhaseEvent::RequestDone(&out));
        }
    }
    out.ended_s = engine.now_s();
    Ok(out)
}

fn rejected(
    i: usize,
    r: &PlannedRequest,
    scheduled_s: f64,
    send_s: f64,
    error: String,
) -> EngineRequestRecord {
    EngineRequestRecord {
        record: RequestRecord {
            id: i as u64,
            scheduled_s,
            send_s,
            first_token_s: None,
            chunk_times_s: Vec::new(),
            end_s: Some(send_s),
            prompt_tokens: r.prompt_ids.len(),
            output_tokens: 0,
            error: Some(error),
        },
        admitted_s: None,
        num_preemptions: 0,
        prefix_hit_tokens: 0,
        finish_reason: None,
        output_ids: None,
    }
}

fn finished(
    i: usize,
    r: &PlannedRequest,
    scheduled_s: f64,
    send_s: f64,
    f: FinishedRequest,
    save_ids: bool,
) -> EngineRequestRecord {
    EngineRequestRecord {
        record: RequestRecord {
            id: i as u64,
            scheduled_s,
            send_s,
            first_token_s: f.token_times_s.first().copied(),
            end_s: f.token_times_s.last().copied(),
            chunk_times_s: f.token_times_s,
            prompt_tokens: r.prompt_ids.len(),
            output_tokens: f.output_ids.len(),
            error: None,
        },
        admitted_s: f.admitted_s,
        num_preemptions: f.num_preemptions,
        prefix_hit_tokens: f.prefix_hit_tokens,
        finish_reason: Some(f.finish_reason),
        output_ids: save_ids.then_some(f.output_ids),
    }
}
