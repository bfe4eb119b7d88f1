//! Turning a FHIR Bundle into the list of writes it asks for.
//!
//! The plan is all-or-nothing: any bad entry fails the whole import with an
//! [`ImportError`] naming the entry, before anything is written. Ids are
//! assigned for `POST` entries and entries without one, and every reference
//! to an entry's `fullUrl` (such as `urn:uuid:...`) is rewritten to the
//! entry's `Type/id`, editing only those bytes of each resource.

use super::{
    check_limits, edit_text, is_resource_type, valid_id, FhirError, Resource, ResourceRef,
    MAX_BUNDLE_BYTES,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};

/// The Bundle types that can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleType {
    /// `transaction`: entries carry requests; all or nothing.
    Transaction,
    /// `batch`: entries carry requests (imported all or nothing here too).
    Batch,
    /// `collection`: a set of resources.
    Collection,
    /// `document`: a Composition and the resources it references.
    Document,
    /// `searchset`: search results (such as an `$everything` export), read
    /// like a collection.
    Searchset,
}

/// One write an import will make.
// Short-lived, one per entry: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlannedEntry {
    /// Create or replace a resource (ids assigned, references rewritten).
    Put(Resource),
    /// Delete a resource.
    Delete(ResourceRef),
}

/// Why an import failed, and which entry made it fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", describe_entry(*.entry, .full_url.as_deref()))]
#[non_exhaustive]
pub struct ImportError {
    /// The index of the failing entry in `Bundle.entry`, if an entry failed.
    pub entry: Option<usize>,
    /// That entry's `fullUrl`, if it had one.
    pub full_url: Option<String>,
    /// What is wrong.
    pub kind: ImportErrorKind,
}

fn describe_entry(entry: Option<usize>, full_url: Option<&str>) -> String {
    match (entry, full_url) {
        (Some(i), Some(u)) => format!("entry {i} ({u}): "),
        (Some(i), None) => format!("entry {i}: "),
        _ => String::new(),
    }
}

/// What is wrong with a Bundle or one of its entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportErrorKind {
    /// The Bundle itself, or an entry's resource, is not acceptable.
    #[error("{0}")]
    Resource(#[from] FhirError),
    /// `Bundle.type` is not transaction, batch, collection or document.
    #[error("cannot import a Bundle of type {0:?}")]
    UnsupportedType(String),
    /// An entry without the resource its request needs.
    #[error("entry has no resource")]
    MissingResource,
    /// A request method or URL this record does not support.
    #[error("unsupported request: {0}")]
    BadRequest(String),
    /// The resource's type or id disagrees with the request URL.
    #[error("request URL {url} does not match the resource")]
    UrlMismatch {
        /// The request URL.
        url: String,
    },
    /// A `urn:` reference to no entry in the Bundle.
    #[error("reference {0} names no entry in the Bundle")]
    MissingReference(String),
    /// Two entries write the same resource.
    #[error("{0} is written by more than one entry")]
    DuplicateEntry(String),
}

impl ImportError {
    fn bundle(kind: impl Into<ImportErrorKind>) -> ImportError {
        ImportError {
            entry: None,
            full_url: None,
            kind: kind.into(),
        }
    }

    /// The error as a FHIR OperationOutcome (JSON text), whose issue names
    /// the failing entry in `expression`.
    pub fn to_operation_outcome(&self) -> String {
        let code = match self.kind {
            ImportErrorKind::Resource(FhirError::TooLarge { .. }) => "too-costly",
            ImportErrorKind::Resource(FhirError::OtherPatient { .. }) => "forbidden",
            ImportErrorKind::MissingReference(_) => "not-found",
            ImportErrorKind::UnsupportedType(_) | ImportErrorKind::BadRequest(_) => "not-supported",
            ImportErrorKind::DuplicateEntry(_) => "duplicate",
            _ => "invalid",
        };
        let mut issue = serde_json::json!({
            "severity": "error",
            "code": code,
            "diagnostics": self.to_string(),
        });
        if let Some(i) = self.entry {
            issue["expression"] = serde_json::json!([format!("Bundle.entry[{i}]")]);
        }
        serde_json::json!({"resourceType": "OperationOutcome", "issue": [issue]}).to_string()
    }
}

