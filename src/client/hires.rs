//! A sub-millisecond timer for async code: the load generator's send schedule and the mock server's
//! token times.
//!
//! tokio's timer wheel has a resolution of one millisecond (a deadline is rounded up to the next
//! tick), which alone would put up to 1 ms of error into every scheduled send and every mock token.
//! This timer keeps deadlines in a binary heap served by one dedicated OS thread that sleeps with
//! `park_timeout` (a futex wait with an hrtimer timeout; the thread sets its timer slack to 1 µs
//! on Linux, so it wakes within tens of microseconds of the deadline) and then wakes the waiting
//! tasks. It never spins, so
//! it costs no CPU while waiting, which matters on small machines where the client and the server
//! under test share the cores. Deadlines are absolute [`Instant`]s, so errors never accumulate over a
//! schedule.
//!
//! One timer thread serves the whole process; it is started on first use and lives as long as the
//! process.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Wait until `at` (returns at once when it has passed).
pub fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, slot: None }
}

/// Wait for `d`.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// The future of [`sleep_until`].
#[derive(Debug)]
pub struct Sleep {
    at: Instant,
    slot: Option<Arc<Slot>>,
}

#[derive(Debug)]
struct Slot {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

struct Entry {
    at: Instant,
    seq: u64,
    slot: Arc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed, so the `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Timer {
    heap: Mutex<(BinaryHeap<Entry>, u64)>,
    thread: OnceLock<Thread>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain pushes and pops).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timer() -> &'static Arc<Timer> {
    static TIMER: OnceLock<Arc<Timer>> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t = Arc::new(Timer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            thread: OnceLock::new(),
        });
        let run = Arc::clone(&t);
        match std::thread::Builder::new()
            .name("infermeter-hires-timer".into())
            .spawn(move || timer_loop(&run))
        {
            Ok(h) => {
                let _ = t.thread.set(h.thread().clone());
            }
            Err(e) => {
                // Without the thread no deadline would fire: sleeps then poll the clock themselves
                // (busy, but correct).
                eprintln!("warning: cannot start the timer thread ({e}); sleeps will busy-poll");
            }
        }
        t
    })
}

fn timer_loop(t: &Timer) {
    // Linux lets a thread lower its own timer slack (default 50 us) through procfs, without unsafe
    // code: timed waits then end within a few microseconds of the deadline. Best effort: elsewhere
    // (or without procfs) the default slack stays.
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1000");
    let mut due: Vec<Arc<Slot>> = Vec::new();
    loop {
        let next = {
            let mut g = lock(&t.heap);
            let now = Instant::now();
            while g.0.peek().is_some_and(|e| e.at <= now) {
                if let Some(e) = g.0.pop() {
                    due.push(e.slot);
                }
            }
            g.0.peek().map(|e| e.at)
        };
        for slot in due.drain(..) {
            slot.fired.store(true, Ordering::Release);
            if let Some(w) = lock(&slot.waker).take() {
                w.wake();
            }
        }
        match next {
            None => std::thread::park(),
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    std::thread::park_timeout(at - now);
                }
            }
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(slot) = &self.slot {
            if slot.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            {
                let mut w = lock(&slot.waker);
                match &*w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
            }
            if slot.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            // No timer thread: poll time ourselves.
            if timer().thread.get().is_none() {
                if Instant::now() >= self.at {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let slot = Arc::new(Slot {
            fired: AtomicBool::new(false),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        let t = timer();
        let earliest = {
            let mut g = lock(&t.heap);
            g.1 += 1;
            let seq = g.1;
            let earliest = g.0.peek().is_none_or(|e| self.at < e.at);
            g.0.push(Entry {
                at: self.at,
                seq,
                slot: Arc::clone(&slot),
            });
            earliest
        };
        self.slot = Some(slot);
        match t.thread.get() {
            Some(th) if earliest => th.unpark(),
            Some(_) => {}
            None => cx.waker().wake_by_ref(),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // Release the task's waker now; the heap entry itself expires harmlessly at its deadline.
        if let Some(slot) = &self.slot {
            lock(&slot.waker).take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_never_wake_early_and_keep_order() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in (0..20u64).rev() {
            let at = start + Duration::from_micros(300 * i);
            tasks.push(tokio::spawn(async move {
                sleep_until(at).await;
                (i, Instant::now() >= at)
            }));
        }
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            assert!(ok, "sleep {i} woke before its deadline");
        }
    }

    #[tokio::test]
    async fn past_deadlines_are_ready_and_dropped_sleeps_are_harmless() {
        sleep_until(Instant::now() - Duration::from_millis(1)).await;
        let long = sleep(Duration::from_secs(3600));
        let r = tokio::time::timeout(Duration::from_millis(20), long).await;
        assert!(r.is_err(), "an hour-long sleep finished");
        sleep(Duration::from_micros(100)).await;
    }
}
