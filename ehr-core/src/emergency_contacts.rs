//! Emergency access by any `k` of `n` emergency contacts.
//!
//! **Setup** ([`SecureRecord::setup_emergency_contacts`], a patient
//! device). A fresh *emergency identity* `E` receives the
//! [`EMERGENCY_SCOPE`] key like any device (a key wrap). `E`'s 32-byte seed
//! is split with Shamir's scheme over GF(256) ([`crate::shamir`]) into `n`
//! shares, one per contact, each sealed to that contact's X25519 key. The
//! [`EmergencySetup`] (E's public key, `k`, the duration of an opening, and
//! per contact the sealed share plus a BLAKE3 commitment to it) is a clear
//! `Basic` resource written by the owner device (only owner-written setups
//! are trusted), so every contact finds its own share in its replica.
//! `E`'s seed exists nowhere else; fewer than `k` shares say nothing
//! about it.
//!
//! **Opening.** Each contact releases its share to the person opening
//! ([`SecureRecord::release_emergency_share`]): the share re-sealed to the
//! opener's identity and signed by the contact ([`ReleasedShare`], a text
//! token to pass on by any channel). The opener
//! ([`SecureRecord::open_emergency`]) checks each released share (a listed
//! contact, its signature, its commitment), needs `k` distinct good ones
//! ([`EmergencyError::NotEnoughShares`], [`EmergencyError::ForgedShare`]),
//! rebuilds `E` and checks it against the setup, then reads the emergency
//! scope as `E`. It gets an [`EmergencySession`] that refuses reads once
//! the setup's duration has passed ([`EmergencyError::Expired`]) and an
//! [`EmergencyOpening`] notice signed by `E`.
//!
//! **Audit and the time limit.** A patient device that receives the notice
//! ([`SecureRecord::accept_emergency_opening`]) writes an AuditEvent (the
//! event the patient sees: who opened, with which contacts, until when).
//! [`SecureRecord::end_expired_emergency_openings`] (run by a patient device
//! when it can, e.g. on every sync) rotates the emergency scope away from
//! `E` once an opening's time is up and re-arms the same contacts with a
//! fresh `E`: after that, nothing written to the emergency scope is
//! readable with the old shares. Before the notice reaches the patient, the
//! contacts' and the opener's self-reported read logs ([`crate::read_log`])
//! show the releases and reads. What was read cannot be recalled.

use crate::audit::{AuditAction, AUDIT_SYSTEM};
use crate::consent::Role;
use crate::emergency::EmergencyCard;
use crate::error::Error;
use crate::keys::{b64_decode, b64_encode, open, seal, Identity, IdentityPublic};
use crate::record::Query;
use crate::scope_crypto::{SealError, EMERGENCY_SCOPE};
use crate::secure::SecureRecord;
use crate::shamir::{self, Share};
use serde::{Deserialize, Serialize};

/// The coding system of emergency-contact `Basic` resources.
pub const EMERGENCY_SYSTEM: &str = "urn:ehr-core:emergency";
const SETUP_URL: &str = "urn:ehr-core:emergency-setup";
const OPENING_URL: &str = "urn:ehr-core:emergency-opening";
const COMMIT_DOMAIN: &str = "ehr-core 2026 emergency share commitment v1";
const RELEASE_DOMAIN: &[u8] = b"ehr-core emergency share release v1";
const OPENING_DOMAIN: &[u8] = b"ehr-core emergency opening v1";
/// The prefix of a [`ReleasedShare`]'s text form.
pub const SHARE_PREFIX: &str = "ehr-share1:";
/// The prefix of an [`EmergencyOpening`]'s text form.
pub const OPENING_PREFIX: &str = "ehr-opening1:";

