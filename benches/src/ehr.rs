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
