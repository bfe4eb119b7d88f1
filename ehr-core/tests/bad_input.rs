//! Bad input gives typed errors and writes nothing: invalid JSON, wrong or
//! unknown types, another patient, missing Bundle references, huge strings,
//! deep nesting, and Bundles with one bad entry among good ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use ehr_core::fhir::{FhirError, ImportErrorKind};
use ehr_core::{Error, Record};
use futures::executor::block_on;
use hypercore_rs::MemoryStorage;
use std::sync::Arc;

async fn record() -> Record {
    Record::builder(Arc::new(MemoryStorage::new()))
        .create("p")
        .await
        .unwrap()
}

/// Runs `f` and checks that the record did not change.
async fn unchanged<T>(rec: &Record, f: impl std::future::Future<Output = T>) -> T {
    let before = (
        rec.view_version().await.unwrap(),
        rec.export_everything().await.unwrap(),
    );
    let out = f.await;
    let after = (
        rec.view_version().await.unwrap(),
        rec.export_everything().await.unwrap(),
    );
    assert_eq!(before, after, "the record changed");
    out
}

#[test]
fn bad_resources_are_typed_errors() {
    block_on(async {
        let rec = record().await;
        let huge = format!(
            r#"{{"resourceType":"Observation","note":[{{"text":"{}"}}]}}"#,
            "x".repeat(100 << 20)
        );
        let deep = format!(
            r#"{{"resourceType":"Basic","extension":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let cases: Vec<(Vec<u8>, fn(&Error) -> bool)> = vec![
            (b"{not json".to_vec(), |e| {
                matches!(e, Error::Resource(FhirError::InvalidJson(_)))
            }),
            (b"\xff\xfe".to_vec(), |e| {
                matches!(e, Error::Resource(FhirError::InvalidJson(_)))
            }),
            (br#"{"resourceType":"Observatio"}"#.to_vec(), |e| {
                matches!(e, Error::Resource(FhirError::UnknownResourceType(_)))
            }),
            (
                br#"{"resourceType":"Observation","subject":{"reference":"Patient/q"}}"#.to_vec(),
                |e| matches!(e, Error::Resource(FhirError::OtherPatient { .. })),
            ),
            (br#"{"resourceType":"Patient","id":"q"}"#.to_vec(), |e| {
                matches!(e, Error::Resource(FhirError::OtherPatient { .. }))
            }),
            (huge.into_bytes(), |e| {
                matches!(e, Error::Resource(FhirError::TooLarge { .. }))
            }),
            (deep.into_bytes(), |e| {
                matches!(e, Error::Resource(FhirError::TooDeep { .. }))
            }),
        ];
        for (bytes, check) in cases {
            let e = unchanged(&rec, rec.put(bytes)).await.expect_err("refused");
            assert!(check(&e), "{e:?}");
            let oo: serde_json::Value = serde_json::from_str(&e.to_operation_outcome()).unwrap();
            assert_eq!(oo["resourceType"], "OperationOutcome");
        }
        // The lower-level write checks the patient too.
        let other =
            ehr_core::fhir::Resource::parse(br#"{"resourceType":"Patient","id":"q"}"#.to_vec())
                .unwrap();
        let e = unchanged(&rec, rec.put_expecting(other, ehr_core::op::Expect::Any))
            .await
            .expect_err("other patient");
        assert!(
            matches!(e, Error::Resource(FhirError::OtherPatient { .. })),
            "{e:?}"
        );
        let e = unchanged(&rec, rec.delete("Observation", "nope"))
            .await
            .expect_err("missing");
        assert!(matches!(e, Error::NotFound(_)));
    });
}

fn bundle(entries: &[&str]) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

const GOOD: &str = r#"{"fullUrl":"urn:uuid:a","resource":{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/p"}},"request":{"method":"POST","url":"Observation"}}"#;

