//! Audit trail: FHIR AuditEvents in the record, and an offline-verifiable
//! audit package.
//!
//! **Who writes them.** The acting patient device writes an AuditEvent
//! resource (an ordinary op, so it is signed into its log and replicated)
//! whenever it grants, changes or revokes a writer (through
//! [`crate::Record::grant`] and friends, whichever path called them), shares
//! keys, creates, cancels or answers an invite
//! (refusals of known invites included), and when emergency access is
//! recorded. Writes the record refuses are not written by anyone: they are
//! already recorded deterministically by `apply` on every peer, and
//! [`SecureRecord::rejected_audit_events`] renders them as AuditEvents on
//! demand (same bytes on every peer).
//!
//! **The package.** [`SecureRecord::export_audit`] collects every block of
//! this device's input log that carries an AuditEvent, each with a
//! hypercore proof (the block, the Merkle nodes up to the roots, the signed
//! length and the manifest). [`verify_audit_package`] checks it with no
//! network and no record: each proof is verified by a fresh in-memory core
//! against its core key; a core that is not the record key itself (the
//! genesis device's log) must be linked to it by a proven `Grant` op with
//! the owner role in the record key's log. Only then are the AuditEvents
//! returned. Revocations after that grant are not checked (the package
//! proves who wrote what, not that the writer was still trusted later).

use crate::consent::Role;
use crate::error::Error;
use crate::fhir::{format_instant, Resource};
use crate::op::{ImportOp, Op, OpBody, WriterKey};
use crate::secure::SecureRecord;
use hypercore_rs::{BlockRequest, Corestore, MemoryStorage, Proof, ProofRequest, UpgradeRequest};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The coding system of this crate's audit subtypes.
pub const AUDIT_SYSTEM: &str = "urn:ehr-core:audit";
const PACKAGE_FORMAT: u8 = 1;

/// What an AuditEvent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditAction {
    /// Scope keys were shared with a device (a grant of read access).
    Share,
    /// A writer was granted.
    Grant,
    /// A writer's grant was changed.
    ChangeGrant,
    /// A writer was revoked and keys rotated.
    Revoke,
    /// An invite was created.
    InviteCreated,
    /// An invite was redeemed.
    InviteRedeemed,
    /// A redemption of a known invite was refused.
    InviteRefused,
    /// An invite was cancelled.
    InviteCancelled,
    /// A write was refused by the record's rules.
    RejectedWrite,
    /// Emergency (break-glass) access.
    Emergency,
}

impl AuditAction {
    /// The subtype code.
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Share => "share",
            AuditAction::Grant => "grant",
            AuditAction::ChangeGrant => "grant-changed",
            AuditAction::Revoke => "revoke",
            AuditAction::InviteCreated => "invite-created",
            AuditAction::InviteRedeemed => "invite-redeemed",
            AuditAction::InviteRefused => "invite-refused",
            AuditAction::InviteCancelled => "invite-cancelled",
            AuditAction::RejectedWrite => "rejected-write",
            AuditAction::Emergency => "emergency-access",
        }
    }
}

/// Builds an AuditEvent's JSON.
fn audit_json(
    id: &str,
    action: AuditAction,
    time: u64,
    success: bool,
    agent: &WriterKey,
    what: &str,
    detail: &str,
) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": AUDIT_SYSTEM, "code": action.code()}],
        "action": "E",
        "recorded": format_instant(time),
        "outcome": if success { "0" } else { "4" },
        "outcomeDesc": detail,
        "agent": [{"who": {"identifier": {"system": "urn:ehr-core:writer", "value": crate::view::hex(agent)}}, "requestor": true}],
        "source": {"observer": {"display": "ehr-core"}},
        "entity": [{"what": {"identifier": {"system": AUDIT_SYSTEM, "value": what}}}],
    })
}

/// What verifying an audit package can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The package does not decode.
    #[error("malformed audit package")]
    Malformed,
    /// The package is for another record.
    #[error("the package is for another record")]
    WrongRecord,
    /// A proof does not verify against its core key.
    #[error("a proof does not verify: {0}")]
    BadProof(String),
    /// A proven block is not what the package claims.
    #[error("a proven block does not carry the claimed content")]
    BadBlock,
    /// A log's author is not linked to the record key by an owner grant.
    #[error("a writer is not shown to be an owner device")]
    Unlinked,
}

