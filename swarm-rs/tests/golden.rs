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
