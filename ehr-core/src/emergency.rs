//! Emergency access (break-glass) with an emergency card.
//!
//! The patient pre-authorises the [`EMERGENCY_SCOPE`] (by convention it
//! holds allergies, medications, conditions and immunizations:
//! [`crate::scope_crypto::EMERGENCY_TYPES`]) for an [`EmergencyCard`]: a
//! fresh identity whose secret is printed on the card (text or QR), to
//! which the emergency scope key is wrapped like to any device.
//!
//! A responder who holds the card joins the record (the card carries its
//! key), opens the emergency scope with the card identity
//! ([`SecureRecord::emergency_open`]) and gets a signed [`EmergencyNotice`]
//! to hand back (over any channel; the responder usually cannot write to
//! the record). Any patient device that receives the notice
//! ([`SecureRecord::accept_emergency_notice`]) checks the card's signature,
//! writes an AuditEvent (the event the patient sees) and rotates the
//! emergency scope away from the card, which ends its access to anything
//! written afterwards. Cards also expire: [`SecureRecord::expire_cards`]
//! rotates away every card past its validity. As with any revocation, what
//! the card already opened cannot be recalled.
//!
//! For access by any `k` of `n` emergency contacts instead of one card, see
//! [`crate::emergency_contacts`].

use crate::audit::AuditAction;
use crate::error::Error;
use crate::keys::{Identity, IdentityPublic, KeyError};
use crate::scope_crypto::{SealError, EMERGENCY_SCOPE, EMERGENCY_TYPES};
use crate::secure::SecureRecord;
use serde::{Deserialize, Serialize};

/// The prefix of a card's text form.
pub const CARD_PREFIX: &str = "ehr-card1:";

/// An emergency card: the record key and the card's identity secret.
#[derive(Clone)]
pub struct EmergencyCard {
    /// The record's key.
    pub record_key: [u8; 32],
    identity: Identity,
}

impl std::fmt::Debug for EmergencyCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmergencyCard")
            .field("identity", &self.identity.public())
            .finish_non_exhaustive()
    }
}

impl EmergencyCard {
    pub(crate) fn from_parts(record_key: [u8; 32], identity: Identity) -> EmergencyCard {
        EmergencyCard {
            record_key,
            identity,
        }
    }

    /// The card's public identity.
    pub fn public(&self) -> IdentityPublic {
        self.identity.public()
    }

    /// The card's identity (to open the record with).
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    /// The text printed on the card: prefix, then hex of the record key,
    /// the secret and a 4-byte checksum.
    pub fn to_text(&self) -> String {
        let mut b = Vec::with_capacity(68);
        b.extend_from_slice(&self.record_key);
        b.extend_from_slice(&self.identity.seed());
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..4]);
        format!("{CARD_PREFIX}{}", crate::view::hex(&b))
    }

    /// Parses [`EmergencyCard::to_text`].
    pub fn parse(text: &str) -> Result<EmergencyCard, SealError> {
        let body = text
            .trim()
            .strip_prefix(CARD_PREFIX)
            .ok_or(SealError::Malformed)?;
        if body.len() != 136 || !body.is_ascii() {
            return Err(SealError::Malformed);
        }
        let mut b = [0u8; 68];
        for (i, out) in b.iter_mut().enumerate() {
            let pair = body.get(2 * i..2 * i + 2).ok_or(SealError::Malformed)?;
            *out = u8::from_str_radix(pair, 16).map_err(|_| SealError::Malformed)?;
        }
        if blake3::hash(&b[..64]).as_bytes()[..4] != b[64..] {
            return Err(SealError::Malformed);
        }
        let mut key = [0u8; 32];
        let mut seed = [0u8; 32];
        key.copy_from_slice(&b[..32]);
        seed.copy_from_slice(&b[32..64]);
        Ok(EmergencyCard {
            record_key: key,
            identity: Identity::from_seed(seed),
        })
    }
}

/// Proof that a card was used, signed by the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyNotice {
    /// The card.
    pub card: IdentityPublic,
    /// When it was opened (the responder's clock, ms since the epoch).
    pub time: u64,
    /// Who opened it, as the responder states it.
    pub responder: String,
    /// The card's signature over the fields above.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

fn notice_message(card: &IdentityPublic, time: u64, responder: &str) -> Vec<u8> {
    let mut m = b"ehr-core emergency notice v1".to_vec();
    m.extend_from_slice(&card.0);
    m.extend_from_slice(&time.to_le_bytes());
    m.extend_from_slice(responder.as_bytes());
    m
}

/// What the emergency scope showed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmergencyView {
    /// The emergency-scope resources (decrypted JSON), by type then id.
    pub resources: Vec<Vec<u8>>,
    /// The notice to hand back to the patient.
    pub notice: EmergencyNotice,
}