/// What emergency access by contacts can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmergencyError {
    /// `k` of `n` is not possible, or contacts repeat or are invalid keys.
    #[error("invalid emergency contacts: {0}")]
    InvalidSetup(String),
    /// The record has no emergency-contact setup (or not the one named).
    #[error("no emergency-contact setup for this record")]
    NoSetup,
    /// This device is not one of the emergency contacts.
    #[error("this device is not an emergency contact of this record")]
    NotAContact,
    /// Fewer good shares than the threshold.
    #[error("{have} valid share(s), {need} needed")]
    NotEnoughShares {
        /// Distinct valid shares given.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// A share that is not what its contact was given (bad signature,
    /// wrong commitment, not for this opener, not from a listed contact).
    #[error("forged or altered share from {0}")]
    ForgedShare(String),
    /// The opening's time is over.
    #[error("the emergency opening has expired")]
    Expired,
    /// A token or notice that does not decode.
    #[error("malformed emergency token")]
    Malformed,
}

/// One contact's entry in a setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactShare {
    /// The contact's identity.
    pub contact: IdentityPublic,
    /// Its share, sealed to it.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// BLAKE3 commitment to the share (checked when it is used).
    pub commitment: [u8; 32],
}

/// A k-of-n emergency-contact setup, as stored in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencySetup {
    /// The emergency identity the shares rebuild.
    pub emergency: IdentityPublic,
    /// How many contacts must release their share.
    pub threshold: u8,
    /// How long an opening lasts (ms).
    pub duration_ms: u64,
    /// When it was set up (ms since the epoch, the patient's clock).
    pub created: u64,
    /// The contacts and their sealed shares.
    pub contacts: Vec<ContactShare>,
}

/// What a contact's sealed share holds.
#[derive(Serialize, Deserialize)]
struct SharePlain {
    emergency: IdentityPublic,
    share: Share,
}

/// A contact's share, released to one opener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedShare {
    /// The setup's emergency identity.
    pub emergency: IdentityPublic,
    /// The contact who released it.
    pub contact: IdentityPublic,
    /// The opener it is sealed to.
    pub opener: IdentityPublic,
    /// The share, sealed to the opener.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// The contact's signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The notice of an opening, signed by the emergency identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyOpening {
    /// The setup's emergency identity.
    pub emergency: IdentityPublic,
    /// When it was opened (the opener's clock, ms since the epoch).
    pub time: u64,
    /// Until when the opening lasts.
    pub expires: u64,
    /// Who opened it, as the opener states it.
    pub responder: String,
    /// The contacts whose shares were used.
    pub contacts: Vec<IdentityPublic>,
    /// The emergency identity's signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn to_text<T: Serialize>(prefix: &str, v: &T) -> String {
    format!(
        "{prefix}{}",
        crate::view::hex(&postcard::to_stdvec(v).unwrap_or_default())
    )
}

fn from_text<T: for<'de> Deserialize<'de>>(prefix: &str, text: &str) -> Result<T, EmergencyError> {
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or(EmergencyError::Malformed)?;
    let bytes = hex_decode(body).ok_or(EmergencyError::Malformed)?;
    match postcard::take_from_bytes(&bytes) {
        Ok((v, [])) => Ok(v),
        _ => Err(EmergencyError::Malformed),
    }
}

impl ReleasedShare {
    /// The text token (`ehr-share1:` + hex).
    pub fn to_text(&self) -> String {
        to_text(SHARE_PREFIX, self)
    }
    /// Parses [`ReleasedShare::to_text`].
    pub fn parse(text: &str) -> Result<ReleasedShare, EmergencyError> {
        from_text(SHARE_PREFIX, text)
    }
    fn message(&self) -> Vec<u8> {
        let mut m = RELEASE_DOMAIN.to_vec();
        m.extend_from_slice(&self.emergency.0);
        m.extend_from_slice(&self.contact.0);
        m.extend_from_slice(&self.opener.0);
        m.extend_from_slice(&self.sealed);
        m
    }
}

