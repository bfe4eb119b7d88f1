//! `ehr emergency`: break-glass access to the emergency scope (allergies,
//! medications, conditions, immunizations), by an emergency card or by any
//! K of N emergency contacts (ehr-core's `emergency` and
//! `emergency_contacts`).
//!
//! The patient stores emergency resources sealed under the emergency scope
//! (`emergency put`), then sets up a card or contacts (`emergency setup`).
//! Contacts are devices that joined the record (their `device key` from
//! `ehr whoami`); each releases its share to the opener (`emergency
//! release --to KEY` prints a token), and the opener opens with K tokens
//! (`emergency open --share T --share T`), or with the card. The opener
//! gets a notice token to hand back; the patient records it (`emergency
//! accept`), which writes an AuditEvent, and sees every set-up and opening
//! with `emergency list` (which also ends openings whose time is up and
//! re-arms the contacts).

use crate::commands::parse_expiry;
use crate::store::{self, Identity};
use crate::table;
use crate::{CliError, Json};
use clap::{Args, Subcommand};
use ehr_core::emergency::{EmergencyCard, EmergencyNotice};
use ehr_core::emergency_contacts::{EmergencyOpening, ReleasedShare};
use ehr_core::keys::IdentityPublic;
use ehr_core::SecureRecord;
use ehr_examples::{hex, parse_key};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The prefix of a card notice's text form (hex of its JSON).
const CARD_NOTICE_PREFIX: &str = "ehr-cardnotice1:";

#[derive(Subcommand, Debug)]
pub(crate) enum EmergencyCmd {
    /// (Patient) store a resource in the emergency scope (sealed; what emergency access opens).
    Put {
        /// The FHIR resource file (AllergyIntolerance, Condition, ...).
        file: PathBuf,
    },
    /// (Patient) set up emergency access: an emergency card, or any K of N contacts.
    Setup(SetupArgs),
    /// (Contact) release your share to the person opening: prints a token to give them.
    Release {
        /// The opener's device key (`ehr whoami` on their side).
        #[arg(long)]
        to: String,
    },
    /// Open the emergency scope with K released shares, or with a card.
    Open(OpenArgs),
    /// (Patient) record an opening from the notice the opener handed back.
    Accept {
        /// The notice token (`ehr-opening1:...` or `ehr-cardnotice1:...`).
        notice: String,
    },
    /// (Patient) the emergency set-up, openings and events; ends openings whose time is up.
    List(Json),
}

#[derive(Args, Debug)]
pub(crate) struct SetupArgs {
    /// Issue an emergency card and write its text to this file.
    #[arg(
        long,
        conflicts_with = "contacts",
        required_unless_present = "contacts"
    )]
    card: Option<PathBuf>,
    /// The contacts' device keys (hex, comma separated).
    #[arg(long, value_delimiter = ',')]
    contacts: Vec<String>,
    /// How many contacts must release their share.
    #[arg(long, default_value_t = 2)]
    threshold: usize,
    /// How long an opening lasts (contacts) or the card is valid: 24h, 7d, 90m.
    #[arg(long, default_value = "24h")]
    duration: String,
}

#[derive(Args, Debug)]
pub(crate) struct OpenArgs {
    /// A share token released to this device (repeat K times).
    #[arg(long)]
    share: Vec<String>,
    /// An emergency card file instead of shares.
    #[arg(long, conflicts_with = "share")]
    card: Option<PathBuf>,
    /// Who opens (goes into the notice and the audit trail).
    #[arg(long, default_value = "emergency responder")]
    responder: String,
    #[command(flatten)]
    json: Json,
}

fn now_ms() -> u64 {
    ehr_core::Clock::now_ms(&ehr_core::SystemClock)
}

fn device_key(s: &str) -> Result<IdentityPublic, CliError> {
    parse_key(s).map(IdentityPublic).ok_or_else(|| {
        CliError::Usage(format!(
            "{s:?} is not a device key: give the 64 hex digits `ehr whoami` prints as `device key`"
        ))
    })
}

async fn open(data: &Path) -> Result<(Identity, SecureRecord), CliError> {
    let (id, r) = store::open_record(data).await?;
    r.update().await?;
    Ok((id, SecureRecord::new(r)))
}

fn patient_only(id: &Identity, what: &str) -> Result<(), CliError> {
    match id {
        Identity::Patient { .. } => Ok(()),
        Identity::Provider { .. } => Err(CliError::Usage(format!(
            "only the patient can {what}: run this in the patient's data folder"
        ))),
    }
}

