//! One function per subcommand.

use crate::net::{self, Sessions};
use crate::store::{self, Identity};
use crate::table;
use crate::{AuditCmd, CliError, Command, GrantsCmd, MirrorCmd};
use ehr_core::consent::{Perms, Scope};
use ehr_core::fhir::{format_instant, parse_fhir_date, Coding};
use ehr_core::{Attachment, Grant, Query, Role, Version};
use ehr_examples::{hex, parse_key};
use futures::executor::{LocalPool, LocalSpawner};
use futures::task::LocalSpawnExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `cmd` against the data folder `data` to completion.
pub(crate) fn run(cmd: Command, data: &Path) -> Result<(), CliError> {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    pool.run_until(dispatch(cmd, data, spawner))
}

/// How long a device that has indexed nothing waits for a checkpoint
/// from its peers before it replays their inputs instead.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

async fn dispatch(cmd: Command, data: &Path, sp: LocalSpawner) -> Result<(), CliError> {
    match cmd {
        Command::Init(a) => init(data, a.patient, a.provider).await,
        Command::Join(a) => crate::invite::join(data, a, &sp).await,
        Command::Invite(c) => crate::invite::run(data, c).await,
        Command::Whoami(j) => whoami(data, j.json).await,
        Command::Put { file } => put(data, &file).await,
        Command::Import { file } => import(data, &file).await,
        Command::Get {
            resource_type,
            id,
            json,
        } => get(data, &resource_type, &id, json.json).await,
        Command::Search(a) => search(data, a).await,
        Command::History {
            resource_type,
            id,
            json,
        } => history(data, &resource_type, &id, json.json).await,
        Command::Delete { resource_type, id } => delete(data, &resource_type, &id).await,
        Command::Attach(a) => attach(data, a).await,
        Command::Fetch(a) => fetch(data, a, &sp).await,
        Command::Summary(j) => summary(data, j.json).await,
        Command::Export { out } => export(data, out.as_deref()).await,
        Command::Grants(GrantsCmd::List(j)) => grants_list(data, j.json).await,
        Command::Grants(GrantsCmd::Add(a)) => grants_add(data, a).await,
        Command::Grants(GrantsCmd::Revoke { key }) => revoke(data, &key).await,
        Command::Mirror(MirrorCmd::Add { key, identity }) => {
            mirror_add(data, &key, identity.as_deref()).await
        }
        Command::Rejected(j) => rejected(data, j.json).await,
        Command::Audit(AuditCmd::List(j)) => audit_list(data, j.json).await,
        Command::Audit(AuditCmd::Export { out }) => audit_export(data, &out).await,
        Command::Audit(AuditCmd::Verify { file, record, json }) => {
            audit_verify(data, &file, record.as_deref(), json.json).await
        }
        Command::Sync(a) => sync(data, a, &sp).await,
        Command::Demo(a) => crate::demo::run(a, &sp).await,
        Command::Emergency(c) => crate::emergency::run(data, c).await,
    }
}

pub(crate) fn now_ms() -> u64 {
    ehr_core::Clock::now_ms(&ehr_core::SystemClock)
}

fn read_input(file: &Path) -> Result<Vec<u8>, CliError> {
    if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| CliError::io(file, e))?;
        return Ok(buf);
    }
    std::fs::read(file).map_err(|e| CliError::io(file, e))
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn short(key: &[u8; 32]) -> String {
    hex(&key[..6])
}

pub(crate) fn writer_arg(key: &str) -> Result<[u8; 32], CliError> {
    parse_key(key).ok_or_else(|| {
        CliError::Usage(format!(
            "{key:?} is not a writer key: give the 64 hex digits `ehr whoami` prints on the provider's side"
        ))
    })
}

pub(crate) fn time(ms: u64) -> String {
    format_instant(ms)
}

pub(crate) fn patient_only(id: &Identity, what: &str) -> Result<(), CliError> {
    match id {
        Identity::Patient { .. } => Ok(()),
        Identity::Provider { .. } => Err(CliError::Usage(format!(
            "only the patient can {what}: run this in the patient's data folder"
        ))),
    }
}

// ---------------------------------------------------------------- identity

async fn init(
    data: &Path,
    patient: Option<String>,
    provider: Option<String>,
) -> Result<(), CliError> {
    if data.join("ehr.json").exists() {
        return Err(CliError::Exists(data.to_path_buf()));
    }
    std::fs::create_dir_all(data).map_err(|e| CliError::io(data, e))?;
    let locked = store::create_key_file(data)?.is_some();
    let storage = store::open_storage(data, true)?;
    if let Some(p) = patient {
        let record = store::builder(data, storage)?
            .create(&p)
            .await
            .map_err(|e| CliError::ehr(format!("cannot create a record for {p:?}"), e))?;
        record.flush().await?;
        store::save_identity(data, &Identity::Patient { patient: p.clone() })?;
        println!("created the record of patient {p} in {}", data.display());
        println!("record key: {}", hex(&record.key()));
        println!("invite providers with `ehr invite create --role ROLE --scopes ...` and run `ehr sync --listen ADDR`");
    } else {
        let name = provider.unwrap_or_default();
        store::save_identity(
            data,
            &Identity::Provider {
                name: name.clone(),
                record: None,
            },
        )?;
        println!("created provider identity {name:?} in {}", data.display());
        println!("next: `ehr join INVITE --peer HOST:PORT` with the invite the patient gives you");
    }
    if locked {
        println!("keys locked with the passphrase: every command needs it (--passphrase-file FILE or EHR_PASSPHRASE)");
    }
    Ok(())
}