impl EmergencyOpening {
    /// The text token (`ehr-opening1:` + hex).
    pub fn to_text(&self) -> String {
        to_text(OPENING_PREFIX, self)
    }
    /// Parses [`EmergencyOpening::to_text`].
    pub fn parse(text: &str) -> Result<EmergencyOpening, EmergencyError> {
        from_text(OPENING_PREFIX, text)
    }
    fn message(&self) -> Vec<u8> {
        let mut m = OPENING_DOMAIN.to_vec();
        m.extend_from_slice(&self.emergency.0);
        m.extend_from_slice(&self.time.to_le_bytes());
        m.extend_from_slice(&self.expires.to_le_bytes());
        m.extend_from_slice(&(self.responder.len() as u64).to_le_bytes());
        m.extend_from_slice(self.responder.as_bytes());
        for c in &self.contacts {
            m.extend_from_slice(&c.0);
        }
        m
    }
    /// Checks the emergency identity's signature.
    pub fn verify(&self) -> Result<(), EmergencyError> {
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EmergencyError::Malformed)?;
        self.emergency
            .verify(&self.message(), &sig)
            .map_err(|_| EmergencyError::ForgedShare("the opening notice".into()))
    }
}

fn commitment(emergency: &IdentityPublic, share: &Share) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(COMMIT_DOMAIN);
    h.update(&emergency.0);
    h.update(&[share.x]);
    h.update(&share.y);
    *h.finalize().as_bytes()
}

/// An open emergency scope: reads until the opening's time is up.
pub struct EmergencySession {
    secure: SecureRecord,
    card: EmergencyCard,
    responder: String,
    /// The notice to hand to the patient.
    pub opening: EmergencyOpening,
    /// The emergency resources read at opening (decrypted JSON).
    pub resources: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EmergencySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmergencySession")
            .field("opening", &self.opening)
            .finish_non_exhaustive()
    }
}

impl EmergencySession {
    /// Reads the emergency scope again (what replication brought since),
    /// unless the opening has expired.
    pub async fn read(&self) -> Result<Vec<Vec<u8>>, Error> {
        if self.secure.record().inner.clock.now_ms() >= self.opening.expires {
            return Err(EmergencyError::Expired.into());
        }
        Ok(self
            .secure
            .emergency_open(&self.card, &self.responder)
            .await?
            .resources)
    }
}

fn setup_json(patient: &str, s: &EmergencySetup) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Basic",
        "id": format!("emc-{}", s.emergency.fingerprint()),
        "code": {"coding": [{"system": EMERGENCY_SYSTEM, "code": "contacts-setup"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "extension": [{"url": SETUP_URL, "valueString": b64_encode(&postcard::to_stdvec(s).unwrap_or_default())}],
    })
}

fn extension_of(bytes: &[u8], url: &str) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let ext = v.get("extension")?.as_array()?;
    let e = ext
        .iter()
        .find(|e| e.get("url").and_then(|u| u.as_str()) == Some(url))?;
    b64_decode(e.get("valueString")?.as_str()?)
}

impl SecureRecord {
    /// Owner-written `Basic` resources with `code` in [`EMERGENCY_SYSTEM`],
    /// decoded from extension `url`.
    async fn owner_basics<T: for<'de> Deserialize<'de>>(
        &self,
        code: &str,
        url: &str,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        let mut q = Query::new("Basic")
            .code(&format!("{EMERGENCY_SYSTEM}|{code}"))
            .limit(1000);
        loop {
            let page = self.record().search(&q).await?;
            for v in &page.entries {
                let owner = matches!(
                    self.record().grant_of(&v.author).await?,
                    Some((g, false)) if g.role == Role::Owner
                );
                let decoded = v
                    .resource
                    .as_deref()
                    .and_then(|r| extension_of(r, url))
                    .and_then(|b| postcard::from_bytes(&b).ok());
                if let (true, Some(d)) = (owner, decoded) {
                    out.push(d);
                }
            }
            match page.next {
                Some(c) => q = q.after(c),
                None => return Ok(out),
            }
        }
    }

    /// Every emergency-contact setup written by an owner device, oldest
    /// first.
    pub async fn emergency_setups(&self) -> Result<Vec<EmergencySetup>, Error> {
        let mut all: Vec<EmergencySetup> = self
            .owner_basics("contacts-setup", SETUP_URL)
            .await?
            .into_iter()
            .filter(|s: &EmergencySetup| {
                s.threshold >= 1 && usize::from(s.threshold) <= s.contacts.len()
            })
            .collect();
        all.sort_by_key(|s| (s.created, s.emergency));
        Ok(all)
    }