#[test]
fn bundles_are_atomic() {
    block_on(async {
        let rec = record().await;
        let bad_entries = [
            (
                r#"{"resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:missing"}},"request":{"method":"POST","url":"Observation"}}"#,
                (|k| matches!(k, ImportErrorKind::MissingReference(_)))
                    as fn(&ImportErrorKind) -> bool,
            ),
            (
                r#"{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/q"}},"request":{"method":"POST","url":"Observation"}}"#,
                |k| matches!(k, ImportErrorKind::Resource(FhirError::OtherPatient { .. })),
            ),
            (
                r#"{"resource":{"resourceType":"Observation","effectiveDateTime":"2020-13-01"},"request":{"method":"POST","url":"Observation"}}"#,
                |k| matches!(k, ImportErrorKind::Resource(FhirError::InvalidDate { .. })),
            ),
            (
                r#"{"resource":{"resourceType":"Condition"},"request":{"method":"POST","url":"Observation"}}"#,
                |k| matches!(k, ImportErrorKind::UrlMismatch { .. }),
            ),
        ];
        for (bad, check) in bad_entries {
            let b = bundle(&[GOOD, GOOD.replace("urn:uuid:a", "urn:uuid:b").as_str(), bad]);
            match unchanged(&rec, rec.import_bundle(&b)).await {
                Err(Error::Import(e)) => {
                    assert_eq!(e.entry, Some(2), "{e}");
                    assert!(check(&e.kind), "{e:?}");
                    assert!(e.to_operation_outcome().contains("Bundle.entry[2]"));
                }
                other => panic!("expected an import error, got {other:?}"),
            }
        }
        // A delete of a missing resource is refused by apply: still atomic.
        let b = bundle(&[
            GOOD,
            r#"{"request":{"method":"DELETE","url":"Observation/none"}}"#,
        ]);
        let e = unchanged(&rec, rec.import_bundle(&b))
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::Rejected(_)), "{e:?}");
        // Not a Bundle, broken JSON, a huge one.
        for b in [
            br#"{"resourceType":"Patient","id":"p"}"#.to_vec(),
            b"[".to_vec(),
            vec![b' '; 65 << 20],
        ] {
            let e = unchanged(&rec, rec.import_bundle(&b))
                .await
                .expect_err("refused");
            assert!(matches!(e, Error::Import(_)), "{e:?}");
        }
        // The good part alone imports.
        let done = rec.import_bundle(&bundle(&[GOOD])).await.unwrap();
        assert_eq!(done.written.len(), 1);
    });
}

mod hostile {
    use ehr_core::apply::{apply_node, NoMembership, Node};
    use ehr_core::fhir::Resource;
    use ehr_core::op::{Op, OpBody};
    use futures::executor::block_on;
    use hyperbee_rs::Bee;
    use hypercore_rs::{Core, MemoryStorage};
    use proptest::prelude::*;
    use std::sync::Arc;

    const SAMPLE: &[u8] = br#"{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:a","resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-1"}]},"subject":{"reference":"Patient/p"},"effectivePeriod":{"start":"2020-01-01T00:00:00Z"},"valueQuantity":{"value":4.30}},"request":{"method":"POST","url":"Observation"}},{"resource":{"resourceType":"Condition","id":"c","subject":{"reference":"urn:uuid:a"}},"request":{"method":"PUT","url":"Condition/c"}}]}"#;

    fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
        let mut b = base.to_vec();
        for &(i, v) in edits {
            if !b.is_empty() {
                let n = b.len();
                b[i % n] = v;
            }
        }
        b.truncate(b.len().saturating_sub(cut % 8));
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Mutated resources and Bundles are typed errors or valid, never a
        /// panic; when a mutated resource parses, its bytes are kept as given.
        #[test]
        fn mutated_input_never_panics(
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let b = mutate(SAMPLE, &edits, cut);
            if let Ok(r) = Resource::parse(b.clone()) {
                prop_assert_eq!(r.bytes(), &b[..]);
            }
            block_on(async {
                let rec = ehr_core::Record::builder(Arc::new(MemoryStorage::new()))
                    .create("p")
                    .await
                    .unwrap();
                let _ = rec.import_bundle(&b).await;
                let _ = rec.put(b.clone()).await;
            });
        }

        /// Any bytes as an op are applied without panicking; garbage is
        /// recorded as malformed.
        #[test]
        fn hostile_ops_never_panic(
            ops in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..8),
        ) {
            block_on(async {
                let core = Core::builder(Arc::new(MemoryStorage::new())).open().await.unwrap();
                let bee = Bee::open(core).await.unwrap();
                let genesis = Op::new(0, OpBody::Genesis { patient: "p".into(), peer: None }).encode();
                let mut all = vec![genesis];
                all.extend(ops);
                for (seq, v) in all.iter().enumerate() {
                    let mut batch = bee.batch().await.unwrap();
                    let node = Node { writer: [1; 32], seq: seq as u64, index: 0, value: v };
                    apply_node(&mut batch, &mut NoMembership, node).await.unwrap();
                    batch.flush().await.unwrap();
                }
            });
        }
    }
}
