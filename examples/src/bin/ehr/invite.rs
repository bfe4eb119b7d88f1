//! Invites on the command line: the patient's `ehr invite create | list |
//! cancel`, the provider's `ehr join INVITE --peer HOST:PORT | --lan`, and
//! the patient's side of a redemption inside `ehr sync` ([`answer`]).
//!
//! The invite text holds the record key, an invite id and a one-time
//! secret; the role, scopes and expiry stay in the patient's record
//! (sealed). The provider proves it holds the secret over the Noise
//! channel (bound to its handshake hash), the patient's device grants it
//! exactly the invite's grant, naming the provider's network identity so
//! later `ehr sync` connections are let in.

use crate::commands::{
    grant_json, now_ms, parse_expiry, parse_role, patient_only, print_json, time,
};
use crate::net;
use crate::store::{self, Identity};
use crate::table;
use crate::{CliError, Json};
use clap::{Args, Subcommand};
use ehr_core::invite::{InviteStatus, INVITE_PREFIX};
use ehr_core::{Grant, Invite, InviteError, InviteServing, Record, SecureRecord};
use ehr_examples::hex;
use futures::executor::LocalSpawner;
use futures::task::LocalSpawnExt;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub(crate) enum InviteCmd {
    /// (Patient) create an invite for a role, scopes and an expiry; prints
    /// the short text to give the provider (copy/paste or QR).
    Create(CreateArgs),
    /// (Patient) every invite and where it stands.
    List(Json),
    /// (Patient) cancel an open invite (its id from `ehr invite list`).
    Cancel {
        /// The invite id (32 hex digits).
        id: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    /// practitioner, lab, organization or owner.
    #[arg(long, default_value = "practitioner")]
    pub(crate) role: String,
    /// SMART scopes, comma separated, e.g. `patient/Observation.cru,patient/*.rs`.
    #[arg(long, value_delimiter = ',', default_value = "patient/*.cruds")]
    pub(crate) scopes: Vec<String>,
    /// Until when the invite can be redeemed: a duration (`7d`, `12h`, `15m`)
    /// or a date (2027-01-01).
    #[arg(long, default_value = "7d")]
    pub(crate) expires: String,
    /// When the grant itself ends (a duration or a date; default: never).
    #[arg(long)]
    pub(crate) grant_expiry: Option<String>,
    /// Print JSON (the invite text and its id) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct JoinArgs {
    /// An invite (`ehr-invite1:...`, from `ehr invite create`), or a
    /// record key (64 hex digits; then send the printed writer key to the
    /// patient for `ehr grants add`).
    pub(crate) target: String,
    /// Redeem the invite with the patient's device at `HOST:PORT` (its
    /// `ehr sync --listen`).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "lan")]
    pub(crate) peer: Option<String>,
    /// Find the patient's device on the LAN (mDNS) and redeem the invite.
    #[arg(long)]
    pub(crate) lan: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
}

pub(crate) async fn run(data: &Path, cmd: InviteCmd) -> Result<(), CliError> {
    match cmd {
        InviteCmd::Create(a) => create(data, a).await,
        InviteCmd::List(j) => list(data, j.json).await,
        InviteCmd::Cancel { id } => cancel(data, &id).await,
    }
}

async fn open_patient(data: &Path, what: &str) -> Result<SecureRecord, CliError> {
    let (id, r) = store::open_record(data).await?;
    patient_only(&id, what)?;
    r.update().await?;
    let s = SecureRecord::new(r);
    s.refresh_keys().await?;
    Ok(s)
}

async fn create(data: &Path, a: CreateArgs) -> Result<(), CliError> {
    let role = parse_role(&a.role)?;
    let scopes: Vec<&str> = a.scopes.iter().map(String::as_str).collect();
    let mut grant = Grant::new(role, &scopes).map_err(|e| {
        CliError::Usage(format!(
            "bad scope: {e}: use SMART syntax such as patient/Observation.cru"
        ))
    })?;
    let now = now_ms();
    let expires = parse_expiry(&a.expires, now)?;
    if expires <= now {
        return Err(CliError::Usage(format!(
            "the invite expiry {} is in the past: give a later one",
            a.expires
        )));
    }
    if let Some(e) = &a.grant_expiry {
        let at = parse_expiry(e, now)?;
        if at <= now {
            return Err(CliError::Usage(format!(
                "the grant expiry {e} is in the past: give a later one"
            )));
        }
        grant = grant.with_expiry(at);
    }
    let s = open_patient(data, "invite providers").await?;
    let invite = s
        .create_invite(grant.clone(), &[], expires)
        .await
        .map_err(|e| CliError::ehr("cannot create the invite", e))?;
    s.record().flush().await?;
    let text = invite.to_text();
    if a.json {
        print_json(&json!({
            "invite": text,
            "id": hex(&invite.id),
            "expires": time(expires),
            "grant": grant_json(&grant, false),
        }));
        return Ok(());
    }
    println!("{text}");
    let g = grant_json(&grant, false);
    eprintln!(
        "invite {} for a {} ({}), redeemable until {}; single use",
        hex(&invite.id),
        g["role"].as_str().unwrap_or(""),
        join_scopes(&g),
        time(expires)
    );
    eprintln!("give the text to the provider; they run `ehr join INVITE --peer HOST:PORT` while you run `ehr sync --listen ADDR`");
    Ok(())
}

fn join_scopes(g: &Value) -> String {
    g["scopes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn status_text(s: &InviteStatus, expires: u64, now: u64) -> String {
    match s {
        InviteStatus::Open if now >= expires => "expired".into(),
        InviteStatus::Open => "open".into(),
        InviteStatus::Used(w) => format!("used by {}", &hex(w)[..12]),
        InviteStatus::Cancelled => "cancelled".into(),
        _ => "unknown".into(),
    }
}

async fn list(data: &Path, as_json: bool) -> Result<(), CliError> {
    let s = open_patient(data, "list invites").await?;
    let invites = s.invites().await?;
    let now = now_ms();
    if as_json {
        let arr: Vec<Value> = invites
            .iter()
            .map(|i| {
                json!({
                    "id": hex(&i.id),
                    "status": status_text(&i.status, i.expires, now),
                    "expires": time(i.expires),
                    "grant": grant_json(&i.grant, false),
                })
            })
            .collect();
        print_json(&Value::Array(arr));
        return Ok(());
    }
    if invites.is_empty() {
        println!("no invites: create one with `ehr invite create --role ROLE --scopes ...`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = invites
        .iter()
        .map(|i| {
            let g = grant_json(&i.grant, false);
            vec![
                hex(&i.id),
                g["role"].as_str().unwrap_or("").to_owned(),
                table::cut(&join_scopes(&g), 40),
                time(i.expires),
                status_text(&i.status, i.expires, now),
            ]
        })
        .collect();
    table::print(&["ID", "ROLE", "SCOPES", "EXPIRES", "STATUS"], &rows);
    Ok(())
}

async fn cancel(data: &Path, id: &str) -> Result<(), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{id:?} is not an invite id: give the 32 hex digits `ehr invite list` shows"
        ))
    };
    let mut raw = [0u8; 16];
    let b = id.trim().as_bytes();
    if b.len() != 32 {
        return Err(bad());
    }
    for (i, pair) in b.chunks(2).enumerate() {
        let t = std::str::from_utf8(pair).map_err(|_| bad())?;
        raw[i] = u8::from_str_radix(t, 16).map_err(|_| bad())?;
    }
    let s = open_patient(data, "cancel invites").await?;
    match s.invite_state(&raw).await? {
        None => {
            return Err(CliError::Usage(format!(
                "no invite {id} in this record: see `ehr invite list`"
            )))
        }
        Some(st) if st.status != InviteStatus::Open => {
            return Err(CliError::Usage(format!(
                "invite {id} is {}: only open invites can be cancelled",
                status_text(&st.status, st.expires, now_ms())
            )))
        }
        Some(_) => {}
    }
    s.cancel_invite(&raw)
        .await
        .map_err(|e| CliError::ehr("cannot cancel the invite", e))?;
    s.record().flush().await?;
    println!("cancelled invite {id}: it can no longer be redeemed");
    Ok(())
}

