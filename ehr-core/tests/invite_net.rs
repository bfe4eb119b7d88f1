//! Invites over real swarm-rs connections (the in-memory network and TCP
//! loopback): a provider that is not yet a grantee connects, redeems over
//! the invite channel and then replicates; the grant names its network
//! identity so later connections are admitted; wrong secrets, expired and
//! reused invites are refused over the connection; a stranger that tries to
//! replicate without redeeming gets nothing; two partitioned patient devices
//! that both accept one invite: the first in linear order wins everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::YieldNow;

use ehr_core::apply::Rejection;
use ehr_core::{Grant, Invite, InviteError, ManualClock, Record, Role, SecureRecord};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hypercore_rs::MemoryStorage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use swarm_rs::{MemoryAddr, MemoryDiscovery, MemoryNetwork, TcpTransport};

/// Updates `peers` and yields until `done` holds (or fails with `what`).
async fn pump_until<F, Fut>(peers: &[&Record], mut done: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for i in 0..200_000u32 {
        if done().await {
            return;
        }
        for r in peers {
            r.update().await.unwrap();
        }
        if i % 64 == 63 {
            // Real sockets need real time to move.
            async_io::Timer::after(std::time::Duration::from_millis(1)).await;
        } else {
            YieldNow(false).await;
        }
    }
    panic!("{what}");
}

/// Yields `n` times (lets connections run) while updating `peers`.
async fn pump(peers: &[&Record], n: usize) {
    for i in 0..n {
        for r in peers {
            r.update().await.unwrap();
        }
        if i % 64 == 63 {
            async_io::Timer::after(std::time::Duration::from_millis(1)).await;
        } else {
            YieldNow(false).await;
        }
    }
}

const OBS: &[u8] = br#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p"},"note":[{"text":"sealed"}]}"#;
const COND: &[u8] =
    br#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p"}}"#;

async fn patient(clock: Arc<ManualClock>) -> Arc<SecureRecord> {
    let r = Record::builder(Arc::new(MemoryStorage::new()))
        .clock(clock)
        .create("p")
        .await
        .unwrap();
    let s = SecureRecord::new(r);
    s.put("default", OBS.to_vec()).await.unwrap();
    Arc::new(s)
}

async fn provider(key: [u8; 32], clock: Arc<ManualClock>) -> Arc<SecureRecord> {
    let r = Record::builder(Arc::new(MemoryStorage::new()))
        .clock(clock)
        .join(key)
        .await
        .unwrap();
    Arc::new(SecureRecord::new(r))
}

fn doctor_grant() -> Grant {
    Grant::new(Role::Practitioner, &["patient/*.cru"]).unwrap()
}

/// The whole happy path on one network; generic over the transport.
macro_rules! round_trip {
    ($pool:expr, $transport:expr, $discovery:expr, $addr:expr) => {{
        let spawner = $pool.spawner();
        $pool.run_until(async {
            let clock = Arc::new(ManualClock::new(1_000));
            let alice = patient(clock.clone()).await;
            let invite = alice
                .create_invite(doctor_grant(), &["default"], 60_000)
                .await
                .unwrap();
            let text = invite.to_text();
            let (_ah, work) = alice
                .clone()
                .sync_with_invites($transport, $discovery.clone(), &$addr)
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();

            // The doctor has only the text.
            let parsed = Invite::parse(&text).unwrap();
            let doc = provider(parsed.record_key, clock.clone()).await;
            let (_dh, work, redeemed) = doc
                .clone()
                .join_with_invite(&parsed, $transport, $discovery.clone(), &$addr)
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();
            assert_eq!(redeemed.await, Ok(()));

            // The grant names the doctor's network identity.
            let (g, revoked) = alice
                .record()
                .grant_of(&doc.record().writer_key())
                .await
                .unwrap()
                .unwrap();
            assert!(!revoked);
            assert_eq!(g.role, Role::Practitioner);
            assert_eq!(
                g.peer,
                Some(doc.record().identity().public_key().to_bytes())
            );
            assert!(alice
                .record()
                .allows_peer(&doc.record().identity().public_key().to_bytes()));

            // Same connection: the doctor syncs, unwraps the shared key and
            // reads the sealed observation; then writes.
            pump_until(
                &[alice.record(), doc.record()],
                || async {
                    doc.record().writable().await && {
                        let _ = doc.refresh_keys().await;
                        doc.get("Observation", "o1").await.ok().flatten().is_some()
                    }
                },
                "the doctor never synced after redeeming",
            )
            .await;
            assert_eq!(
                doc.get("Observation", "o1").await.unwrap().as_deref(),
                Some(OBS)
            );
            doc.record().put(COND.to_vec()).await.unwrap();
            pump_until(
                &[alice.record(), doc.record()],
                || async {
                    alice
                        .record()
                        .get("Condition", "c1")
                        .await
                        .unwrap()
                        .is_some()
                },
                "the patient never got the doctor's write",
            )
            .await;
            (alice, doc, invite)
        })
    }};
}