pub(crate) async fn join(data: &Path, key: &str) -> Result<(), CliError> {
    let record_key = parse_key(key).ok_or_else(|| {
        CliError::Usage(format!(
            "{key:?} is not a record key: give the 64 hex digits `ehr init`/`ehr whoami` printed on the patient's side"
        ))
    })?;
    let id = store::load_identity(data)?;
    let Identity::Provider { name, record } = id else {
        return Err(CliError::Usage(
            "this data folder holds a patient's own record: join from a provider's folder (`ehr init --provider NAME`)".into(),
        ));
    };
    if let Some(k) = record {
        if k != record_key {
            return Err(CliError::Usage(
                "this provider folder already joined another record: use a new --data DIR per record".into(),
            ));
        }
    }
    let storage = store::open_storage(data, false)?;
    let rec = store::builder(data, storage)?.join(record_key).await?;
    rec.flush().await?;
    store::save_identity(
        data,
        &Identity::Provider {
            name,
            record: Some(record_key),
        },
    )?;
    println!("joined record {}", hex(&record_key));
    println!("writer key: {}", hex(&rec.writer_key()));
    println!(
        "identity:   {}",
        hex(rec.identity().public_key().as_bytes())
    );
    println!("send both to the patient (`ehr grants add WRITER --identity ID ...`), then `ehr sync --peer HOST:PORT`");
    Ok(())
}

pub(crate) fn scope_text(s: &Scope) -> String {
    let mut p = String::new();
    for (f, c) in [
        (Perms::CREATE, 'c'),
        (Perms::READ, 'r'),
        (Perms::UPDATE, 'u'),
        (Perms::DELETE, 'd'),
        (Perms::SEARCH, 's'),
    ] {
        if s.perms.contains(f) {
            p.push(c);
        }
    }
    format!("patient/{}.{p}", s.resource_type.as_deref().unwrap_or("*"))
}

pub(crate) fn role_text(r: Role) -> String {
    format!("{r:?}").to_lowercase()
}

pub(crate) fn grant_json(g: &Grant, revoked: bool) -> Value {
    json!({
        "role": role_text(g.role),
        "scopes": g.scopes.iter().map(scope_text).collect::<Vec<_>>(),
        "categories": g.categories.iter().map(|c| match &c.system {
            Some(s) => format!("{s}|{}", c.code),
            None => c.code.clone(),
        }).collect::<Vec<_>>(),
        "expires": g.expires.map(time),
        "revoked": revoked,
    })
}

async fn whoami(data: &Path, as_json: bool) -> Result<(), CliError> {
    let o = store::open(data).await?;
    let (kind, name) = match &o.identity {
        Identity::Patient { patient } => ("patient", patient.clone()),
        Identity::Provider { name, .. } => ("provider", name.clone()),
    };
    let mut v = json!({"kind": kind, "name": name, "data": data.display().to_string()});
    if let Some(r) = &o.record {
        r.update().await?;
        v["record_key"] = json!(hex(&r.key()));
        v["patient"] = json!(r.patient_id());
        v["writer_key"] = json!(hex(&r.writer_key()));
        v["identity"] = json!(hex(r.identity().public_key().as_bytes()));
        // What scope keys and emergency shares are sealed to.
        v["device_key"] = json!(hex(&ehr_core::SecureRecord::new(r.clone()).identity().0));
        v["writable"] = json!(r.writable().await);
        v["grant"] = match r.grant_of(&r.writer_key()).await? {
            Some((g, revoked)) => grant_json(&g, revoked),
            None => Value::Null,
        };
    }
    if as_json {
        print_json(&v);
        return Ok(());
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    println!("{kind:<11} {name}");
    println!("data        {}", data.display());
    if o.record.is_some() {
        println!("record key  {}", s("record_key"));
        println!("patient     {}", s("patient"));
        println!("writer key  {}", s("writer_key"));
        println!("identity    {}", s("identity"));
        println!("device key  {}", s("device_key"));
        let g = &v["grant"];
        let grant = if g.is_null() {
            "none yet (the patient grants it with `ehr grants add`)".to_owned()
        } else {
            format!(
                "{} {}{}",
                g["role"].as_str().unwrap_or(""),
                g["scopes"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                if g["revoked"] == json!(true) {
                    " (revoked)"
                } else {
                    ""
                }
            )
        };
        println!("grant       {grant}");
    } else {
        println!("record      not joined yet (`ehr join RECORD_KEY`)");
    }
    Ok(())
}

// ---------------------------------------------------------------- writes

async fn put(data: &Path, file: &Path) -> Result<(), CliError> {
    let bytes = read_input(file)?;
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let w = r
        .put(bytes)
        .await
        .map_err(|e| CliError::ehr(format!("cannot write {}", file.display()), e))?;
    r.flush().await?;
    println!(
        "wrote {}/{} version {}",
        w.target.resource_type, w.target.id, w.version
    );
    Ok(())
}

async fn import(data: &Path, file: &Path) -> Result<(), CliError> {
    let bytes = read_input(file)?;
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let head: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::Usage(format!(
            "{} is not valid JSON ({e}): fix the file and retry (nothing was written)",
            file.display()
        ))
    })?;
    if head.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        drop(head);
        let w = r
            .put(bytes)
            .await
            .map_err(|e| CliError::ehr(format!("cannot import {}", file.display()), e))?;
        r.flush().await?;
        println!(
            "imported {}/{} version {}",
            w.target.resource_type, w.target.id, w.version
        );
        return Ok(());
    }
    let n = head["entry"].as_array().map_or(0, Vec::len);
    drop(head);
    // Progress for people watching; scripts and logs get only the result.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if progress {
        eprintln!(
            "importing {n} entries from {} (all or nothing)...",
            file.display()
        );
    }
    let t = Instant::now();
    let imp = r
        .import_bundle(&bytes)
        .await
        .map_err(|e| CliError::ehr(format!("cannot import {}", file.display()), e))?;
    if progress {
        eprintln!("applied; making it durable...");
    }
    r.flush().await?;
    println!(
        "imported {} resources ({} deleted) from a {:?} bundle in {} ms",
        imp.written.len(),
        imp.deleted.len(),
        imp.bundle_type,
        t.elapsed().as_millis()
    );
    Ok(())
}

