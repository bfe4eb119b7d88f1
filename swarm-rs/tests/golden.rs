//! Golden vectors: the wire encodings are a contract. If one of these
//! changes, the protocol version byte must change too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use swarm_rs::{KeyPair, Mux, Role, SecureConfig, SecureConnection, SeededEntropy};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn mux_frames() {
    let (mut a, mut b) = (Mux::default(), Mux::default());
    let ca = a.open("p", b"\x01\x02").unwrap();
    let open = a.poll_transmit().unwrap();
    // version 1, kind 0 (open), channel 0 (u32 LE), name length 1 (u16 LE), "p", id.
    assert_eq!(hex(&open), "0100000000000100700102");
    b.open("p", b"\x01\x02").unwrap();
    b.handle_frame(&open).unwrap();
    a.handle_frame(&b.poll_transmit().unwrap()).unwrap();
    a.send(ca, b"hi").unwrap();
    // version 1, kind 2 (message), the receiver's channel 0, payload.
    assert_eq!(hex(&a.poll_transmit().unwrap()), "0102000000006869");
    a.close(ca).unwrap();
    // version 1, kind 1 (close), the sender's channel 0.
    assert_eq!(hex(&a.poll_transmit().unwrap()), "010100000000");
}

#[test]
fn first_handshake_record_and_transcript() {
    let now = Instant::now();
    let alice = KeyPair::from_seed([1; 32]);
    let bob = KeyPair::from_seed([2; 32]);
    let mut a = SecureConnection::new(
        Role::Initiator,
        &alice,
        SecureConfig::default(),
        &mut SeededEntropy::from_u64(1),
        now,
    )
    .unwrap();
    let mut b = SecureConnection::new(
        Role::Responder,
        &bob,
        SecureConfig::default(),
        &mut SeededEntropy::from_u64(2),
        now,
    )
    .unwrap();
    let m1 = a.poll_transmit().unwrap();
    // u16 LE length 33, 32-byte ephemeral key, version byte 1.
    assert_eq!(hex(&m1[..2]), "2100");
    assert_eq!(m1[34], 1);
    b.handle_input(&m1, now).unwrap();
    let m2 = b.poll_transmit().unwrap();
    assert_eq!(m2.len(), 2 + 32 + 48 + 16);
    a.handle_input(&m2, now).unwrap();
    let m3 = a.poll_transmit().unwrap();
    b.handle_input(&m3, now).unwrap();
    let proof = b.poll_transmit().unwrap();
    a.handle_input(&proof, now).unwrap();
    let hash = a.handshake_hash().unwrap();
    assert_eq!(hex(&m1), GOLDEN_M1);
    assert_eq!(hex(hash.as_bytes()), GOLDEN_HASH);
}

const GOLDEN_M1: &str = "2100f5e3ea72678760d03dd592fa7da8d1b730fd8fce8baf148e8cf4bb327b3d890b01";
const GOLDEN_HASH: &str = concat!(
    "e88bae92d5d7c939d73fef3e9737b61c0dcb835eedec3c9650b1b767011c5125",
    "e9452e31bd1c063dee2bac333ef5bac7e11512b66459068270458466c104792b"
);

/// The transport records after the handshake: both identity proofs, a small
/// frame, a frame split over two records and a keep-alive. Pins the record
/// layout and the Noise transport cipher (ChaCha20-Poly1305, counter nonces).
#[test]
fn transport_records() {
    let now = Instant::now();
    let alice = KeyPair::from_seed([1; 32]);
    let bob = KeyPair::from_seed([2; 32]);
    let mut a = SecureConnection::new(
        Role::Initiator,
        &alice,
        SecureConfig::default(),
        &mut SeededEntropy::from_u64(1),
        now,
    )
    .unwrap();
    let mut b = SecureConnection::new(
        Role::Responder,
        &bob,
        SecureConfig::default(),
        &mut SeededEntropy::from_u64(2),
        now,
    )
    .unwrap();
    b.handle_input(&a.poll_transmit().unwrap(), now).unwrap();
    a.handle_input(&b.poll_transmit().unwrap(), now).unwrap();
    let m3 = a.poll_transmit().unwrap();
    // m3 = `s, se` (48 + 16 bytes) followed by alice's identity proof record.
    let (m3, proof_a) = m3.split_at(2 + 48 + 16);
    b.handle_input(m3, now).unwrap();
    b.handle_input(proof_a, now).unwrap();
    let proof_b = b.poll_transmit().unwrap();
    a.handle_input(&proof_b, now).unwrap();
    assert!(a.is_established() && b.is_established());
    // kind 0 + key (32) + signature (64) + tag (16).
    assert_eq!(proof_a.len(), 2 + 1 + 32 + 64 + 16);
    assert_eq!(blake3::hash(proof_a).to_hex().as_str(), GOLDEN_PROOF_A);
    assert_eq!(blake3::hash(&proof_b).to_hex().as_str(), GOLDEN_PROOF_B);

    a.send(b"hi", now).unwrap();
    let small = a.poll_transmit().unwrap();
    // u16 LE length 23 = kind 1 + u32 LE length 2 + "hi" + tag.
    assert_eq!(hex(&small[..2]), "1700");
    assert_eq!(hex(&small), GOLDEN_SMALL);

    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    a.send(&big, now).unwrap();
    let records = a.poll_transmit().unwrap();
    // Two records: 65535 bytes (5-byte header + 65514 + tag), then kind 2 + the rest + tag.
    assert_eq!(records.len(), 2 + 65535 + 2 + 1 + (70_000 - 65_514) + 16);
    assert_eq!(blake3::hash(&records).to_hex().as_str(), GOLDEN_BIG);

    b.handle_input(&small, now).unwrap();
    b.handle_input(&records, now).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
    assert_eq!(got.len(), 3, "established + two frames");
}

const GOLDEN_PROOF_A: &str = "2d8ae30ae782ffc493c537acb74e6ca24f72a36432fe12793162ec06b0bcdeb4";
const GOLDEN_PROOF_B: &str = "6cc1c51ebbf188603b1f5a0079470e0ac0076329841812fb057682aa56e41206";
const GOLDEN_SMALL: &str = "17009005e428359113fa755eafe1f29ca9b4a270e5d9cf2e44";
const GOLDEN_BIG: &str = "4d5d02d5fb742480608865e0feeb31ffcc64308c4d27d3939f1c85f2b660af9a";
