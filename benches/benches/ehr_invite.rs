//! Criterion benchmark of an invite round trip over TCP loopback: the
//! provider dials the patient device, both run the Noise handshake, the
//! provider sends its redemption on the invite channel, the patient device
//! checks it, records the invite as used, grants the provider and shares
//! the invite's key scope, and answers; the provider checks the answer's
//! proof. Creating the invite and the provider's record is set-up, not
//! measured.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use async_net::{TcpListener, TcpStream};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ehr_core::{Grant, Invite, Record, Role, SecureRecord};
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use hypercore_rs::MemoryStorage;
use std::sync::Arc;
use swarm_rs::{
    OsEntropy, Role as NoiseRole, SecureConfig, SecureStream, StreamError, SystemClock,
};

fn to_io(e: StreamError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Noise over `tcp`; returns the framed duplex, the remote key and the
/// handshake hash.
async fn secure(
    tcp: TcpStream,
    role: NoiseRole,
    record: &Record,
) -> (
    impl futures::Stream<Item = std::io::Result<Vec<u8>>>
        + futures::Sink<Vec<u8>, Error = std::io::Error>
        + Unpin,
    [u8; 32],
    Vec<u8>,
) {
    let _ = tcp.set_nodelay(true);
    let s = SecureStream::handshake(
        tcp,
        role,
        &record.identity(),
        SecureConfig::default(),
        &mut OsEntropy,
        Arc::new(SystemClock),
    )
    .await
    .expect("handshake");
    let remote = s.remote_public_key().expect("remote").to_bytes();
    let hh = s.handshake_hash().expect("hash").as_bytes().to_vec();
    let io = s
        .sink_map_err(to_io)
        .map(|r: Result<Vec<u8>, StreamError>| r.map_err(to_io));
    (io, remote, hh)
}

fn invite_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("ehr-invite");
    g.sample_size(30);
    let patient = block_on(async {
        let r = Record::builder(Arc::new(MemoryStorage::new()))
            .create("p")
            .await
            .expect("record");
        let s = SecureRecord::new(r);
        s.create_scope("default").await.expect("scope");
        s
    });
    let listener = block_on(TcpListener::bind("127.0.0.1:0")).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let grant = Grant::new(Role::Practitioner, &["patient/*.cru"]).expect("grant");
    g.bench_function("round-trip/tcp-loopback", |b| {
        b.iter_batched(
            || {
                block_on(async {
                    let invite: Invite = patient
                        .create_invite(grant.clone(), &["default"], u64::MAX)
                        .await
                        .expect("invite");
                    let provider = SecureRecord::new(
                        Record::builder(Arc::new(MemoryStorage::new()))
                            .join(invite.record_key)
                            .await
                            .expect("join"),
                    );
                    (invite, provider)
                })
            },
            |(invite, provider)| {
                block_on(async {
                    let serve = async {
                        let (tcp, _) = listener.accept().await.expect("accept");
                        let (mut io, remote, hh) =
                            secure(tcp, NoiseRole::Responder, patient.record()).await;
                        patient.admit(&mut io, remote, &hh).await.expect("admit")
                    };
                    let join = async {
                        let tcp = TcpStream::connect(addr).await.expect("connect");
                        let (mut io, remote, hh) =
                            secure(tcp, NoiseRole::Initiator, provider.record()).await;
                        provider.redeem(&invite, &mut io, remote, &hh).await
                    };
                    let (served, joined) = futures::join!(serve, join);
                    assert!(served.replicates());
                    joined.expect("redeemed");
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, invite_round_trip);
criterion_main!(benches);