#[test]
fn invite_round_trip_over_the_in_memory_swarm_then_plain_sync_admits_the_grantee() {
    let mut pool = LocalPool::new();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    let (alice, doc, _) = round_trip!(pool, net.transport(), discovery, MemoryAddr(0));
    // A later, ordinary connection: the doctor's identity is in the
    // firewall through its grant, no invite needed.
    let spawner = pool.spawner();
    pool.run_until(async {
        let (net2, disc2) = (MemoryNetwork::new(), MemoryDiscovery::new());
        let mut handles = Vec::new();
        for r in [alice.record(), doc.record()] {
            let (h, work) = r
                .sync(net2.transport(), disc2.clone(), &MemoryAddr(0))
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();
            handles.push(h);
        }
        let cond2 =
            br#"{"resourceType":"Condition","id":"c2","subject":{"reference":"Patient/p"}}"#;
        doc.record().put(cond2.to_vec()).await.unwrap();
        pump_until(
            &[alice.record(), doc.record()],
            || async {
                alice
                    .record()
                    .get("Condition", "c2")
                    .await
                    .unwrap()
                    .is_some()
            },
            "a granted peer was not admitted on a later connection",
        )
        .await;
    });
}

#[test]
fn invite_round_trip_over_tcp_loopback() {
    let mut pool = LocalPool::new();
    let discovery = MemoryDiscovery::<SocketAddr>::new();
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let (_alice, _doc, _) = round_trip!(pool, TcpTransport, discovery, addr);
}

/// Hostile redeemers over real connections: each gets its typed error over
/// the wire and nothing is granted; a stranger that replicates instead of
/// redeeming gets no data.
#[test]
fn hostile_redeemers_over_tcp_are_refused_and_get_nothing() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let discovery = MemoryDiscovery::<SocketAddr>::new();
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    pool.run_until(async {
        let clock = Arc::new(ManualClock::new(1_000));
        let alice = patient(clock.clone()).await;
        let good = alice
            .create_invite(doctor_grant(), &["default"], 60_000)
            .await
            .unwrap();
        let short = alice
            .create_invite(doctor_grant(), &["default"], 2_000)
            .await
            .unwrap();
        let (_ah, work) = alice
            .clone()
            .sync_with_invites(TcpTransport, discovery.clone(), &addr)
            .await
            .unwrap();
        spawner
            .spawn_local(async move {
                let _ = work.await;
            })
            .unwrap();
        let key = alice.record().key();

        let try_join = |invite: Invite| {
            let (discovery, clock, spawner) = (discovery.clone(), clock.clone(), spawner.clone());
            async move {
                let p = provider(key, clock).await;
                let (h, work, redeemed) = p
                    .clone()
                    .join_with_invite(&invite, TcpTransport, discovery, &addr)
                    .await
                    .unwrap();
                spawner
                    .spawn_local(async move {
                        let _ = work.await;
                    })
                    .unwrap();
                let r = redeemed.await;
                (p, h, r)
            }
        };

        // Wrong secret.
        let (mallory, _h1, r) = try_join(good.clone().with_secret([7; 32])).await;
        assert_eq!(r, Err(InviteError::BadProof));
        // Expired.
        clock.set(2_000);
        let (late, _h2, r) = try_join(short.clone()).await;
        assert_eq!(r, Err(InviteError::Expired));
        // An invite for another record is refused before any connection.
        let mut other = good.clone();
        other.record_key = [9; 32];
        let p = provider(key, clock.clone()).await;
        assert!(matches!(
            p.join_with_invite(&other, TcpTransport, discovery.clone(), &addr)
                .await,
            Err(ehr_core::Error::Invite(InviteError::WrongRecord))
        ));

        // A stranger that knows the record key (and lets the patient in)
        // but replicates instead of redeeming: the patient's gate closes the
        // connection before sending anything.
        let stranger = provider(key, clock.clone()).await;
        stranger
            .record()
            .allow_peer(alice.record().identity().public_key().to_bytes());
        let (_sh, work) = stranger
            .record()
            .sync(TcpTransport, discovery.clone(), &addr)
            .await
            .unwrap();
        spawner
            .spawn_local(async move {
                let _ = work.await;
            })
            .unwrap();

        // The honest doctor, then a second use of the same invite.
        let (doc, _h3, r) = try_join(good.clone()).await;
        assert_eq!(r, Ok(()));
        let (again, _h4, r) = try_join(good.clone()).await;
        assert_eq!(r, Err(InviteError::AlreadyUsed));

        pump_until(
            &[alice.record(), doc.record()],
            || async { doc.record().patient_id() == "p" && doc.record().writable().await },
            "the doctor never synced",
        )
        .await;
        pump(
            &[
                alice.record(),
                stranger.record(),
                mallory.record(),
                late.record(),
                again.record(),
            ],
            300,
        )
        .await;
        for (who, p) in [
            ("stranger", &stranger),
            ("wrong secret", &mallory),
            ("expired", &late),
            ("reused", &again),
        ] {
            assert_eq!(p.record().patient_id(), "", "{who} got the genesis");
            assert!(
                p.record().get("Observation", "o1").await.unwrap().is_none(),
                "{who} got data"
            );
            assert!(
                alice
                    .record()
                    .grant_of(&p.record().writer_key())
                    .await
                    .unwrap()
                    .is_none(),
                "{who} was granted"
            );
        }
    });
}

