//! Byte-faithful FHIR R4 resources.
//!
//! A [`Resource`] is the original JSON text plus a few extracted fields
//! ([`ResourceInfo`]): the ones the record indexes or enforces. Everything
//! else is carried as bytes and never re-serialised, so decimals such as
//! `4.30`, key order, whitespace and timezones come back exactly as written.
//! Parsing checks size and nesting limits before anything else, and every
//! malformed input is a typed [`FhirError`], never a panic.

mod bundle;
mod date;
mod types;

pub(crate) use bundle::plan_import;
pub use bundle::{BundleType, ImportError, ImportErrorKind, PlannedEntry};
pub(crate) use date::date_key;
pub use date::{format_instant, parse_fhir_date};
pub use types::{is_resource_type, RESOURCE_TYPES};

use crate::json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest resource accepted, in bytes (fixed: every peer must agree).
pub const MAX_RESOURCE_BYTES: usize = 4 << 20;
/// The largest Bundle accepted for import, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;
/// The deepest JSON nesting accepted (objects and arrays).
pub const MAX_DEPTH: usize = 64;
/// The longest resource id FHIR allows.
pub const MAX_ID_LEN: usize = 64;

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The text is larger than the limit.
    #[error("resource is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Objects and arrays nest deeper than the limit.
    #[error("JSON nests deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Not well-formed JSON (or not UTF-8).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Well-formed JSON, but not an object.
    #[error("a resource must be a JSON object")]
    NotAnObject,
    /// No `resourceType`.
    #[error("missing resourceType")]
    MissingResourceType,
    /// A `resourceType` FHIR R4 does not define.
    #[error("unknown resourceType {0:?}")]
    UnknownResourceType(String),
    /// A different `resourceType` than the operation expects.
    #[error("expected resourceType {expected}, found {found}")]
    WrongResourceType {
        /// What was expected.
        expected: String,
        /// What the resource says.
        found: String,
    },
    /// No `id` where one is required.
    #[error("missing id")]
    MissingId,
    /// An `id` that is not `[A-Za-z0-9\-.]{1,64}`.
    #[error("invalid id {0:?}")]
    InvalidId(String),
    /// A field the record reads has the wrong shape.
    #[error("field {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A date field that is not a FHIR date, dateTime or instant.
    #[error("field {field}: invalid date {value:?}")]
    InvalidDate {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The resource is about a different patient than the record's.
    #[error("resource belongs to patient {found}, this record is patient {expected}")]
    OtherPatient {
        /// The record's patient id.
        expected: String,
        /// The patient the resource names.
        found: String,
    },
}

/// A code with its code system, e.g. `http://loinc.org|29463-7`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Coding {
    /// The code system URI, if given.
    pub system: Option<String>,
    /// The code.
    pub code: String,
}

impl Coding {
    /// A coding from a system and a code.
    pub fn new(system: Option<&str>, code: &str) -> Coding {
        Coding {
            system: system.map(str::to_owned),
            code: code.to_owned(),
        }
    }

    /// The FHIR search token: `system|code`, or `|code` without a system.
    pub fn token(&self) -> String {
        format!("{}|{}", self.system.as_deref().unwrap_or(""), self.code)
    }

    /// Parses a `system|code` token (a bare `code` has no system).
    pub fn from_token(token: &str) -> Coding {
        match token.split_once('|') {
            Some(("", code)) => Coding::new(None, code),
            Some((system, code)) => Coding::new(Some(system), code),
            None => Coding::new(None, token),
        }
    }
}

/// A literal reference `Type/id`, as read from a `reference` string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceRef {
    /// The resource type.
    pub resource_type: String,
    /// The id.
    pub id: String,
}

