//! The engine thread: owns the `Engine`, takes commands from the HTTP handlers over a channel,
//! steps while there is work, and sends each request its tokens as they are produced.
//!
//! A request whose handler went away (client disconnected: its event receiver is dropped, or its
//! handler sent `Abort`) is aborted before the next step, which frees its KV blocks at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::metrics::MetricsState;
use crate::backend::Backend;
use crate::engine::{Engine, EngineRequest, FinishReason, RequestOptions};
use crate::kv::RequestId;

/// What a handler sends the engine thread.
pub(crate) enum Command {
    Add(Box<AddCommand>),
    /// Drop a request (client gone, or a stop string ended it). `disconnected` counts it as
    /// aborted in the metrics.
    Abort {
        cid: u64,
        disconnected: bool,
    },
    Shutdown,
}

pub(crate) struct AddCommand {
    /// The handler's id of the request.
    pub cid: u64,
    pub req: EngineRequest,
    pub opts: RequestOptions,
    /// When the HTTP request arrived (TTFT and E2E are measured from here).
    pub arrived: Instant,
    pub events: mpsc::UnboundedSender<Event>,
    pub reply: oneshot::Sender<Result<(), AddError>>,
}

#[derive(Debug)]
pub(crate) enum AddError {
    /// `--max-waiting` requests are already queued.
    Overloaded { waiting: usize },
    /// The engine refused the request.
    Invalid(crate::Error),
}

/// What the engine thread sends a request's handler.
#[derive(Debug)]
pub(crate) enum Event {
    Token(u32),
    Finished(FinishReason),
    Failed(String),
}

/// State shared between the engine thread and the handlers.
pub(crate) struct Shared {
    pub metrics: Mutex<MetricsState>,
    /// False once the engine thread has stopped.
    pub alive: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            metrics: Mutex::new(MetricsState::default()),
            alive: AtomicBool::new(true),
        }
    }

    pub(crate) fn metrics(&self) -> MutexGuard<'_, MetricsState> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Live {
    cid: u64,
    events: mpsc::UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
}

struct Worker<B: Backend> {
    engine: Engine<B>,
    epoch: Instant,
    shared: Arc<Shared>,
    max_waiting: usize,
    live: HashMap<RequestId, Live>,
    by_cid: HashMap<u64, RequestId>,
    shutdown: bool,
}

