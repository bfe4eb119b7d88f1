//! Consent in `apply`: random grants, changes, revocations and writes from
//! several writers, checked op by op against a small model of the rules,
//! and applied on two independent peers that must end byte-identical and
//! reject exactly the same writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::apply::{apply_node, Membership, Node, Outcome};
use ehr_core::consent::{Grant, Role};
use ehr_core::fhir::{Coding, ResourceRef};
use ehr_core::op::{Expect, Op, OpBody, WriterKey};
use futures::executor::block_on;
use hyperbee_rs::{Bee, Range};
use hypercore_rs::{Core, MemoryStorage};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const OWNER: u8 = 0;
const TYPES: [&str; 2] = ["Observation", "Condition"];
const CATS: [&str; 2] = ["laboratory", "vital-signs"];

fn key(w: u8) -> WriterKey {
    [w + 1; 32]
}

fn grant(g: u8) -> Grant {
    match g {
        0 => Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
        1 => Grant::new(Role::Lab, &["patient/Observation.cu"])
            .unwrap()
            .with_categories(vec![Coding::new(None, "laboratory")]),
        2 => Grant::new(Role::Practitioner, &["patient/Condition.cu", "patient/*.r"])
            .unwrap()
            .with_expiry(500),
        3 => Grant::owner(),
        _ => Grant::new(Role::Mirror, &[]).unwrap(),
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Grant(u8, u8),
    Change(u8, u8),
    Revoke(u8),
    Put { ty: u8, id: u8, cat: u8 },
    Delete { ty: u8, id: u8 },
    Garbage,
}

#[derive(Debug, Clone)]
struct Step {
    author: u8,
    time: u64,
    kind: Kind,
}

fn step() -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        2 => (1u8..4, 0u8..5).prop_map(|(w, g)| Kind::Grant(w, g)),
        1 => (0u8..4, 0u8..5).prop_map(|(w, g)| Kind::Change(w, g)),
        1 => (0u8..4).prop_map(Kind::Revoke),
        6 => (0u8..2, 0u8..3, 0u8..2).prop_map(|(ty, id, cat)| Kind::Put { ty, id, cat }),
        2 => (0u8..2, 0u8..3).prop_map(|(ty, id)| Kind::Delete { ty, id }),
        1 => Just(Kind::Garbage),
    ];
    (prop_oneof![2 => Just(OWNER), 3 => 1u8..4], 0u64..1000, kind)
        .prop_map(|(author, time, kind)| Step { author, time, kind })
}

fn resource(ty: u8, id: u8, cat: u8) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"{}","id":"r{id}","subject":{{"reference":"Patient/p"}},"category":[{{"coding":[{{"code":"{}"}}]}}]}}"#,
        TYPES[ty as usize], CATS[cat as usize]
    )
    .into_bytes()
}

fn encode(s: &Step) -> Vec<u8> {
    let body = match &s.kind {
        Kind::Grant(w, g) => OpBody::Grant {
            writer: key(*w),
            grant: grant(*g),
        },
        Kind::Change(w, g) => OpBody::ChangeGrant {
            writer: key(*w),
            grant: grant(*g),
        },
        Kind::Revoke(w) => OpBody::Revoke { writer: key(*w) },
        Kind::Put { ty, id, cat } => OpBody::Put {
            resource: resource(*ty, *id, *cat),
            expect: Expect::Any,
        },
        Kind::Delete { ty, id } => OpBody::Delete {
            target: ResourceRef {
                resource_type: TYPES[*ty as usize].into(),
                id: format!("r{id}"),
            },
            expect: Expect::Any,
        },
        Kind::Garbage => return vec![1, 0xff, 0xff, 0xff],
    };
    Op::new(s.time, body).encode()
}

/// The rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    /// writer -> (grant number, revoked)
    writers: BTreeMap<u8, (u8, bool)>,
    clock: u64,
    /// (type, id) -> category of the live resource
    live: BTreeMap<(u8, u8), u8>,
}

impl Model {
    fn decide(&mut self, s: &Step) -> bool {
        let Some(&(g, revoked)) = self.writers.get(&s.author) else {
            return false;
        };
        if revoked {
            return false;
        }
        let now = s.time.max(self.clock);
        if g == 2 && now >= 500 {
            return false;
        }
        let owner = g == 3;
        let ok = match s.kind {
            Kind::Garbage => false,
            Kind::Grant(w, ng) => {
                let active = self.writers.get(&w).is_some_and(|x| !x.1);
                if owner && w != OWNER && !active {
                    self.writers.insert(w, (ng, false));
                    true
                } else {
                    false
                }
            }
            Kind::Change(w, ng) => {
                let active = self.writers.get(&w).is_some_and(|x| !x.1);
                if owner && w != OWNER && active {
                    self.writers.insert(w, (ng, false));
                    true
                } else {
                    false
                }
            }
            Kind::Revoke(w) => {
                let active = self.writers.get(&w).is_some_and(|x| !x.1);
                if owner && w != OWNER && active {
                    self.writers.insert(w, (g, true));
                    if let Some(x) = self.writers.get_mut(&w) {
                        x.1 = true;
                    }
                    true
                } else {
                    false
                }
            }
            Kind::Put { ty, id, cat } => {
                let old = self.live.get(&(ty, id)).copied();
                let allowed = match g {
                    3 | 0 => true,
                    1 => ty == 0 && cat == 0 && old.is_none_or(|c| c == 0),
                    2 => ty == 1,
                    _ => false,
                };
                if allowed {
                    self.live.insert((ty, id), cat);
                }
                allowed
            }
            Kind::Delete { ty, id } => {
                let allowed = self.live.contains_key(&(ty, id)) && matches!(g, 3 | 0);
                if allowed {
                    self.live.remove(&(ty, id));
                }
                allowed
            }
        };
        if ok && owner && s.time > self.clock {
            self.clock = s.time;
        }
        ok
    }
}

