//! Load executors: who sends what when, and the per-request records.
//!
//! - Open loop ([`Mode::Open`]): sessions start at the instants of an arrival process
//!   ([`crate::workload::Arrival`]) at `rate` per second. The instants are computed ahead (in
//!   batches of 4096, from [`crate::workload::send_offsets`]) as absolute offsets from the step's
//!   start and waited for with the sub-millisecond timer of [`super::hires`]; a request's
//!   `scheduled_s` is its instant, its `send_s` when the client really sent it, so any lag of the
//!   client (or a `max_concurrency` cap that is full) shows as `client_queue` and never stretches the
//!   schedule.
//! - Closed loop ([`Mode::Closed`]): `concurrency` virtual users, each sending its next request as
//!   soon as the previous one ended; `scheduled_s` is that moment.
//! - Multi-turn sessions: the first turn follows the mode; each later turn is scheduled when the
//!   previous reply ended and carries the whole history, the server's replies as assistant messages.
//!   A failed turn ends its session.
//! - Stop: after `num_requests` measured requests (turns), or when the next request would be
//!   scheduled past `duration` (after the warmup), whichever comes first; requests in flight then
//!   finish (each bounded by the client's request timeout).
//! - Warmup: the first `N` requests, or those scheduled in the first `D` seconds; they run like any
//!   other, are kept apart in the results and excluded from every metric.
//! - Cancellation (Ctrl-C): no new requests; in-flight ones are abandoned and counted as cancelled.
//!
//! Every time is seconds from the runner's epoch, one [`Instant`] clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::hires;
use super::openai::{ChatMessage, Exchange, OpenAiClient, Prompt};
use crate::error::{Error, Result};
use crate::metrics::RequestRecord;
use crate::model::Tokenizer;
use crate::report::load_results::{LoadRequestRecord, StepParams, TokenSource};
use crate::workload::session::{Session, Turn, TurnInput};
use crate::workload::{send_offsets, Arrival};

/// How requests are driven.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Arrivals at `rate` per second; at most `max_concurrency` in flight when given.
    Open {
        rate: f64,
        arrival: Arrival,
        max_concurrency: Option<usize>,
    },
    /// `concurrency` virtual users.
    Closed { concurrency: usize },
}

/// Which requests are warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    None,
    Requests(usize),
    Time(Duration),
}

impl Warmup {
    /// `20` (requests) or a duration (`10s`, `500ms`).
    pub fn parse(text: &str) -> Result<Warmup> {
        let t = text.trim();
        if let Ok(n) = t.parse::<usize>() {
            return Ok(if n == 0 {
                Warmup::None
            } else {
                Warmup::Requests(n)
            });
        }
        let d = super::parse_duration(t).map_err(|_| {
            Error::Invalid(format!(
                "--warmup `{text}`: expected a request count (20) or a duration (10s, 500ms)"
            ))
        })?;
        Ok(if d.is_zero() {
            Warmup::None
        } else {
            Warmup::Time(d)
        })
    }

    fn describe(self) -> Option<String> {
        match self {
            Warmup::None => None,
            Warmup::Requests(n) => Some(n.to_string()),
            Warmup::Time(d) => Some(format!("{}s", d.as_secs_f64())),
        }
    }
}

/// One executor run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    pub mode: Mode,
    /// Measured requests (turns) to send.
    pub num_requests: Option<usize>,
    /// Measured time to keep sending.
    pub duration: Option<Duration>,
    pub warmup: Warmup,
    pub seed: u64,
    /// Closed loop: the users' first requests are spread evenly over this time (user `u` of `N`
    /// starts at `u · ramp_up / N`) instead of all at once.
    pub ramp_up: Option<Duration>,
}