#[derive(Deserialize)]
struct BundleProbe<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    bundle_type: Option<String>,
    #[serde(borrow)]
    entry: Option<Vec<EntryProbe<'a>>>,
}

#[derive(Deserialize)]
struct EntryProbe<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<RequestProbe>,
}

#[derive(Deserialize)]
struct RequestProbe {
    method: String,
    url: String,
}

/// An entry's resource as pass 1 sees it: type and id only (the full
/// parse happens once, after the edits).
struct Light<'a> {
    raw: &'a [u8],
    ty: String,
    id: Option<String>,
}

impl Light<'_> {
    fn resource_type(&self) -> &str {
        &self.ty
    }
    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

#[derive(Deserialize)]
struct LightProbe {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
}

/// Type and id, cheaply; anything unusual gets the full parse, so errors
/// are the same typed errors `Resource::parse` gives.
fn light(raw: &RawValue) -> Result<Light<'_>, FhirError> {
    let text = raw.get();
    if text.starts_with('{') {
        if let Ok(LightProbe {
            resource_type: Some(ty),
            id,
        }) = serde_json::from_str::<LightProbe>(text)
        {
            if is_resource_type(&ty) && id.as_deref().is_none_or(valid_id) {
                return Ok(Light {
                    raw: text.as_bytes(),
                    ty,
                    id,
                });
            }
        }
    }
    let r = Resource::parse(text.as_bytes().to_vec())?;
    Ok(Light {
        raw: text.as_bytes(),
        ty: r.resource_type().to_owned(),
        id: r.id().map(str::to_owned),
    })
}

enum Action<'a> {
    Put {
        res: Light<'a>,
        target: ResourceRef,
        assign_id: bool,
    },
    Delete(ResourceRef),
}

/// `Type/id` from a request URL (relative; no search parameters).
fn url_target(url: &str) -> Option<ResourceRef> {
    let path = url.trim_start_matches('/');
    let (ty, id) = path.split_once('/')?;
    (is_resource_type(ty) && valid_id(id)).then(|| ResourceRef {
        resource_type: ty.to_owned(),
        id: id.to_owned(),
    })
}

