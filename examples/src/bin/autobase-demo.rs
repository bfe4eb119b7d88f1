//! A tour of autobase-rs: many writers, one deterministic view.
//!
//! Three peers in one process, replicating over in-memory pipes: the
//! patient's phone (bootstrap writer, indexer), the patient's laptop (added
//! as an indexer) and a clinic (added as a writer that does not index). They
//! write while apart, meet, and end with byte-identical views whose indexed
//! part is final; then a new device joins and starts from a checkpoint
//! signed by the indexers instead of replaying the history.
//!
//! `cargo run --release -p ehr-examples --bin autobase-demo`

use autobase_rs::{Apply, ApplyError, Autobase, Event, Host, Node, View};
use ehr_examples::hex;
use futures::executor::{LocalPool, LocalSpawner};
use futures::future::{AbortHandle, Abortable};
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use hypercore_rs::{Clock, Corestore, MemoryStorage, ThreadClock};
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn Error>;

/// The demo's apply: `put KEY VALUE` writes the view, `indexer HEX` and
/// `writer HEX` add a member. Counts its calls (a joiner that starts from a
/// checkpoint makes none for the history).
struct Notes {
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Apply for Notes {
    async fn apply(
        &self,
        nodes: &[Node],
        view: &mut View,
        host: &mut Host,
    ) -> Result<(), ApplyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        for n in nodes {
            let text = String::from_utf8_lossy(&n.value);
            let mut words = text.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("put"), Some(k), Some(v)) => {
                    view.bee("notes")?.put(k.as_bytes(), v.as_bytes()).await?
                }
                (Some(role @ ("indexer" | "writer")), Some(k), None) => {
                    let key = ehr_examples::parse_key(k)
                        .ok_or_else(|| ApplyError::Rejected("bad key".into()))?;
                    host.add_writer(key, role == "indexer")?;
                }
                _ => return Err(ApplyError::Rejected(format!("unknown command {text:?}"))),
            }
        }
        Ok(())
    }
}

async fn peer(bootstrap: Option<[u8; 32]>) -> Result<(Autobase, Arc<AtomicU64>), BoxError> {
    let calls = Arc::new(AtomicU64::new(0));
    let store = Corestore::open(Arc::new(MemoryStorage::new())).await?;
    let base = Autobase::builder(
        store,
        Notes {
            calls: calls.clone(),
        },
    )
    .views(&["notes"])
    .bootstrap(bootstrap)
    .open()
    .await?;
    Ok((base, calls))
}

/// Live replication between two peers over an in-memory pipe, until the
/// returned handle aborts it.
fn link(spawner: &LocalSpawner, a: &Autobase, b: &Autobase) -> Result<AbortHandle, BoxError> {
    let (x, y) = hypercore_rs::replication::duplex();
    let (handle, reg) = AbortHandle::new_pair();
    let (a, b) = (a.clone(), b.clone());
    let both = async move {
        let _ = futures::join!(a.replicate(x, true), b.replicate(y, false));
    };
    spawner.spawn_local(async move {
        let _ = Abortable::new(both, reg).await;
    })?;
    Ok(handle)
}

/// Updates every peer until `done` holds (at most ~20 s).
async fn settle<F, Fut>(peers: &[&Autobase], mut done: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2_000 {
        for p in peers {
            p.update().await?;
        }
        if done().await {
            return Ok(());
        }
        ThreadClock.sleep(Duration::from_millis(10)).await;
    }
    Err("the peers did not settle".into())
}

/// Whether the peers hold the same nodes and the same view, and everything
/// that writes to the view is indexed (a tail of acks may remain).
async fn same_view(peers: &[&Autobase]) -> bool {
    let mut states = Vec::new();
    for p in peers {
        let (Ok(indexed), Ok(tip)) = (p.view_hash("notes").await, p.view_tip_hash("notes").await)
        else {
            return false;
        };
        if indexed != tip {
            return false;
        }
        states.push((p.heads().await, p.indexed_length().await, tip));
    }
    states.windows(2).all(|w| w[0] == w[1])
}

async fn show(name: &str, p: &Autobase) -> Result<(), BoxError> {
    let view = p.view("notes").await?;
    let mut entries = Vec::new();
    let mut it = view.range(hyperbee_rs::Range::all());
    while let Some(e) = it.next().await? {
        entries.push(format!(
            "{}={}",
            String::from_utf8_lossy(&e.key),
            String::from_utf8_lossy(&e.value)
        ));
    }
    println!(
        "  {name:<7} indexed {:>3} of {:>3} nodes, view {} {}",
        p.indexed_length().await,
        p.length().await,
        &hex(&p.view_tip_hash("notes").await?)[..12],
        entries.join(" ")
    );
    Ok(())
}