impl StepPlan {
    pub fn validate(&self) -> Result<()> {
        if self.num_requests.is_none() && self.duration.is_none() {
            return Err(Error::Invalid(
                "a load step needs --num-requests or --duration".into(),
            ));
        }
        if self.num_requests == Some(0) {
            return Err(Error::Invalid("--num-requests must be at least 1".into()));
        }
        match self.mode {
            Mode::Open {
                rate,
                arrival,
                max_concurrency,
            } => {
                if arrival != Arrival::Burst && !(rate.is_finite() && rate > 0.0) {
                    return Err(Error::Invalid(format!(
                        "--rate must be a positive number of requests per second, got {rate}"
                    )));
                }
                if arrival == Arrival::Burst && self.num_requests.is_none() {
                    return Err(Error::Invalid(
                        "the burst arrival sends everything at once: give --num-requests".into(),
                    ));
                }
                if max_concurrency == Some(0) {
                    return Err(Error::Invalid(
                        "--max-concurrency must be at least 1".into(),
                    ));
                }
            }
            Mode::Closed { concurrency } => {
                if concurrency == 0 {
                    return Err(Error::Invalid("--concurrency must be at least 1".into()));
                }
            }
        }
        Ok(())
    }

    /// The concurrency at which the steady-state window is measured, where there is one.
    pub fn steady_concurrency(&self) -> Option<usize> {
        match self.mode {
            Mode::Open {
                max_concurrency, ..
            } => max_concurrency,
            Mode::Closed { concurrency } => Some(concurrency),
        }
    }

    pub fn params(&self) -> StepParams {
        let (mode, rate, arrival, concurrency, max_concurrency) = match self.mode {
            Mode::Open {
                rate,
                arrival,
                max_concurrency,
            } => (
                "open",
                (arrival != Arrival::Burst).then_some(rate),
                Some(arrival.to_string()),
                None,
                max_concurrency,
            ),
            Mode::Closed { concurrency } => ("closed", None, None, Some(concurrency), None),
        };
        StepParams {
            mode: mode.into(),
            rate,
            arrival,
            concurrency,
            max_concurrency,
            num_requests: self.num_requests,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            warmup: self.warmup.describe(),
            ramp_up_s: match self.mode {
                Mode::Closed { .. } => self.ramp_up.map(|d| d.as_secs_f64()),
                Mode::Open { .. } => None,
            },
        }
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    ttfts: Mutex<VecDeque<f64>>,
}

impl Progress {
    const WINDOW: usize = 256;

    fn record_ttft(&self, t: f64) {
        let mut q = self.ttfts.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == Self::WINDOW {
            q.pop_front();
        }
        q.push_back(t);
    }

    /// Median TTFT of the last 256 successful requests.
    pub fn rolling_ttft_p50(&self) -> Option<f64> {
        let q = self.ttfts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<f64> = q.iter().copied().collect();
        drop(q);
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| crate::metrics::percentile(&v, 50.0))
    }
}

/// Records of the step in progress. An incremental saver may move records out as they come
/// (`std::mem::take` under the lock, no copy); [`Runner::run_step`] returns the ones left.
#[derive(Debug, Default, Clone)]
pub struct LiveRecords {
    pub warmup: Vec<LoadRequestRecord>,
    pub measured: Vec<LoadRequestRecord>,
    /// Records pushed so far, moved out or not.
    pub recorded: usize,
    pub sent: usize,
}

/// What a step produced (the records left in the live store, when a saver moved some out).
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub started_s: f64,
    pub ended_s: f64,
    pub warmup: Vec<LoadRequestRecord>,
    pub measured: Vec<LoadRequestRecord>,
    pub sent: usize,
    /// In flight at cancellation, not recorded.
    pub cancelled: usize,
    pub interrupted: bool,
}

/// Everything the steps of a run share.
pub struct Runner {
    pub client: Arc<OpenAiClient>,
    pub sessions: Arc<Vec<Session>>,
    pub epoch: Instant,
    pub progress: Arc<Progress>,
    pub cancel: watch::Receiver<bool>,
    tokenizer: Option<Arc<Tokenizer>>,
    specials: usize,
    save_text: bool,
    next_session: AtomicUsize,
    /// The `model` field of the first response.
    pub server_model: Mutex<Option<String>>,
}