impl ResourceRef {
    /// Reads `Type/id`, `Type/id/_history/v` or an absolute URL ending in
    /// one of those. Contained (`#x`), `urn:` and unknown-type references
    /// are `None`.
    pub fn parse(reference: &str) -> Option<ResourceRef> {
        if reference.starts_with('#') || reference.starts_with("urn:") {
            return None;
        }
        let mut parts: Vec<&str> = reference.split('/').collect();
        if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
            parts.truncate(parts.len() - 2);
        }
        let id = *parts.last()?;
        let ty = *parts.get(parts.len().checked_sub(2)?)?;
        if !is_resource_type(ty) || !valid_id(id) {
            return None;
        }
        Some(ResourceRef {
            resource_type: ty.to_owned(),
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// Whether `id` is a valid FHIR id: `[A-Za-z0-9\-.]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The fields of a resource that the record indexes or enforces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ResourceInfo {
    /// `resourceType`.
    pub resource_type: String,
    /// `id`, if present.
    pub id: Option<String>,
    /// `meta.security` labels.
    pub security: Vec<Coding>,
    /// The patient it is about: its own id for a Patient, else `subject`
    /// or `patient` when that references a Patient.
    pub patient: Option<String>,
    /// `code`, `vaccineCode` or `medicationCodeableConcept` codings.
    pub codes: Vec<Coding>,
    /// `category` codings (or codes).
    pub categories: Vec<Coding>,
    /// The clinical date (start of the period), ms since the epoch, UTC.
    pub date: Option<i64>,
    /// `status`.
    pub status: Option<String>,
    /// `encounter` (or `context` when it is an Encounter reference).
    pub encounter: Option<ResourceRef>,
    /// Every `reference` string in the resource, in order.
    pub references: Vec<String>,
}

/// A FHIR resource: its original bytes and the fields the record reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    bytes: Vec<u8>,
    info: ResourceInfo,
}

/// The fields in the order they are tried for the clinical date.
pub(crate) const DATE_FIELDS: &[&str] = &[
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "occurrenceDateTime",
    "occurrencePeriod",
    "onsetDateTime",
    "onsetPeriod",
    "performedDateTime",
    "performedPeriod",
    "authoredOn",
    "recordedDate",
    "issued",
    "date",
    "dateTime",
    "recorded",
    "started",
    "created",
    "whenHandedOver",
    "dateAsserted",
    "period",
];

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    patient: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(rename = "vaccineCode", borrow)]
    vaccine_code: Option<&'a RawValue>,
    #[serde(rename = "medicationCodeableConcept", borrow)]
    medication: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    encounter: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(rename = "effectiveDateTime", borrow)]
    effective_date_time: Option<&'a RawValue>,
    #[serde(rename = "effectiveInstant", borrow)]
    effective_instant: Option<&'a RawValue>,
    #[serde(rename = "effectivePeriod", borrow)]
    effective_period: Option<&'a RawValue>,
    #[serde(rename = "occurrenceDateTime", borrow)]
    occurrence_date_time: Option<&'a RawValue>,
    #[serde(rename = "occurrencePeriod", borrow)]
    occurrence_period: Option<&'a RawValue>,
    #[serde(rename = "onsetDateTime", borrow)]
    onset_date_time: Option<&'a RawValue>,
    #[serde(rename = "onsetPeriod", borrow)]
    onset_period: Option<&'a RawValue>,
    #[serde(rename = "performedDateTime", borrow)]
    performed_date_time: Option<&'a RawValue>,
    #[serde(rename = "performedPeriod", borrow)]
    performed_period: Option<&'a RawValue>,
    #[serde(rename = "authoredOn", borrow)]
    authored_on: Option<&'a RawValue>,
    #[serde(rename = "recordedDate", borrow)]
    recorded_date: Option<&'a RawValue>,
    #[serde(borrow)]
    issued: Option<&'a RawValue>,
    #[serde(borrow)]
    date: Option<&'a RawValue>,
    #[serde(rename = "dateTime", borrow)]
    date_time: Option<&'a RawValue>,
    #[serde(borrow)]
    recorded: Option<&'a RawValue>,
    #[serde(borrow)]
    started: Option<&'a RawValue>,
    #[serde(borrow)]
    created: Option<&'a RawValue>,
    #[serde(rename = "whenHandedOver", borrow)]
    when_handed_over: Option<&'a RawValue>,
    #[serde(rename = "dateAsserted", borrow)]
    date_asserted: Option<&'a RawValue>,
    #[serde(borrow)]
    period: Option<&'a RawValue>,
}