/// Two patient devices, partitioned, both accept one invite (leaked to two
/// providers). After they reconnect, the first grant in linear order stands
/// on every peer; the other is rejected everywhere and recorded.
#[test]
fn partitioned_devices_accepting_one_invite_agree_on_one_winner() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    pool.run_until(async {
        let clock = Arc::new(ManualClock::new(1_000));
        let phone = patient(clock.clone()).await;
        let laptop = provider(phone.record().key(), clock.clone()).await;
        // The laptop becomes an owner device of the patient.
        phone
            .record()
            .grant(
                laptop.record().writer_key(),
                Grant::owner().with_peer(laptop.record().identity().public_key().to_bytes()),
            )
            .await
            .unwrap();
        phone
            .share(
                laptop.identity(),
                Some(laptop.record().writer_key()),
                &["owner", "default"],
            )
            .await
            .unwrap();
        let invite = phone
            .create_invite(doctor_grant(), &["default"], 60_000)
            .await
            .unwrap();
        // Bring the laptop up to date over an in-memory pipe, then cut it.
        let (x, y) = hypercore_rs::replication::duplex();
        let (a, b) = (phone.record().clone(), laptop.record().clone());
        let (abort, reg) = futures::future::AbortHandle::new_pair();
        spawner
            .spawn_local(async move {
                let link = futures::future::join(a.replicate(x, true), b.replicate(y, false));
                let _ = futures::future::Abortable::new(link, reg).await;
            })
            .unwrap();
        pump_until(
            &[phone.record(), laptop.record()],
            || async {
                laptop.record().writable().await && {
                    let _ = laptop.refresh_keys().await;
                    laptop
                        .invite_state(&invite.id)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                }
            },
            "the laptop never synced",
        )
        .await;
        abort.abort();
        pump(&[phone.record(), laptop.record()], 50).await;

        // Partitioned: two providers redeem the same invite, one with each
        // device, over separate in-memory swarms.
        let mut providers = Vec::new();
        for dev in [&phone, &laptop] {
            let (net, disc) = (MemoryNetwork::new(), MemoryDiscovery::new());
            let (h, work) = dev
                .clone()
                .sync_with_invites(net.transport(), disc.clone(), &MemoryAddr(0))
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();
            let p = provider(phone.record().key(), clock.clone()).await;
            let (ph, work, redeemed) = p
                .clone()
                .join_with_invite(&invite, net.transport(), disc, &MemoryAddr(0))
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();
            assert_eq!(redeemed.await, Ok(()), "each device accepts locally");
            providers.push((p, h, ph));
        }
        let (first, second) = (&providers[0].0, &providers[1].0);
        for (dev, p) in [(&phone, first), (&laptop, second)] {
            assert!(dev
                .record()
                .grant_of(&p.record().writer_key())
                .await
                .unwrap()
                .is_some());
        }

        // The `default` epoch both devices hold before they learn of the race.
        let before = phone.keyring().current("default").unwrap().epoch();
        assert_eq!(laptop.keyring().current("default").unwrap().epoch(), before);
        // They reconnect.
        let (x, y) = hypercore_rs::replication::duplex();
        let (a, b) = (phone.record().clone(), laptop.record().clone());
        spawner
            .spawn_local(async move {
                let _ = futures::future::join(a.replicate(x, true), b.replicate(y, false)).await;
            })
            .unwrap();
        let w1 = first.record().writer_key();
        let w2 = second.record().writer_key();
        pump_until(
            &[phone.record(), laptop.record()],
            || async {
                phone.record().base().heads().await == laptop.record().base().heads().await
                    && phone.record().view_version().await.unwrap()
                        == laptop.record().view_version().await.unwrap()
            },
            "the devices never converged",
        )
        .await;
        // Exactly one of the two grants stands, the same on both devices.
        let mut standing = Vec::new();
        for dev in [&phone, &laptop] {
            let g1 = dev.record().grant_of(&w1).await.unwrap().is_some();
            let g2 = dev.record().grant_of(&w2).await.unwrap().is_some();
            assert!(g1 ^ g2, "exactly one redemption stands");
            standing.push(if g1 { w1 } else { w2 });
        }
        assert_eq!(standing[0], standing[1]);
        let (winner, loser) = if standing[0] == w1 {
            (w1, w2)
        } else {
            (w2, w1)
        };
        assert!(phone.record().grant_of(&winner).await.unwrap().is_some());
        // The loser's grant is recorded as rejected on both devices.
        for dev in [&phone, &laptop] {
            let rejected = dev.record().rejected().await.unwrap();
            assert!(
                rejected.iter().any(|r| matches!(
                    &r.rejection,
                    Rejection::InviteTaken { first, .. } if *first == ehr_core::hex(&winner)
                )),
                "the second redemption is recorded: {rejected:?}"
            );
            assert!(dev.record().grant_of(&loser).await.unwrap().is_none());
            assert!(!dev.record().allows_peer(
                &if loser == w1 { first } else { second }
                    .record()
                    .identity()
                    .public_key()
                    .to_bytes()
            ));
        }

        // The loser was sent the invite's `default` key before the race was
        // decided. The device that answered it (each provider redeemed with
        // one device, providers[0] with the phone) rotates that key away by
        // itself once its view shows the loss: nobody calls anything.
        let (loser_p, winner_p) = if loser == w1 {
            (first, second)
        } else {
            (second, first)
        };
        let (answered, other) = if loser == w1 {
            (&phone, &laptop)
        } else {
            (&laptop, &phone)
        };
        pump_until(
            &[phone.record(), laptop.record()],
            || async { answered.keyring().current("default").unwrap().epoch() > before },
            "the answering device never rotated the loser's key away",
        )
        .await;
        let epoch = answered.keyring().current("default").unwrap().epoch();
        assert_eq!(epoch, before + 1);
        // Once: more syncing and updates rotate nothing more, and the other
        // device (which answered no loser) does not rotate at all; it
        // receives the new key like any holder.
        pump_until(
            &[phone.record(), laptop.record()],
            || async {
                let _ = other.refresh_keys().await;
                other.keyring().current("default").map(|k| k.epoch()) == Some(epoch)
            },
            "the other device never received the rotated key",
        )
        .await;
        pump(&[phone.record(), laptop.record()], 300).await;
        for dev in [&phone, &laptop] {
            dev.refresh_keys().await.unwrap();
            assert_eq!(dev.keyring().current("default").unwrap().epoch(), epoch);
        }
        assert_eq!(
            answered.keyring().current("default"),
            other.keyring().current("default")
        );
        assert_eq!(other.rotate_own_lost_redemptions().await.unwrap(), None);
        assert_eq!(answered.rotate_own_lost_redemptions().await.unwrap(), None);
        let o2 = std::str::from_utf8(OBS)
            .unwrap()
            .replace("\"o1\"", "\"o2\"")
            .replace("sealed", "after the race");
        answered
            .put("default", o2.clone().into_bytes())
            .await
            .unwrap();
        // Both providers still replicate with the device that let them in
        // (the loser's connection was opened before the race was decided).
        pump_until(
            &[
                phone.record(),
                laptop.record(),
                first.record(),
                second.record(),
            ],
            || async {
                loser_p
                    .record()
                    .get("Observation", "o2")
                    .await
                    .unwrap()
                    .is_some()
                    && winner_p
                        .record()
                        .get("Observation", "o2")
                        .await
                        .unwrap()
                        .is_some()
            },
            "the providers never received the new sealed resource",
        )
        .await;
        winner_p.refresh_keys().await.unwrap();
        assert_eq!(
            winner_p.get("Observation", "o2").await.unwrap().as_deref(),
            Some(o2.as_bytes())
        );
        loser_p.refresh_keys().await.unwrap();
        assert!(
            loser_p.get("Observation", "o2").await.is_err(),
            "the loser must not read what was written after the rotation"
        );
        // It did get the old key (the documented limit): it reads o1.
        assert!(loser_p.get("Observation", "o1").await.unwrap().is_some());
        // Idempotent.
        assert_eq!(phone.rotate_lost_redemptions().await.unwrap(), None);
    });
}