/// One line for a failed redemption: what happened and what to do.
fn refused(e: InviteError) -> CliError {
    let todo = match e {
        InviteError::Expired | InviteError::AlreadyUsed | InviteError::Cancelled => {
            "ask the patient for a new invite (`ehr invite create`)"
        }
        InviteError::BadProof | InviteError::Unknown | InviteError::Malformed => {
            "check that you copied the whole invite text, or ask the patient for a new one"
        }
        InviteError::WrongRecord => {
            "this folder already joined another record: use a new --data DIR"
        }
        InviteError::NoAnswer | InviteError::BadReply => {
            "check that the patient runs `ehr sync --listen` at that address"
        }
        _ => "ask the patient to retry",
    };
    CliError::Other(format!("cannot join: {e}: {todo}; nothing was granted"))
}

/// The provider: redeem an invite, or join by record key.
pub(crate) async fn join(data: &Path, a: JoinArgs, sp: &LocalSpawner) -> Result<(), CliError> {
    let target = a.target.trim();
    let is_invite = target
        .get(..INVITE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(INVITE_PREFIX));
    if !is_invite {
        if a.peer.is_some() || a.lan {
            return Err(CliError::Usage(
                "--peer and --lan redeem an invite: give the `ehr-invite1:...` text, or drop them to join by record key".into(),
            ));
        }
        return crate::commands::join(data, target).await;
    }
    let invite = Invite::parse(target).map_err(|_| {
        CliError::Usage(
            "the invite text is damaged (its checksum does not match): copy it again exactly as `ehr invite create` printed it".into(),
        )
    })?;
    if a.peer.is_none() && !a.lan {
        return Err(CliError::Usage(
            "say where the patient's device is: --peer HOST:PORT (its `ehr sync --listen`) or --lan".into(),
        ));
    }
    let Identity::Provider { name, record } = store::load_identity(data)? else {
        return Err(CliError::Usage(
            "this data folder holds a patient's own record: join from a provider's folder (`ehr init --provider NAME`)".into(),
        ));
    };
    if record.is_some_and(|k| k != invite.record_key) {
        return Err(refused(InviteError::WrongRecord));
    }
    let storage = store::open_storage(data, false)?;
    let rec = Record::builder(storage).join(invite.record_key).await?;
    rec.update().await?;
    if record.is_some() && rec.writable().await {
        return Err(CliError::Usage(
            "this provider already joined the record: run `ehr sync --peer HOST:PORT` to sync"
                .into(),
        ));
    }
    let secure = Arc::new(SecureRecord::new(rec.clone()));
    let limit = Duration::from_secs(a.timeout);
    let start = Instant::now();
    let _lan = match &a.peer {
        Some(p) => {
            let tcp = net::dial(p).await?;
            let (mut io, remote, hh) = handshake(&rec, tcp)
                .await
                .map_err(|e| CliError::Unreachable(p.clone(), e))?;
            secure
                .redeem(&invite, &mut io, remote, &hh)
                .await
                .map_err(refused)?;
            let r = rec.clone();
            sp.spawn_local(async move {
                let _ = r.replicate(io, true).await;
            })
            .map_err(|e| CliError::Other(e.to_string()))?;
            None
        }
        None => {
            use swarm_rs::{MdnsConfig, MdnsDiscovery, SystemClock, TcpTransport};
            let lan = |e: &dyn std::fmt::Display| {
                CliError::Other(format!(
                    "cannot start LAN discovery ({e}): use --peer HOST:PORT instead"
                ))
            };
            let mdns = MdnsDiscovery::bind(MdnsConfig::default(), Arc::new(SystemClock))
                .map_err(|e| lan(&e))?;
            let any: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
            let (handle, work, redeemed) = secure
                .clone()
                .join_with_invite(&invite, TcpTransport, mdns, &any)
                .await
                .map_err(|e| lan(&e))?;
            sp.spawn_local(async move {
                let _ = work.await;
            })
            .map_err(|e| lan(&e))?;
            let timeout = async {
                async_io::Timer::after(limit).await;
                Err(InviteError::NoAnswer)
            };
            futures::pin_mut!(redeemed);
            futures::pin_mut!(timeout);
            let r = match futures::future::select(redeemed, timeout).await {
                futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => r,
            };
            r.map_err(refused)?;
            Some(handle)
        }
    };
    // Granted: remember the record, then catch up with the patient.
    rec.flush().await?;
    store::save_identity(
        data,
        &Identity::Provider {
            name,
            record: Some(invite.record_key),
        },
    )?;
    net::settle(&[&rec], limit.saturating_sub(start.elapsed()), || async {
        !rec.patient_id().is_empty() && rec.writable().await
    })
    .await
    .map_err(|_| {
        CliError::Other(
            "granted, but the record did not arrive in time: run `ehr sync --peer HOST:PORT` to finish"
                .into(),
        )
    })?;
    rec.flush().await?;
    let g = rec
        .grant_of(&rec.writer_key())
        .await?
        .map(|(g, _)| grant_json(&g, false))
        .unwrap_or(Value::Null);
    println!(
        "joined the record of patient {} ({}) as {}: {}{}",
        rec.patient_id(),
        hex(&invite.record_key),
        g["role"].as_str().unwrap_or("?"),
        join_scopes(&g),
        g["expires"]
            .as_str()
            .map(|e| format!(", until {e}"))
            .unwrap_or_default()
    );
    println!("writer key: {}", hex(&rec.writer_key()));
    println!("sync later with `ehr sync --peer HOST:PORT` (or --lan)");
    Ok(())
}