impl<'a> Probe<'a> {
    fn date_field(&self, name: &str) -> Option<&'a RawValue> {
        match name {
            "effectiveDateTime" => self.effective_date_time,
            "effectiveInstant" => self.effective_instant,
            "effectivePeriod" => self.effective_period,
            "occurrenceDateTime" => self.occurrence_date_time,
            "occurrencePeriod" => self.occurrence_period,
            "onsetDateTime" => self.onset_date_time,
            "onsetPeriod" => self.onset_period,
            "performedDateTime" => self.performed_date_time,
            "performedPeriod" => self.performed_period,
            "authoredOn" => self.authored_on,
            "recordedDate" => self.recorded_date,
            "issued" => self.issued,
            "date" => self.date,
            "dateTime" => self.date_time,
            "recorded" => self.recorded,
            "started" => self.started,
            "created" => self.created,
            "whenHandedOver" => self.when_handed_over,
            "dateAsserted" => self.date_asserted,
            "period" => self.period,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RefProbe {
    reference: Option<String>,
}

#[derive(Deserialize)]
struct CodingProbe {
    system: Option<String>,
    code: Option<String>,
}

#[derive(Deserialize)]
struct ConceptProbe {
    coding: Option<Vec<CodingProbe>>,
}

#[derive(Deserialize)]
struct MetaProbe {
    security: Option<Vec<CodingProbe>>,
}

#[derive(Deserialize)]
struct PeriodProbe {
    start: Option<String>,
    end: Option<String>,
}

fn text_field(raw: &RawValue, field: &'static str) -> Result<String, FhirError> {
    if let Some(s) = plain_string(raw.get()) {
        return Ok(s.to_owned());
    }
    serde_json::from_str::<String>(raw.get()).map_err(|_| FhirError::InvalidField {
        field,
        reason: "expected a string".into(),
    })
}

fn reference_field(raw: &RawValue, field: &'static str) -> Result<Option<String>, FhirError> {
    serde_json::from_str::<RefProbe>(raw.get())
        .map(|r| r.reference)
        .map_err(|_| FhirError::InvalidField {
            field,
            reason: "expected a Reference".into(),
        })
}

fn push_codings(list: Option<Vec<CodingProbe>>, out: &mut Vec<Coding>) {
    for c in list.into_iter().flatten() {
        if let Some(code) = c.code {
            out.push(Coding {
                system: c.system,
                code,
            });
        }
    }
}

/// Codings from a CodeableConcept, a list of them, a list of Codings, a
/// code, or a list of codes. Other shapes carry no codes (lenient: a shape
/// we do not index is not an error).
fn codings(raw: &RawValue) -> Vec<Coding> {
    let mut out = Vec::new();
    let text = raw.get();
    // The first byte tells the shape, so the usual shapes are read without
    // failed attempts first (a serde_json error allocates and formats).
    match text.as_bytes().first() {
        Some(b'{') => {
            if let Ok(c) = serde_json::from_str::<ConceptProbe>(text) {
                push_codings(c.coding, &mut out);
            }
            return out;
        }
        Some(b'"') => {
            if let Ok(code) = serde_json::from_str::<String>(text) {
                out.push(Coding::new(None, &code));
            }
            return out;
        }
        Some(b'[') => {}
        _ => return out,
    }
    if let Ok(c) = serde_json::from_str::<ConceptProbe>(text) {
        push_codings(c.coding, &mut out);
    } else if let Ok(list) = serde_json::from_str::<Vec<ConceptProbe>>(text) {
        for c in list {
            push_codings(c.coding, &mut out);
        }
    } else if let Ok(list) = serde_json::from_str::<Vec<CodingProbe>>(text) {
        push_codings(Some(list), &mut out);
    } else if let Ok(code) = serde_json::from_str::<String>(text) {
        out.push(Coding::new(None, &code));
    } else if let Ok(codes) = serde_json::from_str::<Vec<String>>(text) {
        out.extend(codes.iter().map(|c| Coding::new(None, c)));
    }
    out
}

fn date_of(raw: &RawValue, field: &'static str) -> Result<Option<i64>, FhirError> {
    let text = raw.get();
    let value = if let Some(s) = plain_string(text) {
        Some(s.to_owned())
    } else if let Ok(s) = serde_json::from_str::<String>(text) {
        Some(s)
    } else if let Ok(p) = serde_json::from_str::<PeriodProbe>(text) {
        p.start.or(p.end)
    } else {
        return Err(FhirError::InvalidField {
            field,
            reason: "expected a date or a Period".into(),
        });
    };
    match value {
        None => Ok(None),
        Some(v) => parse_fhir_date(&v)
            .map(Some)
            .ok_or(FhirError::InvalidDate { field, value: v }),
    }
}

/// A JSON string literal without escapes, read without serde (the text is
/// a value serde_json already checked).
fn plain_string(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains(['\\', '"'])).then_some(inner)
}

/// Checks size and depth, then that the text is one JSON value.
pub(crate) fn check_limits(bytes: &[u8], max_bytes: usize) -> Result<(), FhirError> {
    if bytes.len() > max_bytes {
        return Err(FhirError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    if json::check_depth(bytes, MAX_DEPTH).is_err() {
        return Err(FhirError::TooDeep { max: MAX_DEPTH });
    }
    Ok(())
}

impl Resource {
    /// Parses and checks a resource (limits, resourceType, id syntax, the
    /// shapes of the fields the record reads). The bytes are kept as given.
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Resource, FhirError> {
        let bytes = bytes.into();
        check_limits(&bytes, MAX_RESOURCE_BYTES)?;
        let info = probe(&bytes)?;
        Ok(Resource { bytes, info })
    }

    /// A resource from bytes and the info [`Resource::parse`] gave for
    /// exactly those bytes (no check: only for infos kept from a parse).
    pub(crate) fn from_parsed(bytes: Vec<u8>, info: ResourceInfo) -> Resource {
        Resource { bytes, info }
    }

    /// The bytes and the info, by value.
    pub(crate) fn into_parts(self) -> (Vec<u8>, ResourceInfo) {
        (self.bytes, self.info)
    }

    /// The original JSON bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The original JSON bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The extracted fields.
    pub fn info(&self) -> &ResourceInfo {
        &self.info
    }

    /// `resourceType`.
    pub fn resource_type(&self) -> &str {
        &self.info.resource_type
    }

    /// `id`, if present.
    pub fn id(&self) -> Option<&str> {
        self.info.id.as_deref()
    }

    /// Fails with [`FhirError::OtherPatient`] if the resource is about a
    /// patient other than `patient_id`.
    pub fn check_patient(&self, patient_id: &str) -> Result<(), FhirError> {
        match &self.info.patient {
            Some(p) if p != patient_id => Err(FhirError::OtherPatient {
                expected: patient_id.to_owned(),
                found: p.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A copy with the top-level `id` set to `id` (replaced if present,
    /// otherwise inserted first in the object). Every other byte is
    /// unchanged.
    pub fn with_id(&self, id: &str) -> Result<Resource, FhirError> {
        self.edit(Some(id), |_| None)
    }

    /// Both edits in one scan and one re-parse.
    pub(crate) fn edit(
        &self,
        id: Option<&str>,
        map: impl FnMut(&str) -> Option<String>,
    ) -> Result<Resource, FhirError> {
        match edit_text(&self.bytes, id, map)? {
            None => Ok(self.clone()),
            Some(bytes) => Resource::parse(bytes),
        }
    }
}

/// Sets the top-level `id` (if given) and rewrites `reference` values
/// through `map`, editing only those bytes. `None` when nothing changes.
pub(crate) fn edit_text(
    text: &[u8],
    id: Option<&str>,
    mut map: impl FnMut(&str) -> Option<String>,
) -> Result<Option<Vec<u8>>, FhirError> {
    if let Some(id) = id {
        if !valid_id(id) {
            return Err(FhirError::InvalidId(id.to_owned()));
        }
    }
    let mut edits = Vec::new();
    let mut id_done = id.is_none();
    json::for_each_string(text, |t| {
        if let (Some(id), false) = (id, id_done) {
            if t.depth == 1 && json::is_value_of(text, &t, "id") {
                edits.push((t.span.clone(), json::quote(id)));
                id_done = true;
                return;
            }
        }
        if json::is_value_of(text, &t, "reference") {
            if let Some(new) = json::plain(text, &t.span).and_then(&mut map) {
                edits.push((t.span.clone(), json::quote(&new)));
            }
        }
    });
    if let (Some(id), false) = (id, id_done) {
        let open = text.iter().position(|&b| b == b'{').unwrap_or(0) + 1;
        let mut field = b"\"id\":".to_vec();
        field.extend(json::quote(id));
        field.push(b',');
        edits.insert(0, (open..open, field));
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(json::splice(text, &edits)))
}

fn probe(bytes: &[u8]) -> Result<ResourceInfo, FhirError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        // Still report broken JSON as such.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| FhirError::InvalidJson(e.to_string()))?;
        return Err(FhirError::NotAnObject);
    }
    let p: Probe<'_> =
        serde_json::from_slice(bytes).map_err(|e| FhirError::InvalidJson(e.to_string()))?;
    let resource_type = match p.resource_type {
        None => return Err(FhirError::MissingResourceType),
        Some(raw) => text_field(raw, "resourceType")?,
    };
    if !is_resource_type(&resource_type) {
        return Err(FhirError::UnknownResourceType(resource_type));
    }
    let id = match p.id {
        None => None,
        Some(raw) => {
            let id = text_field(raw, "id")?;
            if !valid_id(&id) {
                return Err(FhirError::InvalidId(id));
            }
            Some(id)
        }
    };
    let mut info = ResourceInfo {
        resource_type,
        id,
        ..ResourceInfo::default()
    };
    if let Some(raw) = p.meta {
        let meta: MetaProbe =
            serde_json::from_str(raw.get()).map_err(|_| FhirError::InvalidField {
                field: "meta",
                reason: "expected a Meta".into(),
            })?;
        push_codings(meta.security, &mut info.security);
    }
    if info.resource_type == "Patient" {
        info.patient = info.id.clone();
    } else {
        for (raw, field) in [(p.subject, "subject"), (p.patient, "patient")] {
            let Some(raw) = raw else { continue };
            let Some(r) = reference_field(raw, field)? else {
                continue;
            };
            if let Some(r) = ResourceRef::parse(&r) {
                if r.resource_type == "Patient" {
                    match &info.patient {
                        Some(p) if *p != r.id => {
                            return Err(FhirError::InvalidField {
                                field,
                                reason: "subject and patient name different patients".into(),
                            })
                        }
                        _ => info.patient = Some(r.id),
                    }
                }
            }
        }
    }
    for raw in [p.code, p.vaccine_code, p.medication].into_iter().flatten() {
        info.codes.extend(codings(raw));
    }
    if let Some(raw) = p.category {
        info.categories = codings(raw);
    }
    if let Some(raw) = p.status {
        info.status = serde_json::from_str::<String>(raw.get()).ok();
    }
    for (raw, field) in [(p.encounter, "encounter"), (p.context, "context")] {
        if info.encounter.is_some() {
            break;
        }
        // `context` is only an encounter in some resources: lenient.
        let r = raw.and_then(|raw| serde_json::from_str::<RefProbe>(raw.get()).ok());
        if let Some(r) = r
            .and_then(|r| r.reference)
            .and_then(|r| ResourceRef::parse(&r))
        {
            if r.resource_type == "Encounter" {
                info.encounter = Some(r);
            }
        } else if field == "encounter" {
            if let Some(raw) = raw {
                reference_field(raw, "encounter")?;
            }
        }
    }
    for &field in DATE_FIELDS {
        if let Some(raw) = p.date_field(field) {
            if let Some(d) = date_of(raw, field)? {
                info.date = Some(d);
                break;
            }
        }
    }
    json::for_each_string(bytes, |t| {
        if json::is_value_of(bytes, &t, "reference") {
            if let Some(r) = json::plain(bytes, &t.span) {
                info.references.push(r.to_owned());
            }
        }
    });
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fields_and_keeps_bytes() {
        let text = br#"{"resourceType":"Observation","id":"o1","status":"final",
            "meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]},
            "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],
            "code":{"coding":[{"system":"http://loinc.org","code":"2345-7"}]},
            "subject":{"reference":"Patient/p1"},"encounter":{"reference":"Encounter/e1"},
            "effectiveDateTime":"2020-01-02T03:04:05+02:00",
            "valueQuantity":{"value":4.30,"unit":"mmol/L"}}"#;
        let r = Resource::parse(text.to_vec()).expect("valid");
        assert_eq!(r.bytes(), text);
        let i = r.info();
        assert_eq!(i.resource_type, "Observation");
        assert_eq!(i.id.as_deref(), Some("o1"));
        assert_eq!(i.patient.as_deref(), Some("p1"));
        assert_eq!(
            i.codes,
            vec![Coding::new(Some("http://loinc.org"), "2345-7")]
        );
        assert_eq!(i.categories[0].code, "laboratory");
        assert_eq!(i.security[0].code, "R");
        assert_eq!(i.status.as_deref(), Some("final"));
        assert_eq!(i.encounter.as_ref().map(|e| e.id.as_str()), Some("e1"));
        assert_eq!(i.date, parse_fhir_date("2020-01-02T01:04:05Z"));
        assert_eq!(i.references, vec!["Patient/p1", "Encounter/e1"]);
        assert!(r.check_patient("p1").is_ok());
        assert!(matches!(
            r.check_patient("p2"),
            Err(FhirError::OtherPatient { .. })
        ));
    }

    #[test]
    fn typed_errors() {
        type Case<'a> = (&'a [u8], fn(&FhirError) -> bool);
        let cases: Vec<Case<'_>> = vec![
            (b"{", |e| matches!(e, FhirError::InvalidJson(_))),
            (b"[1]", |e| matches!(e, FhirError::NotAnObject)),
            (b"{}", |e| matches!(e, FhirError::MissingResourceType)),
            (br#"{"resourceType":"Nope"}"#, |e| {
                matches!(e, FhirError::UnknownResourceType(_))
            }),
            (br#"{"resourceType":7}"#, |e| {
                matches!(e, FhirError::InvalidField { .. })
            }),
            (br#"{"resourceType":"Patient","id":"a b"}"#, |e| {
                matches!(e, FhirError::InvalidId(_))
            }),
            (
                br#"{"resourceType":"Observation","subject":"Patient/x"}"#,
                |e| matches!(e, FhirError::InvalidField { .. }),
            ),
            (
                br#"{"resourceType":"Observation","effectiveDateTime":"yesterday"}"#,
                |e| matches!(e, FhirError::InvalidDate { .. }),
            ),
            (
                br#"{"resourceType":"Observation","id":"a","id":"b"}"#,
                |e| matches!(e, FhirError::InvalidJson(_)),
            ),
            (br#"{"resourceType":"Patient"} x"#, |e| {
                matches!(e, FhirError::InvalidJson(_))
            }),
        ];
        for (text, check) in cases {
            let e = Resource::parse(text.to_vec()).expect_err("must fail");
            assert!(check(&e), "{} -> {e:?}", String::from_utf8_lossy(text));
        }
        let deep = format!(
            "{{\"resourceType\":\"Basic\",\"x\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(
            Resource::parse(deep.into_bytes()),
            Err(FhirError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn with_id_and_rewrites_edit_only_their_bytes() {
        let r = Resource::parse(
            br#"{ "resourceType" : "Observation", "subject": {"reference":"urn:uuid:1"}, "v": 1.10 }"#
                .to_vec(),
        )
        .expect("valid");
        let r2 = r.with_id("new").expect("id");
        assert_eq!(
            r2.bytes(),
            br#"{"id":"new", "resourceType" : "Observation", "subject": {"reference":"urn:uuid:1"}, "v": 1.10 }"#
        );
        let r3 = r2
            .edit(None, |s| {
                (s == "urn:uuid:1").then(|| "Patient/p".to_owned())
            })
            .expect("rewrite");
        assert_eq!(r3.info().patient.as_deref(), Some("p"));
        assert!(r3
            .bytes()
            .ends_with(br#"{"reference":"Patient/p"}, "v": 1.10 }"#));
        let r4 = r3.with_id("other").expect("id");
        assert!(r4.bytes().starts_with(br#"{"id":"other","#));
    }

    #[test]
    fn references() {
        let p = |s| ResourceRef::parse(s).map(|r| r.to_string());
        assert_eq!(p("Patient/1").as_deref(), Some("Patient/1"));
        assert_eq!(
            p("http://x.org/fhir/Patient/1/_history/2").as_deref(),
            Some("Patient/1")
        );
        assert_eq!(p("#c1"), None);
        assert_eq!(p("urn:uuid:1"), None);
        assert_eq!(p("Nope/1"), None);
        assert_eq!(p("Patient"), None);
        assert_eq!(Coding::from_token("s|c"), Coding::new(Some("s"), "c"));
        assert_eq!(Coding::from_token("|c").token(), "|c");
    }
}