impl Runner {
    /// `sessions` must not be empty. The tokenizer, when given, supplies the fallback and the check
    /// of token counts.
    pub fn new(
        mut client: OpenAiClient,
        sessions: Vec<Session>,
        epoch: Instant,
        cancel: watch::Receiver<bool>,
        tokenizer: Option<Arc<Tokenizer>>,
        save_text: bool,
    ) -> Result<Runner> {
        if sessions.is_empty() || sessions.iter().any(|s| s.turns.is_empty()) {
            return Err(Error::Invalid(
                "the workload has no requests to send".into(),
            ));
        }
        // The text is needed to replay conversations, count tokens locally and save it.
        if save_text || tokenizer.is_some() || sessions.iter().any(|s| s.turns.len() > 1) {
            client.set_keep_text(true);
        }
        let specials = match &tokenizer {
            Some(t) => t.encode("")?.len(),
            None => 0,
        };
        Ok(Runner {
            client: Arc::new(client),
            sessions: Arc::new(sessions),
            epoch,
            progress: Arc::new(Progress::default()),
            cancel,
            tokenizer,
            specials,
            save_text,
            next_session: AtomicUsize::new(0),
            server_model: Mutex::new(None),
        })
    }

    fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    fn take_session(&self) -> usize {
        self.next_session.fetch_add(1, Ordering::Relaxed) % self.sessions.len()
    }

    /// Run one step; records also go to `live` as they complete.
    pub async fn run_step(
        self: &Arc<Self>,
        plan: &StepPlan,
        live: Arc<Mutex<LiveRecords>>,
    ) -> Result<StepOutcome> {
        plan.validate()?;
        let start = Instant::now();
        let start_s = start.duration_since(self.epoch).as_secs_f64();
        let warm_span = match plan.warmup {
            Warmup::Time(d) => d,
            _ => Duration::ZERO,
        };
        let st = Arc::new(StepState {
            runner: Arc::clone(self),
            start,
            start_s,
            warmup: plan.warmup,
            limit_s: plan.duration.map(|d| (warm_span + d).as_secs_f64()),
            num_requests: plan.num_requests,
            ids: AtomicU64::new(0),
            warm_issued: AtomicUsize::new(0),
            measured: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            sem: match plan.mode {
                Mode::Open {
                    max_concurrency: Some(c),
                    ..
                } => Some(Arc::new(Semaphore::new(c))),
                _ => None,
            },
            live: Arc::clone(&live),
        });
        let driver = {
            let st = Arc::clone(&st);
            let mode = plan.mode;
            let seed = plan.seed;
            let ramp = plan.ramp_up.unwrap_or_default();
            tokio::spawn(async move {
                match mode {
                    Mode::Open { rate, arrival, .. } => open_loop(st, rate, arrival, seed).await,
                    Mode::Closed { concurrency } => closed_loop(st, concurrency, ramp).await,
                }
            })
        };
        let interrupted = match driver.await {
            Ok(interrupted) => interrupted,
            Err(e) => return Err(Error::Invalid(format!("load driver task failed: {e}"))),
        };
        let ended_s = self.now_s();
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        let recorded = l.recorded;
        let sent = st.sent.load(Ordering::Relaxed);
        l.sent = sent;
        let mut measured = std::mem::take(&mut l.measured);
        let mut warmup = std::mem::take(&mut l.warmup);
        drop(l);
        measured.sort_by_key(|r| r.record.id);
        warmup.sort_by_key(|r| r.record.id);
        Ok(StepOutcome {
            started_s: start_s,
            ended_s,
            warmup,
            measured,
            sent,
            cancelled: sent.saturating_sub(recorded),
            interrupted: interrupted || self.cancelled(),
        })
    }

    fn prompt_for(sess: &Session, history: &[ChatMessage], turn: &Turn) -> Prompt {
        let single = sess.turns.len() == 1 && sess.system.is_none();
        match &turn.input {
            TurnInput::Ids(ids) => Prompt::Ids(ids.clone()),
            TurnInput::Text(t) if single => Prompt::Text(t.clone()),
            TurnInput::Text(t) => {
                let mut msgs = Vec::with_capacity(history.len() + 2);
                if let Some(s) = &sess.system {
                    msgs.push(ChatMessage::new("system", s.as_str()));
                }
                msgs.extend_from_slice(history);
                msgs.push(ChatMessage::new("user", t.as_str()));
                Prompt::Messages(msgs)
            }
        }
    }

