//! Injected time: logic never reads the OS clock directly. Replication uses a
//! [`Clock`] for timeouts; [`ThreadClock`] is the default (one lazily started
//! timer thread, no runtime needed) and [`ManualClock`] drives simulations.

use futures::future::BoxFuture;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A source of time and timers.
pub trait Clock: Send + Sync + 'static {
    /// Time since this clock's origin.
    fn now(&self) -> Duration;
    /// A future that completes `duration` from now.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

// ---- the real clock -------------------------------------------------------------------

struct TimerShared {
    state: Mutex<TimerState>,
    cv: Condvar,
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: std::collections::HashMap<u64, Waker>,
    next: u64,
}

fn timer() -> &'static Arc<TimerShared> {
    static T: OnceLock<Arc<TimerShared>> = OnceLock::new();
    T.get_or_init(|| {
        let shared = Arc::new(TimerShared {
            state: Mutex::new(TimerState::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        // If the thread cannot start, sleeps complete at once when polled
        // past their deadline (they re-check the time on every poll).
        let _ = std::thread::Builder::new()
            .name("hypercore-rs-timer".into())
            .spawn(move || timer_loop(&s));
        shared
    })
}

fn timer_loop(s: &TimerShared) {
    let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = st.heap.peek().copied() {
            if at > now {
                break;
            }
            st.heap.pop();
            if let Some(w) = st.wakers.remove(&id) {
                w.wake();
            }
        }
        st = match st.heap.peek().copied() {
            Some(Reverse((at, _))) => {
                let wait = at.saturating_duration_since(Instant::now());
                s.cv.wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => s.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

struct Sleep {
    at: Instant,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let t = timer();
        let mut st = t.state.lock().unwrap_or_else(|p| p.into_inner());
        let (id, earliest) = match self.id {
            Some(id) => (id, false),
            None => {
                let id = st.next;
                st.next += 1;
                // The timer thread only needs waking if this is its new earliest deadline.
                let earliest = st.heap.peek().is_none_or(|Reverse((at, _))| self.at < *at);
                st.heap.push(Reverse((self.at, id)));
                self.id = Some(id);
                (id, earliest)
            }
        };
        st.wakers.insert(id, cx.waker().clone());
        drop(st);
        if earliest {
            t.cv.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut st = timer().state.lock().unwrap_or_else(|p| p.into_inner());
            st.wakers.remove(&id);
        }
    }
}

/// The system clock, with timers served by one background thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadClock;

fn origin() -> Instant {
    static O: OnceLock<Instant> = OnceLock::new();
    *O.get_or_init(Instant::now)
}

impl Clock for ThreadClock {
    fn now(&self) -> Duration {
        origin().elapsed()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let at = Instant::now() + duration;
        Box::pin(Sleep { at, id: None })
    }
}

// ---- the virtual clock ----------------------------------------------------------------

#[derive(Default)]
struct ManualState {
    now: Duration,
    sleepers: Vec<(Duration, Waker)>,
}

/// A virtual clock that moves only when told to: for deterministic tests and
/// simulations.
#[derive(Clone, Default)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward and wakes the sleepers that are due.
    pub fn advance(&self, by: Duration) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.now += by;
        let now = st.now;
        let (due, rest): (Vec<_>, Vec<_>) = st.sleepers.drain(..).partition(|(at, _)| *at <= now);
        st.sleepers = rest;
        drop(st);
        for (_, w) in due {
            w.wake();
        }
    }
}

struct ManualSleep {
    clock: ManualClock,
    at: Duration,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.clock.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.now >= self.at {
            return Poll::Ready(());
        }
        st.sleepers.push((self.at, cx.waker().clone()));
        Poll::Pending
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).now
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let at = self.now() + duration;
        Box::pin(ManualSleep {
            clock: self.clone(),
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_sleeps() {
        let c = ThreadClock;
        let t0 = c.now();
        futures::executor::block_on(c.sleep(Duration::from_millis(20)));
        assert!(c.now() - t0 >= Duration::from_millis(20));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        let mut s = c.sleep(Duration::from_secs(5));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(s.as_mut().poll(&mut cx).is_pending());
        c.advance(Duration::from_secs(4));
        assert!(s.as_mut().poll(&mut cx).is_pending());
        c.advance(Duration::from_secs(1));
        assert!(s.as_mut().poll(&mut cx).is_ready());
        assert_eq!(c.now(), Duration::from_secs(5));
    }
}
