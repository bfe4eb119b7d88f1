//! The deterministic record logic: one writer's node in, view writes out.
//!
//! [`apply_node`] decodes an [`Op`], checks it against the record's state
//! (genesis, the writer's grant, the resource's head), and either writes it
//! into the view (versions, heads, indexes, conflict markers) or records it
//! as rejected. It reads and writes only through the small [`Kv`] trait on
//! a pending batch, and its decisions depend only on the view and the node,
//! never on the local clock or the local peer: every peer that applies the
//! same nodes in the same order accepts and rejects the same writes and
//! ends with the same view. A rejected op writes nothing but its rejection
//! record; an accepted import writes all of its entries.
//!
//! Time: a grant's expiry is checked against the later of the op's claimed
//! time and the latest time claimed by an owner op applied before it, so a
//! provider cannot write after its expiry once the patient's devices have
//! been seen past it, whatever clock the provider claims.

use crate::consent::{Action, Denied, Grant, Role};
use crate::fhir::{FhirError, Resource, ResourceInfo, ResourceRef};
use crate::op::{Expect, ImportOp, Op, OpBody, WriterKey};
use crate::view::{
    self, decode, encode, Fields, GenesisRec, HeadRec, RejectedRec, VersionRec, WriterRec,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A storage failure under `apply`: the batch must be discarded and the
/// node applied again later; it is not a decision about the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key-value store failed.
    #[error("view storage: {0}")]
    Storage(String),
    /// A value in the view does not decode.
    #[error("corrupt view entry at {0}")]
    Corrupt(String),
}

