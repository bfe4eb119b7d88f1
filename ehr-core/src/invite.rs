//! Invites: how a patient lets a provider in.
//!
//! The patient creates an [`Invite`] bound to a role, SMART scopes, key
//! scopes and an expiry ([`SecureRecord::create_invite`]). Its text form
//! (`ehr-invite1:` and base32, with a checksum) holds the record key, the
//! inviting device's identity, the invite id and a one-time secret; the
//! role, scopes and expiry stay in the record, in an invite resource
//! sealed under the [`OWNER_SCOPE`] so that every patient device can answer
//! it and nobody else (not even a mirror) can read its MAC key.
//!
//! Redemption runs over an already-secured connection (a swarm Noise
//! channel) and is written sans-IO: bytes in, bytes out.
//!
//! 1. The provider sends `Redeem { id, writer, identity, proof }` where
//!    `proof` is a keyed BLAKE3 MAC, under a key derived from the secret,
//!    over the channel's handshake hash, the invite id and the provider's
//!    writer and identity keys. The secret itself never leaves the
//!    provider.
//! 2. A patient device checks the invite state (unknown, cancelled, used,
//!    expired) and the MAC against *its own* view of the handshake hash,
//!    marks the invite used, grants the writer exactly the invite's grant,
//!    shares the invite's key scopes, and answers `Accepted { proof }` (a
//!    MAC with another label, so the provider knows it spoke to a holder
//!    of the invite).
//!
//! A relaying man in the middle runs two channels with two handshake
//! hashes; the provider's MAC is bound to the first and fails on the second
//! ([`InviteError::BadProof`]). Swapping in another writer key fails the
//! same way. Any failure grants nothing.
//!
//! Two patient devices that answer the same invite while partitioned from
//! each other can both accept it locally; the grant is an
//! [`OpBody::InviteGrant`](crate::op::OpBody::InviteGrant), and `apply`
//! lets only the first in linear order take effect: the later one is
//! rejected on every peer and recorded as an
//! [`InviteTaken`](crate::apply::Rejection::InviteTaken) rejection. Known
//! limit: the losing provider was sent the invite's scope keys before the
//! race was decided; [`SecureRecord::rotate_lost_redemptions`] rotates
//! every scope such a device holds (what it already had cannot be
//! recalled).
//!
//! Over the network (swarm connections or any secured channel), see
//! [`SecureRecord::admit`], [`SecureRecord::redeem`],
//! [`SecureRecord::sync_with_invites`] and
//! [`SecureRecord::join_with_invite`].

use crate::audit::AuditAction;
use crate::consent::{Grant, Role};
use crate::error::Error;
use crate::keys::{b64_decode, b64_encode, random, IdentityPublic};
use crate::op::WriterKey;
use crate::scope_crypto::{check_scope, sealed_info, SealError};
use crate::secure::SecureRecord;
use serde::{Deserialize, Serialize};

/// The scope only the patient's own devices hold (invite state).
pub const OWNER_SCOPE: &str = "owner";
/// The prefix of an invite's text form.
pub const INVITE_PREFIX: &str = "ehr-invite1:";
/// The extension URL of an invite's stored state.
pub const INVITE_URL: &str = "urn:ehr-core:invite";

const MAC_DOMAIN: &str = "ehr-core 2026 invite mac v1";
const MSG_FORMAT: u8 = 1;