#[derive(Default)]
struct Members(BTreeSet<WriterKey>);

impl Membership for Members {
    fn add_writer(&mut self, key: WriterKey, _indexer: bool) -> Result<(), String> {
        self.0.insert(key);
        Ok(())
    }
    fn remove_writer(&mut self, key: WriterKey) -> Result<(), String> {
        self.0.remove(&key);
        Ok(())
    }
}

async fn peer() -> Bee {
    let core = Core::builder(Arc::new(MemoryStorage::new()))
        .open()
        .await
        .unwrap();
    Bee::open(core).await.unwrap()
}

async fn apply_all(
    bee: &Bee,
    nodes: &[(WriterKey, u64, Vec<u8>)],
    members: &mut Members,
) -> Vec<bool> {
    let mut out = Vec::new();
    for (writer, seq, value) in nodes {
        let mut batch = bee.batch().await.unwrap();
        let node = Node {
            writer: *writer,
            seq: *seq,
            index: 0,
            value,
        };
        let o = apply_node(&mut batch, members, node).await.unwrap();
        batch.flush().await.unwrap();
        out.push(o == Outcome::Accepted);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn apply_enforces_consent_like_the_model(steps in prop::collection::vec(step(), 1..50)) {
        // Clocks roughly move forward (with skew), so expiry at 500 falls
        // inside most runs.
        let steps: Vec<Step> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| Step { time: i as u64 * 20 + s.time % 60, ..s })
            .collect();
        block_on(async {
            let genesis = Op::new(0, OpBody::Genesis { patient: "p".into(), peer: None }).encode();
            let mut nodes = vec![(key(OWNER), 0u64, genesis)];
            let mut seqs = [1u64, 0, 0, 0];
            for s in &steps {
                let seq = &mut seqs[s.author as usize];
                nodes.push((key(s.author), *seq, encode(s)));
                *seq += 1;
            }
            let mut model = Model::default();
            model.writers.insert(OWNER, (3, false));
            let want: Vec<bool> = std::iter::once(true)
                .chain(steps.iter().map(|s| model.decide(s)))
                .collect();

            let (a, b) = (peer().await, peer().await);
            let mut ma = Members::default();
            let got = apply_all(&a, &nodes, &mut ma).await;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g, w, "step {}: {:?}", i, steps.get(i.wrapping_sub(1)));
            }
            let mut mb = Members::default();
            let got_b = apply_all(&b, &nodes, &mut mb).await;
            prop_assert_eq!(&got, &got_b);

            // Both peers hold the same view, byte for byte.
            let va = a.range(Range::all()).collect().await.unwrap();
            let vb = b.range(Range::all()).collect().await.unwrap();
            let strip = |v: Vec<hyperbee_rs::Entry>| v.into_iter().map(|e| (e.key, e.value)).collect::<Vec<_>>();
            prop_assert_eq!(strip(va.clone()), strip(vb));
            // Every rejected write is recorded; the live set is the model's.
            let rejected = va.iter().filter(|e| e.key.starts_with(b"j/")).count();
            prop_assert_eq!(rejected, want.iter().filter(|w| !**w).count());
            let live: BTreeSet<String> = model
                .live
                .keys()
                .map(|(t, i)| format!("{}/r{i}", TYPES[*t as usize]))
                .collect();
            let mut view_live = BTreeSet::new();
            for ty in TYPES {
                let idx = a
                    .range(Range::all().prefix(format!("x/d/{ty}\0")))
                    .collect()
                    .await
                    .unwrap();
                for i in 0..3u8 {
                    if idx.iter().any(|e| e.key.ends_with(format!("r{i}").as_bytes())) {
                        view_live.insert(format!("{ty}/r{i}"));
                    }
                }
            }
            prop_assert_eq!(live, view_live);
            // Membership heard the same story: active writers.
            let active: BTreeSet<WriterKey> = model
                .writers
                .iter()
                .filter(|(_, (_, r))| !r)
                .map(|(w, _)| key(*w))
                .collect();
            prop_assert_eq!(&ma.0, &active);
            Ok(())
        })?;
    }
}
