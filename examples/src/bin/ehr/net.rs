//! Peers: a record replicates over TCP, each connection authenticated and
//! encrypted with swarm-rs's Noise stream; LAN peers are found with mDNS
//! (only the record's discovery key is announced).

use crate::CliError;
use async_net::{TcpListener, TcpStream};
use ehr_core::Record;
use futures::future::{AbortHandle, Abortable};
use futures::task::{LocalSpawn, LocalSpawnExt};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_rs::{OsEntropy, Role, SecureConfig, SecureStream, SystemClock};

/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

fn to_io(e: swarm_rs::StreamError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs the Noise handshake on `tcp`, then replicates `record` over it
/// until either side closes.
pub(crate) async fn replicate_tcp(
    record: Record,
    tcp: TcpStream,
    initiator: bool,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    // This device's stable network identity (derived from its storage):
    // what grants name and firewalls check.
    let keypair = record.identity();
    let role = if initiator {
        Role::Initiator
    } else {
        Role::Responder
    };
    let secure = SecureStream::handshake(
        tcp,
        role,
        &keypair,
        SecureConfig::default(),
        &mut OsEntropy,
        Arc::new(SystemClock),
    )
    .await
    .map_err(|e| e.to_string())?;
    // Firewall: whoever dials in must be named by the record (the owner,
    // or a live grant's identity). The dialer chose its peer's address
    // itself and the record's rules still check every write.
    // A peer it does not name gets the invite channel only
    // (`crate::invite::answer`): redeem an invite or be closed.
    let remote = secure
        .remote_public_key()
        .map(|k| k.to_bytes())
        .unwrap_or_default();
    let hh = secure
        .handshake_hash()
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_default();
    let mut io = secure
        .sink_map_err(to_io)
        .map(|r: Result<Vec<u8>, swarm_rs::StreamError>| r.map_err(to_io));
    if !initiator {
        record.update().await.map_err(|e| e.to_string())?;
        if !record.allows_peer(&remote) {
            crate::invite::answer(&record, &mut io, remote, &hh).await?;
        }
    }
    record
        .replicate(io, initiator)
        .await
        .map_err(|e| e.to_string())
}

/// Dials `addr` (bounded by [`DIAL_TIMEOUT`]).
pub(crate) async fn dial(addr: &str) -> Result<TcpStream, CliError> {
    let connect = TcpStream::connect(addr.to_owned());
    let timeout = async {
        async_io::Timer::after(DIAL_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))
    };
    futures::pin_mut!(connect);
    futures::pin_mut!(timeout);
    match futures::future::select(connect, timeout).await {
        futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => {
            r.map_err(|e| CliError::Unreachable(addr.to_owned(), e.to_string()))
        }
    }
}

/// Live replication sessions, stoppable as a group (a peer going offline).
#[derive(Default)]
pub(crate) struct Sessions {
    handles: Vec<AbortHandle>,
    pub(crate) live: Arc<AtomicUsize>,
    pub(crate) ever: Arc<AtomicUsize>,
}

impl Sessions {
    /// Replicates `record` over `tcp` on `spawner`.
    pub(crate) fn start(
        &mut self,
        spawner: &impl LocalSpawn,
        record: Record,
        tcp: TcpStream,
        initiator: bool,
        verbose: bool,
    ) -> Result<(), CliError> {
        let (handle, reg) = AbortHandle::new_pair();
        self.handles.push(handle);
        let live = self.live.clone();
        self.ever.fetch_add(1, Ordering::SeqCst);
        live.fetch_add(1, Ordering::SeqCst);
        let peer = tcp
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        if verbose {
            eprintln!("peer {peer} connected");
        }
        let task = async move {
            let r = Abortable::new(replicate_tcp(record, tcp, initiator), reg).await;
            live.fetch_sub(1, Ordering::SeqCst);
            if verbose {
                match r {
                    Ok(Err(e)) => eprintln!("peer {peer} gone: {e}"),
                    _ => eprintln!("peer {peer} gone"),
                }
            }
        };
        spawner
            .spawn_local(task)
            .map_err(|e| CliError::Other(format!("cannot start replication: {e}")))
    }

    /// Closes every session (dropping the TCP connections).
    pub(crate) fn stop_all(&mut self) {
        for h in self.handles.drain(..) {
            h.abort();
        }
    }
}

