//! Sealed records: `apply` refuses content written in clear.
//!
//! [`SecureRecord`] seals what it writes, but a provider's client could
//! bypass it and append clear resources straight to its log. In a record
//! marked sealed ([`Record::require_sealed`], an owner op that cannot be
//! undone; [`SecureRecord::create_sealed`] does it at creation), `apply`
//! accepts a resource write only if it is a *sealed shell*: an object
//! whose fields are exactly what [`crate::scope_crypto::seal_resource`]
//! leaves in clear (type, id, `meta.security`, the patient reference, the
//! categories, one clinical date, blinded codes) plus a well-formed sealed
//! extension. Anything else is rejected on every peer alike
//! ([`crate::apply::Rejection::Clear`]) and listed by [`Record::rejected`].
//!
//! The only clear writes allowed are the record's own control resources,
//! and only from owner (patient) devices: AuditEvents and `Basic`
//! resources coded in an `urn:ehr-core:` system (key wraps, emergency
//! setups). The check is on shape: it stops plaintext clinical content, it
//! cannot stop a writer hiding a few bytes inside the clear fields.

use crate::consent::Role;
use crate::error::Error;
use crate::fhir::Resource;
use crate::record::{Record, RecordBuilder};
use crate::scope_crypto::{sealed_info, BLIND_SYSTEM, SEALED_URL};
use crate::secure::SecureRecord;
use serde_json::Value;

/// The view key marking a sealed record.
pub(crate) const SEALED_KEY: &[u8] = b"m/sealed";

/// Why a write is not acceptable in a sealed record (`None` if it is).
pub(crate) fn clear_content(res: &Resource, role: Role) -> Option<String> {
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(res.bytes()) else {
        return Some("not a JSON object".into());
    };
    if role == Role::Owner && is_control(res.resource_type(), &top) {
        return None;
    }
    if sealed_info(res.bytes()).is_none() {
        return Some("no sealed content".into());
    }
    // Only these keys, with string values (a coding's system may be null:
    // seal_resource writes codings without a system that way).
    let coded_only = |v: &Value, keys: &[&str]| match v {
        Value::Object(m) => m.iter().all(|(k, v)| {
            keys.contains(&k.as_str()) && (v.is_string() || (k == "system" && v.is_null()))
        }),
        _ => false,
    };
    let mut dates = 0;
    for (k, v) in &top {
        let ok = match k.as_str() {
            "resourceType" | "id" => v.is_string(),
            "meta" => v.as_object().is_some_and(|m| {
                m.iter().all(|(k, v)| {
                    k == "security"
                        && v.as_array()
                            .is_some_and(|a| a.iter().all(|c| coded_only(c, &["system", "code"])))
                })
            }),
            "subject" => coded_only(v, &["reference"]),
            "category" => v.as_array().is_some_and(|a| {
                a.iter().all(|c| {
                    c.as_object().is_some_and(|m| {
                        m.iter().all(|(k, v)| {
                            k == "coding"
                                && v.as_array().is_some_and(|a| {
                                    a.iter().all(|c| coded_only(c, &["system", "code"]))
                                })
                        })
                    })
                })
            }),
            "code" => v.get("coding").and_then(Value::as_array).is_some_and(|a| {
                v.as_object().is_some_and(|m| m.len() == 1)
                    && a.iter().all(|c| {
                        coded_only(c, &["system", "code"])
                            && c.get("system").and_then(Value::as_str) == Some(BLIND_SYSTEM)
                    })
            }),
            "extension" => v.as_array().is_some_and(|a| {
                a.len() == 1
                    && a[0].as_object().is_some_and(|m| {
                        m.len() == 2
                            && m.get("url").and_then(Value::as_str) == Some(SEALED_URL)
                            && m.get("valueString").is_some_and(Value::is_string)
                    })
            }),
            d if crate::fhir::DATE_FIELDS.contains(&d) => {
                dates += 1;
                v.is_string() || coded_only(v, &["start", "end"])
            }
            _ => false,
        };
        if !ok || dates > 1 {
            return Some(format!("field {k:?} in clear"));
        }
    }
    None
}

