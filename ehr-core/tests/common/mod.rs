//! Shared by the swarm tests: yield to the executor once, and update
//! peers until a condition holds.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ehr_core::Record;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future that is pending once, then ready: lets other tasks run.
pub(crate) struct YieldNow(pub(crate) bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Updates `peers` and yields until `done` holds; fails the test with
/// `what` if it never does (in-memory transports: no real time passes).
pub(crate) async fn pump_until<F, Fut>(peers: &[&Record], mut done: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..100_000 {
        if done().await {
            return;
        }
        for r in peers {
            r.update().await.unwrap();
        }
        YieldNow(false).await;
    }
    panic!("{what}");
}