/// The writes a Bundle asks for, for the record of `patient`. A new
/// `Patient` (POSTed, or without an id) is this record's patient.
pub(crate) fn plan_import(
    bytes: &[u8],
    patient: &str,
    new_id: &mut dyn FnMut() -> String,
) -> Result<(BundleType, Vec<PlannedEntry>), ImportError> {
    check_limits(bytes, MAX_BUNDLE_BYTES).map_err(ImportError::bundle)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ImportError::bundle(FhirError::NotAnObject));
    }
    let probe: BundleProbe<'_> = serde_json::from_slice(bytes)
        .map_err(|e| ImportError::bundle(FhirError::InvalidJson(e.to_string())))?;
    match probe.resource_type.as_deref() {
        Some("Bundle") => {}
        Some(other) => {
            return Err(ImportError::bundle(FhirError::WrongResourceType {
                expected: "Bundle".into(),
                found: other.into(),
            }))
        }
        None => return Err(ImportError::bundle(FhirError::MissingResourceType)),
    }
    let ty = match probe.bundle_type.as_deref() {
        Some("transaction") => BundleType::Transaction,
        Some("batch") => BundleType::Batch,
        Some("collection") => BundleType::Collection,
        Some("document") => BundleType::Document,
        Some("searchset") => BundleType::Searchset,
        other => {
            return Err(ImportError::bundle(ImportErrorKind::UnsupportedType(
                other.unwrap_or("").to_owned(),
            )))
        }
    };
    let entries = probe.entry.unwrap_or_default();
    let with_requests = matches!(ty, BundleType::Transaction | BundleType::Batch);

    // Pass 1: what each entry writes, and where its fullUrl now points.
    let mut actions = Vec::with_capacity(entries.len());
    let mut targets: HashMap<String, String> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let fail = |kind: ImportErrorKind| ImportError {
            entry: Some(i),
            full_url: e.full_url.clone(),
            kind,
        };
        let method = if with_requests {
            let Some(req) = &e.request else {
                return Err(fail(ImportErrorKind::BadRequest(
                    "entry has no request".into(),
                )));
            };
            Some(req)
        } else {
            None
        };
        let action = match method.map(|r| (r.method.as_str(), r.url.as_str())) {
            Some(("DELETE", url)) => Action::Delete(
                url_target(url).ok_or_else(|| fail(ImportErrorKind::BadRequest(url.into())))?,
            ),
            Some(("PUT", url)) => {
                let raw = e
                    .resource
                    .ok_or_else(|| fail(ImportErrorKind::MissingResource))?;
                let res = light(raw).map_err(|k| fail(k.into()))?;
                let target =
                    url_target(url).ok_or_else(|| fail(ImportErrorKind::BadRequest(url.into())))?;
                if target.resource_type != res.resource_type()
                    || res.id().is_some_and(|id| id != target.id)
                {
                    return Err(fail(ImportErrorKind::UrlMismatch { url: url.into() }));
                }
                let assign_id = res.id().is_none();
                Action::Put {
                    res,
                    target,
                    assign_id,
                }
            }
            Some(("POST", url)) => {
                let raw = e
                    .resource
                    .ok_or_else(|| fail(ImportErrorKind::MissingResource))?;
                let res = light(raw).map_err(|k| fail(k.into()))?;
                if url.trim_start_matches('/') != res.resource_type() {
                    return Err(fail(ImportErrorKind::UrlMismatch { url: url.into() }));
                }
                let id = if res.resource_type() == "Patient" {
                    patient.to_owned()
                } else {
                    new_id()
                };
                let target = ResourceRef {
                    resource_type: res.resource_type().to_owned(),
                    id,
                };
                Action::Put {
                    res,
                    target,
                    assign_id: true,
                }
            }
            Some((m, _)) => return Err(fail(ImportErrorKind::BadRequest(format!("method {m}")))),
            None => {
                let raw = e
                    .resource
                    .ok_or_else(|| fail(ImportErrorKind::MissingResource))?;
                let res = light(raw).map_err(|k| fail(k.into()))?;
                let (id, assign_id) = match res.id() {
                    Some(id) => (id.to_owned(), false),
                    None if res.resource_type() == "Patient" => (patient.to_owned(), true),
                    None => (new_id(), true),
                };
                let target = ResourceRef {
                    resource_type: res.resource_type().to_owned(),
                    id,
                };
                Action::Put {
                    res,
                    target,
                    assign_id,
                }
            }
        };
        let target = match &action {
            Action::Put { target, .. } | Action::Delete(target) => target.to_string(),
        };
        if !seen.insert(target.clone()) {
            return Err(fail(ImportErrorKind::DuplicateEntry(target)));
        }
        if let (Some(url), Action::Put { .. }) = (&e.full_url, &action) {
            targets.insert(url.clone(), target);
        }
        actions.push(action);
    }

    // Pass 2: ids and references, then the patient check on the result.
    let mut plan = Vec::with_capacity(actions.len());
    for (i, action) in actions.into_iter().enumerate() {
        let full_url = entries.get(i).and_then(|e| e.full_url.clone());
        let fail = |kind: ImportErrorKind| ImportError {
            entry: Some(i),
            full_url: full_url.clone(),
            kind,
        };
        match action {
            Action::Delete(r) => plan.push(PlannedEntry::Delete(r)),
            Action::Put {
                res,
                target,
                assign_id,
            } => {
                let mut missing = None;
                let edited =
                    edit_text(
                        res.raw,
                        assign_id.then_some(target.id.as_str()),
                        |r| match targets.get(r) {
                            Some(t) => Some(t.clone()),
                            None => {
                                if r.starts_with("urn:") && missing.is_none() {
                                    missing = Some(r.to_owned());
                                }
                                None
                            }
                        },
                    )
                    .map_err(|k| fail(k.into()))?;
                if let Some(r) = missing {
                    return Err(fail(ImportErrorKind::MissingReference(r)));
                }
                let bytes = edited.unwrap_or_else(|| res.raw.to_vec());
                let res = Resource::parse(bytes).map_err(|k| fail(k.into()))?;
                res.check_patient(patient).map_err(|k| fail(k.into()))?;
                plan.push(PlannedEntry::Put(res));
            }
        }
    }
    Ok((ty, plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("gen{n}")
        }
    }

    #[test]
    fn transaction_rewrites_urns() {
        let b = br#"{"resourceType":"Bundle","type":"transaction","entry":[
          {"fullUrl":"urn:uuid:p","resource":{"resourceType":"Patient","name":[{"family":"X"}]},
           "request":{"method":"POST","url":"Patient"}},
          {"fullUrl":"urn:uuid:o","resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:p"},"valueQuantity":{"value":4.30}},
           "request":{"method":"POST","url":"Observation"}},
          {"resource":{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/me"},"evidence":[{"detail":[{"reference":"urn:uuid:o"}]}]},
           "request":{"method":"PUT","url":"Condition/c1"}},
          {"request":{"method":"DELETE","url":"Observation/old"}}]}"#;
        let (ty, plan) = plan_import(b, "me", &mut ids()).expect("plan");
        assert_eq!(ty, BundleType::Transaction);
        assert_eq!(plan.len(), 4);
        let PlannedEntry::Put(p) = &plan[0] else {
            panic!()
        };
        assert_eq!(p.id(), Some("me"));
        let PlannedEntry::Put(o) = &plan[1] else {
            panic!()
        };
        assert_eq!(o.id(), Some("gen1"));
        assert_eq!(
            o.bytes(),
            br#"{"id":"gen1","resourceType":"Observation","subject":{"reference":"Patient/me"},"valueQuantity":{"value":4.30}}"#
        );
        let PlannedEntry::Put(c) = &plan[2] else {
            panic!()
        };
        assert_eq!(c.info().references, vec!["Patient/me", "Observation/gen1"]);
        assert!(matches!(&plan[3], PlannedEntry::Delete(r) if r.id == "old"));
    }

    #[test]
    fn failures_name_the_entry() {
        let check = |b: &[u8], entry: Option<usize>, f: fn(&ImportErrorKind) -> bool| {
            let e = plan_import(b, "me", &mut ids()).expect_err("must fail");
            assert_eq!(e.entry, entry, "{e}");
            assert!(f(&e.kind), "{e:?}");
            let oo: serde_json::Value =
                serde_json::from_str(&e.to_operation_outcome()).expect("json");
            assert_eq!(oo["resourceType"], "OperationOutcome");
        };
        check(
            br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Basic","id":"a"}},
                {"resource":{"resourceType":"Basic","id":"b","subject":{"reference":"urn:uuid:nowhere"}}}]}"#,
            Some(1),
            |k| matches!(k, ImportErrorKind::MissingReference(_)),
        );
        check(
            br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/other"}}}]}"#,
            Some(0),
            |k| matches!(k, ImportErrorKind::Resource(FhirError::OtherPatient { .. })),
        );
        check(
            br#"{"resourceType":"Bundle","type":"history"}"#,
            None,
            |k| matches!(k, ImportErrorKind::UnsupportedType(_)),
        );
        check(br#"{"resourceType":"Patient"}"#, None, |k| {
            matches!(
                k,
                ImportErrorKind::Resource(FhirError::WrongResourceType { .. })
            )
        });
        check(
            br#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Basic","id":"a"},"request":{"method":"PUT","url":"Basic/b"}}]}"#,
            Some(0),
            |k| matches!(k, ImportErrorKind::UrlMismatch { .. }),
        );
        check(
            br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Basic","id":"a"}},{"resource":{"resourceType":"Basic","id":"a"}}]}"#,
            Some(1),
            |k| matches!(k, ImportErrorKind::DuplicateEntry(_)),
        );
        check(
            br#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Basic","id":"a"},"request":{"method":"PATCH","url":"Basic/a"}}]}"#,
            Some(0),
            |k| matches!(k, ImportErrorKind::BadRequest(_)),
        );
        check(
            br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Nope"}}]}"#,
            Some(0),
            |k| matches!(k, ImportErrorKind::Resource(FhirError::UnknownResourceType(_))),
        );
    }
}
