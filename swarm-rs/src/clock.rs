//! Injected time for the async adapters.
//!
//! The sans-IO state machines take `now` as an argument; the adapters that
//! drive them ask a [`Clock`] for it and for a timer, so tests can substitute
//! their own. Nothing here ever blocks a thread.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// A boxed timer future.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of the current time and of timers.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
    /// A future that completes at (or after) `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;
}

/// The system clock with `async-io` timers, which work under any executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let timer = async_io::Timer::at(deadline);
        Box::pin(async move {
            timer.await;
        })
    }
}