/// Dials `addr`, runs the Noise handshake and redeems `invite` for `rec`
/// (the demo's providers); the connection is closed afterwards: the grant
/// lets the provider's later connections in.
pub(crate) async fn redeem_tcp(rec: &Record, invite: &Invite, addr: &str) -> Result<(), CliError> {
    let tcp = net::dial(addr).await?;
    let (mut io, remote, hh) = handshake(rec, tcp)
        .await
        .map_err(|e| CliError::Unreachable(addr.to_owned(), e))?;
    SecureRecord::new(rec.clone())
        .redeem(invite, &mut io, remote, &hh)
        .await
        .map_err(refused)
}

type Framed = Box<dyn FramedIo<Item = std::io::Result<Vec<u8>>> + Send + Unpin>;

/// A message duplex (what replication runs on).
pub(crate) trait FramedIo:
    Stream<Item = std::io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = std::io::Error>
{
}
impl<T> FramedIo for T where
    T: Stream<Item = std::io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = std::io::Error>
{
}

/// Noise over `tcp` as the dialer: the duplex, the remote identity and the
/// handshake hash.
async fn handshake(
    rec: &Record,
    tcp: async_net::TcpStream,
) -> Result<(Framed, [u8; 32], Vec<u8>), String> {
    let _ = tcp.set_nodelay(true);
    let s = swarm_rs::SecureStream::handshake(
        tcp,
        swarm_rs::Role::Initiator,
        &rec.identity(),
        swarm_rs::SecureConfig::default(),
        &mut swarm_rs::OsEntropy,
        Arc::new(swarm_rs::SystemClock),
    )
    .await
    .map_err(|e| e.to_string())?;
    let remote = s
        .remote_public_key()
        .map(|k| k.to_bytes())
        .ok_or("no remote key")?;
    let hh = s
        .handshake_hash()
        .map(|h| h.as_bytes().to_vec())
        .ok_or("no handshake hash")?;
    let to_io = |e: swarm_rs::StreamError| std::io::Error::other(e.to_string());
    let io = s
        .sink_map_err(to_io)
        .map(move |r: Result<Vec<u8>, swarm_rs::StreamError>| r.map_err(to_io));
    Ok((Box::new(io), remote, hh))
}