impl SecureRecord {
    /// Issues an emergency card valid until `valid_until` (ms since the
    /// epoch) and shares the emergency scope with it (owner devices only).
    pub async fn create_emergency_card(&self, valid_until: u64) -> Result<EmergencyCard, Error> {
        let identity =
            Identity::generate(&*self.record().inner.entropy).map_err(SealError::from)?;
        let card = EmergencyCard {
            record_key: self.record().key(),
            identity,
        };
        self.share(card.public(), None, &[EMERGENCY_SCOPE]).await?;
        self.audit(
            AuditAction::Emergency,
            true,
            &card.public().fingerprint(),
            &format!(
                "card issued, valid until {}",
                crate::fhir::format_instant(valid_until)
            ),
        )
        .await?;
        self.store_card(&card.public(), valid_until).await?;
        Ok(card)
    }

    async fn store_card(&self, card: &IdentityPublic, valid_until: u64) -> Result<(), Error> {
        let json = serde_json::json!({
            "resourceType": "Basic",
            "id": format!("card-{}", card.fingerprint()),
            "code": {"coding": [{"system": crate::audit::AUDIT_SYSTEM, "code": "emergency-card"}]},
            "subject": {"reference": format!("Patient/{}", self.record().patient_id())},
            "extension": [{"url": "urn:ehr-core:card", "valueString": format!("{}.{valid_until}", crate::view::hex(&card.0))}],
        });
        self.put(crate::invite::OWNER_SCOPE, json.to_string().into_bytes())
            .await?;
        Ok(())
    }

    /// Opens the emergency scope as the card (this `SecureRecord` must use
    /// the card's identity: [`SecureRecord::with_identity`]) and signs a
    /// notice naming `responder`.
    pub async fn emergency_open(
        &self,
        card: &EmergencyCard,
        responder: &str,
    ) -> Result<EmergencyView, Error> {
        if self.identity() != card.public() {
            return Err(SealError::Key(KeyError::CannotOpen).into());
        }
        self.refresh_keys().await?;
        let mut resources = Vec::new();
        for v in self.record().everything().await? {
            if !EMERGENCY_TYPES.contains(&v.target.resource_type.as_str()) {
                continue;
            }
            let Some(stored) = v.resource else { continue };
            if crate::scope_crypto::sealed_info(&stored).is_some_and(|i| i.scope == EMERGENCY_SCOPE)
            {
                if let Ok(plain) = self.open_stored(&stored).await {
                    resources.push(plain);
                }
            }
        }
        let time = self.record().inner.clock.now_ms();
        let signature = card
            .identity
            .sign(&notice_message(&card.public(), time, responder))
            .to_vec();
        Ok(EmergencyView {
            resources,
            notice: EmergencyNotice {
                card: card.public(),
                time,
                responder: responder.to_owned(),
                signature,
            },
        })
    }

    /// Records a card's use (owner devices): checks the card's signature and
    /// that this record issued the card, writes an AuditEvent and rotates
    /// the emergency scope away from the card.
    pub async fn accept_emergency_notice(&self, notice: &EmergencyNotice) -> Result<(), Error> {
        let sig: [u8; 64] = notice
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Key(KeyError::BadSignature))?;
        notice
            .card
            .verify(
                &notice_message(&notice.card, notice.time, &notice.responder),
                &sig,
            )
            .map_err(SealError::from)?;
        if self.card_validity(&notice.card).await?.is_none() {
            return Err(Error::NotFound(format!(
                "emergency card {}",
                notice.card.fingerprint()
            )));
        }
        self.audit(
            AuditAction::Emergency,
            true,
            &notice.card.fingerprint(),
            &format!(
                "opened by {} at {}",
                notice.responder,
                crate::fhir::format_instant(notice.time)
            ),
        )
        .await?;
        self.rotate_away(&[notice.card]).await?;
        Ok(())
    }

    async fn card_validity(&self, card: &IdentityPublic) -> Result<Option<u64>, Error> {
        let Some(plain) = self
            .get("Basic", &format!("card-{}", card.fingerprint()))
            .await?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&plain);
        let needle = format!("\"{}.", crate::view::hex(&card.0));
        Ok(text.find(&needle).and_then(|at| {
            let rest = &text[at + needle.len()..];
            rest.split('"').next().and_then(|n| n.parse().ok())
        }))
    }

    /// Rotates the emergency scope away from `cards` whose validity ended
    /// at or before now; returns how many were expired.
    pub async fn expire_cards(&self, cards: &[IdentityPublic]) -> Result<usize, Error> {
        let now = self.record().inner.clock.now_ms();
        let mut expired = Vec::new();
        for c in cards {
            if self.card_validity(c).await?.is_some_and(|v| v <= now) {
                expired.push(*c);
            }
        }
        if !expired.is_empty() {
            self.rotate_away(&expired).await?;
        }
        Ok(expired.len())
    }
}