    /// The current (latest) emergency-contact setup.
    pub async fn emergency_setup(&self) -> Result<Option<EmergencySetup>, Error> {
        Ok(self.emergency_setups().await?.pop())
    }

    /// Sets up emergency access by any `threshold` of `contacts` (owner
    /// devices), each opening lasting `duration_ms`. Replaces (and rotates
    /// the emergency scope away from) any earlier setup.
    pub async fn setup_emergency_contacts(
        &self,
        contacts: &[IdentityPublic],
        threshold: usize,
        duration_ms: u64,
    ) -> Result<EmergencySetup, Error> {
        let invalid = |m: String| Error::from(EmergencyError::InvalidSetup(m));
        if threshold == 0 || threshold > contacts.len() || contacts.len() > 255 {
            return Err(invalid(format!(
                "{threshold} of {} (need 1 <= k <= n <= 255)",
                contacts.len()
            )));
        }
        for (i, c) in contacts.iter().enumerate() {
            if contacts[..i].contains(c) {
                return Err(invalid(format!("{} is listed twice", c.fingerprint())));
            }
            c.x25519()
                .map_err(|_| invalid(format!("{} is not a valid key", c.fingerprint())))?;
        }
        let old = self.emergency_setup().await?;
        let entropy = self.record().inner.entropy.clone();
        let e = Identity::generate(&*entropy).map_err(SealError::from)?;
        let shares = shamir::split(&e.seed(), threshold, contacts.len(), &*entropy)
            .map_err(|err| invalid(err.to_string()))?;
        let mut entries = Vec::with_capacity(contacts.len());
        for (c, share) in contacts.iter().zip(shares) {
            let commitment = commitment(&e.public(), &share);
            let plain = postcard::to_stdvec(&SharePlain {
                emergency: e.public(),
                share,
            })
            .map_err(|_| EmergencyError::Malformed)?;
            let sealed = seal(c, &plain, &*entropy).map_err(SealError::from)?;
            entries.push(ContactShare {
                contact: *c,
                sealed,
                commitment,
            });
        }
        let setup = EmergencySetup {
            emergency: e.public(),
            threshold: u8::try_from(threshold).unwrap_or(u8::MAX),
            duration_ms,
            created: self.record().inner.clock.now_ms(),
            contacts: entries,
        };
        if let Some(old) = old {
            self.rotate_away(&[old.emergency]).await?;
        }
        self.share(e.public(), None, &[EMERGENCY_SCOPE]).await?;
        // Earlier epochs too: an emergency team needs the allergies written
        // before the last rotation as much as the new ones.
        self.refresh_keys().await?;
        let ring = self.keyring();
        let current = ring.current(EMERGENCY_SCOPE).map(|k| k.epoch());
        let mut older = Vec::new();
        for k in ring.iter() {
            if k.scope() == EMERGENCY_SCOPE && Some(k.epoch()) != current {
                older.push(self.wrap(k, e.public(), None)?);
            }
        }
        self.write_wraps(&older).await?;
        let patient = self.record().patient_id();
        self.record()
            .put(setup_json(&patient, &setup).to_string().into_bytes())
            .await?;
        let names: Vec<String> = contacts.iter().map(IdentityPublic::fingerprint).collect();
        self.audit(
            AuditAction::Emergency,
            true,
            &e.public().fingerprint(),
            &format!(
                "emergency contacts set up: any {threshold} of {} ({}), each opening lasts {} min",
                contacts.len(),
                names.join(","),
                duration_ms / 60_000
            ),
        )
        .await?;
        Ok(setup)
    }