fn ehr(what: &str) -> impl FnOnce(ehr_core::Error) -> CliError + '_ {
    move |e| CliError::ehr(what, e)
}

/// Runs one `ehr emergency` subcommand.
pub(crate) async fn run(data: &Path, cmd: EmergencyCmd) -> Result<(), CliError> {
    match cmd {
        EmergencyCmd::Put { file } => put(data, &file).await,
        EmergencyCmd::Setup(a) => setup(data, a).await,
        EmergencyCmd::Release { to } => release(data, &to).await,
        EmergencyCmd::Open(a) => open_scope(data, a).await,
        EmergencyCmd::Accept { notice } => accept(data, &notice).await,
        EmergencyCmd::List(j) => list(data, j.json).await,
    }
}

async fn put(data: &Path, file: &Path) -> Result<(), CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError::io(file, e))?;
    let (id, s) = open(data).await?;
    patient_only(&id, "write to the emergency scope")?;
    let w = s
        .put(ehr_core::scope_crypto::EMERGENCY_SCOPE, bytes)
        .await
        .map_err(ehr("cannot store it in the emergency scope"))?;
    s.record().flush().await?;
    println!(
        "stored {}/{} (version {}) sealed in the emergency scope",
        w.target.resource_type, w.target.id, w.version
    );
    Ok(())
}

async fn setup(data: &Path, a: SetupArgs) -> Result<(), CliError> {
    let duration = parse_expiry(&a.duration, 0)?;
    let contacts = a
        .contacts
        .iter()
        .map(|c| device_key(c))
        .collect::<Result<Vec<_>, _>>()?;
    let (id, s) = open(data).await?;
    patient_only(&id, "set up emergency access")?;
    if let Some(path) = a.card {
        if path.exists() {
            return Err(CliError::Usage(format!(
                "{} exists: give a new file for the card",
                path.display()
            )));
        }
        let until = now_ms().saturating_add(duration);
        let card = s
            .create_emergency_card(until)
            .await
            .map_err(ehr("cannot issue the card"))?;
        s.record().flush().await?;
        std::fs::write(&path, format!("{}\n", card.to_text()))
            .map_err(|e| CliError::io(&path, e))?;
        println!(
            "emergency card {} written to {} (valid until {}); keep it with the patient",
            card.public().fingerprint(),
            path.display(),
            ehr_core::fhir::format_instant(until)
        );
        return Ok(());
    }
    let setup = s
        .setup_emergency_contacts(&contacts, a.threshold, duration)
        .await
        .map_err(ehr("cannot set up emergency contacts"))?;
    s.record().flush().await?;
    println!(
        "emergency contacts set up: any {} of {} can open the emergency scope for {}",
        setup.threshold,
        setup.contacts.len(),
        a.duration
    );
    println!(
        "each contact syncs, then runs `ehr emergency release --to OPENER_DEVICE_KEY` when needed"
    );
    Ok(())
}

async fn release(data: &Path, to: &str) -> Result<(), CliError> {
    let opener = device_key(to)?;
    let (_, s) = open(data).await?;
    let share = s
        .release_emergency_share(opener)
        .await
        .map_err(ehr("cannot release the share"))?;
    s.record().flush().await?;
    println!("{}", share.to_text());
    eprintln!("give this token to the opener; it opens nothing alone");
    Ok(())
}