/// One proven block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenBlock {
    /// The log (core) key.
    pub core: [u8; 32],
    /// The block index.
    pub index: u64,
    /// The proof (block, Merkle nodes, signed upgrade, manifest).
    pub proof: Proof,
}

/// An exported audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPackage {
    /// The record key it is verified against.
    pub record_key: [u8; 32],
    /// Blocks carrying AuditEvents.
    pub events: Vec<ProvenBlock>,
    /// Blocks of the record key's log granting the event logs' writers.
    pub links: Vec<ProvenBlock>,
}

impl AuditPackage {
    /// One format byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![PACKAGE_FORMAT]).unwrap_or_default()
    }

    /// Decodes [`AuditPackage::encode`].
    pub fn decode(bytes: &[u8]) -> Result<AuditPackage, AuditError> {
        match bytes.split_first() {
            Some((&PACKAGE_FORMAT, rest)) => match postcard::take_from_bytes(rest) {
                Ok((p, [])) => Ok(p),
                _ => Err(AuditError::Malformed),
            },
            _ => Err(AuditError::Malformed),
        }
    }
}

/// The ops in an autobase input block (node `seq` of its writer's core).
fn block_ops(bytes: &[u8], seq: u64) -> Vec<Op> {
    autobase_rs::block_values(bytes, seq)
        .unwrap_or_default()
        .iter()
        .filter_map(|b| Op::decode(b).ok())
        .collect()
}