    /// As an emergency contact: releases this device's share of the
    /// current setup to `opener` (sealed to it, signed by this device).
    pub async fn release_emergency_share(
        &self,
        opener: IdentityPublic,
    ) -> Result<ReleasedShare, Error> {
        opener.x25519().map_err(SealError::from)?;
        let setup = self
            .emergency_setup()
            .await?
            .ok_or(EmergencyError::NoSetup)?;
        let me = self.identity();
        let entry = setup
            .contacts
            .iter()
            .find(|c| c.contact == me)
            .ok_or(EmergencyError::NotAContact)?;
        let plain = open(self.identity_secret(), &entry.sealed)
            .map_err(|_| EmergencyError::ForgedShare("the stored share".into()))?;
        let sealed =
            seal(&opener, &plain, &*self.record().inner.entropy).map_err(SealError::from)?;
        let mut r = ReleasedShare {
            emergency: setup.emergency,
            contact: me,
            opener,
            sealed,
            signature: Vec::new(),
        };
        r.signature = self.identity_secret().sign(&r.message()).to_vec();
        self.log_read(
            "Basic",
            &format!("emc-{}", setup.emergency.fingerprint()),
            &format!("emergency share released to {}", opener.fingerprint()),
        )
        .await?;
        Ok(r)
    }