/// The limits on strangers on the invite channel, shared by every
/// connection this process serves (`--listen` and the LAN): at most
/// [`ehr_core::MAX_PENDING_REDEMPTIONS`] wait for their first message at
/// once, each for `EHR_INVITE_TIMEOUT_MS` milliseconds (default
/// [`ehr_core::DEFAULT_REDEMPTION_TIMEOUT`]).
pub(crate) fn gate() -> &'static ehr_core::InviteGate {
    static GATE: std::sync::OnceLock<ehr_core::InviteGate> = std::sync::OnceLock::new();
    GATE.get_or_init(|| {
        let timeout = std::env::var("EHR_INVITE_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(ehr_core::DEFAULT_REDEMPTION_TIMEOUT);
        ehr_core::InviteGate::default().timeout(timeout)
    })
}

/// Set by the demo, which tells its own story: [`answer`] prints nothing.
pub(crate) static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The patient's side, for a peer the record does not name (called by
/// `ehr sync` on every incoming connection from a stranger): answers its
/// invite redemption, or refuses it. `Ok` means: replicate with it.
pub(crate) async fn answer<IO>(
    record: &Record,
    io: &mut IO,
    remote: [u8; 32],
    handshake_hash: &[u8],
) -> Result<(), String>
where
    IO: Stream<Item = std::io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = std::io::Error> + Unpin,
{
    let secure = SecureRecord::new(record.clone()).with_invite_gate(gate().clone());
    let who = hex(&remote);
    let admitted = match secure.admit(io, remote, handshake_hash).await {
        Ok(a) => a,
        // Too many strangers waiting, or this one sent nothing in time.
        Err(ehr_core::Error::Invite(e)) => {
            return Err(format!("closed a connection from {}: {e}", &who[..12]))
        }
        Err(e) => return Err(e.to_string()),
    };
    match admitted {
        InviteServing::Member => Ok(()),
        InviteServing::Redeemed(w) => {
            let _ = record.flush().await;
            if !QUIET.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("invite redeemed by {}: granted writer {}", &who[..12], hex(&w));
            }
            Ok(())
        }
        InviteServing::Refused(e) => Err(format!("refused an invite from {}: {e}", &who[..12])),
        _ => Err(format!(
            "refused {who}: no grant names this identity and it redeemed no invite (`ehr invite create`, or `ehr grants add WRITER --identity ID`)"
        )),
    }
}
