//! Generated FHIR workloads for the ehr-core benchmarks.

/// How many distinct LOINC-style codes the generated Observations use.
pub const CODES: usize = 20;

/// A transaction Bundle: one Patient (first bundle only) and `n`
/// Observations referencing it by `urn:uuid:`, dates spread over 2020-2022.
pub fn transaction(n: usize, salt: usize, with_patient: bool) -> Vec<u8> {
    let mut entries = Vec::with_capacity(n + 1);
    let subject = if with_patient {
        entries.push(
            r#"{"fullUrl":"urn:uuid:patient","resource":{"resourceType":"Patient","name":[{"family":"Bench","given":["Ada"]}],"birthDate":"1970-01-01"},"request":{"method":"POST","url":"Patient"}}"#
                .to_owned(),
        );
        "urn:uuid:patient"
    } else {
        "Patient/p"
    };
    for i in 0..n {
        let k = salt * n + i;
        let code = k % CODES;
        let day = (k * 7919) % 1000;
        let (y, d) = (2020 + day / 365, day % 365);
        let (m, dd) = (d / 31 + 1, d % 28 + 1);
        entries.push(format!(
            r#"{{"fullUrl":"urn:uuid:o{k}","resource":{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory","display":"Laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}-1","display":"Test {code}"}}],"text":"Test {code}"}},"subject":{{"reference":"{subject}"}},"effectiveDateTime":"{y}-{m:02}-{dd:02}T08:{:02}:00+01:00","issued":"{y}-{m:02}-{dd:02}T09:00:00.000+01:00","valueQuantity":{{"value":{}.{:02},"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}},"referenceRange":[{{"low":{{"value":3.1,"unit":"mmol/L"}},"high":{{"value":6.2,"unit":"mmol/L"}}}}]}},"request":{{"method":"POST","url":"Observation"}}}}"#,
            k % 60,
            k % 10,
            k % 100
        ));
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

/// A fresh in-memory record owned by patient `p`, with seeded entropy so
/// that runs are comparable.
pub fn record(storage: std::sync::Arc<dyn hypercore_rs::Storage>) -> ehr_core::Record {
    match futures::executor::block_on(
        ehr_core::Record::builder(storage)
            .entropy(std::sync::Arc::new(hypercore_rs::SeededEntropy::new(1)))
            .create("p"),
    ) {
        Ok(r) => r,
        Err(e) => panic!("record: {e}"),
    }
}

/// A patient record holding `n` generated Observations (rounded down to a
/// multiple of 500), filled by 500-entry transaction Bundles.
pub fn filled_record(n: usize) -> ehr_core::Record {
    let patient = record(std::sync::Arc::new(hypercore_rs::MemoryStorage::new()));
    for salt in 0..n / 500 {
        if let Err(e) =
            futures::executor::block_on(patient.import_bundle(&transaction(500, salt, false)))
        {
            panic!("fill: {e}");
        }
    }
    patient
}

/// The issue's first-sync workload: a new provider joins `patient`'s record
/// (fresh in-memory storage) and replicates it over TCP loopback + Noise
/// until its view hash equals the patient's. Returns the provider's record,
/// so that dropping it stays outside a measurement.
pub fn first_sync(patient: &ehr_core::Record) -> ehr_core::Record {
    use futures::executor::block_on;
    let doctor = match block_on(ehr_core::Record::in_memory().join(patient.key())) {
        Ok(r) => r,
        Err(e) => panic!("join: {e}"),
    };
    block_on(async {
        let (a, b) = match crate::tcp::secure_pair().await {
            Ok(p) => p,
            Err(e) => panic!("tcp: {e}"),
        };
        let sessions = futures::future::join(
            patient.replicate(crate::tcp::frames(a), true),
            doctor.replicate(crate::tcp::frames(b), false),
        );
        let want = match patient.base().view_tip_hash(ehr_core::VIEW_NAME).await {
            Ok(h) => h,
            Err(e) => panic!("hash: {e}"),
        };
        let synced = async {
            loop {
                if let Err(e) = doctor.update().await {
                    panic!("update: {e}");
                }
                if doctor.base().view_tip_hash(ehr_core::VIEW_NAME).await.ok() == Some(want) {
                    break;
                }
                YieldNow(false).await;
            }
        };
        futures::pin_mut!(sessions, synced);
        if let futures::future::Either::Right(_) = futures::future::select(synced, sessions).await {
            panic!("replication ended before the provider synced");
        }
    });
    doctor
}

/// Yields to the executor once (so the replication sessions run between
/// the provider's view checks).
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