async fn delete(data: &Path, ty: &str, id: &str) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let w = r
        .delete(ty, id)
        .await
        .map_err(|e| CliError::ehr(format!("cannot delete {ty}/{id}"), e))?;
    r.flush().await?;
    println!(
        "deleted {ty}/{id} (version {} is a tombstone; history kept)",
        w.version
    );
    Ok(())
}

fn guess_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("dcm") => "application/dicom",
        Some("txt") => "text/plain",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A DocumentReference pointing at attachment `a`.
pub(crate) fn document_reference(
    id: &str,
    patient: &str,
    a: &Attachment,
    content_type: &str,
    title: &str,
    date: &str,
) -> Vec<u8> {
    json!({
        "resourceType": "DocumentReference",
        "id": id,
        "status": "current",
        "subject": {"reference": format!("Patient/{patient}")},
        "date": date,
        "description": title,
        "content": [{"attachment": {
            "contentType": content_type,
            "url": a.url(),
            "size": a.size,
            "title": title,
        }}],
    })
    .to_string()
    .into_bytes()
}

async fn attach(data: &Path, a: crate::AttachArgs) -> Result<(), CliError> {
    let bytes = read_input(&a.file)?;
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    if !r.writable().await {
        return Err(CliError::Usage(
            "this device holds no write grant for the record: ask the patient for one (nothing was written)".into(),
        ));
    }
    let t = Instant::now();
    let att = r.put_attachment(&bytes).await?;
    let title = a.title.unwrap_or_else(|| {
        a.file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into())
    });
    let ct = a
        .content_type
        .unwrap_or_else(|| guess_type(&a.file).to_owned());
    let id = match a.id {
        Some(i) => i,
        None => hex(&blake3_prefix(&att)),
    };
    let doc = document_reference(&id, &r.patient_id(), &att, &ct, &title, &time(now_ms()));
    let w = r
        .put(doc)
        .await
        .map_err(|e| CliError::ehr("cannot write the DocumentReference", e))?;
    r.flush().await?;
    println!(
        "stored {} bytes as {} ({} ms)",
        att.size,
        att.url(),
        t.elapsed().as_millis()
    );
    println!(
        "wrote DocumentReference/{} version {}",
        w.target.id, w.version
    );
    Ok(())
}

fn blake3_prefix(a: &Attachment) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&a.hash[..8]);
    b
}

/// Every `ehr-blob://` attachment referenced in a resource.
pub(crate) fn attachments_in(v: &Value, out: &mut Vec<Attachment>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(u)), Some(s)) =
                (m.get("url"), m.get("size").and_then(Value::as_u64))
            {
                if let Some(a) = Attachment::parse(u, s) {
                    out.push(a);
                }
            }
            m.values().for_each(|x| attachments_in(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| attachments_in(x, out)),
        _ => {}
    }
}

