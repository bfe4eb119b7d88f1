//! `ehr`: a patient-controlled health record on the command line.
//!
//! One data folder (`--data DIR`, default `$XDG_DATA_HOME/ehr`) holds one
//! identity: a patient's record, or a provider that joined one. Every
//! read command takes `--json`; errors are one line on stderr and a
//! non-zero exit, with nothing written. `ehr demo` plays the whole story
//! (patient, doctor, lab over TCP loopback) in temporary folders.

#![forbid(unsafe_code)]

mod commands;
mod demo;
mod emergency;
mod invite;
mod net;
mod store;
mod table;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A patient-controlled, peer-to-peer health record (FHIR R4).
#[derive(Parser, Debug)]
#[command(name = "ehr", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The data folder (default: $XDG_DATA_HOME/ehr or ~/.local/share/ehr).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The passphrase locking this data folder's keys (at `init`: lock them
    /// with it). Visible to other local users in the process list: prefer
    /// --passphrase-file or EHR_PASSPHRASE.
    #[arg(long, global = true, value_name = "PASS")]
    passphrase: Option<String>,
    /// Read the passphrase from the first line of this file.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create a patient record, or a provider identity, in the data folder.
    Init(InitArgs),
    /// (Provider) join a patient's record: redeem an invite over the network,
    /// or (by record key) print the writer key for the patient to grant.
    Join(invite::JoinArgs),
    /// (Patient) invite a provider: create, list and cancel invites.
    #[command(subcommand)]
    Invite(invite::InviteCmd),
    /// Who this data folder is: role, record key, writer key, grant.
    Whoami(Json),
    /// Write one FHIR resource (a JSON file, or `-` for stdin).
    Put {
        /// The resource file.
        file: PathBuf,
    },
    /// Import a FHIR resource or Bundle file (all or nothing).
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Show the current version of a resource.
    Get {
        /// Resource type, e.g. Observation.
        resource_type: String,
        /// Resource id.
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// Search resources of one type (newest clinical date first).
    Search(SearchArgs),
    /// Every version of a resource, with author and time.
    History {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// Delete a resource (a tombstone; history is kept).
    Delete {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
    },
    /// Store a file (PDF, image, DICOM) and reference it from a new DocumentReference.
    Attach(AttachArgs),
    /// Fetch an attachment: `DocumentReference/ID` (or any resource with an
    /// attachment), or an `ehr-blob://` URL with `--size`.
    Fetch(FetchArgs),
    /// The patient summary (allergies, medications, conditions, immunizations).
    Summary(Json),
    /// Export everything about the patient as one FHIR Bundle.
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Who may write to this record.
    #[command(subcommand)]
    Grants(GrantsCmd),
    /// Backup peers that store and serve the record.
    #[command(subcommand)]
    Mirror(MirrorCmd),
    /// Writes the record's rules refused (on every peer alike).
    Rejected(Json),
    /// The audit trail: list it, export it with proofs, verify a package offline.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Run as a peer: listen, dial peers, find peers on the LAN, replicate.
    Sync(SyncArgs),
    /// Play the whole story on this machine (temporary folders, TCP loopback).
    Demo(DemoArgs),
    /// Emergency access: set up a card or K-of-N contacts, release, open, accept, list.
    #[command(subcommand)]
    Emergency(emergency::EmergencyCmd),
}

#[derive(Args, Debug)]
pub(crate) struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct InitArgs {
    /// Create a patient record with this patient id (e.g. `alice`).
    #[arg(long, value_name = "ID")]
    pub(crate) patient: Option<String>,
    /// Create a provider identity with this display name.
    #[arg(long, value_name = "NAME")]
    pub(crate) provider: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct SearchArgs {
    /// Resource type.
    pub(crate) resource_type: String,
    /// A `system|code` token.
    #[arg(long)]
    pub(crate) code: Option<String>,
    /// A category `system|code` token (or just the code).
    #[arg(long)]
    pub(crate) category: Option<String>,
    /// Clinical date at or after (FHIR date, e.g. 2024-01-01).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Clinical date before (FHIR date).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only versions written by this writer key (hex).
    #[arg(long)]
    pub(crate) author: Option<String>,
    /// At most this many results.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) json: Json,
}

#[derive(Args, Debug)]
pub(crate) struct AttachArgs {
    /// The file to store.
    pub(crate) file: PathBuf,
    /// Its MIME type (default from the file extension).
    #[arg(long)]
    pub(crate) content_type: Option<String>,
    /// A title for the DocumentReference (default: the file name).
    #[arg(long)]
    pub(crate) title: Option<String>,
    /// The DocumentReference id (default: random).
    #[arg(long)]
    pub(crate) id: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct FetchArgs {
    /// `Type/id` of a resource with an attachment, or an `ehr-blob://` URL.
    pub(crate) what: String,
    /// The size, when `what` is a URL.
    #[arg(long)]
    pub(crate) size: Option<u64>,
    /// Write the content here (default: stdout).
    #[arg(long, short)]
    pub(crate) out: Option<PathBuf>,
    /// Fetch from this peer (`HOST:PORT` of an `ehr sync --listen`) if not held locally.
    #[arg(long)]
    pub(crate) peer: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum GrantsCmd {
    /// List every writer and its grant.
    List(Json),
    /// (Patient) grant a provider's writer key a role, scopes and an expiry.
    Add(GrantAddArgs),
    /// (Patient) revoke a writer: its later writes are refused on every peer.
    Revoke {
        /// The writer key (hex, as `ehr whoami` prints on the provider's side).
        key: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct GrantAddArgs {
    /// The provider's writer key (hex).
    pub(crate) key: String,
    /// practitioner, lab, organization or owner.
    #[arg(long, default_value = "practitioner")]
    pub(crate) role: String,
    /// SMART scopes, comma separated, e.g. `patient/Observation.cru,patient/*.rs`.
    #[arg(long, value_delimiter = ',', default_value = "patient/*.cruds")]
    pub(crate) scopes: Vec<String>,
    /// Only these categories (`system|code` or `code`), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) categories: Vec<String>,
    /// The provider's network identity (hex, from `ehr whoami`), so its
    /// device may connect to this one's `ehr sync --listen`.
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// Expiry: a FHIR date/dateTime (e.g. 2027-01-01) or a duration such as `30d`, `12h`.
    #[arg(long)]
    pub(crate) expiry: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum MirrorCmd {
    /// (Patient) let a backup peer's key hold and serve the record (no writes).
    Add {
        /// The mirror's writer key (hex, from `ehr join` on the mirror).
        key: String,
        /// The mirror's network identity (hex, from `ehr whoami` on the mirror).
        #[arg(long)]
        identity: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCmd {
    /// AuditEvents in the record (grants' revocations, invites, ...) and refused writes.
    List(Json),
    /// Export this device's AuditEvents with hypercore proofs (a package a third party verifies).
    Export {
        /// The package file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Verify a package offline against a record key (no data folder needed).
    Verify {
        /// The package file.
        file: PathBuf,
        /// The record key (hex); default: this data folder's record.
        #[arg(long)]
        record: Option<String>,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    /// Listen for peers on this address (e.g. 0.0.0.0:7700, or 127.0.0.1:0).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Dial this peer (`HOST:PORT`); may be repeated.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) peer: Vec<String>,
    /// Find peers of this record on the LAN (mDNS; announces only the
    /// record's discovery key).
    #[arg(long)]
    pub(crate) lan: bool,
    /// Stop once caught up with the peers (nothing new for a moment).
    #[arg(long)]
    pub(crate) once: bool,
    /// With `--once`: give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
}

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the data folders here instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub(crate) keep: Option<PathBuf>,
}

/// Everything that can go wrong, each rendered as one line that says what
/// is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("no ehr data in {0}: run `ehr init --patient ID` or `ehr init --provider NAME` first (or pass --data DIR)")]
    NoData(PathBuf),
    #[error("{0} already holds ehr data: use another --data DIR")]
    Exists(PathBuf),
    #[error("the data folder {0} is in use by another ehr process: stop it (for example a running `ehr sync`) or wait, then retry")]
    Locked(PathBuf),
    #[error("the keys in {0} are locked with a passphrase: pass --passphrase-file FILE or set EHR_PASSPHRASE (nothing was changed)")]
    NeedPassphrase(PathBuf),
    #[error("wrong passphrase for {0}: check it and retry (nothing was changed)")]
    WrongPassphrase(PathBuf),
    #[error("this provider has not joined a record yet: run `ehr join RECORD_KEY` with the key the patient shared")]
    NotJoined,
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    #[error("{0} is damaged ({1}): restore it from a backup or re-run `ehr init` in a new folder")]
    Corrupt(PathBuf, String),
    #[error("{what}: {err}{hint}")]
    Ehr {
        what: String,
        err: Box<ehr_core::Error>,
        hint: &'static str,
    },
    #[error(
        "cannot reach peer {0} ({1}): check the address and that `ehr sync --listen` runs there"
    )]
    Unreachable(String, String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> CliError {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file: check the path".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: check the file's permissions".to_owned()
            }
            _ => e.to_string(),
        };
        CliError::Io(path.to_path_buf(), what)
    }

    /// An ehr-core error while doing `what`.
    pub(crate) fn ehr(what: impl Into<String>, err: ehr_core::Error) -> CliError {
        use ehr_core::Error as E;
        let hint = match &err {
            E::Resource(_) | E::Import(_) => "; fix the file and retry (nothing was written)",
            E::Rejected(_) => "; ask the patient for a grant that covers it (nothing was written)",
            E::NotFound(_) => "; check the type and id (`ehr search TYPE`)",
            E::Storage(_) => "; the data folder may be damaged or the disk full",
            _ => "",
        };
        CliError::Ehr {
            what: what.into(),
            err: Box::new(err),
            hint,
        }
    }
}

impl From<ehr_core::Error> for CliError {
    fn from(e: ehr_core::Error) -> Self {
        CliError::ehr("the record refused", e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data = cli.data.clone().unwrap_or_else(store::default_data_dir);
    let result = store::passphrase_from(cli.passphrase.clone(), cli.passphrase_file.as_deref())
        .and_then(|p| {
            store::set_passphrase(p);
            commands::run(cli.command, &data)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("error: {line}");
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