/// Run the engine loop until `Shutdown` or until every command sender is gone.
pub(crate) fn run<B: Backend>(
    engine: Engine<B>,
    epoch: Instant,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    max_waiting: usize,
) {
    let mut w = Worker {
        engine,
        epoch,
        shared,
        max_waiting,
        live: HashMap::new(),
        by_cid: HashMap::new(),
        shutdown: false,
    };
    w.publish(None);
    loop {
        if !w.engine.has_unfinished() {
            // idle: block for the next command
            match commands.recv() {
                Ok(cmd) => w.handle(cmd),
                Err(_) => break,
            }
        }
        let mut disconnected = false;
        loop {
            match commands.try_recv() {
                Ok(cmd) => w.handle(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if w.shutdown || disconnected {
            w.fail_all("the server is shutting down", false);
            break;
        }
        w.drop_closed();
        if w.engine.has_unfinished() {
            w.step();
        } else {
            w.publish(None);
        }
    }
    w.publish(None);
    w.shared.alive.store(false, Ordering::SeqCst);
}

impl<B: Backend> Worker<B> {
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Add(add) => self.add(*add),
            Command::Abort { cid, disconnected } => {
                if let Some(id) = self.by_cid.remove(&cid) {
                    self.live.remove(&id);
                    self.engine.abort(id);
                    if disconnected {
                        self.shared.metrics().aborted += 1;
                    }
                }
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    fn add(&mut self, add: AddCommand) {
        let waiting = self.engine.num_waiting();
        if waiting >= self.max_waiting {
            let _ = add.reply.send(Err(AddError::Overloaded { waiting }));
            return;
        }
        if add.reply.is_closed() || add.events.is_closed() {
            return; // the handler is already gone
        }
        let prompt_len = add.req.prompt_ids.len();
        match self.engine.add_request_with(add.req, add.opts) {
            Ok(id) => {
                if add.reply.send(Ok(())).is_err() {
                    self.engine.abort(id);
                    return;
                }
                self.shared.metrics().prompt_tokens += prompt_len as u64;
                self.by_cid.insert(add.cid, id);
                self.live.insert(
                    id,
                    Live {
                        cid: add.cid,
                        events: add.events,
                        arrived: add.arrived,
                        last_token: None,
                    },
                );
            }
            Err(e) => {
                let _ = add.reply.send(Err(AddError::Invalid(e)));
            }
        }
    }

    /// Abort requests whose handler dropped its receiver (the client disconnected).
    fn drop_closed(&mut self) {
        let closed: Vec<RequestId> = self
            .live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if closed.is_empty() {
            return;
        }
        for id in &closed {
            if let Some(l) = self.live.remove(id) {
                self.by_cid.remove(&l.cid);
            }
            self.engine.abort(*id);
        }
        self.shared.metrics().aborted += closed.len() as u64;
    }

    fn step(&mut self) {
        let out = match self.engine.step() {
            Ok(out) => out,
            Err(e) => {
                self.fail_all(&format!("engine step failed: {e}"), true);
                return;
            }
        };
        // The metrics take the step in before any client hears of it: a client that has read its
        // request's last event finds it counted in /metrics (its tokens and latencies, its KV
        // blocks freed, no longer running).
        let mut ttfts = Vec::new();
        let mut itls = Vec::new();
        let mut e2es = Vec::new();
        for t in &out.tokens {
            let Some(l) = self.live.get_mut(&t.id) else {
                continue;
            };
            let at = self.epoch + Duration::from_secs_f64(t.time_s.max(0.0));
            match l.last_token {
                None => ttfts.push(at.saturating_duration_since(l.arrived).as_secs_f64()),
                Some(prev) => itls.push(at.saturating_duration_since(prev).as_secs_f64()),
            }
            l.last_token = Some(at);
        }
        let mut ended = HashMap::new();
        for f in &out.finished {
            if let Some(l) = self.live.remove(&f.id) {
                self.by_cid.remove(&l.cid);
                if let Some(last) = l.last_token {
                    e2es.push(last.saturating_duration_since(l.arrived).as_secs_f64());
                }
                ended.insert(f.id, (l, f.finish_reason));
            }
        }
        let mut m = self.shared.metrics();
        m.generation_tokens += out.tokens.len() as u64;
        for v in ttfts {
            m.ttft.observe(v);
        }
        for v in itls {
            m.itl.observe(v);
        }
        for v in e2es {
            m.e2e.observe(v);
        }
        drop(m);
        self.publish(out.record.map(|r| r.duration_s()));

        let mut gone = Vec::new();
        for t in &out.tokens {
            let events = match (self.live.get(&t.id), ended.get(&t.id)) {
                (Some(l), _) => &l.events,
                (None, Some((l, _))) => &l.events,
                (None, None) => continue,
            };
            if events.send(Event::Token(t.token)).is_err() && self.live.contains_key(&t.id) {
                gone.push(t.id);
            }
        }
        for (l, reason) in ended.into_values() {
            let _ = l.events.send(Event::Finished(reason));
        }
        // clients that left: their requests end here (counted as aborted)
        let mut aborted = 0;
        for id in gone {
            if let Some(l) = self.live.remove(&id) {
                self.by_cid.remove(&l.cid);
                self.engine.abort(id);
                aborted += 1;
            }
        }
        if aborted > 0 {
            self.shared.metrics().aborted += aborted;
            self.publish(None);
        }
    }

    /// End every live request with `msg`, counted as failed when `count_failed`; the metrics
    /// take them in before their clients hear.
    fn fail_all(&mut self, msg: &str, count_failed: bool) {
        let failed: Vec<Live> = self
            .live
            .drain()
            .map(|(id, l)| {
                self.engine.abort(id);
                l
            })
            .collect();
        self.by_cid.clear();
        if count_failed {
            self.shared.metrics().failed += failed.len() as u64;
        }
        self.publish(None);
        for l in failed {
            let _ = l.events.send(Event::Failed(msg.to_string()));
        }
    }

    /// Copy the engine's gauges and counters into the shared metrics.
    fn publish(&self, step_s: Option<f64>) {
        let kv = self.engine.kv_stats();
        let mut m = self.shared.metrics();
        m.running = self.engine.num_running();
        m.waiting = self.engine.num_waiting();
        m.kv_blocks_used = self.engine.kv_blocks_used();
        m.kv_blocks_total = self.engine.kv_blocks_total();
        m.prefix_query_tokens = kv.prefix_queries_tokens;
        m.prefix_hit_tokens = kv.prefix_hit_tokens;
        m.preemptions = self.engine.total_preemptions();
        if let Some(s) = step_s {
            m.steps += 1;
            m.step_time.observe(s);
        }
    }
}