fn resource_row(b: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
    let text = |v: &Value| -> String {
        v.get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                v.get("coding")
                    .and_then(|c| c.get(0))
                    .and_then(|c| c.get("display").or_else(|| c.get("code")))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let what = ["code", "medicationCodeableConcept", "vaccineCode"]
        .iter()
        .find_map(|f| v.get(*f).map(text))
        .unwrap_or_default();
    vec![
        v["resourceType"].as_str().unwrap_or("").to_owned(),
        v["id"].as_str().unwrap_or("").to_owned(),
        table::cut(&what, 60),
    ]
}

async fn open_scope(data: &Path, a: OpenArgs) -> Result<(), CliError> {
    let (_, s) = open(data).await?;
    let (resources, notice, expires) = if let Some(path) = &a.card {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
        let card = EmergencyCard::parse(&text)
            .map_err(|_| CliError::Usage(format!("{} is not an emergency card", path.display())))?;
        if card.record_key != s.record().key() {
            return Err(CliError::Usage(
                "this card is for another record: join that record first".into(),
            ));
        }
        let responder = SecureRecord::with_identity(s.record().clone(), card.identity());
        let view = responder
            .emergency_open(&card, &a.responder)
            .await
            .map_err(ehr("cannot open the emergency scope"))?;
        let notice = serde_json::to_vec(&view.notice).unwrap_or_default();
        (
            view.resources,
            format!("{CARD_NOTICE_PREFIX}{}", hex(&notice)),
            None,
        )
    } else {
        let shares = a
            .share
            .iter()
            .map(|t| {
                ReleasedShare::parse(t).map_err(|_| {
                    CliError::Usage(format!(
                        "{:?} is not a share token (`ehr-share1:...` from `ehr emergency release`)",
                        table::cut(t, 24)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let session = s
            .open_emergency(&shares, &a.responder)
            .await
            .map_err(ehr("cannot open the emergency scope"))?;
        (
            session.resources.clone(),
            session.opening.to_text(),
            Some(session.opening.expires),
        )
    };
    s.record().flush().await?;
    if a.json.json {
        let res: Vec<Value> = resources
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
            .collect();
        let v = json!({
            "resources": res,
            "notice": notice,
            "expires": expires.map(ehr_core::fhir::format_instant),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = resources.iter().map(|b| resource_row(b)).collect();
    table::print(&["TYPE", "ID", "WHAT"], &rows);
    if let Some(e) = expires {
        println!(
            "open until {} (every read is in your own read log)",
            ehr_core::fhir::format_instant(e)
        );
    }
    println!("give this notice to the patient (`ehr emergency accept NOTICE`):");
    println!("{notice}");
    Ok(())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

async fn accept(data: &Path, notice: &str) -> Result<(), CliError> {
    let (id, s) = open(data).await?;
    patient_only(&id, "accept an emergency notice")?;
    let notice = notice.trim();
    let bad = || {
        CliError::Usage(
            "not an emergency notice: give the `ehr-opening1:...` or `ehr-cardnotice1:...` token the opener printed".into(),
        )
    };
    if let Some(h) = notice.strip_prefix(CARD_NOTICE_PREFIX) {
        let n: EmergencyNotice = unhex(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(bad)?;
        s.accept_emergency_notice(&n)
            .await
            .map_err(ehr("the notice was refused"))?;
        s.record().flush().await?;
        println!(
            "recorded: emergency card {} opened by {}; the card can read nothing written from now on",
            n.card.fingerprint(),
            n.responder
        );
        return Ok(());
    }
    let n = EmergencyOpening::parse(notice).map_err(|_| bad())?;
    s.accept_emergency_opening(&n)
        .await
        .map_err(ehr("the notice was refused"))?;
    s.record().flush().await?;
    println!(
        "recorded: emergency scope opened by {} until {} (see `ehr emergency list`)",
        n.responder,
        ehr_core::fhir::format_instant(n.expires)
    );
    Ok(())
}

async fn list(data: &Path, as_json: bool) -> Result<(), CliError> {
    let (id, s) = open(data).await?;
    patient_only(&id, "list emergency access")?;
    let ended = s
        .end_expired_emergency_openings()
        .await
        .map_err(ehr("cannot end expired openings"))?;
    s.record().flush().await?;
    let setup = s.emergency_setup().await?;
    let openings = s.emergency_openings().await?;
    let events = s.emergency_events().await?;
    let event_rows: Vec<Vec<String>> = events
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
            vec![
                v["recorded"].as_str().unwrap_or("").to_owned(),
                v["outcomeDesc"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    if as_json {
        let v = json!({
            "setup": setup.as_ref().map(|s| json!({
                "emergency_key": hex(&s.emergency.0),
                "threshold": s.threshold,
                "contacts": s.contacts.iter().map(|c| hex(&c.contact.0)).collect::<Vec<_>>(),
                "duration_ms": s.duration_ms,
            })),
            "openings": openings.iter().map(|o| json!({
                "responder": o.responder,
                "opened": ehr_core::fhir::format_instant(o.time),
                "expires": ehr_core::fhir::format_instant(o.expires),
                "contacts": o.contacts.iter().map(|c| hex(&c.0)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "events": event_rows.iter().map(|r| json!({"recorded": r[0], "detail": r[1]})).collect::<Vec<_>>(),
            "ended_now": ended,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match &setup {
        Some(st) => println!(
            "contacts: any {} of {} ({})",
            st.threshold,
            st.contacts.len(),
            st.contacts
                .iter()
                .map(|c| c.contact.fingerprint())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("contacts: none set up (`ehr emergency setup --contacts ...`)"),
    }
    if ended > 0 {
        println!("an opening's time was up: its key was rotated away and the contacts re-armed");
    }
    table::print(&["RECORDED", "EVENT"], &event_rows);
    Ok(())
}