    /// Opens the emergency scope with released shares addressed to this
    /// device; `responder` names who opens (it goes into the notice).
    pub async fn open_emergency(
        &self,
        shares: &[ReleasedShare],
        responder: &str,
    ) -> Result<EmergencySession, Error> {
        let first = shares
            .first()
            .ok_or(EmergencyError::NotEnoughShares { have: 0, need: 1 })?;
        let setup = self
            .emergency_setups()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.emergency == first.emergency)
            .ok_or(EmergencyError::NoSetup)?;
        let need = usize::from(setup.threshold);
        let me = self.identity();
        let mut good: Vec<(IdentityPublic, Share)> = Vec::new();
        for r in shares {
            let forged = || EmergencyError::ForgedShare(r.contact.fingerprint());
            let entry = setup
                .contacts
                .iter()
                .find(|c| c.contact == r.contact)
                .ok_or_else(forged)?;
            let sig: [u8; 64] = r.signature.as_slice().try_into().map_err(|_| forged())?;
            if r.emergency != setup.emergency || r.opener != me {
                return Err(forged().into());
            }
            r.contact.verify(&r.message(), &sig).map_err(|_| forged())?;
            let plain = open(self.identity_secret(), &r.sealed).map_err(|_| forged())?;
            let p: SharePlain = postcard::from_bytes(&plain).map_err(|_| forged())?;
            if p.emergency != setup.emergency
                || commitment(&setup.emergency, &p.share) != entry.commitment
            {
                return Err(forged().into());
            }
            if !good.iter().any(|(c, _)| *c == r.contact) {
                good.push((r.contact, p.share));
            }
        }
        if good.len() < need {
            return Err(EmergencyError::NotEnoughShares {
                have: good.len(),
                need,
            }
            .into());
        }
        let picked: Vec<Share> = good.iter().take(need).map(|(_, s)| s.clone()).collect();
        let seed = shamir::combine(&picked)
            .map_err(|_| EmergencyError::ForgedShare("the combined shares".into()))?;
        let e = Identity::from_seed(seed);
        if e.public() != setup.emergency {
            return Err(EmergencyError::ForgedShare("the combined shares".into()).into());
        }
        let card = EmergencyCard::from_parts(self.record().key(), e.clone());
        let secure = SecureRecord::with_identity(self.record().clone(), e.clone());
        let view = secure.emergency_open(&card, responder).await?;
        for r in &view.resources {
            if let Ok(res) = crate::fhir::Resource::parse(r.clone()) {
                let purpose = format!("emergency access by {responder}");
                let id = res.id().unwrap_or_default().to_owned();
                self.log_read(res.resource_type(), &id, &purpose).await?;
            }
        }
        let time = self.record().inner.clock.now_ms();
        let mut opening = EmergencyOpening {
            emergency: setup.emergency,
            time,
            expires: time.saturating_add(setup.duration_ms),
            responder: responder.to_owned(),
            contacts: good.iter().take(need).map(|(c, _)| *c).collect(),
            signature: Vec::new(),
        };
        opening.signature = e.sign(&opening.message()).to_vec();
        Ok(EmergencySession {
            secure,
            card,
            responder: responder.to_owned(),
            opening,
            resources: view.resources,
        })
    }

    /// Records an opening (patient devices): checks the notice, writes an
    /// AuditEvent the patient sees, and remembers the opening so that
    /// [`SecureRecord::end_expired_emergency_openings`] ends it on time.
    pub async fn accept_emergency_opening(&self, n: &EmergencyOpening) -> Result<(), Error> {
        n.verify()?;
        if !self
            .emergency_setups()
            .await?
            .iter()
            .any(|s| s.emergency == n.emergency)
        {
            return Err(EmergencyError::NoSetup.into());
        }
        let names: Vec<String> = n.contacts.iter().map(IdentityPublic::fingerprint).collect();
        self.audit(
            AuditAction::Emergency,
            true,
            &n.emergency.fingerprint(),
            &format!(
                "emergency scope opened by {} with contacts {} at {}, until {}",
                n.responder,
                names.join(","),
                crate::fhir::format_instant(n.time),
                crate::fhir::format_instant(n.expires)
            ),
        )
        .await?;
        let json = serde_json::json!({
            "resourceType": "Basic",
            "id": format!("emo-{}-{}", n.emergency.fingerprint(), n.time),
            "code": {"coding": [{"system": EMERGENCY_SYSTEM, "code": "opening"}]},
            "subject": {"reference": format!("Patient/{}", self.record().patient_id())},
            "extension": [{"url": OPENING_URL, "valueString": b64_encode(&postcard::to_stdvec(n).unwrap_or_default())}],
        });
        self.record().put(json.to_string().into_bytes()).await?;
        Ok(())
    }

    /// The openings accepted so far.
    pub async fn emergency_openings(&self) -> Result<Vec<EmergencyOpening>, Error> {
        let mut v: Vec<EmergencyOpening> = self.owner_basics("opening", OPENING_URL).await?;
        v.retain(|o| o.verify().is_ok());
        v.sort_by_key(|o| o.time);
        Ok(v)
    }

    /// Ends every accepted opening whose time is up (patient devices):
    /// rotates the emergency scope away from the opened emergency identity
    /// and re-arms the same contacts with a fresh one. Returns how many
    /// setups were ended. Safe to run as often as wanted.
    pub async fn end_expired_emergency_openings(&self) -> Result<usize, Error> {
        let now = self.record().inner.clock.now_ms();
        let Some(current) = self.emergency_setup().await? else {
            return Ok(0);
        };
        let due = self
            .emergency_openings()
            .await?
            .iter()
            .any(|o| o.emergency == current.emergency && o.expires <= now);
        if !due {
            return Ok(0);
        }
        let contacts: Vec<IdentityPublic> = current.contacts.iter().map(|c| c.contact).collect();
        // Re-arming rotates the scope away from the old identity.
        self.setup_emergency_contacts(
            &contacts,
            usize::from(current.threshold),
            current.duration_ms,
        )
        .await?;
        self.audit(
            AuditAction::Emergency,
            true,
            &current.emergency.fingerprint(),
            "emergency opening ended; contacts re-armed with a new emergency key",
        )
        .await?;
        Ok(1)
    }

    /// The emergency AuditEvents in the record (set-ups, openings, ends,
    /// cards), oldest first: what the patient is shown.
    pub async fn emergency_events(&self) -> Result<Vec<Vec<u8>>, Error> {
        let needle = format!("\"code\":\"{}\"", AuditAction::Emergency.code());
        let mut v: Vec<(u64, Vec<u8>)> = self
            .record()
            .everything()
            .await?
            .into_iter()
            .filter(|v| v.target.resource_type == "AuditEvent")
            .filter_map(|v| v.resource.map(|r| (v.time, r)))
            .filter(|(_, r)| {
                String::from_utf8_lossy(r).contains(&needle)
                    && String::from_utf8_lossy(r).contains(AUDIT_SYSTEM)
            })
            .collect();
        v.sort_by_key(|(t, _)| *t);
        Ok(v.into_iter().map(|(_, r)| r).collect())
    }
}