async fn fetch(data: &Path, a: crate::FetchArgs, sp: &LocalSpawner) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let att = if a.what.starts_with(ehr_core::ATTACHMENT_SCHEME) {
        let size = a.size.ok_or_else(|| {
            CliError::Usage("fetching by URL needs --size N (from the referencing resource)".into())
        })?;
        Attachment::parse(&a.what, size)
            .ok_or_else(|| CliError::Usage(format!("{:?} is not an ehr-blob:// URL", a.what)))?
    } else {
        let (ty, id) = a.what.split_once('/').ok_or_else(|| {
            CliError::Usage(format!(
                "{:?}: give Type/id (e.g. DocumentReference/report) or an ehr-blob:// URL",
                a.what
            ))
        })?;
        let v = r
            .get(ty, id)
            .await?
            .and_then(|v| v.resource)
            .ok_or_else(|| {
                CliError::ehr("cannot fetch", ehr_core::Error::NotFound(a.what.clone()))
            })?;
        let parsed: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
        let mut found = Vec::new();
        attachments_in(&parsed, &mut found);
        found.into_iter().next().ok_or_else(|| {
            CliError::Usage(format!("{} references no ehr-blob:// attachment", a.what))
        })?
    };
    let mut sessions = Sessions::default();
    for p in &a.peer {
        let tcp = net::dial(p).await?;
        sessions.start(sp, r.clone(), tcp, true, false)?;
    }
    let wait = if a.peer.is_empty() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };
    let bytes = r.get_attachment(&att, wait).await.map_err(|e| match e {
        ehr_core::Error::AttachmentMismatch(_) => CliError::ehr("refused the attachment", e),
        other if a.peer.is_empty() => CliError::Other(format!(
            "the attachment is not held here ({other}): pass --peer HOST:PORT of a peer that has it"
        )),
        other => CliError::ehr("cannot fetch the attachment", other),
    })?;
    sessions.stop_all();
    r.flush().await?;
    match a.out {
        Some(p) => {
            std::fs::write(&p, &bytes).map_err(|e| CliError::io(&p, e))?;
            println!(
                "fetched {} bytes (hash verified) to {}",
                bytes.len(),
                p.display()
            );
        }
        None => {
            let mut out = std::io::stdout();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::Other(e.to_string()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- reads

/// A short human description of a resource: its code or name, value, date.
pub(crate) fn describe(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let code = |k: &str| -> Option<String> {
        let c = v.get(k)?;
        c.get("text")
            .and_then(Value::as_str)
            .or_else(|| c["coding"][0]["display"].as_str())
            .or_else(|| c["coding"][0]["code"].as_str())
            .map(str::to_owned)
    };
    let mut parts = Vec::new();
    if let Some(c) = code("code")
        .or_else(|| code("vaccineCode"))
        .or_else(|| code("medicationCodeableConcept"))
        .or_else(|| v["description"].as_str().map(str::to_owned))
        .or_else(|| {
            let n = &v["name"][0];
            let given = n["given"][0].as_str().unwrap_or("");
            n["family"]
                .as_str()
                .map(|f| format!("{given} {f}").trim().to_owned())
        })
    {
        parts.push(c);
    }
    if let Some(q) = v.get("valueQuantity") {
        // The number exactly as stored (e.g. `4.30`), not re-rounded.
        let num = raw_value_quantity(bytes).unwrap_or_default();
        parts.push(
            format!("= {num} {}", q["unit"].as_str().unwrap_or(""))
                .trim()
                .to_owned(),
        );
    } else if let Some(s) = v.get("valueString").and_then(Value::as_str) {
        parts.push(format!("= {s}"));
    }
    for k in ["status", "clinicalStatus"] {
        if let Some(s) = v
            .get(k)
            .and_then(|s| s.as_str().or_else(|| s["coding"][0]["code"].as_str()))
        {
            parts.push(format!("[{s}]"));
            break;
        }
    }
    parts.join(" ")
}

/// The text of `valueQuantity.value` exactly as written.
fn raw_value_quantity(bytes: &[u8]) -> Option<String> {
    type Raw = std::collections::HashMap<String, Box<serde_json::value::RawValue>>;
    let top: Raw = serde_json::from_slice(bytes).ok()?;
    let q: Raw = serde_json::from_str(top.get("valueQuantity")?.get()).ok()?;
    Some(q.get("value")?.get().to_owned())
}

fn clinical_date(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    for k in [
        "effectiveDateTime",
        "occurrenceDateTime",
        "onsetDateTime",
        "recordedDate",
        "authoredOn",
        "issued",
        "date",
        "birthDate",
    ] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            return s.to_owned();
        }
    }
    v["effectivePeriod"]["start"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A version as JSON text, with the stored resource embedded byte for byte.
fn version_json(v: &Version) -> String {
    let meta = json!({
        "resourceType": v.target.resource_type,
        "id": v.target.id,
        "version": v.version,
        "author": hex(&v.author),
        "time": time(v.time),
        "deleted": v.resource.is_none(),
    })
    .to_string();
    let res = v
        .resource
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or(std::borrow::Cow::Borrowed("null"));
    format!("{},\"resource\":{res}}}", meta.trim_end_matches('}'))
}

async fn get(data: &Path, ty: &str, id: &str, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let v = r
        .get(ty, id)
        .await?
        .filter(|v| v.resource.is_some())
        .ok_or_else(|| {
            CliError::ehr(
                "cannot show it",
                ehr_core::Error::NotFound(format!("{ty}/{id}")),
            )
        })?;
    let body = v.resource.clone().unwrap_or_default();
    if as_json {
        // Exactly the bytes that were written.
        let mut out = std::io::stdout();
        let _ = out.write_all(&body).and_then(|()| out.write_all(b"\n"));
        return Ok(());
    }
    let head = r.head(ty, id).await?;
    println!(
        "{ty}/{id}  version {}  by {}  at {}",
        v.version,
        short(&v.author),
        time(v.time)
    );
    if let Some(h) = head.filter(|h| !h.conflicts.is_empty()) {
        println!(
            "CONFLICT: concurrent versions {:?} also exist; write a newer version to resolve",
            h.conflicts
        );
    }
    println!("{}", describe(&body));
    let pretty = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|p| serde_json::to_string_pretty(&p).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    println!("{pretty}");
    Ok(())
}

fn category_token(c: &str) -> String {
    if c.contains('|') {
        c.to_owned()
    } else {
        format!("http://terminology.hl7.org/CodeSystem/observation-category|{c}")
    }
}

async fn search(data: &Path, a: crate::SearchArgs) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let date = |s: &Option<String>| -> Result<Option<i64>, CliError> {
        s.as_deref()
            .map(|d| {
                parse_fhir_date(d).ok_or_else(|| {
                    CliError::Usage(format!("{d:?} is not a FHIR date (e.g. 2024-01-31)"))
                })
            })
            .transpose()
    };
    let mut q = Query::new(&a.resource_type)
        .dates(date(&a.from)?, date(&a.to)?)
        .limit(a.limit.clamp(1, 1000));
    if let Some(c) = &a.code {
        q = q.code(c);
    }
    if let Some(c) = &a.category {
        q = q.category(&category_token(c));
    }
    if let Some(k) = &a.author {
        q = q.author(writer_arg(k)?);
    }
    let page = r
        .search(&q)
        .await
        .map_err(|e| CliError::ehr("cannot search", e))?;
    if a.json.json {
        let items: Vec<String> = page.entries.iter().map(version_json).collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .entries
        .iter()
        .map(|v| {
            let body = v.resource.as_deref().unwrap_or_default();
            vec![
                format!("{}/{}", v.target.resource_type, v.target.id),
                clinical_date(body),
                table::cut(&describe(body), 60),
                short(&v.author),
            ]
        })
        .collect();
    table::print(&["RESOURCE", "DATE", "WHAT", "AUTHOR"], &rows);
    if page.next.is_some() {
        println!("(more: raise --limit)");
    }
    Ok(())
}

async fn history(data: &Path, ty: &str, id: &str, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let h = r.history(ty, id).await?;
    if h.is_empty() {
        return Err(CliError::ehr(
            "no history",
            ehr_core::Error::NotFound(format!("{ty}/{id}")),
        ));
    }
    if as_json {
        let items: Vec<String> = h.iter().map(version_json).collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = h
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                time(v.time),
                short(&v.author),
                match &v.resource {
                    Some(b) => table::cut(&describe(b), 60),
                    None => "(deleted)".into(),
                },
            ]
        })
        .collect();
    table::print(&["VERSION", "WRITTEN", "AUTHOR", "WHAT"], &rows);
    if let Some(head) = r.head(ty, id).await?.filter(|h| !h.conflicts.is_empty()) {
        println!(
            "conflict: versions {:?} were written concurrently with {}; write a newer version to resolve",
            head.conflicts, head.version
        );
    }
    Ok(())
}

async fn summary(data: &Path, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let s = r.summary().await?;
    let patient = r
        .get("Patient", &r.patient_id())
        .await?
        .and_then(|v| v.resource);
    let sections = [
        ("Allergies", &s.allergies),
        ("Medications", &s.medications),
        ("Conditions", &s.conditions),
        ("Immunizations", &s.immunizations),
    ];
    if as_json {
        let mut v = json!({"patient": r.patient_id()});
        for (name, items) in sections {
            let parsed: Vec<Value> = items
                .iter()
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect();
            v[name.to_lowercase()] = Value::Array(parsed);
        }
        print_json(&v);
        return Ok(());
    }
    let who = patient.as_deref().map(describe).unwrap_or_default();
    let birth = patient
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v["birthDate"].as_str().map(str::to_owned));
    println!("PATIENT SUMMARY — {} {}", r.patient_id(), who);
    if let Some(b) = birth {
        println!("born {b}");
    }
    println!("{}", "=".repeat(60));
    for (name, items) in sections {
        println!("\n{name} ({})", items.len());
        if items.is_empty() {
            println!("  none recorded");
        }
        for b in items {
            let d = clinical_date(b);
            let d = if d.is_empty() {
                String::new()
            } else {
                format!("  (since {d})")
            };
            println!("  • {}{d}", describe(b));
        }
    }
    Ok(())
}

