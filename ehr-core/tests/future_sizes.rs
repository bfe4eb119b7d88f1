//! The futures of the record's entry points stay small enough for
//! executors with small task stacks: an `async fn` future holds every
//! future it awaits by value, so one deep nest (e.g. the checkpoint duty
//! inside a sync session inside an invite session) made a debug-build poll
//! of `join_with_invite` need 1-1.5 MiB of stack before it was boxed. Each
//! size is printed (`--nocapture`) and checked against a bound with room
//! to spare; a new by-value nest that multiplies a future's size fails
//! here rather than on a user's executor.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use ehr_core::{Grant, Invite, Record, Role, SecureRecord};
use futures::executor::LocalPool;
use hypercore_rs::MemoryStorage;
use std::mem::size_of_val;
use std::sync::Arc;
use std::time::Duration;
use swarm_rs::{MemoryAddr, MemoryDiscovery, MemoryNetwork};

/// The bound: 32 KiB in debug builds (futures are larger unoptimised),
/// 16 KiB in release. Measured (debug, session 5): the largest is
/// `Record::checkpoint_duty` at 9.7 KB; `sync_with_invites`'s session was
/// 58 KB before its lost-redemption watch was boxed, 1.4 KB after.
const BOUND: usize = if cfg!(debug_assertions) {
    32 << 10
} else {
    16 << 10
};

fn check(what: &str, size: usize, sizes: &mut Vec<(String, usize)>) {
    eprintln!("{what:<40} {size:>8} bytes");
    sizes.push((what.to_owned(), size));
}

#[test]
fn entry_point_futures_stay_small() {
    let mut pool = LocalPool::new();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    let mut sizes = Vec::new();
    pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let record = mem().create("p").await.unwrap();
        let secure = Arc::new(SecureRecord::new(mem().create("q").await.unwrap()));
        let obs = br#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p"}}"#;

        check("Record::put", size_of_val(&record.put(obs.to_vec())), &mut sizes);
        check("Record::get", size_of_val(&record.get("Observation", "o1")), &mut sizes);
        check("Record::update", size_of_val(&record.update()), &mut sizes);
        check(
            "Record::import_bundle",
            size_of_val(&record.import_bundle(b"{}")),
            &mut sizes,
        );
        check(
            "Record::checkpoint_duty",
            size_of_val(&record.checkpoint_duty(Duration::from_secs(1))),
            &mut sizes,
        );
        check(
            "SecureRecord::put",
            size_of_val(&secure.put("default", obs.to_vec())),
            &mut sizes,
        );
        check(
            "SecureRecord::get",
            size_of_val(&secure.get("Observation", "o1")),
            &mut sizes,
        );

        let sync = record.sync(net.transport(), discovery.clone(), &MemoryAddr(0));
        check("Record::sync", size_of_val(&sync), &mut sizes);
        let (_handle, session) = sync.await.unwrap();
        check("Record::sync session", size_of_val(&session), &mut sizes);
        drop(session);

        let serving = secure
            .clone()
            .sync_with_invites(net.transport(), discovery.clone(), &MemoryAddr(0));
        check("SecureRecord::sync_with_invites", size_of_val(&serving), &mut sizes);
        let (_handle, session) = serving.await.unwrap();
        check("sync_with_invites session", size_of_val(&session), &mut sizes);
        drop(session);

        let invite = secure
            .create_invite(
                Grant::new(Role::Practitioner, &["patient/*.r"]).unwrap(),
                &[],
                u64::MAX,
            )
            .await
            .unwrap();
        let invite = Invite::parse(&invite.to_text()).unwrap();
        let joiner = Arc::new(SecureRecord::new(mem().join(invite.record_key).await.unwrap()));
        let joining =
            joiner
                .clone()
                .join_with_invite(&invite, net.transport(), discovery.clone(), &MemoryAddr(0));
        check("SecureRecord::join_with_invite", size_of_val(&joining), &mut sizes);
        let (_handle, session, _redeemed) = joining.await.unwrap();
        check("join_with_invite session", size_of_val(&session), &mut sizes);
    });
    let over: Vec<_> = sizes.iter().filter(|(_, s)| *s > BOUND).collect();
    assert!(over.is_empty(), "futures over {BOUND} bytes: {over:?}");
}