/// The gate itself, on a framed duplex: a stranger whose first message is
/// replication (not a redemption) is closed with nothing sent, and a junk
/// redemption is answered with a refusal and closed.
#[test]
fn the_gate_closes_on_replication_or_junk_and_sends_no_data() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    pool.run_until(async {
        let clock = Arc::new(ManualClock::new(1_000));
        let alice = patient(clock.clone()).await;
        let stranger = provider(alice.record().key(), clock.clone()).await;
        let (x, mut y) = hypercore_rs::replication::duplex();
        let s = stranger.record().clone();
        spawner
            .spawn_local(async move {
                let _ = s.replicate(x, true).await;
            })
            .unwrap();
        let admitted = alice.admit(&mut y, [3; 32], &[4; 32]).await.unwrap();
        assert_eq!(admitted, ehr_core::InviteServing::NotAnInvite);
        assert!(!admitted.replicates());
        drop(y);
        pump(&[stranger.record()], 200).await;
        assert_eq!(stranger.record().patient_id(), "");
        assert!(stranger
            .record()
            .get("Observation", "o1")
            .await
            .unwrap()
            .is_none());

        // Junk after the channel tag: refused (typed) and answered.
        let (mut a, mut b) = hypercore_rs::replication::duplex();
        use futures::{SinkExt, StreamExt};
        let mut junk = ehr_core::INVITE_CHANNEL.to_vec();
        junk.extend_from_slice(b"\x01garbage");
        a.send(junk).await.unwrap();
        let admitted = alice.admit(&mut b, [3; 32], &[4; 32]).await.unwrap();
        assert_eq!(
            admitted,
            ehr_core::InviteServing::Refused(InviteError::Malformed)
        );
        let reply = a.next().await.unwrap().unwrap();
        assert!(reply.starts_with(ehr_core::INVITE_CHANNEL));
        // A member is let through without reading anything.
        let me = alice.record().identity().public_key().to_bytes();
        assert_eq!(
            alice.admit(&mut b, me, &[4; 32]).await.unwrap(),
            ehr_core::InviteServing::Member
        );
    });
}