async fn run(spawner: &LocalSpawner) -> Result<(), BoxError> {
    println!("== three peers: the patient's phone and laptop index, a clinic writes");
    let (phone, _) = peer(None).await?;
    let key = phone.key();
    let (laptop, _) = peer(Some(key)).await?;
    let (clinic, _) = peer(Some(key)).await?;
    let mut links = vec![
        link(spawner, &phone, &laptop)?,
        link(spawner, &phone, &clinic)?,
        link(spawner, &laptop, &clinic)?,
    ];
    phone
        .append(format!("indexer {}", hex(&laptop.local_writer_key())).into_bytes())
        .await?;
    phone
        .append(format!("writer {}", hex(&clinic.local_writer_key())).into_bytes())
        .await?;
    let all = [&phone, &laptop, &clinic];
    settle(&all, || async {
        laptop.writable().await && clinic.writable().await
    })
    .await?;
    phone.append(b"put allergy penicillin".to_vec()).await?;
    settle(&all, || same_view(&all)).await?;
    println!("  base {}", &hex(&key)[..16]);
    for (n, p) in [("phone", &phone), ("laptop", &laptop), ("clinic", &clinic)] {
        show(n, p).await?;
    }

    println!(
        "== offline: each writes while apart (the tail is optimistic, nothing new is indexed)"
    );
    for l in links.drain(..) {
        l.abort();
    }
    let mut reorders = phone.events();
    phone.append(b"put weight 71kg".to_vec()).await?;
    laptop.append(b"put note from-laptop".to_vec()).await?;
    clinic
        .append_batch(vec![
            b"put bp 120/80".to_vec(),
            b"put visit 2026-11-26".to_vec(),
        ])
        .await?;
    for (n, p) in [("phone", &phone), ("laptop", &laptop), ("clinic", &clinic)] {
        p.update().await?;
        show(n, p).await?;
    }

    println!("== they meet: the same view everywhere, indexed by the two indexers");
    links.push(link(spawner, &phone, &laptop)?);
    links.push(link(spawner, &laptop, &clinic)?);
    settle(&all, || same_view(&all)).await?;
    for (n, p) in [("phone", &phone), ("laptop", &laptop), ("clinic", &clinic)] {
        show(n, p).await?;
    }
    let mut reordered = 0;
    while let Some(Some(e)) = futures::FutureExt::now_or_never(reorders.next()) {
        if matches!(e, Event::Reordered { .. }) {
            reordered += 1;
        }
    }
    println!(
        "  the phone's tail was reordered {reordered} time(s) on the way; indexed nodes never move"
    );
    println!("converged: {}", same_view(&all).await);

    println!("== a new device joins and starts from a checkpoint the indexers signed");
    let mut duties = Vec::new();
    for p in all {
        let (handle, reg) = AbortHandle::new_pair();
        let p = p.clone();
        spawner.spawn_local(async move {
            let _ = Abortable::new(p.checkpoint_duty(Duration::from_secs(5)), reg).await;
        })?;
        duties.push(handle);
    }
    let (tablet, tablet_calls) = peer(Some(key)).await?;
    let mut tablet_events = tablet.events();
    {
        let (handle, reg) = AbortHandle::new_pair();
        let t = tablet.clone();
        spawner.spawn_local(async move {
            let _ = Abortable::new(t.checkpoint_duty(Duration::from_secs(5)), reg).await;
        })?;
        duties.push(handle);
    }
    links.push(link(spawner, &phone, &tablet)?);
    links.push(link(spawner, &laptop, &tablet)?);
    // Nobody updates the tablet: its duty asks the indexers for a
    // checkpoint (it has indexed nothing) and installs it.
    let installed = async {
        while let Some(e) = tablet_events.next().await {
            if let Event::FastForwarded { indexed_length } = e {
                return Some(indexed_length);
            }
        }
        None
    };
    futures::pin_mut!(installed);
    let from_checkpoint = match futures::future::select(
        installed,
        ThreadClock.sleep(Duration::from_secs(10)),
    )
    .await
    {
        futures::future::Either::Left((n, _)) => n,
        futures::future::Either::Right(_) => None,
    };
    let everyone = [&phone, &laptop, &clinic, &tablet];
    settle(&everyone, || same_view(&everyone)).await?;
    show("tablet", &tablet).await?;
    match from_checkpoint {
        Some(n) => println!(
            "  the tablet started at indexed length {n} from the checkpoint: {} apply call(s), none for the history",
            tablet_calls.load(Ordering::Relaxed)
        ),
        None => println!("  the tablet replayed the history (no checkpoint arrived in time)"),
    }
    println!("converged: {}", same_view(&everyone).await);
    for h in links.into_iter().chain(duties) {
        h.abort();
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    match pool.run_until(run(&spawner)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autobase-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