    fn count(&self, text: &str) -> Option<usize> {
        let t = self.tokenizer.as_ref()?;
        t.encode(text)
            .ok()
            .map(|ids| ids.len().saturating_sub(self.specials))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        id: u64,
        scheduled_s: f64,
        session: usize,
        turn_idx: usize,
        turn: &Turn,
        prompt: &Prompt,
        ex: &Exchange,
    ) -> LoadRequestRecord {
        let usage = ex.usage.unwrap_or_default();
        let tok_prompt = self.tokenizer.as_ref().and_then(|_| match prompt {
            Prompt::Text(_) => turn.input_tokens,
            Prompt::Ids(_) => None,
            Prompt::Messages(ms) => {
                let sum: Option<usize> = ms.iter().map(|m| self.count(&m.content)).sum();
                sum.map(|s| s + self.specials)
            }
        });
        // reasoning tokens are generated tokens too
        let tok_output = if ex.error.is_none() {
            match (self.count(&ex.text), ex.reasoning.is_empty()) {
                (Some(n), true) => Some(n),
                (Some(n), false) => self.count(&ex.reasoning).map(|r| n + r),
                (None, _) => None,
            }
        } else {
            None
        };
        let (prompt_tokens, prompt_src) = match (usage.prompt_tokens, tok_prompt, turn.input_tokens)
        {
            (Some(n), _, _) => (n, TokenSource::Usage),
            (None, Some(n), _) => (n, TokenSource::Tokenizer),
            (None, None, Some(n)) if turn_idx == 0 || matches!(prompt, Prompt::Ids(_)) => {
                (n, TokenSource::Workload)
            }
            _ => (0, TokenSource::None),
        };
        let (output_tokens, output_src) = match (usage.completion_tokens, tok_output) {
            (Some(n), _) => (n, TokenSource::Usage),
            (None, Some(n)) => (n, TokenSource::Tokenizer),
            (None, None) => (ex.chunk_times_s.len(), TokenSource::Chunks),
        };
        LoadRequestRecord {
            record: RequestRecord {
                id,
                scheduled_s,
                send_s: ex.send_s,
                first_token_s: ex.first_token_s,
                chunk_times_s: ex.chunk_times_s.clone(),
                end_s: ex.end_s,
                prompt_tokens,
                output_tokens,
                error: ex.error.as_ref().map(|e| e.to_string()),
            },
            session: session as u64,
            turn: turn_idx,
            error_kind: ex.error.as_ref().map(|e| e.kind()),
            http_status: ex.http_status,
            finish_reason: ex.finish_reason.clone(),
            prompt_tokens_source: prompt_src,
            output_tokens_source: output_src,
            usage_prompt_tokens: usage.prompt_tokens,
            usage_output_tokens: usage.completion_tokens,
            tokenizer_prompt_tokens: tok_prompt,
            tokenizer_output_tokens: tok_output,
            text: self.save_text.then(|| ex.text.clone()),
            mock_emit_s: (!ex.mock_emit_s.is_empty()).then(|| ex.mock_emit_s.clone()),
        }
    }
}

struct StepState {
    runner: Arc<Runner>,
    start: Instant,
    start_s: f64,
    warmup: Warmup,
    /// No request scheduled at or after this offset (seconds from the step start).
    limit_s: Option<f64>,
    num_requests: Option<usize>,
    ids: AtomicU64,
    warm_issued: AtomicUsize,
    measured: AtomicUsize,
    sent: AtomicUsize,
    sem: Option<Arc<Semaphore>>,
    live: Arc<Mutex<LiveRecords>>,
}

impl StepState {
    /// A request id and whether it is warmup, for a request scheduled `offset` seconds into the
    /// step; `None` once the step must stop sending.
    fn try_issue(&self, offset: f64) -> Option<(u64, bool)> {
        if self.runner.cancelled() || self.limit_s.is_some_and(|l| offset >= l) {
            return None;
        }
        let warm = match self.warmup {
            Warmup::None => false,
            Warmup::Time(d) => offset < d.as_secs_f64(),
            Warmup::Requests(k) => self
                .warm_issued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    (w < k).then_some(w + 1)
                })
                .is_ok(),
        };
        if !warm {
            let budget = self.num_requests.unwrap_or(usize::MAX);
            let ok = self
                .measured
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    (m < budget).then_some(m + 1)
                })
                .is_ok();
            if !ok {
                return None;
            }
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Some((self.ids.fetch_add(1, Ordering::Relaxed), warm))
    }

    fn offset_now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Run one session's turns; the first is already issued.