/// Strangers on the invite channel are limited by the record's
/// `InviteGate` (injected timers): eight that connect and send nothing
/// hold every slot, a ninth is refused at once (`Busy`) with nothing read
/// or sent; after the timeout the eight are closed (`TimedOut`), having
/// been sent nothing; and a real redeemer succeeds while a silent stranger
/// waits beside it.
#[test]
fn silent_strangers_time_out_and_the_ninth_is_refused() {
    use futures::{SinkExt, StreamExt};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    pool.run_until(async {
        let clock = Arc::new(ManualClock::new(1_000));
        let timers = hypercore_rs::ManualClock::new();
        let gate =
            ehr_core::InviteGate::new(Arc::new(timers.clone())).timeout(Duration::from_secs(10));
        assert_eq!(ehr_core::MAX_PENDING_REDEMPTIONS, 8);
        let r = Record::builder(Arc::new(MemoryStorage::new()))
            .clock(clock.clone())
            .create("p")
            .await
            .unwrap();
        let alice = Arc::new(SecureRecord::new(r).with_invite_gate(gate.clone()));
        alice.put("default", OBS.to_vec()).await.unwrap();
        let invite = alice
            .create_invite(doctor_grant(), &["default"], 60_000)
            .await
            .unwrap();

        // Starts `admit` for a stranger that never sends anything.
        type Outcomes = Rc<RefCell<Vec<Result<ehr_core::InviteServing, ehr_core::Error>>>>;
        let outcomes: Outcomes = Rc::new(RefCell::new(Vec::new()));
        let silent = |n: u8| {
            let (x, mut y) = hypercore_rs::replication::duplex();
            let (a, out) = (alice.clone(), outcomes.clone());
            spawner
                .spawn_local(async move {
                    let r = a.admit(&mut y, [n; 32], &[4; 32]).await;
                    out.borrow_mut().push(r);
                    // The session ends: the connection is closed.
                    drop(y);
                })
                .unwrap();
            x
        };
        let settle = || async {
            for _ in 0..50 {
                YieldNow(false).await;
            }
        };

        let mut idle: Vec<_> = (0..8).map(|i| silent(10 + i)).collect();
        settle().await;
        assert_eq!(gate.pending(), 8);
        assert!(gate.is_full());
        // The ninth is refused at once, typed; nothing is sent to it.
        let (mut x9, mut y9) = hypercore_rs::replication::duplex();
        x9.send(b"anything".to_vec()).await.unwrap();
        let ninth = alice.admit(&mut y9, [30; 32], &[4; 32]).await;
        assert!(
            matches!(ninth, Err(ehr_core::Error::Invite(InviteError::Busy))),
            "{ninth:?}"
        );
        drop(y9);
        assert!(x9.next().await.is_none(), "nothing was sent to the ninth");

        // Just before the timeout nobody is closed; at it, all eight are.
        timers.advance(Duration::from_millis(9_999));
        settle().await;
        assert!(outcomes.borrow().is_empty());
        assert_eq!(gate.pending(), 8);
        timers.advance(Duration::from_millis(1));
        settle().await;
        assert_eq!(outcomes.borrow().len(), 8);
        for o in outcomes.borrow().iter() {
            assert!(
                matches!(o, Err(ehr_core::Error::Invite(InviteError::TimedOut))),
                "{o:?}"
            );
        }
        assert_eq!(gate.pending(), 0);
        for x in &mut idle {
            assert!(x.next().await.is_none(), "closed, and sent nothing");
        }
        outcomes.borrow_mut().clear();

        // A silent stranger waits while a real redeemer succeeds.
        let _quiet = silent(40);
        settle().await;
        assert_eq!(gate.pending(), 1);
        let doc = provider(alice.record().key(), clock.clone()).await;
        let doc_id = doc.record().identity().public_key().to_bytes();
        let alice_id = alice.record().identity().public_key().to_bytes();
        let (mut dx, mut dy) = hypercore_rs::replication::duplex();
        let (served, redeemed) = futures::future::join(
            alice.admit(&mut dy, doc_id, &[5; 32]),
            doc.redeem(&invite, &mut dx, alice_id, &[5; 32]),
        )
        .await;
        assert_eq!(
            served.unwrap(),
            ehr_core::InviteServing::Redeemed(doc.record().writer_key())
        );
        assert_eq!(redeemed, Ok(()));
        assert_eq!(gate.pending(), 1, "the redeemer's slot was given back");
        timers.advance(Duration::from_secs(10));
        settle().await;
        assert!(matches!(
            outcomes.borrow().as_slice(),
            [Err(ehr_core::Error::Invite(InviteError::TimedOut))]
        ));
        assert_eq!(gate.pending(), 0);
    });
}
