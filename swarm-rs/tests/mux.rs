//! Behaviour of the sans-IO channel multiplexer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use swarm_rs::mux::MUX_VERSION;
use swarm_rs::{ChannelId, Mux, MuxConfig, MuxError, MuxEvent};

/// Delivers everything queued, in both directions, until quiet.
fn shuttle(a: &mut Mux, b: &mut Mux) {
    loop {
        let mut moved = false;
        while let Some(f) = a.poll_transmit() {
            b.handle_frame(&f).unwrap();
            moved = true;
        }
        while let Some(f) = b.poll_transmit() {
            a.handle_frame(&f).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn events(m: &mut Mux) -> Vec<MuxEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn opened(channel: ChannelId, protocol: &str, id: &[u8]) -> MuxEvent {
    MuxEvent::Opened {
        channel,
        protocol: protocol.into(),
        id: id.to_vec(),
    }
}

fn paired(a: &mut Mux, b: &mut Mux, protocol: &str, id: &[u8]) -> (ChannelId, ChannelId) {
    let ca = a.open(protocol, id).unwrap();
    let cb = b.open(protocol, id).unwrap();
    shuttle(a, b);
    assert_eq!(events(a), vec![opened(ca, protocol, id)]);
    assert_eq!(events(b), vec![opened(cb, protocol, id)]);
    (ca, cb)
}

#[test]
fn paired_open_then_messages_then_close() {
    let (mut a, mut b) = (Mux::default(), Mux::default());
    let ca = a.open("hypercore/alpha", b"key-1").unwrap();
    assert!(!a.is_paired(ca));
    assert_eq!(a.send(ca, b"too early"), Err(MuxError::NotPaired));
    shuttle(&mut a, &mut b);
    assert!(events(&mut a).is_empty());
    assert_eq!(
        events(&mut b),
        vec![MuxEvent::RemoteOpen {
            protocol: "hypercore/alpha".into(),
            id: b"key-1".to_vec()
        }]
    );
    let cb = b.open("hypercore/alpha", b"key-1").unwrap();
    assert!(b.is_paired(cb));
    assert_eq!(
        events(&mut b),
        vec![opened(cb, "hypercore/alpha", b"key-1")]
    );
    shuttle(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        vec![opened(ca, "hypercore/alpha", b"key-1")]
    );

    a.send(ca, b"ping").unwrap();
    b.send(cb, b"pong").unwrap();
    b.send(cb, b"").unwrap();
    shuttle(&mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![MuxEvent::Message {
            channel: cb,
            data: b"ping".to_vec()
        }]
    );
    assert_eq!(
        events(&mut a),
        vec![
            MuxEvent::Message {
                channel: ca,
                data: b"pong".to_vec()
            },
            MuxEvent::Message {
                channel: ca,
                data: Vec::new()
            }
        ]
    );

    a.close(ca).unwrap();
    assert_eq!(a.send(ca, b"x"), Err(MuxError::NoSuchChannel));
    assert_eq!(a.close(ca), Err(MuxError::NoSuchChannel));
    shuttle(&mut a, &mut b);
    assert_eq!(events(&mut b), vec![MuxEvent::Closed { channel: cb }]);
    assert_eq!(b.send(cb, b"x"), Err(MuxError::NoSuchChannel));
    assert_eq!(a.channel_count(), 0);
    assert_eq!(b.channel_count(), 0);

    // The same name can be opened again, with fresh numbers.
    let (ca2, _) = paired(&mut a, &mut b, "hypercore/alpha", b"key-1");
    assert_ne!(ca2, ca);
}

#[test]
fn channels_are_independent() {
    let (mut a, mut b) = (Mux::default(), Mux::default());
    let (a1, b1) = paired(&mut a, &mut b, "p", b"1");
    let (a2, b2) = paired(&mut a, &mut b, "p", b"2");
    let (a3, b3) = paired(&mut a, &mut b, "q", b"1");
    a.send(a2, b"two").unwrap();
    a.send(a3, b"three").unwrap();
    a.send(a1, b"one").unwrap();
    shuttle(&mut a, &mut b);
    let got = events(&mut b);
    assert_eq!(
        got,
        vec![
            MuxEvent::Message {
                channel: b2,
                data: b"two".to_vec()
            },
            MuxEvent::Message {
                channel: b3,
                data: b"three".to_vec()
            },
            MuxEvent::Message {
                channel: b1,
                data: b"one".to_vec()
            },
        ]
    );
}

#[test]
fn simultaneous_close_settles_cleanly() {
    let (mut a, mut b) = (Mux::default(), Mux::default());
    let (ca, cb) = paired(&mut a, &mut b, "p", b"");
    a.send(ca, b"in flight").unwrap();
    a.close(ca).unwrap();
    b.send(cb, b"also in flight").unwrap();
    b.close(cb).unwrap();
    shuttle(&mut a, &mut b);
    // Late messages on a channel closed here are dropped, not errors; the
    // other side's close acknowledges ours, so nobody sees a Closed event.
    assert!(events(&mut a).is_empty());
    assert!(events(&mut b).is_empty());
    assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
}

#[test]
fn closing_an_unpaired_channel_withdraws_it() {
    let (mut a, mut b) = (Mux::default(), Mux::default());
    let ca = a.open("p", b"x").unwrap();
    a.close(ca).unwrap();
    shuttle(&mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![MuxEvent::RemoteOpen {
            protocol: "p".into(),
            id: b"x".to_vec()
        }]
    );
    assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
}

#[test]
fn local_misuse_is_reported_and_harmless() {
    let mut config = MuxConfig::default();
    config.max_channels = 2;
    config.max_protocol_len = 4;
    config.max_id_len = 2;
    let mut a = Mux::new(config);
    assert_eq!(
        a.open("toolong", b""),
        Err(MuxError::NameTooLong("protocol"))
    );
    assert_eq!(a.open("p", b"xyz"), Err(MuxError::NameTooLong("id")));
    let c = a.open("p", b"1").unwrap();
    assert_eq!(a.open("p", b"1"), Err(MuxError::AlreadyOpen));
    a.open("p", b"2").unwrap();
    assert_eq!(a.open("p", b"3"), Err(MuxError::TooManyChannels));
    // An unpaired close frees the slot at once.
    a.close(c).unwrap();
    a.open("p", b"3").unwrap();
}

#[test]
fn peer_exceeding_the_channel_limit_is_an_error() {
    let mut config = MuxConfig::default();
    config.max_channels = 2;
    let mut a = Mux::default();
    let mut b = Mux::new(config);
    for i in 0..3u8 {
        a.open("p", &[i]).unwrap();
    }
    b.handle_frame(&a.poll_transmit().unwrap()).unwrap();
    b.handle_frame(&a.poll_transmit().unwrap()).unwrap();
    assert_eq!(
        b.handle_frame(&a.poll_transmit().unwrap()),
        Err(MuxError::RemoteLimit("channel count"))
    );
}

fn frame(kind: u8, number: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![MUX_VERSION, kind];
    f.extend_from_slice(&number.to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn peer_protocol_violations_are_typed_errors() {
    let mut b = Mux::default();
    // Message and close on a channel never opened.
    assert_eq!(
        b.handle_frame(&frame(2, 7, b"hi")),
        Err(MuxError::UnknownChannel(7))
    );
    assert_eq!(
        b.handle_frame(&frame(1, 7, b"")),
        Err(MuxError::UnknownChannel(7))
    );
    // We opened channel 0; the peer sends to it without opening its side.
    b.open("mine", b"").unwrap();
    assert_eq!(
        b.handle_frame(&frame(2, 0, b"hi")),
        Err(MuxError::UnpairedMessage(0))
    );
    // The peer opens, then reuses the number, the name, or an older number.
    let mut open = 1u16.to_le_bytes().to_vec();
    open.extend_from_slice(b"pid");
    b.handle_frame(&frame(0, 7, &open)).unwrap();
    assert_eq!(
        b.handle_frame(&frame(0, 7, &open)),
        Err(MuxError::ChannelInUse(7))
    );
    assert_eq!(
        b.handle_frame(&frame(0, 8, &open)),
        Err(MuxError::ChannelInUse(8))
    );
    let mut other = 1u16.to_le_bytes().to_vec();
    other.extend_from_slice(b"qid");
    assert_eq!(
        b.handle_frame(&frame(0, 3, &other)),
        Err(MuxError::ChannelInUse(3))
    );
    // Bad framing.
    assert_eq!(b.handle_frame(&[]), Err(MuxError::Malformed("empty frame")));
    assert_eq!(
        b.handle_frame(&[9, 0, 0, 0, 0, 0]),
        Err(MuxError::UnsupportedVersion(9))
    );
    assert!(matches!(
        b.handle_frame(&frame(5, 1, b"")),
        Err(MuxError::Malformed(_))
    ));
    assert!(matches!(
        b.handle_frame(&[MUX_VERSION, 2, 1]),
        Err(MuxError::Malformed(_))
    ));
    assert!(matches!(
        b.handle_frame(&frame(1, 7, b"x")),
        Err(MuxError::Malformed(_))
    ));
    let mut bad_utf8 = 2u16.to_le_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        b.handle_frame(&frame(0, 9, &bad_utf8)),
        Err(MuxError::Malformed(_))
    ));
    let mut truncated = 10u16.to_le_bytes().to_vec();
    truncated.extend_from_slice(b"abc");
    assert!(matches!(
        b.handle_frame(&frame(0, 9, &truncated)),
        Err(MuxError::Malformed(_))
    ));
    let mut long = 1000u16.to_le_bytes().to_vec();
    long.extend_from_slice(&[b'a'; 1000]);
    assert_eq!(
        b.handle_frame(&frame(0, 9, &long)),
        Err(MuxError::RemoteLimit("protocol length"))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Open(bool, u8),
    Close(bool, u8),
    Send(bool, u8),
    DeliverAtoB(u8),
    DeliverBtoA(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 0u8..4).prop_map(|(s, n)| Op::Open(s, n)),
        (any::<bool>(), 0u8..4).prop_map(|(s, n)| Op::Close(s, n)),
        (any::<bool>(), 0u8..4).prop_map(|(s, n)| Op::Send(s, n)),
        (0u8..4).prop_map(Op::DeliverAtoB),
        (0u8..4).prop_map(Op::DeliverBtoA),
    ]
}

/// Applies events to a model of which names are open-and-paired on a side.
fn track(
    m: &mut Mux,
    paired: &mut std::collections::BTreeMap<ChannelId, u8>,
    handles: &mut std::collections::BTreeMap<u8, ChannelId>,
) {
    while let Some(e) = m.poll_event() {
        match e {
            MuxEvent::Opened { channel, id, .. } => {
                paired.insert(channel, id[0]);
            }
            MuxEvent::Closed { channel } => {
                assert!(
                    paired.remove(&channel).is_some(),
                    "Closed for unpaired {channel}"
                );
                // The peer closed it: the handle is gone.
                handles.retain(|_, c| *c != channel);
            }
            MuxEvent::Message { channel, .. } => {
                assert!(handles.values().any(|h| *h == channel));
            }
            MuxEvent::RemoteOpen { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut m = Mux::default();
        m.open("p", b"").unwrap();
        let _ = m.handle_frame(&bytes);
        let mut with_header = vec![MUX_VERSION];
        with_header.extend_from_slice(&bytes);
        let _ = m.handle_frame(&with_header);
    }

    /// Two honest sides doing random opens, closes and sends with random
    /// interleaving never produce a protocol error, and once all frames are
    /// delivered they agree on which channels are paired.
    #[test]
    fn honest_peers_never_error(ops in proptest::collection::vec(op(), 0..80)) {
        use std::collections::BTreeMap;
        let (mut a, mut b) = (Mux::default(), Mux::default());
        let (mut ha, mut hb) = (BTreeMap::<u8, ChannelId>::new(), BTreeMap::<u8, ChannelId>::new());
        let (mut pa, mut pb) = (BTreeMap::new(), BTreeMap::new());
        let (mut qa, mut qb) = (std::collections::VecDeque::new(), std::collections::VecDeque::new());
        for op in ops {
            match op {
                Op::Open(side, n) => {
                    let (m, h) = if side { (&mut a, &mut ha) } else { (&mut b, &mut hb) };
                    match m.open("p", &[n]) {
                        Ok(c) => { h.insert(n, c); }
                        Err(e) => prop_assert_eq!(e, MuxError::AlreadyOpen),
                    }
                }
                Op::Close(side, n) => {
                    let (m, h, p) = if side { (&mut a, &mut ha, &mut pa) } else { (&mut b, &mut hb, &mut pb) };
                    if let Some(c) = h.remove(&n) {
                        m.close(c).unwrap();
                        p.remove(&c);
                    }
                }
                Op::Send(side, n) => {
                    let (m, h) = if side { (&mut a, &ha) } else { (&mut b, &hb) };
                    if let Some(c) = h.get(&n) {
                        match m.send(*c, &[n]) {
                            Ok(()) => {}
                            Err(e) => prop_assert_eq!(e, MuxError::NotPaired),
                        }
                    }
                }
                Op::DeliverAtoB(k) => {
                    while let Some(f) = a.poll_transmit() { qa.push_back(f); }
                    for _ in 0..k { if let Some(f) = qa.pop_front() { b.handle_frame(&f).unwrap(); } }
                }
                Op::DeliverBtoA(k) => {
                    while let Some(f) = b.poll_transmit() { qb.push_back(f); }
                    for _ in 0..k { if let Some(f) = qb.pop_front() { a.handle_frame(&f).unwrap(); } }
                }
            }
            track(&mut a, &mut pa, &mut ha);
            track(&mut b, &mut pb, &mut hb);
        }
        for f in qa.drain(..) { b.handle_frame(&f).unwrap(); }
        for f in qb.drain(..) { a.handle_frame(&f).unwrap(); }
        shuttle(&mut a, &mut b);
        track(&mut a, &mut pa, &mut ha);
        track(&mut b, &mut pb, &mut hb);
        let names_a: Vec<u8> = pa.values().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let names_b: Vec<u8> = pb.values().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(names_a, names_b);
    }
}