async fn export(data: &Path, out: Option<&Path>) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let b = r.export_everything().await?;
    match out {
        Some(p) => {
            std::fs::write(p, &b).map_err(|e| CliError::io(p, e))?;
            println!("exported {} bytes to {}", b.len(), p.display());
        }
        None => {
            let mut o = std::io::stdout();
            let _ = o.write_all(&b).and_then(|()| o.write_all(b"\n"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- grants

async fn grants_list(data: &Path, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let mut all = Vec::new();
    // Every writer in the membership (revoked ones included) and every
    // log seen, with its length.
    let heads: std::collections::BTreeMap<[u8; 32], u64> =
        r.base().heads().await.into_iter().collect();
    let mut keys: std::collections::BTreeSet<[u8; 32]> = r
        .base()
        .writers()
        .await
        .into_iter()
        .map(|w| w.key)
        .collect();
    keys.extend(heads.keys().copied());
    for key in keys {
        let g = r.grant_of(&key).await?;
        all.push((key, heads.get(&key).copied().unwrap_or(0), g));
    }
    if as_json {
        let v: Vec<Value> = all
            .iter()
            .map(|(k, len, g)| {
                let mut o = json!({"writer": hex(k), "ops": len, "me": *k == r.writer_key()});
                if let Some((g, rev)) = g {
                    o["grant"] = grant_json(g, *rev);
                }
                o
            })
            .collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(k, len, g)| {
            let (role, scopes, exp, status) = match g {
                Some((g, rev)) => {
                    let j = grant_json(g, *rev);
                    let scopes = j["scopes"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let expired = g.expires.is_some_and(|e| e <= now_ms());
                    let status = if *rev {
                        "revoked"
                    } else if expired {
                        "expired"
                    } else {
                        "active"
                    };
                    (
                        role_text(g.role),
                        if g.role == Role::Owner {
                            "everything".into()
                        } else {
                            scopes
                        },
                        g.expires.map(time).unwrap_or_else(|| "-".into()),
                        status.to_owned(),
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "no grant".into()),
            };
            let me = if *k == r.writer_key() { " (me)" } else { "" };
            vec![
                format!("{}{me}", short(k)),
                role,
                scopes,
                exp,
                status,
                len.to_string(),
            ]
        })
        .collect();
    table::print(
        &["WRITER", "ROLE", "SCOPES", "EXPIRES", "STATUS", "OPS"],
        &rows,
    );
    Ok(())
}

pub(crate) fn parse_role(s: &str) -> Result<Role, CliError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "practitioner" | "doctor" | "clinician" => Role::Practitioner,
        "lab" | "laboratory" => Role::Lab,
        "organization" | "organisation" | "hospital" => Role::Organization,
        "owner" | "device" => Role::Owner,
        "mirror" => Role::Mirror,
        other => {
            return Err(CliError::Usage(format!(
                "unknown role {other:?}: use practitioner, lab, organization, owner or mirror"
            )))
        }
    })
}

/// `2027-01-01`, or `30d` / `12h` / `15m` / `90s` from now, in ms.
pub(crate) fn parse_expiry(s: &str, now: u64) -> Result<u64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{s:?} is not an expiry: use a date (2027-01-01) or a duration (30d, 12h, 15m)"
        ))
    };
    if let Some(d) = parse_fhir_date(s) {
        return u64::try_from(d).map_err(|_| bad());
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return Err(bad()),
    };
    Ok(now.saturating_add(n.saturating_mul(mul)))
}