/// Accepts peers on `listener` forever, replicating `record` with each.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    record: Record,
    sessions: Arc<std::sync::Mutex<Sessions>>,
    spawner: futures::executor::LocalSpawner,
    verbose: bool,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                if let Ok(mut s) = sessions.lock() {
                    let _ = s.start(&spawner, record.clone(), tcp, false, verbose);
                }
            }
            Err(_) => {
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A fingerprint of what this peer holds: the view version and every
/// writer's log length.
pub(crate) async fn state(record: &Record) -> Result<(u64, Vec<([u8; 32], u64)>), CliError> {
    Ok((record.view_version().await?, record.base().heads().await))
}

/// How many blocks of the record's writer logs this peer holds
/// contiguously, and how many it knows of (for the sync progress bar).
pub(crate) async fn held_blocks(record: &Record) -> Result<(u64, u64), CliError> {
    let store = record.base().store().clone();
    let (mut held, mut known) = (0, 0);
    for (key, _) in record.base().heads().await {
        let core = store
            .get_by_key(key)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        held += core.contiguous_length();
        known += core.length();
    }
    Ok((held, known))
}

/// A one-line progress bar: `[#####-----] held/known blocks`.
pub(crate) fn bar(held: u64, known: u64) -> String {
    const WIDTH: u64 = 30;
    // Nothing known yet counts as full; u128 so no count can overflow.
    let filled = (u128::from(held.min(known)) * u128::from(WIDTH))
        .checked_div(u128::from(known))
        .map_or(WIDTH, |f| u64::try_from(f).unwrap_or(WIDTH));
    let mut s = String::with_capacity(WIDTH as usize + 32);
    s.push('[');
    for i in 0..WIDTH {
        s.push(if i < filled { '#' } else { '-' });
    }
    s.push_str(&format!("] {held}/{known} blocks"));
    s
}

/// Whether this peer is caught up with the peers it replicates with:
/// every writer's log is held in full here, and every connected peer that
/// has told its length of that log reports the same length and holds all
/// of it (both directions: nothing to fetch, nothing left to send). At
/// least one log must have been compared with a peer.
pub(crate) async fn caught_up(record: &Record) -> Result<bool, CliError> {
    let store = record.base().store().clone();
    let mut compared = false;
    for (key, _) in record.base().heads().await {
        let core = store
            .get_by_key(key)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        if core.contiguous_length() < core.length() {
            return Ok(false);
        }
        match core.peers_in_step() {
            Some(false) => return Ok(false),
            Some(true) => compared = true,
            None => {}
        }
    }
    Ok(compared)
}

/// Pulls in what replication brought until `done` holds, polling every
/// 20 ms, at most `limit`.
pub(crate) async fn settle<F, Fut>(
    records: &[&Record],
    limit: Duration,
    mut done: F,
) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        for r in records {
            r.update().await?;
        }
        if done().await {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(CliError::Other(format!(
                "peers did not converge within {limit:?}"
            )));
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    }
}

/// Joins the LAN (mDNS) under the record's discovery key and replicates
/// with every peer found. Returns the swarm handle (dropping it leaves).
pub(crate) async fn join_lan(
    record: &Record,
    spawner: &futures::executor::LocalSpawner,
    live: Arc<AtomicUsize>,
    ever: Arc<AtomicUsize>,
) -> Result<swarm_rs::SwarmHandle, CliError> {
    use swarm_rs::{JoinMode, MdnsConfig, MdnsDiscovery, SwarmBuilder, TcpTransport, Topic};
    let lan = |e: &dyn std::fmt::Display| {
        CliError::Other(format!(
            "cannot start LAN discovery ({e}): use --peer HOST:PORT instead"
        ))
    };
    // The record's network identity, and its firewall: the owner and live
    // grants' identities replicate; any other peer is let through the
    // swarm but gets the invite channel only (`crate::invite::answer`), as
    // with `--listen`. A provider that has not synced yet does not know the
    // patient's identity, and holds nothing to protect, so it replicates
    // with anyone of the topic until it has synced.
    let keypair = record.identity();
    let fresh = record.patient_id().is_empty();
    let mdns =
        MdnsDiscovery::bind(MdnsConfig::default(), Arc::new(SystemClock)).map_err(|e| lan(&e))?;
    let any: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    let (handle, mut conns, driver) = SwarmBuilder::new(keypair)
        .firewall(|_| true)
        .bind(TcpTransport, mdns, &any)
        .await
        .map_err(|e| lan(&e))?;
    spawner.spawn_local(driver).map_err(|e| lan(&e))?;
    // The topic is the record's discovery key; the swarm announces only a
    // hash of it.
    handle
        .join(&Topic(record.discovery_key()), JoinMode::BOTH)
        .map_err(|e| lan(&e))?;
    let record = record.clone();
    let inner = spawner.clone();
    spawner
        .spawn_local(async move {
            while let Some(mut conn) = conns.next().await {
                let record = record.clone();
                let initiator = conn.is_initiator();
                let live = live.clone();
                ever.fetch_add(1, Ordering::SeqCst);
                live.fetch_add(1, Ordering::SeqCst);
                eprintln!("LAN peer {} connected", conn.remote_public_key());
                let _ = inner.spawn_local(async move {
                    let remote = conn.remote_public_key().to_bytes();
                    let hh = conn.handshake_hash();
                    let gate = if fresh || record.allows_peer(&remote) {
                        Ok(())
                    } else {
                        crate::invite::answer(&record, &mut conn, remote, hh.as_bytes()).await
                    };
                    match gate {
                        Ok(()) => {
                            let _ = record.replicate(conn, initiator).await;
                        }
                        Err(e) => eprintln!("LAN peer {e}"),
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
        .map_err(|e| lan(&e))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn the_progress_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(bar(0, 10), format!("[{}] 0/10 blocks", "-".repeat(30)));
        assert_eq!(bar(10, 10), format!("[{}] 10/10 blocks", "#".repeat(30)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}] 5/10 blocks", "#".repeat(15), "-".repeat(15))
        );
        // Nothing known yet counts as done; more held than known is capped.
        assert!(bar(0, 0).starts_with(&format!("[{}]", "#".repeat(30))));
        assert!(bar(12, 10).starts_with(&format!("[{}]", "#".repeat(30))));
        for (h, k) in [(1, 3), (2, 7), (999, 1000), (u64::MAX - 1, u64::MAX)] {
            let b = bar(h, k);
            assert_eq!(b.chars().filter(|c| *c == '#' || *c == '-').count(), 30);
        }
    }
}