/// Why an invite cannot be used. Every failure grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The invite text or a protocol message does not parse, or its
    /// checksum is wrong (a typo or tampering).
    #[error("malformed or tampered invite or message")]
    Malformed,
    /// No invite with this id was issued by a patient device (forged).
    #[error("unknown invite")]
    Unknown,
    /// The invite has expired.
    #[error("the invite has expired")]
    Expired,
    /// The invite was already redeemed.
    #[error("the invite was already used")]
    AlreadyUsed,
    /// The patient cancelled the invite.
    #[error("the invite was cancelled")]
    Cancelled,
    /// The proof does not match: the redeemer does not hold the secret, or
    /// the request was relayed from another channel (man in the middle),
    /// or its keys were swapped.
    #[error("invalid proof: wrong secret or relayed request")]
    BadProof,
    /// The answer's proof does not match: the other side does not hold the
    /// invite (an impostor patient device).
    #[error("the answer does not come from a holder of the invite")]
    BadReply,
    /// The answering device could not record the grant (storage, or it is
    /// not an owner device).
    #[error("the patient device could not complete the grant")]
    Failed,
    /// No patient device answered the redemption (unreachable, or the
    /// connection closed before an answer).
    #[error("no patient device answered the invite")]
    NoAnswer,
    /// The invite is for another record than the one redeeming it.
    #[error("the invite is for another record")]
    WrongRecord,
    /// Too many strangers are already waiting on the invite channel
    /// ([`crate::InviteGate`]): refused before anything was read.
    #[error("too many invite redemptions pending: try again later")]
    Busy,
    /// The peer sent no redemption within the time allowed
    /// ([`crate::InviteGate`]).
    #[error("no invite redemption arrived in time")]
    TimedOut,
}

/// An invite as handed to a provider (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// The record's key (to join it).
    pub record_key: [u8; 32],
    /// The inviting patient device.
    pub patient_device: IdentityPublic,
    /// The invite's id.
    pub id: [u8; 16],
    secret: [u8; 32],
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("id", &crate::view::hex(&self.id))
            .finish_non_exhaustive()
    }
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn b32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(B32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(B32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn b32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B32.iter().position(|&x| x == c.to_ascii_lowercase())? as u32;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

impl Invite {
    /// The text form: `ehr-invite1:` then base32 of the fields and a
    /// 4-byte checksum.
    pub fn to_text(&self) -> String {
        let mut b = Vec::with_capacity(116);
        b.extend_from_slice(&self.record_key);
        b.extend_from_slice(&self.patient_device.0);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(&self.secret);
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..4]);
        format!("{INVITE_PREFIX}{}", b32_encode(&b))
    }

    /// Parses [`Invite::to_text`] (case-insensitive, surrounding
    /// whitespace ignored).
    pub fn parse(text: &str) -> Result<Invite, InviteError> {
        let t = text.trim();
        let body = t
            .get(..INVITE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(INVITE_PREFIX))
            .and_then(|_| t.get(INVITE_PREFIX.len()..))
            .ok_or(InviteError::Malformed)?;
        let b = b32_decode(body).ok_or(InviteError::Malformed)?;
        if b.len() != 116 || b32_encode(&b) != body.to_ascii_lowercase() {
            return Err(InviteError::Malformed);
        }
        let (fields, sum) = b.split_at(112);
        if blake3::hash(fields).as_bytes()[..4] != *sum {
            return Err(InviteError::Malformed);
        }
        let arr = |r: std::ops::Range<usize>| fields.get(r).unwrap_or_default().to_vec();
        let mut inv = Invite {
            record_key: [0; 32],
            patient_device: IdentityPublic([0; 32]),
            id: [0; 16],
            secret: [0; 32],
        };
        inv.record_key.copy_from_slice(&arr(0..32));
        inv.patient_device.0.copy_from_slice(&arr(32..64));
        inv.id.copy_from_slice(&arr(64..80));
        inv.secret.copy_from_slice(&arr(80..112));
        Ok(inv)
    }

    fn mac_key(&self) -> [u8; 32] {
        blake3::derive_key(MAC_DOMAIN, &self.secret)
    }

    /// A copy holding a different secret (for tests of wrong secrets).
    #[doc(hidden)]
    pub fn with_secret(mut self, secret: [u8; 32]) -> Invite {
        self.secret = secret;
        self
    }
}

fn mac(
    key: &[u8; 32],
    label: &str,
    hh: &[u8],
    id: &[u8; 16],
    writer: &WriterKey,
    identity: &IdentityPublic,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(label.as_bytes());
    h.update(&(hh.len() as u64).to_le_bytes());
    h.update(hh);
    h.update(id);
    h.update(writer);
    h.update(&identity.0);
    h.finalize()
}