/// AuditEvents and `Basic` resources coded in an `urn:ehr-core:` system.
fn is_control(resource_type: &str, top: &serde_json::Map<String, Value>) -> bool {
    match resource_type {
        "AuditEvent" => true,
        "Basic" => top
            .get("code")
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|c| {
                        c.get("system")
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.starts_with("urn:ehr-core:"))
                    })
            }),
        _ => false,
    }
}

impl Record {
    /// Marks this record sealed (owner devices; cannot be undone): from
    /// then on every peer's `apply` rejects resources written in clear
    /// (see [`crate::sealed_policy`]).
    pub async fn require_sealed(&self) -> Result<(), Error> {
        self.submit(crate::op::OpBody::RequireSealed).await
    }

    /// Whether the record is marked sealed.
    pub async fn is_sealed(&self) -> Result<bool, Error> {
        Ok(self.snapshot().await?.get(SEALED_KEY).await?.is_some())
    }
}

impl SecureRecord {
    /// Creates a record for `patient_id` that is sealed from its first
    /// write on, and wraps it with the device identity.
    pub async fn create_sealed(
        builder: RecordBuilder,
        patient_id: &str,
    ) -> Result<SecureRecord, Error> {
        let record = builder.create(patient_id).await?;
        record.require_sealed().await?;
        Ok(SecureRecord::new(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope_crypto::{seal_resource, ScopeKey};
    use hypercore_rs::SeededEntropy;

    /// Every HL7 R4 example that seals is accepted as a shell by a
    /// non-owner, and the example itself in clear is not (unless it is a
    /// control resource, which only owners may write in clear).
    #[test]
    fn every_sealed_hl7_example_passes_and_its_clear_form_does_not() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fhir/r4-examples");
        let dir = if dir.exists() {
            dir
        } else {
            std::path::PathBuf::from("/work/shared/fhir/r4-examples")
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let e = SeededEntropy::new(7);
        let key = ScopeKey::generate("default", 0, &e).unwrap();
        let mut sealed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let Ok(shell) = seal_resource(&key, &bytes, &e) else {
                continue;
            };
            let shell = Resource::parse(shell).unwrap();
            assert_eq!(clear_content(&shell, Role::Practitioner), None, "{path:?}");
            let clear = Resource::parse(bytes).unwrap();
            assert!(
                clear_content(&clear, Role::Practitioner).is_some(),
                "{path:?} accepted in clear"
            );
            sealed += 1;
        }
        assert!(sealed >= 300, "only {sealed} examples sealed");
    }

    /// Records written before the v2 envelope hold v1 shells: `apply`
    /// still accepts them from any writer of a sealed record, and refuses
    /// an envelope of an unknown version.
    #[test]
    fn v1_shells_still_pass_and_unknown_versions_do_not() {
        let e = SeededEntropy::new(9);
        let key = ScopeKey::generate("default", 2, &e).unwrap();
        let obs = br#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p"},"note":[{"text":"x"}]}"#;
        let v2 = String::from_utf8(seal_resource(&key, obs, &e).unwrap()).unwrap();
        let start = v2.find("\"v2.default.2.").unwrap() + 1;
        let end = start + v2[start..].find('"').unwrap();
        let ct = key.encrypt(obs, &e).unwrap();
        let v1 = format!("v1.default.2.{}", crate::keys::b64_encode(&ct));
        let old = format!("{}{}{}", &v2[..start], v1, &v2[end..]);
        let shell = Resource::parse(old.into_bytes()).unwrap();
        assert_eq!(clear_content(&shell, Role::Practitioner), None);
        let v9 = v2.replacen("\"v2.default.2.", "\"v9.default.2.", 1);
        let shell = Resource::parse(v9.into_bytes()).unwrap();
        assert!(clear_content(&shell, Role::Practitioner).is_some());
    }
}
