//! Behaviour of the sans-IO secure connection: handshakes, framing, tampering,
//! deadlines, and garbage input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use swarm_rs::secure::DEFAULT_MAX_FRAME_LEN;
use swarm_rs::{
    KeyPair, Role, SecureConfig, SecureConnection, SecureError, SecureEvent, SeededEntropy,
};

fn keypair(n: u8) -> KeyPair {
    KeyPair::from_seed([n; 32])
}

fn conn(
    role: Role,
    kp: &KeyPair,
    config: SecureConfig,
    seed: u64,
    now: Instant,
) -> SecureConnection {
    SecureConnection::new(role, kp, config, &mut SeededEntropy::from_u64(seed), now).unwrap()
}

/// Which side failed.
#[derive(Debug, PartialEq)]
enum Side {
    A,
    B,
}

/// Moves bytes between the two until both are quiet.
fn drive(
    a: &mut SecureConnection,
    b: &mut SecureConnection,
    now: Instant,
) -> Result<(), (Side, SecureError)> {
    loop {
        let mut moved = false;
        if let Some(bytes) = a.poll_transmit() {
            b.handle_input(&bytes, now).map_err(|e| (Side::B, e))?;
            moved = true;
        }
        if let Some(bytes) = b.poll_transmit() {
            a.handle_input(&bytes, now).map_err(|e| (Side::A, e))?;
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

fn events(c: &mut SecureConnection) -> Vec<SecureEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn established_pair(now: Instant) -> (SecureConnection, SecureConnection) {
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    drive(&mut a, &mut b, now).unwrap();
    assert!(a.is_established() && b.is_established());
    events(&mut a);
    events(&mut b);
    (a, b)
}

#[test]
fn handshake_binds_identities_and_hashes_match() {
    let now = Instant::now();
    let (ka, kb) = (keypair(1), keypair(2));
    let mut a = conn(Role::Initiator, &ka, SecureConfig::default(), 1, now);
    let mut b = conn(Role::Responder, &kb, SecureConfig::default(), 2, now);
    assert!(!a.is_established());
    drive(&mut a, &mut b, now).unwrap();

    let ea = events(&mut a);
    let eb = events(&mut b);
    let [SecureEvent::Established {
        remote: ra,
        handshake_hash: ha,
    }] = ea.as_slice()
    else {
        panic!("unexpected events {ea:?}");
    };
    let [SecureEvent::Established {
        remote: rb,
        handshake_hash: hb,
    }] = eb.as_slice()
    else {
        panic!("unexpected events {eb:?}");
    };
    assert_eq!(*ra, kb.public_key());
    assert_eq!(*rb, ka.public_key());
    assert_eq!(ha, hb);
    assert_eq!(a.handshake_hash(), Some(*ha));
    assert_eq!(b.remote_public_key(), Some(ka.public_key()));

    // Fresh ephemeral keys give a fresh hash.
    let mut a2 = conn(Role::Initiator, &ka, SecureConfig::default(), 3, now);
    let mut b2 = conn(Role::Responder, &kb, SecureConfig::default(), 4, now);
    drive(&mut a2, &mut b2, now).unwrap();
    assert_ne!(a2.handshake_hash(), Some(*ha));
}

#[test]
fn same_seeds_give_the_same_handshake() {
    let now = Instant::now();
    let hash = |_: ()| {
        let mut a = conn(
            Role::Initiator,
            &keypair(1),
            SecureConfig::default(),
            9,
            now,
        );
        let mut b = conn(
            Role::Responder,
            &keypair(2),
            SecureConfig::default(),
            10,
            now,
        );
        drive(&mut a, &mut b, now).unwrap();
        a.handshake_hash().unwrap()
    };
    assert_eq!(hash(()), hash(()));
}

#[test]
fn expected_remote_key_accepts_the_right_peer() {
    let now = Instant::now();
    let config = SecureConfig::default().with_expected_remote(keypair(2).public_key());
    let mut a = conn(Role::Initiator, &keypair(1), config, 1, now);
    let config = SecureConfig::default().with_expected_remote(keypair(1).public_key());
    let mut b = conn(Role::Responder, &keypair(2), config, 2, now);
    drive(&mut a, &mut b, now).unwrap();
    assert!(a.is_established() && b.is_established());
}

#[test]
fn wrong_expected_key_fails_on_the_initiator() {
    let now = Instant::now();
    let expected = keypair(3).public_key();
    let config = SecureConfig::default().with_expected_remote(expected);
    let mut a = conn(Role::Initiator, &keypair(1), config, 1, now);
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    let err = drive(&mut a, &mut b, now).unwrap_err();
    assert_eq!(
        err,
        (Side::A, SecureError::UnexpectedRemoteKey { expected })
    );
    assert!(a.is_closed());
    assert_eq!(a.handle_input(&[0, 0], now), Err(SecureError::Closed));
    // The initiator never revealed its identity: the responder is stuck
    // mid-handshake, not established.
    assert!(!b.is_established());
}

#[test]
fn wrong_expected_key_fails_on_the_responder() {
    let now = Instant::now();
    let expected = keypair(3).public_key();
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    let config = SecureConfig::default().with_expected_remote(expected);
    let mut b = conn(Role::Responder, &keypair(2), config, 2, now);
    let err = drive(&mut a, &mut b, now).unwrap_err();
    assert_eq!(
        err,
        (Side::B, SecureError::UnexpectedRemoteKey { expected })
    );
    assert!(!b.is_established());
}

#[test]
fn frames_flow_both_ways_including_large_and_empty_ones() {
    let now = Instant::now();
    let (mut a, mut b) = established_pair(now);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    a.send(b"hello", now).unwrap();
    a.send(&[], now).unwrap();
    a.send(&big, now).unwrap();
    b.send(b"back", now).unwrap();
    drive(&mut a, &mut b, now).unwrap();
    assert_eq!(
        events(&mut b),
        vec![
            SecureEvent::Message(b"hello".to_vec()),
            SecureEvent::Message(Vec::new()),
            SecureEvent::Message(big),
        ]
    );
    assert_eq!(events(&mut a), vec![SecureEvent::Message(b"back".to_vec())]);
}

#[test]
fn byte_at_a_time_delivery_works() {
    let now = Instant::now();
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    for _ in 0..4 {
        if let Some(bytes) = a.poll_transmit() {
            for byte in bytes {
                b.handle_input(&[byte], now).unwrap();
            }
        }
        if let Some(bytes) = b.poll_transmit() {
            for byte in bytes {
                a.handle_input(&[byte], now).unwrap();
            }
        }
    }
    assert!(a.is_established() && b.is_established());
    assert_eq!(a.handshake_hash(), b.handshake_hash());
}

#[test]
fn sending_before_the_handshake_is_refused() {
    let now = Instant::now();
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    assert_eq!(a.send(b"early", now), Err(SecureError::NotEstablished));
    assert!(!a.is_closed());
}

#[test]
fn flipped_bits_fail_decryption() {
    let now = Instant::now();
    let (mut a, mut b) = established_pair(now);
    a.send(b"secret message", now).unwrap();
    let mut tampered = a.poll_transmit().unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert_eq!(b.handle_input(&tampered, now), Err(SecureError::Decrypt));
    assert!(b.is_closed());

    // A flip in the body (not the tag) fails too.
    let (mut a, mut b) = established_pair(now);
    a.send(b"secret message", now).unwrap();
    let mut tampered = a.poll_transmit().unwrap();
    tampered[3] ^= 0x80;
    assert_eq!(b.handle_input(&tampered, now), Err(SecureError::Decrypt));
}

#[test]
fn replayed_and_reordered_records_fail() {
    let now = Instant::now();
    let (mut a, mut b) = established_pair(now);
    a.send(b"one", now).unwrap();
    let one = a.poll_transmit().unwrap();
    b.handle_input(&one, now).unwrap();
    assert_eq!(
        b.handle_input(&one, now),
        Err(SecureError::Decrypt),
        "replay"
    );

    let (mut a, mut b) = established_pair(now);
    a.send(b"one", now).unwrap();
    let _one = a.poll_transmit().unwrap();
    a.send(b"two", now).unwrap();
    let two_b = a.poll_transmit().unwrap();
    assert_eq!(
        b.handle_input(&two_b, now),
        Err(SecureError::Decrypt),
        "reorder"
    );
}

#[test]
fn oversized_frames_are_refused_by_sender_and_receiver() {
    let now = Instant::now();
    let small = SecureConfig::default().with_max_frame_len(1000);
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    let mut b = conn(Role::Responder, &keypair(2), small.clone(), 2, now);
    drive(&mut a, &mut b, now).unwrap();

    // The sender refuses to exceed its own limit, and stays usable.
    let mut c = conn(Role::Initiator, &keypair(3), small, 3, now);
    let mut d = conn(
        Role::Responder,
        &keypair(4),
        SecureConfig::default(),
        4,
        now,
    );
    drive(&mut c, &mut d, now).unwrap();
    assert_eq!(
        c.send(&[0; 1001], now),
        Err(SecureError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert!(c.is_established());

    // The receiver refuses a declared length over its limit.
    a.send(&[7; 1001], now).unwrap();
    let err = drive(&mut a, &mut b, now).unwrap_err();
    assert_eq!(
        err,
        (
            Side::B,
            SecureError::FrameTooLarge {
                len: 1001,
                max: 1000
            }
        )
    );
    assert!(b.is_closed());
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 16 * 1024 * 1024);
}

#[test]
fn silent_peer_hits_the_handshake_timeout() {
    let start = Instant::now();
    let mut config = SecureConfig::default();
    config.handshake_timeout = Duration::from_secs(3);
    let mut b = conn(Role::Responder, &keypair(2), config, 2, start);
    let deadline = b.poll_timeout().unwrap();
    assert_eq!(deadline, start + Duration::from_secs(3));
    b.handle_timeout(start + Duration::from_secs(1)).unwrap();
    assert!(!b.is_closed());
    assert_eq!(
        b.handle_timeout(deadline),
        Err(SecureError::HandshakeTimeout)
    );
    assert!(b.is_closed());
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn keepalives_keep_an_idle_connection_alive() {
    let start = Instant::now();
    let (mut a, mut b) = established_pair(start);
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, start + Duration::from_secs(5), "keep-alive first");
    let mut now = start;
    // Both sides exchange keep-alives for a minute: no timeout fires.
    for _ in 0..12 {
        now += Duration::from_secs(5);
        a.handle_timeout(now).unwrap();
        b.handle_timeout(now).unwrap();
        assert!(a.poll_transmit().is_some_and(|k| {
            b.handle_input(&k, now).unwrap();
            true
        }));
        let k = b.poll_transmit().unwrap();
        a.handle_input(&k, now).unwrap();
    }
    assert!(events(&mut a).is_empty() && events(&mut b).is_empty());

    // Now b goes silent: a gives up after the idle timeout.
    let silent_since = now;
    loop {
        now = a.poll_timeout().unwrap();
        match a.handle_timeout(now) {
            Ok(()) => {
                let _ = a.poll_transmit();
            }
            Err(e) => {
                assert_eq!(e, SecureError::IdleTimeout);
                break;
            }
        }
    }
    assert_eq!(now, silent_since + Duration::from_secs(20));
}

#[test]
fn garbage_before_the_handshake_is_a_typed_error() {
    let now = Instant::now();
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    // A full record of garbage.
    let mut junk = vec![40, 0];
    junk.extend_from_slice(&[0xAA; 40]);
    let err = b.handle_input(&junk, now).unwrap_err();
    assert!(
        matches!(err, SecureError::UnsupportedVersion(0xAA)),
        "got {err:?}"
    );

    // A record too short to hold an ephemeral key.
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    assert_eq!(
        b.handle_input(&[3, 0, 1, 2, 3], now),
        Err(SecureError::Handshake)
    );
}

#[test]
fn the_initiator_does_not_accept_a_record_out_of_turn_after_msg2() {
    let now = Instant::now();
    let mut a = conn(
        Role::Initiator,
        &keypair(1),
        SecureConfig::default(),
        1,
        now,
    );
    let mut b = conn(
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
        now,
    );
    let m1 = a.poll_transmit().unwrap();
    b.handle_input(&m1, now).unwrap();
    // Replaying the first message at the responder is refused.
    assert!(b.handle_input(&m1, now).is_err());
}

#[test]
fn garbage_after_the_handshake_is_a_typed_error() {
    let now = Instant::now();
    let (_a, mut b) = established_pair(now);
    let mut junk = vec![20, 0];
    junk.extend_from_slice(&[0x55; 20]);
    assert_eq!(b.handle_input(&junk, now), Err(SecureError::Decrypt));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_to_a_responder_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let now = Instant::now();
        let mut b = conn(Role::Responder, &keypair(2), SecureConfig::default(), 2, now);
        let _ = b.handle_input(&bytes, now);
        prop_assert!(!b.is_established());
    }

    #[test]
    fn random_bytes_to_an_initiator_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let now = Instant::now();
        let mut a = conn(Role::Initiator, &keypair(1), SecureConfig::default(), 1, now);
        let _ = a.handle_input(&bytes, now);
        prop_assert!(!a.is_established());
    }

    #[test]
    fn random_bytes_after_the_handshake_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let now = Instant::now();
        let (_a, mut b) = established_pair(now);
        match b.handle_input(&bytes, now) {
            // Fewer bytes than a whole record just wait for more.
            Ok(()) => prop_assert!(bytes.len() < 2 || usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) + 2 > bytes.len()),
            Err(_) => prop_assert!(b.is_closed()),
        }
        prop_assert!(b.poll_event().is_none());
    }

    #[test]
    fn truncated_handshake_never_completes_nor_fails(cut in 0usize..200) {
        let now = Instant::now();
        let mut a = conn(Role::Initiator, &keypair(1), SecureConfig::default(), 1, now);
        let mut b = conn(Role::Responder, &keypair(2), SecureConfig::default(), 2, now);
        let m1 = a.poll_transmit().unwrap();
        b.handle_input(&m1, now).unwrap();
        let m2 = b.poll_transmit().unwrap();
        let cut = cut.min(m2.len() - 1);
        a.handle_input(&m2[..cut], now).unwrap();
        prop_assert!(!a.is_established() && !a.is_closed());
        prop_assert!(a.poll_transmit().is_none());
    }

    #[test]
    fn any_single_bit_flip_in_the_stream_is_caught(bit in 0usize..10_000, frame in proptest::collection::vec(any::<u8>(), 0..600)) {
        let now = Instant::now();
        let (mut a, mut b) = established_pair(now);
        a.send(&frame, now).unwrap();
        let mut wire = a.poll_transmit().unwrap();
        let bit = bit % (wire.len() * 8);
        wire[bit / 8] ^= 1 << (bit % 8);
        // Either a typed error, or (if the length prefix grew) waiting for
        // more bytes; never a wrong message.
        match b.handle_input(&wire, now) {
            Ok(()) => prop_assert!(bit < 16 && b.poll_event().is_none()),
            Err(e) => prop_assert!(matches!(e, SecureError::Decrypt | SecureError::Malformed(_))),
        }
    }

    #[test]
    fn arbitrary_splits_of_a_conversation_deliver_the_same_frames(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
        splits in proptest::collection::vec(1usize..500, 1..50),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = established_pair(now);
        for f in &frames {
            a.send(f, now).unwrap();
        }
        let wire = a.poll_transmit().unwrap();
        let mut rest = wire.as_slice();
        for s in splits.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*s).min(rest.len()));
            b.handle_input(head, now).unwrap();
            rest = tail;
        }
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_event())
            .map(|e| match e {
                SecureEvent::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        prop_assert_eq!(got, frames);
    }
}