/// The redemption protocol's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InviteMsg {
    /// Provider to patient device.
    Redeem {
        /// The invite.
        id: [u8; 16],
        /// The provider's writer key (what gets granted).
        writer: WriterKey,
        /// The provider's identity (what keys are wrapped to).
        identity: IdentityPublic,
        /// The MAC (see the module docs).
        proof: [u8; 32],
    },
    /// Patient device to provider: granted.
    Accepted {
        /// The answering MAC.
        proof: [u8; 32],
    },
    /// Patient device to provider: refused.
    Refused {
        /// Why.
        reason: InviteError,
    },
}

impl InviteMsg {
    /// One format byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![MSG_FORMAT]).unwrap_or_default()
    }

    /// Decodes a message, refusing unknown formats and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<InviteMsg, InviteError> {
        match bytes.split_first() {
            Some((&MSG_FORMAT, rest)) => match postcard::take_from_bytes(rest) {
                Ok((m, [])) => Ok(m),
                _ => Err(InviteError::Malformed),
            },
            _ => Err(InviteError::Malformed),
        }
    }
}

/// The provider's side of a redemption (sans-IO).
#[derive(Debug, Clone)]
pub struct Redemption {
    invite: Invite,
    writer: WriterKey,
    identity: IdentityPublic,
}

impl Redemption {
    /// Redeems `invite` for this device's writer key and identity.
    pub fn new(invite: Invite, writer: WriterKey, identity: IdentityPublic) -> Redemption {
        Redemption {
            invite,
            writer,
            identity,
        }
    }

    /// The first message, bound to this channel's handshake hash.
    pub fn request(&self, handshake_hash: &[u8]) -> Vec<u8> {
        let proof = mac(
            &self.invite.mac_key(),
            "redeem",
            handshake_hash,
            &self.invite.id,
            &self.writer,
            &self.identity,
        );
        InviteMsg::Redeem {
            id: self.invite.id,
            writer: self.writer,
            identity: self.identity,
            proof: *proof.as_bytes(),
        }
        .encode()
    }

    /// Checks the patient device's answer.
    pub fn on_reply(&self, handshake_hash: &[u8], reply: &[u8]) -> Result<(), InviteError> {
        match InviteMsg::decode(reply)? {
            InviteMsg::Accepted { proof } => {
                let want = mac(
                    &self.invite.mac_key(),
                    "accept",
                    handshake_hash,
                    &self.invite.id,
                    &self.writer,
                    &self.identity,
                );
                if want == blake3::Hash::from(proof) {
                    Ok(())
                } else {
                    Err(InviteError::BadReply)
                }
            }
            InviteMsg::Refused { reason } => Err(reason),
            InviteMsg::Redeem { .. } => Err(InviteError::Malformed),
        }
    }
}

/// Where an invite stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InviteStatus {
    /// Can be redeemed.
    Open,
    /// Redeemed by this writer.
    Used(WriterKey),
    /// Cancelled by the patient.
    Cancelled,
}

/// An invite's state as stored (sealed) in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InviteState {
    /// The invite's id.
    pub id: [u8; 16],
    /// The grant it gives.
    pub grant: Grant,
    /// The key scopes it shares.
    pub key_scopes: Vec<String>,
    /// When it stops being redeemable (ms since the epoch).
    pub expires: u64,
    /// Where it stands.
    pub status: InviteStatus,
    mac_key: [u8; 32],
}

fn invite_resource_id(id: &[u8; 16]) -> String {
    format!("inv-{}", crate::view::hex(id))
}

/// What answering a redemption produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// The bytes to send back to the provider.
    pub reply: Vec<u8>,
    /// The writer granted, or why not.
    pub result: Result<WriterKey, InviteError>,
}

impl SecureRecord {
    /// Creates an invite giving `grant` and the keys of `key_scopes`, open
    /// until `expires` (ms since the epoch). Owner devices only.
    pub async fn create_invite(
        &self,
        grant: Grant,
        key_scopes: &[&str],
        expires: u64,
    ) -> Result<Invite, Error> {
        for s in key_scopes {
            check_scope(s)?;
        }
        let entropy = &*self.record().inner.entropy;
        let id: [u8; 16] = random(entropy).map_err(SealError::from)?;
        let secret: [u8; 32] = random(entropy).map_err(SealError::from)?;
        let invite = Invite {
            record_key: self.record().key(),
            patient_device: self.identity(),
            id,
            secret,
        };
        let state = InviteState {
            id,
            grant,
            key_scopes: key_scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires,
            status: InviteStatus::Open,
            mac_key: invite.mac_key(),
        };
        self.store_invite(&state).await?;
        self.audit(
            AuditAction::InviteCreated,
            true,
            &crate::view::hex(&id),
            &format!("expires {}", crate::fhir::format_instant(expires)),
        )
        .await?;
        Ok(invite)
    }