async fn run_session(st: Arc<StepState>, sidx: usize, first: (u64, bool), first_sched_s: f64) {
    let r = &st.runner;
    let sess = &r.sessions[sidx];
    let mut history: Vec<ChatMessage> = Vec::new();
    let (mut id, mut warm) = first;
    let mut sched = first_sched_s;
    for (t, turn) in sess.turns.iter().enumerate() {
        if t > 0 {
            let off = st.offset_now();
            match st.try_issue(off) {
                Some((i, w)) => {
                    id = i;
                    warm = w;
                    sched = st.start_s + off;
                }
                None => break,
            }
        }
        let permit = match &st.sem {
            Some(s) => match Arc::clone(s).acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => break,
            },
            None => None,
        };
        let prompt = Runner::prompt_for(sess, &history, turn);
        r.progress.sent.fetch_add(1, Ordering::Relaxed);
        let ex = r.client.send(&prompt, turn.max_tokens, r.epoch).await;
        drop(permit);
        let rec = r.record(id, sched, sidx, t, turn, &prompt, &ex);
        let ok = ex.error.is_none();
        if ok {
            r.progress.completed.fetch_add(1, Ordering::Relaxed);
            if let Some(ttft) = rec.record.ttft() {
                r.progress.record_ttft(ttft);
            }
            if ex.server_model.is_some() {
                let mut m = r.server_model.lock().unwrap_or_else(|p| p.into_inner());
                if m.is_none() {
                    m.clone_from(&ex.server_model);
                }
            }
        } else {
            r.progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut l = st.live.lock().unwrap_or_else(|p| p.into_inner());
            l.recorded += 1;
            if warm {
                l.warmup.push(rec);
            } else {
                l.measured.push(rec);
            }
        }
        if !ok {
            break; // a conversation cannot go on without the reply
        }
        if sess.turns.len() > 1 {
            if let TurnInput::Text(u) = &turn.input {
                history.push(ChatMessage::new("user", u.as_str()));
            }
            history.push(ChatMessage::new("assistant", ex.text));
        }
    }
}

/// Absolute send offsets of an arrival process, computed in batches ahead of use.
struct Schedule {
    rate: f64,
    arrival: Arrival,
    seed: u64,
    batch: u64,
    buf: VecDeque<f64>,
    base: f64,
    index: u64,
}

impl Schedule {
    const BATCH: usize = 4096;

    fn new(rate: f64, arrival: Arrival, seed: u64) -> Result<Self> {
        let mut s = Schedule {
            rate,
            arrival,
            seed,
            batch: 0,
            buf: VecDeque::new(),
            base: 0.0,
            index: 0,
        };
        s.refill()?;
        Ok(s)
    }

    fn refill(&mut self) -> Result<()> {
        match self.arrival {
            Arrival::Constant => {
                // i / rate from the global index: no float drift across batches.
                for k in 0..Self::BATCH as u64 {
                    self.buf.push_back((self.index + k) as f64 / self.rate);
                }
                self.index += Self::BATCH as u64;
            }
            Arrival::Burst => self.buf.extend(std::iter::repeat_n(0.0, Self::BATCH)),
            a => {
                let offs = send_offsets(
                    Self::BATCH,
                    self.rate,
                    a,
                    self.seed.wrapping_add(self.batch.wrapping_mul(0x9E37_79B9)),
                )?;
                let base = self.base;
                self.buf.extend(offs.iter().map(|o| base + o));
                self.base = self.buf.back().copied().unwrap_or(base);
            }
        }
        self.batch += 1;
        Ok(())
    }

    fn next(&mut self) -> Result<f64> {
        if self.buf.is_empty() {
            self.refill()?;
        }
        Ok(self.buf.pop_front().unwrap_or(f64::INFINITY))
    }
}