async fn grants_add(data: &Path, a: crate::GrantAddArgs) -> Result<(), CliError> {
    let key = writer_arg(&a.key)?;
    let role = parse_role(&a.role)?;
    let scopes: Vec<&str> = a.scopes.iter().map(String::as_str).collect();
    let mut grant = Grant::new(role, &scopes).map_err(|e| {
        CliError::Usage(format!(
            "bad scope: {e}: use SMART syntax such as patient/Observation.cru"
        ))
    })?;
    if !a.categories.is_empty() {
        let cats = a
            .categories
            .iter()
            .map(|c| match c.split_once('|') {
                Some((s, c)) => Coding::new(Some(s), c),
                None => Coding::new(None, c),
            })
            .collect();
        grant = grant.with_categories(cats);
    }
    if let Some(i) = &a.identity {
        grant = grant.with_peer(writer_arg(i)?);
    }
    if let Some(e) = &a.expiry {
        let at = parse_expiry(e, now_ms())?;
        if at <= now_ms() {
            return Err(CliError::Usage(format!(
                "the expiry {e} is in the past: give a later one"
            )));
        }
        grant = grant.with_expiry(at);
    }
    let (id, r) = store::open_record(data).await?;
    patient_only(&id, "grant access")?;
    r.update().await?;
    let existing = r.grant_of(&key).await?;
    let res = match existing {
        Some((_, false)) => r.change_grant(key, grant.clone()).await,
        _ => r.grant(key, grant.clone()).await,
    };
    res.map_err(|e| CliError::ehr("cannot grant", e))?;
    r.flush().await?;
    let j = grant_json(&grant, false);
    println!(
        "granted {} to {}: {}{}",
        j["role"].as_str().unwrap_or(""),
        hex(&key),
        j["scopes"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        grant
            .expires
            .map(|e| format!(", until {}", time(e)))
            .unwrap_or_default()
    );
    println!("it takes effect on every peer when they sync (`ehr sync`)");
    Ok(())
}

async fn revoke(data: &Path, key: &str) -> Result<(), CliError> {
    let key = writer_arg(key)?;
    let (id, r) = store::open_record(data).await?;
    patient_only(&id, "revoke access")?;
    r.update().await?;
    match r.grant_of(&key).await? {
        None => {
            return Err(CliError::Usage(format!(
                "{} holds no grant on this record: see `ehr grants list`",
                hex(&key)
            )))
        }
        Some((_, true)) => {
            println!("{} was already revoked", hex(&key));
            return Ok(());
        }
        Some(_) => {}
    }
    // Through the security layer: revokes, rotates the scope keys the
    // writer held, and writes an AuditEvent.
    let rotation = ehr_core::SecureRecord::new(r.clone())
        .revoke(key)
        .await
        .map_err(|e| CliError::ehr("cannot revoke", e))?;
    let _ = rotation;
    r.flush().await?;
    println!(
        "revoked {}: its later writes are refused on every peer",
        hex(&key)
    );
    println!("note: what it already synced cannot be recalled");
    Ok(())
}

async fn mirror_add(data: &Path, key: &str, identity: Option<&str>) -> Result<(), CliError> {
    let key = writer_arg(key)?;
    let identity = identity.map(writer_arg).transpose()?;
    let (id, r) = store::open_record(data).await?;
    patient_only(&id, "add a mirror")?;
    r.update().await?;
    let mut g = Grant::new(Role::Mirror, &[]).map_err(|e| CliError::Other(e.to_string()))?;
    if let Some(i) = identity {
        g = g.with_peer(i);
    }
    r.grant(key, g)
        .await
        .map_err(|e| CliError::ehr("cannot add the mirror", e))?;
    r.flush().await?;
    println!(
        "added mirror {}: it stores and serves the record, and cannot write",
        hex(&key)
    );
    Ok(())
}

async fn rejected(data: &Path, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let list = r.rejected().await?;
    if as_json {
        let v: Vec<Value> = list
            .iter()
            .map(|w| {
                json!({"writer": hex(&w.writer), "seq": w.seq, "time": time(w.time),
                       "reason": w.rejection.to_string()})
            })
            .collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            vec![
                short(&w.writer),
                w.seq.to_string(),
                time(w.time),
                table::cut(&w.rejection.to_string(), 70),
            ]
        })
        .collect();
    table::print(&["WRITER", "SEQ", "TIME", "WHY"], &rows);
    Ok(())
}