/// The pending batch `apply` writes into. It must see its own writes.
#[async_trait]
pub trait Kv: Send {
    /// The value at `key`.
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key`.
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Removes `key`.
    async fn del(&mut self, key: &[u8]) -> Result<(), KvError>;
}

#[async_trait]
impl Kv for hyperbee_rs::Batch {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        hyperbee_rs::Batch::get(self, key)
            .await
            .map(|e| e.map(|e| e.value))
            .map_err(|e| KvError::Storage(e.to_string()))
    }
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        hyperbee_rs::Batch::put(self, key, value)
            .await
            .map_err(|e| KvError::Storage(e.to_string()))
    }
    async fn del(&mut self, key: &[u8]) -> Result<(), KvError> {
        hyperbee_rs::Batch::del(self, key)
            .await
            .map_err(|e| KvError::Storage(e.to_string()))
    }
}

/// Who may write: the multi-writer log (autobase's host) hears of every
/// membership change, in apply order. A refusal (say, removing the last
/// indexer) must itself be deterministic; the op is then rejected and
/// nothing of it is written.
pub trait Membership: Send {
    /// A writer was granted (owners are indexers).
    fn add_writer(&mut self, key: WriterKey, indexer: bool) -> Result<(), String>;
    /// A writer was revoked.
    fn remove_writer(&mut self, key: WriterKey) -> Result<(), String>;
}

/// A [`Membership`] that accepts and ignores changes (a single-writer log).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMembership;

impl Membership for NoMembership {
    fn add_writer(&mut self, _: WriterKey, _: bool) -> Result<(), String> {
        Ok(())
    }
    fn remove_writer(&mut self, _: WriterKey) -> Result<(), String> {
        Ok(())
    }
}

/// One node of one writer's log.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The writer's key.
    pub writer: WriterKey,
    /// Its position in the writer's log.
    pub seq: u64,
    /// Its position inside that log entry, when one entry holds several ops.
    pub index: u32,
    /// The encoded [`Op`].
    pub value: &'a [u8],
}

/// " (Bundle entry N)" for an import's failing entry, nothing otherwise.
fn entry_suffix(entry: Option<u32>) -> String {
    entry.map_or_else(String::new, |i| format!(" (Bundle entry {i})"))
}

/// Why a write was refused. Recorded in the view; the same on every peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The op does not decode.
    #[error("malformed op")]
    Malformed,
    /// A write before the record's genesis.
    #[error("the record has no genesis yet")]
    NoGenesis,
    /// A second genesis.
    #[error("the record already has a genesis")]
    GenesisTwice,
    /// The consent check refused it.
    #[error("{denied}{}", entry_suffix(*entry))]
    Denied {
        /// Why.
        denied: Denied,
        /// For an import, the failing entry.
        entry: Option<u32>,
    },
    /// The resource is not acceptable (FHIR checks, patient).
    #[error("invalid resource{}: {reason}", entry_suffix(*entry))]
    Invalid {
        /// Why.
        reason: String,
        /// For an import, the failing entry.
        entry: Option<u32>,
    },
    /// A delete of a resource that is absent or already deleted.
    #[error("{target} does not exist")]
    NotFound {
        /// The resource.
        target: String,
        /// For an import, the failing entry.
        entry: Option<u32>,
    },
    /// An import that writes one resource twice.
    #[error("{0} is written twice in one import")]
    Duplicate(String),
    /// A grant for a writer that already has one, or a change or revoke
    /// for one that has none (or the record's first owner).
    #[error("grant change not possible: {0}")]
    Membership(String),
    /// A second redemption of an invite: another patient device granted
    /// it first (in linear order) to `first`; `writer` is not granted.
    #[error("invite {invite} was already redeemed by writer {first}")]
    InviteTaken {
        /// The invite's id (hex).
        invite: String,
        /// The writer that redeemed it first (hex).
        first: String,
        /// The writer this grant was for (hex).
        writer: String,
    },
    /// Content written in clear in a sealed record
    /// ([`crate::sealed_policy`]).
    #[error("clear content in a sealed record{}: {reason}", entry_suffix(*entry))]
    Clear {
        /// What is in clear.
        reason: String,
        /// For an import, the failing entry.
        entry: Option<u32>,
    },
}

/// What happened to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Written into the view.
    Accepted,
    /// Refused, and recorded as refused.
    Rejected(Rejection),
}

async fn get_rec<T: for<'de> Deserialize<'de>>(
    kv: &mut (impl Kv + ?Sized),
    key: &[u8],
) -> Result<Option<T>, KvError> {
    match kv.get(key).await? {
        None => Ok(None),
        Some(bytes) => decode(&bytes)
            .map(Some)
            .ok_or_else(|| KvError::Corrupt(String::from_utf8_lossy(key).into_owned())),
    }
}

struct Ctx {
    genesis: GenesisRec,
    writer: WriterKey,
    seq: u64,
    time: u64,
    now: u64,
    grant: Grant,
    /// The record is sealed: clear content is refused.
    sealed: bool,
}

/// One planned resource write.
struct Write {
    target: ResourceRef,
    head: Option<HeadRec>,
    body: Option<Resource>,
    expect: Expect,
}

/// Applies one node. `Err` only for storage failures (discard the batch);
/// refusals are an [`Outcome::Rejected`] that has been recorded.
pub async fn apply_node<K: Kv + ?Sized>(
    kv: &mut K,
    members: &mut dyn Membership,
    node: Node<'_>,
) -> Result<Outcome, KvError> {
    apply_node_parsed(kv, members, node, Vec::new()).await
}

/// [`apply_node`] with the op's resources already parsed by this device
/// (`parsed[i]` is the [`ResourceInfo`] of the i-th resource of the op, as
/// `Resource::parse` gave it for exactly those bytes), so they are not
/// parsed again. Parsing is a pure function of the bytes, so the outcome is
/// the same as without; the caller must only pass infos it got by parsing
/// the very bytes inside `node.value` (see `record::Prepared`).
pub(crate) async fn apply_node_parsed<K: Kv + ?Sized>(
    kv: &mut K,
    members: &mut dyn Membership,
    node: Node<'_>,
    parsed: Vec<Option<ResourceInfo>>,
) -> Result<Outcome, KvError> {
    let (time, decided) = match Op::decode(node.value) {
        Err(_) => (0, Err(Rejection::Malformed)),
        Ok(op) => (op.time, decide(kv, members, &node, op, parsed).await?),
    };
    match decided {
        Ok(()) => Ok(Outcome::Accepted),
        Err(rejection) => {
            let rec = RejectedRec {
                time,
                rejection: rejection.clone(),
            };
            kv.put(
                &view::rejected_key(&node.writer, node.seq, node.index),
                &encode(&rec),
            )
            .await?;
            Ok(Outcome::Rejected(rejection))
        }
    }
}

fn invalid(e: FhirError, entry: Option<u32>) -> Rejection {
    Rejection::Invalid {
        reason: e.to_string(),
        entry,
    }
}

async fn decide<K: Kv + ?Sized>(
    kv: &mut K,
    members: &mut dyn Membership,
    node: &Node<'_>,
    op: Op,
    mut parsed: Vec<Option<ResourceInfo>>,
) -> Result<Result<(), Rejection>, KvError> {
    let mut parsed_at = |i: usize| parsed.get_mut(i).and_then(Option::take);
    let genesis: Option<GenesisRec> = get_rec(kv, view::GENESIS).await?;
    let genesis = match (genesis, &op.body) {
        (None, OpBody::Genesis { patient, peer }) => {
            if !crate::fhir::valid_id(patient) {
                return Ok(Err(invalid(FhirError::InvalidId(patient.clone()), None)));
            }
            let g = GenesisRec {
                patient: patient.clone(),
                owner: node.writer,
                time: op.time,
                peer: *peer,
            };
            kv.put(view::FORMAT, &[view::VIEW_FORMAT]).await?;
            kv.put(view::GENESIS, &encode(&g)).await?;
            kv.put(view::CLOCK, &op.time.to_be_bytes()).await?;
            let w = WriterRec {
                grant: Grant::owner(),
                revoked: false,
                since: op.time,
            };
            if let Err(e) = members.add_writer(node.writer, true) {
                return Ok(Err(Rejection::Membership(e)));
            }
            kv.put(&view::writer_key(&node.writer), &encode(&w)).await?;
            return Ok(Ok(()));
        }
        (None, _) => return Ok(Err(Rejection::NoGenesis)),
        (Some(_), OpBody::Genesis { .. }) => return Ok(Err(Rejection::GenesisTwice)),
        (Some(g), _) => g,
    };
    let Some(wrec) = get_rec::<WriterRec>(kv, &view::writer_key(&node.writer)).await? else {
        return Ok(Err(denied(Denied::NoGrant, None)));
    };
    if wrec.revoked {
        return Ok(Err(denied(Denied::Revoked, None)));
    }
    let clock = match kv.get(view::CLOCK).await? {
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| KvError::Corrupt("m/clock".into()))?,
        None => 0,
    };
    let ctx = Ctx {
        genesis,
        writer: node.writer,
        seq: node.seq,
        time: op.time,
        now: op.time.max(clock),
        grant: wrec.grant,
        sealed: kv.get(crate::sealed_policy::SEALED_KEY).await?.is_some(),
    };
    if ctx.grant.expires.is_some_and(|e| ctx.now >= e) {
        return Ok(Err(denied(Denied::Expired, None)));
    }
    let result = match op.body {
        OpBody::Genesis { .. } => Err(Rejection::GenesisTwice),
        OpBody::Grant { writer, grant } => {
            membership(kv, members, &ctx, writer, Some(grant), true).await?
        }
        OpBody::ChangeGrant { writer, grant } => {
            membership(kv, members, &ctx, writer, Some(grant), false).await?
        }
        OpBody::Revoke { writer } => membership(kv, members, &ctx, writer, None, false).await?,
        OpBody::InviteGrant {
            invite,
            writer,
            grant,
        } => {
            // First redemption in linear order wins (see `invite_net`).
            let key = crate::invite_net::redemption_key(&invite);
            match kv.get(&key).await? {
                Some(first) => Err(crate::invite_net::taken(&invite, &first, &writer)),
                None => {
                    let r = membership(kv, members, &ctx, writer, Some(grant), true).await?;
                    if r.is_ok() {
                        kv.put(&key, &writer).await?;
                    }
                    r
                }
            }
        }
        OpBody::RequireSealed if ctx.grant.role != Role::Owner => {
            Err(denied(Denied::NotOwner, None))
        }
        OpBody::RequireSealed => {
            kv.put(crate::sealed_policy::SEALED_KEY, &[1]).await?;
            Ok(())
        }
        OpBody::Put { resource, expect } => {
            let info = parsed_at(0);
            match plan_put(kv, &ctx, resource, info, expect, None, &mut HashMap::new()).await? {
                Ok(w) => {
                    let mut out = Writes::default();
                    write(&mut out, &ctx, w);
                    out.apply(kv).await?;
                    Ok(())
                }
                Err(r) => Err(r),
            }
        }
        OpBody::Delete { target, expect } => {
            match plan_delete(kv, &ctx, target, expect, None).await? {
                Ok(w) => {
                    let mut out = Writes::default();
                    write(&mut out, &ctx, w);
                    out.apply(kv).await?;
                    Ok(())
                }
                Err(r) => Err(r),
            }
        }
        OpBody::Import { entries } => {
            let mut writes = Vec::with_capacity(entries.len());
            let mut planned: HashMap<String, ()> = HashMap::with_capacity(entries.len());
            let mut failed = None;
            for (i, e) in entries.into_iter().enumerate() {
                let entry = Some(u32::try_from(i).unwrap_or(u32::MAX));
                let w = match e {
                    ImportOp::Put { resource } => {
                        let info = parsed_at(i);
                        plan_put(kv, &ctx, resource, info, Expect::Any, entry, &mut planned).await?
                    }
                    ImportOp::Delete { target } => {
                        let key = target.to_string();
                        if planned.insert(key.clone(), ()).is_some() {
                            Err(Rejection::Duplicate(key))
                        } else {
                            plan_delete(kv, &ctx, target, Expect::Any, entry).await?
                        }
                    }
                };
                match w {
                    Ok(w) => writes.push(w),
                    Err(r) => {
                        failed = Some(r);
                        break;
                    }
                }
            }
            match failed {
                Some(r) => Err(r),
                None => {
                    let mut out = Writes::default();
                    for w in writes {
                        write(&mut out, &ctx, w);
                    }
                    out.apply(kv).await?;
                    Ok(())
                }
            }
        }
    };
    if result.is_ok() && ctx.grant.role == Role::Owner && op.time > clock {
        kv.put(view::CLOCK, &op.time.to_be_bytes()).await?;
    }
    Ok(result)
}

fn denied(denied: Denied, entry: Option<u32>) -> Rejection {
    Rejection::Denied { denied, entry }
}

async fn membership<K: Kv + ?Sized>(
    kv: &mut K,
    members: &mut dyn Membership,
    ctx: &Ctx,
    target: WriterKey,
    grant: Option<Grant>,
    new: bool,
) -> Result<Result<(), Rejection>, KvError> {
    if ctx.grant.role != Role::Owner {
        return Ok(Err(denied(Denied::NotOwner, None)));
    }
    if target == ctx.genesis.owner {
        return Ok(Err(Rejection::Membership(
            "the record's first owner cannot be changed".into(),
        )));
    }
    let key = view::writer_key(&target);
    let existing: Option<WriterRec> = get_rec(kv, &key).await?;
    let active = existing.as_ref().is_some_and(|w| !w.revoked);
    match (grant, new) {
        (Some(grant), true) => {
            if active {
                return Ok(Err(Rejection::Membership("already a writer".into())));
            }
            let indexer = grant.role == Role::Owner;
            let w = WriterRec {
                grant,
                revoked: false,
                since: ctx.time,
            };
            if let Err(e) = members.add_writer(target, indexer) {
                return Ok(Err(Rejection::Membership(e)));
            }
            kv.put(&key, &encode(&w)).await?;
        }
        (Some(grant), false) => {
            let Some(mut w) = existing.filter(|_| active) else {
                return Ok(Err(Rejection::Membership("not a writer".into())));
            };
            let was_owner = w.grant.role == Role::Owner;
            let indexer = grant.role == Role::Owner;
            if was_owner != indexer {
                // Re-adding tells the host the new indexer status.
                if let Err(e) = members.add_writer(target, indexer) {
                    return Ok(Err(Rejection::Membership(e)));
                }
            }
            w.grant = grant;
            kv.put(&key, &encode(&w)).await?;
        }
        (None, _) => {
            let Some(mut w) = existing.filter(|_| active) else {
                return Ok(Err(Rejection::Membership("not a writer".into())));
            };
            if let Err(e) = members.remove_writer(target) {
                return Ok(Err(Rejection::Membership(e)));
            }
            w.revoked = true;
            kv.put(&key, &encode(&w)).await?;
        }
    }
    Ok(Ok(()))
}

async fn plan_put<K: Kv + ?Sized>(
    kv: &mut K,
    ctx: &Ctx,
    bytes: Vec<u8>,
    parsed: Option<ResourceInfo>,
    expect: Expect,
    entry: Option<u32>,
    planned: &mut HashMap<String, ()>,
) -> Result<Result<Write, Rejection>, KvError> {
    let res = match parsed {
        Some(info) => Resource::from_parsed(bytes, info),
        None => match Resource::parse(bytes) {
            Ok(r) => r,
            Err(e) => return Ok(Err(invalid(e, entry))),
        },
    };
    let Some(id) = res.id() else {
        return Ok(Err(invalid(FhirError::MissingId, entry)));
    };
    if let Err(e) = res.check_patient(&ctx.genesis.patient) {
        return Ok(Err(invalid(e, entry)));
    }
    if ctx.sealed {
        if let Some(reason) = crate::sealed_policy::clear_content(&res, ctx.grant.role) {
            return Ok(Err(Rejection::Clear { reason, entry }));
        }
    }
    let target = ResourceRef {
        resource_type: res.resource_type().to_owned(),
        id: id.to_owned(),
    };
    if planned.insert(target.to_string(), ()).is_some() {
        return Ok(Err(Rejection::Duplicate(target.to_string())));
    }
    let head: Option<HeadRec> =
        get_rec(kv, &view::head_key(&target.resource_type, &target.id)).await?;
    let live = head.as_ref().filter(|h| !h.deleted());
    let action = if live.is_some() {
        Action::Update
    } else {
        Action::Create
    };
    if let Err(d) = ctx.grant.allows(
        action,
        &target.resource_type,
        &res.info().categories,
        ctx.now,
    ) {
        return Ok(Err(denied(d, entry)));
    }
    // An update must also be allowed on what it replaces (a category limit
    // cannot be escaped by rewriting a resource's category).
    if let Some(h) = live {
        let old: Vec<_> = h
            .fields
            .categories
            .iter()
            .map(|t| crate::fhir::Coding::from_token(t))
            .collect();
        if let Err(d) = ctx
            .grant
            .allows(action, &target.resource_type, &old, ctx.now)
        {
            return Ok(Err(denied(d, entry)));
        }
    }
    Ok(Ok(Write {
        target,
        head,
        body: Some(res),
        expect,
    }))
}

async fn plan_delete<K: Kv + ?Sized>(
    kv: &mut K,
    ctx: &Ctx,
    target: ResourceRef,
    expect: Expect,
    entry: Option<u32>,
) -> Result<Result<Write, Rejection>, KvError> {
    let head: Option<HeadRec> =
        get_rec(kv, &view::head_key(&target.resource_type, &target.id)).await?;
    let Some(h) = head.as_ref().filter(|h| !h.deleted()) else {
        return Ok(Err(Rejection::NotFound {
            target: target.to_string(),
            entry,
        }));
    };
    let cats: Vec<_> = h
        .fields
        .categories
        .iter()
        .map(|t| crate::fhir::Coding::from_token(t))
        .collect();
    if let Err(d) = ctx
        .grant
        .allows(Action::Delete, &target.resource_type, &cats, ctx.now)
    {
        return Ok(Err(denied(d, entry)));
    }
    Ok(Ok(Write {
        target,
        head,
        body: None,
        expect,
    }))
}

/// The view writes of one node, applied in key order.
///
/// An import's resources write about six keys each, scattered over the
/// B-tree (head, history, five index families); applying them sorted makes
/// consecutive writes land in the same leaves. A key written twice keeps
/// its last write (an index entry removed and added again by an update is
/// one put). The order is a pure function of the writes, so every peer
/// builds the same view.
#[derive(Default)]
struct Writes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Writes {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.push((key, Some(value)));
    }

    fn del(&mut self, key: Vec<u8>) {
        self.0.push((key, None));
    }

    async fn apply<K: Kv + ?Sized>(mut self, kv: &mut K) -> Result<(), KvError> {
        // Stable: among equal keys the last write stays last.
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ops = self.0.into_iter().peekable();
        while let Some((key, value)) = ops.next() {
            if ops.peek().is_some_and(|(next, _)| *next == key) {
                continue;
            }
            match value {
                Some(v) => kv.put(&key, &v).await?,
                None => kv.del(&key).await?,
            }
        }
        Ok(())
    }
}

fn write(out: &mut Writes, ctx: &Ctx, w: Write) {
    let (ty, id) = (&w.target.resource_type, &w.target.id);
    let version = w.head.as_ref().map_or(0, |h| h.version) + 1;
    let conflicts = match (&w.head, w.expect) {
        (None, _) | (_, Expect::Any) => Vec::new(),
        (Some(h), Expect::Absent) if h.deleted() => Vec::new(),
        (Some(h), Expect::Version(v)) if v == h.version => Vec::new(),
        (Some(h), _) => {
            let mut c = h.conflicts.clone();
            c.push(h.version);
            c
        }
    };
    if let Some(old) = w.head {
        if !old.deleted() {
            for k in view::index_keys(ty, id, &old.current.author, &old.fields) {
                out.del(k);
            }
        }
        // The superseded version moves into the history.
        out.put(view::version_key(ty, id, old.version), encode(&old.current));
    }
    let fields = w
        .body
        .as_ref()
        .map(|r| Fields::of(r.info()))
        .unwrap_or_default();
    let deleted = w.body.is_none();
    if !deleted {
        for k in view::index_keys(ty, id, &ctx.writer, &fields) {
            out.put(k, Vec::new());
        }
    }
    let head = HeadRec {
        version,
        conflicts,
        fields,
        current: VersionRec {
            author: ctx.writer,
            seq: ctx.seq,
            time: ctx.time,
            deleted,
            // A v2 sealed shell is kept packed (binary ciphertext), see
            // `scope_crypto::pack_shell`; readers get the exact shell back.
            body: w
                .body
                .map(|r| {
                    let bytes = r.into_bytes();
                    crate::scope_crypto::pack_shell(&bytes).unwrap_or(bytes)
                })
                .unwrap_or_default(),
        },
    };
    out.put(view::head_key(ty, id), encode(&head));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::Denied;

    #[test]
    fn rejections_name_the_bundle_entry_only_when_there_is_one() {
        let single = Rejection::Denied {
            denied: Denied::Revoked,
            entry: None,
        };
        assert_eq!(single.to_string(), "the writer's grant was revoked");
        let import = Rejection::Invalid {
            reason: "bad id".into(),
            entry: Some(3),
        };
        assert_eq!(
            import.to_string(),
            "invalid resource (Bundle entry 3): bad id"
        );
    }
}