    async fn store_invite(&self, state: &InviteState) -> Result<(), Error> {
        let payload = b64_encode(&postcard::to_stdvec(state).unwrap_or_default());
        let json = serde_json::json!({
            "resourceType": "Basic",
            "id": invite_resource_id(&state.id),
            "subject": {"reference": format!("Patient/{}", self.record().patient_id())},
            "extension": [{"url": INVITE_URL, "valueString": payload}],
        });
        self.put(OWNER_SCOPE, json.to_string().into_bytes()).await?;
        Ok(())
    }

    /// An invite's state, if an owner device issued it (sealed under the
    /// owner scope; anything else is treated as forged).
    pub async fn invite_state(&self, id: &[u8; 16]) -> Result<Option<InviteState>, Error> {
        let Some(v) = self.record().get("Basic", &invite_resource_id(id)).await? else {
            return Ok(None);
        };
        let Some(stored) = v.resource else {
            return Ok(None);
        };
        let trusted = matches!(
            self.record().grant_of(&v.author).await?,
            Some((g, false)) if g.role == Role::Owner
        );
        if !trusted || sealed_info(&stored).is_none() {
            return Ok(None);
        }
        let plain = self.open_stored(&stored).await?;
        #[derive(Deserialize)]
        struct Ext {
            url: String,
            #[serde(rename = "valueString")]
            value: Option<String>,
        }
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            extension: Vec<Ext>,
        }
        let state = serde_json::from_slice::<Probe>(&plain)
            .ok()
            .and_then(|p| p.extension.into_iter().find(|e| e.url == INVITE_URL))
            .and_then(|e| e.value)
            .and_then(|v| b64_decode(&v))
            .and_then(|b| postcard::from_bytes::<InviteState>(&b).ok())
            .filter(|s| s.id == *id);
        Ok(state)
    }

    /// Cancels an open invite (owner devices only).
    pub async fn cancel_invite(&self, id: &[u8; 16]) -> Result<(), Error> {
        let mut state = self
            .invite_state(id)
            .await?
            .ok_or_else(|| Error::NotFound(invite_resource_id(id)))?;
        state.status = InviteStatus::Cancelled;
        self.store_invite(&state).await?;
        self.audit(
            AuditAction::InviteCancelled,
            true,
            &crate::view::hex(id),
            "",
        )
        .await
    }

    /// Answers a provider's redemption `request` received on a channel
    /// with this `handshake_hash` (as seen by this device). On success the
    /// invite is marked used, the writer granted and the keys shared.
    pub async fn answer_invite(&self, handshake_hash: &[u8], request: &[u8]) -> Answer {
        self.answer_invite_from(handshake_hash, request, None).await
    }

    /// [`SecureRecord::answer_invite`] for a request that arrived from the
    /// network identity `peer` (the remote key of the secured channel): the
    /// grant names it, so the record's firewall admits that peer from then
    /// on (see [`Grant::peer`]).
    pub async fn answer_invite_from(
        &self,
        handshake_hash: &[u8],
        request: &[u8],
        peer: Option<[u8; 32]>,
    ) -> Answer {
        let result = self.try_answer(handshake_hash, request, peer).await;
        // Refusals of invites this record issued are audited; junk and
        // unknown ids are not (anyone could flood the log with them).
        let id = match InviteMsg::decode(request) {
            Ok(InviteMsg::Redeem { id, .. }) => Some(crate::view::hex(&id)),
            _ => None,
        };
        let audited = match (&result, id) {
            (Ok((_, w)), Some(id)) => Some((
                AuditAction::InviteRedeemed,
                true,
                id,
                format!("granted {}", crate::view::hex(w)),
            )),
            (Err(InviteError::Malformed | InviteError::Unknown), _) | (_, None) => None,
            (Err(e), Some(id)) => Some((AuditAction::InviteRefused, false, id, e.to_string())),
        };
        if let Some((action, ok, id, detail)) = audited {
            // The answer stands even if the audit write fails.
            let _ = self.audit(action, ok, &id, &detail).await;
        }
        let reply = match &result {
            Ok((proof, _)) => InviteMsg::Accepted { proof: *proof },
            Err(e) => InviteMsg::Refused { reason: *e },
        }
        .encode();
        Answer {
            reply,
            result: result.map(|(_, w)| w),
        }
    }

    async fn try_answer(
        &self,
        hh: &[u8],
        request: &[u8],
        peer: Option<[u8; 32]>,
    ) -> Result<([u8; 32], WriterKey), InviteError> {
        let InviteMsg::Redeem {
            id,
            writer,
            identity,
            proof,
        } = InviteMsg::decode(request)?
        else {
            return Err(InviteError::Malformed);
        };
        let mut state = self
            .invite_state(&id)
            .await
            .map_err(|_| InviteError::Failed)?
            .ok_or(InviteError::Unknown)?;
        match state.status {
            InviteStatus::Open => {}
            InviteStatus::Used(_) => return Err(InviteError::AlreadyUsed),
            InviteStatus::Cancelled => return Err(InviteError::Cancelled),
        }
        if self.record().inner.clock.now_ms() >= state.expires {
            return Err(InviteError::Expired);
        }
        let want = mac(&state.mac_key, "redeem", hh, &id, &writer, &identity);
        if want != blake3::Hash::from(proof) {
            return Err(InviteError::BadProof);
        }
        identity.x25519().map_err(|_| InviteError::Malformed)?;
        // Used first: a failure below leaves the invite spent, never reusable.
        state.status = InviteStatus::Used(writer);
        self.store_invite(&state)
            .await
            .map_err(|_| InviteError::Failed)?;
        let grant = match peer {
            Some(p) => state.grant.clone().with_peer(p),
            None => state.grant.clone(),
        };
        // An invite grant: if another patient device granted this invite
        // first (in linear order), every peer rejects this one.
        self.record()
            .submit(crate::op::OpBody::InviteGrant {
                invite: id,
                writer,
                grant,
            })
            .await
            .map_err(|_| InviteError::Failed)?;
        let scopes: Vec<&str> = state.key_scopes.iter().map(String::as_str).collect();
        if !scopes.is_empty() {
            self.share(identity, Some(writer), &scopes)
                .await
                .map_err(|_| InviteError::Failed)?;
        }
        let accept = mac(&state.mac_key, "accept", hh, &id, &writer, &identity);
        Ok((*accept.as_bytes(), writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invite() -> Invite {
        Invite {
            record_key: [1; 32],
            patient_device: IdentityPublic([2; 32]),
            id: [3; 16],
            secret: [4; 32],
        }
    }

    #[test]
    fn text_round_trip_and_checksum() {
        let t = invite().to_text();
        assert!(t.starts_with(INVITE_PREFIX));
        assert_eq!(Invite::parse(&t).unwrap(), invite());
        assert_eq!(
            Invite::parse(&format!(" {} ", t.to_uppercase())).unwrap(),
            invite()
        );
        assert_eq!(Invite::parse("ehr-invite1:"), Err(InviteError::Malformed));
        assert_eq!(Invite::parse("nonsense"), Err(InviteError::Malformed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_changed_character_is_refused(pos in any::<usize>(), c in proptest::sample::select(B32.to_vec())) {
            let t = invite().to_text();
            let p = INVITE_PREFIX.len() + pos % (t.len() - INVITE_PREFIX.len());
            let mut b = t.clone().into_bytes();
            prop_assume!(b[p] != c);
            b[p] = c;
            let changed = String::from_utf8(b).unwrap();
            prop_assert_eq!(Invite::parse(&changed), Err(InviteError::Malformed));
        }

        #[test]
        fn parsing_junk_never_panics(s in ".{0,250}") {
            let _ = Invite::parse(&s);
            let _ = InviteMsg::decode(s.as_bytes());
        }
    }
}