// ---------------------------------------------------------------- sync

async fn sync(data: &Path, a: crate::SyncArgs, sp: &LocalSpawner) -> Result<(), CliError> {
    if a.listen.is_none() && a.peer.is_empty() && !a.lan {
        return Err(CliError::Usage(
            "say how to meet peers: --listen ADDR, --peer HOST:PORT and/or --lan".into(),
        ));
    }
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    // A patient device that answered an invite redemption which then lost
    // to another of its devices' answers rotates the keys it sent to the
    // loser as soon as it sees that (a no-op on provider devices).
    sp.spawn_local(
        Arc::new(ehr_core::SecureRecord::new(r.clone())).rotate_lost_redemptions_on_update(),
    )
    .map_err(|e| CliError::Other(e.to_string()))?;
    // The record's checkpoint duty, as `Record::serve` runs it: serve
    // signed checkpoints to peers; a device that has indexed nothing yet
    // starts from one, and one left on a losing fork recovers.
    let duty = r.clone();
    sp.spawn_local(async move {
        let _ = duty.checkpoint_duty(CHECKPOINT_WAIT).await;
    })
    .map_err(|e| CliError::Other(e.to_string()))?;
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let (live, ever) = match sessions.lock() {
        Ok(s) => (s.live.clone(), s.ever.clone()),
        Err(_) => return Err(CliError::Other("internal lock poisoned".into())),
    };
    if let Some(addr) = &a.listen {
        let l = async_net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|e| {
                CliError::Usage(format!(
                    "cannot listen on {addr} ({e}): pick another address or port"
                ))
            })?;
        let local = l.local_addr().map_err(|e| CliError::Other(e.to_string()))?;
        println!("listening on {local}");
        let _ = std::io::stdout().flush();
        sp.spawn_local(net::accept_loop(
            l,
            r.clone(),
            sessions.clone(),
            sp.clone(),
            true,
        ))
        .map_err(|e| CliError::Other(e.to_string()))?;
    }
    for p in &a.peer {
        let tcp = net::dial(p).await?;
        if let Ok(mut s) = sessions.lock() {
            s.start(sp, r.clone(), tcp, true, true)?;
        }
    }
    let _lan = if a.lan {
        Some(net::join_lan(&r, sp, live.clone(), ever.clone()).await?)
    } else {
        None
    };
    let start = Instant::now();
    let mut last = net::state(&r).await?;
    let mut reported = last.0;
    // A progress bar for people watching while blocks are missing; logs
    // and scripts get only the "synced" lines.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut drawn = false;
    loop {
        async_io::Timer::after(Duration::from_millis(100)).await;
        r.update().await?;
        if tty {
            let (held, known) = net::held_blocks(&r).await?;
            if held < known {
                eprint!("\r{}", net::bar(held, known));
                drawn = true;
            } else if drawn {
                eprintln!("\r{}", net::bar(held, known));
                drawn = false;
            }
        }
        let now = net::state(&r).await?;
        if now != last {
            let blocks: u64 = now.1.iter().map(|(_, l)| l).sum();
            if now.0 != reported {
                eprintln!(
                    "synced: view v{}, {} writers, {blocks} ops",
                    now.0,
                    now.1.len()
                );
                reported = now.0;
            }
            last = now;
            r.flush().await?;
        }
        if a.once {
            let connected = ever.load(Ordering::SeqCst) > 0;
            // Caught up: every log's length and blocks match the peers'.
            if connected && net::caught_up(&r).await? {
                break;
            }
            // Only dialled peers, all gone before anything matched: the
            // peer refused this device (or went away).
            if connected && live.load(Ordering::SeqCst) == 0 && !a.lan && a.listen.is_none() {
                return Err(CliError::Other("the peer closed the connection before this device caught up: it may not let this device in (the patient grants it with `ehr grants add WRITER --identity ID`); what arrived is kept".into()));
            }
            if start.elapsed() > Duration::from_secs(a.timeout) {
                return Err(if connected {
                    CliError::Other(format!("still receiving after {}s: run `ehr sync` again to finish (what arrived is kept)", a.timeout))
                } else {
                    CliError::Other(format!("no peer connected within {}s: check --peer/--listen, or that the other side runs `ehr sync`", a.timeout))
                });
            }
        }
    }
    if let Ok(mut s) = sessions.lock() {
        s.stop_all();
    }
    r.flush().await?;
    let blocks: u64 = last.1.iter().map(|(_, l)| l).sum();
    println!(
        "caught up: view v{}, {} writers, {blocks} ops; patient {}",
        last.0,
        last.1.len(),
        r.patient_id()
    );
    let _ = live;
    Ok(())
}