/// Returns whether it was interrupted.
async fn open_loop(st: Arc<StepState>, rate: f64, arrival: Arrival, seed: u64) -> bool {
    let mut sched = match Schedule::new(rate, arrival, seed) {
        Ok(s) => s,
        Err(_) => return false, // validated before: cannot happen
    };
    let mut cancel = st.runner.cancel.clone();
    let mut set = JoinSet::new();
    let mut interrupted = false;
    while let Ok(off) = sched.next() {
        if st.limit_s.is_some_and(|l| off >= l) || !off.is_finite() {
            break;
        }
        let at = st.start + Duration::from_secs_f64(off);
        if at > Instant::now() {
            tokio::select! {
                _ = hires::sleep_until(at) => {}
                _ = wait_cancel(&mut cancel) => { interrupted = true; break; }
            }
        }
        let Some(first) = st.try_issue(off) else {
            break;
        };
        let sidx = st.runner.take_session();
        set.spawn(run_session(Arc::clone(&st), sidx, first, st.start_s + off));
        while set.try_join_next().is_some() {}
    }
    drain(&mut set, &mut cancel).await || interrupted
}

async fn closed_loop(st: Arc<StepState>, concurrency: usize, ramp: Duration) -> bool {
    let mut cancel = st.runner.cancel.clone();
    let mut set = JoinSet::new();
    for u in 0..concurrency {
        let st = Arc::clone(&st);
        let start = ramp.mul_f64(u as f64 / concurrency as f64);
        set.spawn(async move {
            if !start.is_zero() {
                hires::sleep_until(st.start + start).await;
            }
            let mut off = start.as_secs_f64();
            while let Some(first) = st.try_issue(off) {
                let sidx = st.runner.take_session();
                run_session(Arc::clone(&st), sidx, first, st.start_s + off).await;
                off = st.offset_now();
            }
        });
    }
    drain(&mut set, &mut cancel).await
}

/// Resolves once the run is cancelled (never, if the sender is gone).
async fn wait_cancel(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Wait for every task; on cancellation abort them. Returns whether it was cancelled.
async fn drain(set: &mut JoinSet<()>, cancel: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            r = set.join_next() => if r.is_none() { return false },
            _ = wait_cancel(cancel) => {
                set.abort_all();
                while set.join_next().await.is_some() {}
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_parses_counts_and_durations() {
        assert_eq!(Warmup::parse("20").unwrap(), Warmup::Requests(20));
        assert_eq!(Warmup::parse("0").unwrap(), Warmup::None);
        assert_eq!(
            Warmup::parse("1.5s").unwrap(),
            Warmup::Time(Duration::from_millis(1500))
        );
        assert_eq!(
            Warmup::parse("250ms").unwrap(),
            Warmup::Time(Duration::from_millis(250))
        );
        assert!(Warmup::parse("soon").is_err());
    }

    #[test]
    fn plans_are_validated() {
        let ok = StepPlan {
            mode: Mode::Closed { concurrency: 2 },
            num_requests: Some(3),
            duration: None,
            warmup: Warmup::None,
            seed: 0,
            ramp_up: None,
        };
        assert!(ok.validate().is_ok());
        let mut p = ok.clone();
        p.num_requests = None;
        assert!(p.validate().is_err(), "no stop condition");
        p.duration = Some(Duration::from_secs(1));
        p.mode = Mode::Open {
            rate: 1.0,
            arrival: Arrival::Burst,
            max_concurrency: None,
        };
        assert!(p.validate().is_err(), "burst without a count");
        p.mode = Mode::Open {
            rate: 0.0,
            arrival: Arrival::Poisson,
            max_concurrency: None,
        };
        assert!(p.validate().is_err(), "zero rate");
        assert_eq!(ok.steady_concurrency(), Some(2));
        assert_eq!(ok.params().mode, "closed");
    }

    #[test]
    fn schedules_continue_across_batches() {
        let mut s = Schedule::new(1000.0, Arrival::Constant, 0).unwrap();
        let v: Vec<f64> = (0..10_000).map(|_| s.next().unwrap()).collect();
        assert_eq!(v[0], 0.0);
        assert_eq!(v[9999], 9.999);
        let mut s = Schedule::new(100.0, Arrival::Poisson, 3).unwrap();
        let v: Vec<f64> = (0..10_000).map(|_| s.next().unwrap()).collect();
        assert!(
            v.windows(2).all(|w| w[0] <= w[1]),
            "non-decreasing across batches"
        );
        let mean_gap = v[9999] / 10_000.0;
        assert!((mean_gap - 0.01).abs() < 0.001, "{mean_gap}");
        let mut s = Schedule::new(0.0, Arrival::Burst, 0).unwrap();
        assert_eq!(s.next().unwrap(), 0.0);
    }
}