fn audit_events_of(op: &Op) -> Vec<Vec<u8>> {
    let is_audit =
        |r: &[u8]| Resource::parse(r.to_vec()).is_ok_and(|r| r.resource_type() == "AuditEvent");
    match &op.body {
        OpBody::Put { resource, .. } if is_audit(resource) => vec![resource.clone()],
        OpBody::Import { entries } => entries
            .iter()
            .filter_map(|e| match e {
                ImportOp::Put { resource } if is_audit(resource) => Some(resource.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn prove(store: &Corestore, core: [u8; 32], index: u64) -> Result<ProvenBlock, Error> {
    let c = store.get_by_key(core).await?;
    let req = ProofRequest {
        fork: 0,
        block: Some(BlockRequest { index, nodes: 0 }),
        upgrade: Some(UpgradeRequest { start: 0 }),
        manifest: true,
        ..ProofRequest::default()
    };
    let proof = c.proof(&req).await?;
    Ok(ProvenBlock { core, index, proof })
}

/// Verifies one proven block offline; returns the block's bytes.
async fn verify_block(b: &ProvenBlock) -> Result<Vec<u8>, AuditError> {
    let store = Corestore::with_seed(Arc::new(MemoryStorage::new()), [0; 32]);
    let core = store
        .get_by_key(b.core)
        .await
        .map_err(|e| AuditError::BadProof(e.to_string()))?;
    let v = core
        .verify(&b.proof)
        .await
        .map_err(|e| AuditError::BadProof(e.to_string()))?;
    if v.block != Some(b.index) {
        return Err(AuditError::BadBlock);
    }
    let bytes = core
        .get(b.index)
        .await
        .map_err(|e| AuditError::BadProof(e.to_string()))?
        .ok_or(AuditError::BadBlock)?;
    if b.proof.block.as_ref().map(|p| &p.value) != Some(&bytes) {
        return Err(AuditError::BadBlock);
    }
    Ok(bytes)
}

/// Verifies an audit package against `record_key` with no network and no
/// record; returns the AuditEvents it proves, in package order.
pub async fn verify_audit_package(
    record_key: &[u8; 32],
    package: &[u8],
) -> Result<Vec<Vec<u8>>, AuditError> {
    let p = AuditPackage::decode(package)?;
    if p.record_key != *record_key {
        return Err(AuditError::WrongRecord);
    }
    let mut owners = vec![*record_key];
    for l in &p.links {
        if l.core != *record_key {
            return Err(AuditError::Unlinked);
        }
        let bytes = verify_block(l).await?;
        let mut linked = false;
        for op in block_ops(&bytes, l.index) {
            if let OpBody::Grant { writer, grant } | OpBody::ChangeGrant { writer, grant } = op.body
            {
                if grant.role == Role::Owner {
                    owners.push(writer);
                    linked = true;
                }
            }
        }
        if !linked {
            return Err(AuditError::BadBlock);
        }
    }
    let mut out = Vec::new();
    for e in &p.events {
        if !owners.contains(&e.core) {
            return Err(AuditError::Unlinked);
        }
        let bytes = verify_block(e).await?;
        let events: Vec<Vec<u8>> = block_ops(&bytes, e.index)
            .iter()
            .flat_map(audit_events_of)
            .collect();
        if events.is_empty() {
            return Err(AuditError::BadBlock);
        }
        out.extend(events);
    }
    Ok(out)
}

/// A grant in words, for an AuditEvent's description.
pub(crate) fn describe_grant(g: &crate::consent::Grant) -> String {
    let scopes: Vec<String> = g
        .scopes
        .iter()
        .map(|s| {
            let perms: String = [
                (crate::consent::Perms::CREATE, 'c'),
                (crate::consent::Perms::READ, 'r'),
                (crate::consent::Perms::UPDATE, 'u'),
                (crate::consent::Perms::DELETE, 'd'),
                (crate::consent::Perms::SEARCH, 's'),
            ]
            .iter()
            .filter(|(p, _)| s.perms.contains(*p))
            .map(|(_, c)| *c)
            .collect();
            format!(
                "patient/{}.{perms}",
                s.resource_type.as_deref().unwrap_or("*")
            )
        })
        .collect();
    let mut d = format!("role {:?}", g.role);
    if !scopes.is_empty() {
        d.push_str(&format!(", scopes {}", scopes.join(" ")));
    }
    if let Some(e) = g.expires {
        d.push_str(&format!(", expires {}", format_instant(e)));
    }
    d
}

/// Writes an AuditEvent by `record`'s device (see [`SecureRecord::audit`]).
pub(crate) async fn write_audit(
    record: &crate::record::Record,
    action: AuditAction,
    success: bool,
    what: &str,
    detail: &str,
) -> Result<(), Error> {
    let id: [u8; 16] = crate::keys::random(&*record.inner.entropy)
        .map_err(crate::scope_crypto::SealError::from)?;
    let json = audit_json(
        &crate::view::hex(&id),
        action,
        record.inner.clock.now_ms(),
        success,
        &record.writer_key(),
        what,
        detail,
    );
    record.put(json.to_string().into_bytes()).await?;
    Ok(())
}

impl SecureRecord {
    /// Writes an AuditEvent by this device (in clear: the patient and
    /// every grantee can read the trail).
    pub async fn audit(
        &self,
        action: AuditAction,
        success: bool,
        what: &str,
        detail: &str,
    ) -> Result<(), Error> {
        write_audit(self.record(), action, success, what, detail).await
    }

    /// The writes the record refused, as AuditEvents (derived from the
    /// view, identical on every peer; not stored).
    pub async fn rejected_audit_events(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self
            .record()
            .rejected()
            .await?
            .into_iter()
            .map(|r| {
                let id = format!("rej-{}-{}", &crate::view::hex(&r.writer)[..16], r.seq);
                audit_json(
                    &id,
                    AuditAction::RejectedWrite,
                    r.time,
                    false,
                    &r.writer,
                    &format!("{}/{}", crate::view::hex(&r.writer), r.seq),
                    &r.rejection.to_string(),
                )
                .to_string()
                .into_bytes()
            })
            .collect())
    }

    /// Exports every AuditEvent this device wrote, with proofs, as an
    /// [`AuditPackage`] (encoded) that [`verify_audit_package`] checks
    /// offline against the record key.
    pub async fn export_audit(&self) -> Result<Vec<u8>, Error> {
        self.record().flush().await?;
        let store = self.record().base().store().clone();
        let me = self.record().writer_key();
        let record_key = self.record().key();
        let core = store.get_by_key(me).await?;
        let mut events = Vec::new();
        for i in 0..core.length() {
            let Some(bytes) = core.get(i).await? else {
                continue;
            };
            if block_ops(&bytes, i)
                .iter()
                .any(|op| !audit_events_of(op).is_empty())
            {
                events.push(prove(&store, me, i).await?);
            }
        }
        let mut links = Vec::new();
        if me != record_key {
            let root = store.get_by_key(record_key).await?;
            for i in 0..root.length() {
                let Some(bytes) = root.get(i).await? else {
                    continue;
                };
                let grants_me = block_ops(&bytes, i).iter().any(|op| {
                    matches!(&op.body,
                        OpBody::Grant { writer, grant } | OpBody::ChangeGrant { writer, grant }
                        if *writer == me && grant.role == Role::Owner)
                });
                if grants_me {
                    links.push(prove(&store, record_key, i).await?);
                    break;
                }
            }
        }
        Ok(AuditPackage {
            record_key,
            events,
            links,
        }
        .encode())
    }
}