// ---------------------------------------------------------------- audit

fn audit_row(b: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
    vec![
        v["recorded"].as_str().unwrap_or("").to_owned(),
        v["subtype"][0]["code"].as_str().unwrap_or("").to_owned(),
        if v["outcome"] == "0" { "ok" } else { "refused" }.to_owned(),
        table::cut(
            &v["agent"][0]["who"]["identifier"]["value"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect::<String>(),
            12,
        ),
        table::cut(v["outcomeDesc"].as_str().unwrap_or(""), 60),
    ]
}

async fn audit_list(data: &Path, as_json: bool) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut q = Query::new("AuditEvent").limit(1000);
    loop {
        let page = r.search(&q).await?;
        events.extend(page.entries.into_iter().filter_map(|v| v.resource));
        match page.next {
            Some(c) => q = q.after(c),
            None => break,
        }
    }
    let secure = ehr_core::SecureRecord::new(r.clone());
    events.extend(secure.rejected_audit_events().await?);
    if as_json {
        let items: Vec<String> = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events.iter().map(|b| audit_row(b)).collect();
    table::print(&["RECORDED", "ACTION", "OUTCOME", "AGENT", "DETAIL"], &rows);
    Ok(())
}

async fn audit_export(data: &Path, out: &Path) -> Result<(), CliError> {
    let (_, r) = store::open_record(data).await?;
    r.update().await?;
    let pkg = ehr_core::SecureRecord::new(r.clone())
        .export_audit()
        .await
        .map_err(|e| CliError::ehr("cannot export the audit trail", e))?;
    std::fs::write(out, &pkg).map_err(|e| CliError::io(out, e))?;
    println!(
        "wrote the audit package ({} bytes) to {}; verify it with `ehr audit verify {} --record {}`",
        pkg.len(),
        out.display(),
        out.display(),
        hex(&r.key())
    );
    Ok(())
}

async fn audit_verify(
    data: &Path,
    file: &Path,
    record: Option<&str>,
    as_json: bool,
) -> Result<(), CliError> {
    let pkg = std::fs::read(file).map_err(|e| CliError::io(file, e))?;
    let key = match record {
        Some(k) => parse_key(k)
            .ok_or_else(|| CliError::Usage(format!("{k:?} is not a record key (64 hex digits)")))?,
        None => store::open_record(data).await?.1.key(),
    };
    let events = ehr_core::audit::verify_audit_package(&key, &pkg)
        .await
        .map_err(|e| {
            CliError::Other(format!(
                "the audit package {} does NOT verify against record {}: {e}",
                file.display(),
                hex(&key)
            ))
        })?;
    if as_json {
        let items: Vec<String> = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    println!(
        "verified: {} AuditEvents, signed into the record {} (proofs checked offline)",
        events.len(),
        hex(&key)
    );
    let rows: Vec<Vec<String>> = events.iter().map(|b| audit_row(b)).collect();
    table::print(&["RECORDED", "ACTION", "OUTCOME", "AGENT", "DETAIL"], &rows);
    Ok(())
}