/// Records needed for `frames` sent back to back, by the packing rule: a
/// frame that fits one record joins the open record if there is room (4-byte
/// length each), else starts one (5-byte header); a bigger frame seals the
/// open record and takes 1 + ceil(rest / 65518) records of its own.
fn model_records(frames: &[Vec<u8>]) -> usize {
    const PLAIN: usize = 65535 - 16;
    let mut records = 0;
    let mut open: Option<usize> = None;
    for f in frames {
        if f.len() <= PLAIN - 5 {
            match open {
                Some(used) if used + 4 + f.len() <= PLAIN => open = Some(used + 4 + f.len()),
                _ => {
                    records += 1;
                    open = Some(5 + f.len());
                }
            }
        } else {
            open = None;
            records += 1 + (f.len() - (PLAIN - 5)).div_ceil(PLAIN - 1);
        }
    }
    records
}

fn count_records(wire: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos + 2 <= wire.len() {
        pos += 2 + usize::from(u16::from_le_bytes([wire[pos], wire[pos + 1]]));
        n += 1;
    }
    assert_eq!(pos, wire.len());
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Frames sent between two transmits are packed as the model says, and
    /// arrive whole and in order, whatever mix of sizes (including ones
    /// that need several records) and wherever the transmits fall.
    #[test]
    fn frames_between_transmits_are_packed_as_modelled(
        batches in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    12 => 0usize..2000,
                    1 => 65_000usize..140_000,
                ],
                0..30,
            ),
            1..5,
        ),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = established_pair(now);
        let mut sent = Vec::new();
        for (i, sizes) in batches.iter().enumerate() {
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(j, &n)| vec![(i * 31 + j) as u8; n])
                .collect();
            for f in &frames {
                a.send(f, now).unwrap();
            }
            let wire = a.poll_transmit().unwrap_or_default();
            prop_assert_eq!(count_records(&wire), model_records(&frames));
            b.handle_input(&wire, now).unwrap();
            sent.extend(frames);
        }
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_event())
            .map(|e| match e {
                SecureEvent::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        prop_assert_eq!(got, sent);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The zero-copy buffer interface (`transmit_buf`/`advance_transmit`,
    /// `input_buf`/`input_filled`) with partial writes and reads interleaved
    /// with sends, including frames split over several records, delivers
    /// what was sent, in order.
    #[test]
    fn partial_writes_and_reads_through_the_buffers_deliver_every_frame(
        sizes in proptest::collection::vec(0usize..140_000, 1..5),
        steps in proptest::collection::vec((1usize..90_000, 1usize..90_000), 1..40),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = established_pair(now);
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(n, len)| (0..*len).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let mut to_send = frames.iter();
        let mut got = Vec::new();
        for &(write, read) in steps.iter().cycle() {
            if write % 3 == 0 {
                if let Some(f) = to_send.next() {
                    a.send(f, now).unwrap();
                }
            }
            let pending = a.transmit_buf();
            if pending.is_empty() {
                match to_send.next() {
                    Some(f) => {
                        a.send(f, now).unwrap();
                        continue;
                    }
                    None => break,
                }
            }
            // "Write" up to `write` bytes, "read" them in pieces of `read`.
            let chunk = pending[..write.min(pending.len())].to_vec();
            a.advance_transmit(chunk.len());
            for piece in chunk.chunks(read) {
                let room = b.input_buf(read.min(piece.len()).max(1));
                let n = piece.len().min(room.len());
                room[..n].copy_from_slice(&piece[..n]);
                b.input_filled(n, now).unwrap();
                if n < piece.len() {
                    b.handle_input(&piece[n..], now).unwrap();
                }
            }
            while let Some(event) = b.poll_event() {
                match event {
                    SecureEvent::Message(m) => got.push(m),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        prop_assert!(a.transmit_buf().is_empty());
        prop_assert_eq!(got, frames);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One flipped bit anywhere in the handshake (including the identity
    /// proofs) makes at least one side fail with a typed error, and no side
    /// ever accepts a wrong identity.
    #[test]
    fn any_bit_flip_during_the_handshake_is_caught(bit in 0usize..4000, which in 0usize..4) {
        let now = Instant::now();
        let (ka, kb) = (keypair(1), keypair(2));
        let mut a = conn(Role::Initiator, &ka, SecureConfig::default(), 1, now);
        let mut b = conn(Role::Responder, &kb, SecureConfig::default(), 2, now);
        let mut turn = 0usize;
        let mut failed = false;
        loop {
            let (from, to) = if turn.is_multiple_of(2) { (&mut a, &mut b) } else { (&mut b, &mut a) };
            let Some(mut bytes) = from.poll_transmit() else {
                if turn > 6 { break; }
                turn += 1;
                continue;
            };
            if turn == which {
                let bit = bit % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            if to.handle_input(&bytes, now).is_err() {
                failed = true;
            }
            turn += 1;
        }
        // A flip in a length prefix may leave a side waiting for bytes that
        // never come: that is caught by the handshake timeout.
        let timed_out = [&mut a, &mut b].into_iter().any(|c| {
            !c.is_established()
                && c.handle_timeout(now + std::time::Duration::from_secs(60)).is_err()
        });
        prop_assert!(failed || timed_out);
        prop_assert!(!(a.is_established() && b.is_established()));
        if let Some(remote) = a.remote_public_key() {
            prop_assert_eq!(remote, kb.public_key());
        }
        if let Some(remote) = b.remote_public_key() {
            prop_assert_eq!(remote, ka.public_key());
        }
    }
}
