//! Two processes on one machine find each other by topic and replicate a
//! hypercore over TCP loopback, encrypted and authenticated with Noise.
//!
//! ```text
//! # terminal 1: appends a line every second, prints the core key
//! cargo run -p ehr-examples --bin swarm-replicate -- write --topic T --data DIR
//! # terminal 2: prints every block it receives (each verified against the key)
//! cargo run -p ehr-examples --bin swarm-replicate -- read --topic T --key HEX --data DIR2
//! ```
//!
//! Options: `--rendezvous DIR` (default: `swarm-rs-rendezvous` in the
//! system temp folder), `--interval-ms N` (writer, default 1000).
//!
//! Discovery here is deliberately simple and local: a rendezvous folder
//! ([`swarm_rs::DirDiscovery`]) where the writer leaves its loopback
//! `HOST:PORT` under the *hash* of the topic, and the reader looks it up. Both
//! processes must see the same folder; LAN (mDNS) and internet discovery
//! come later. Everything above discovery is the real thing: the swarm
//! driver dials, runs the Noise handshake, and hands the connection to
//! hypercore replication, whose capabilities are bound to the handshake hash.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ehr_examples::{hex, parse_key, replicate_core};
use futures::executor::{LocalPool, LocalSpawner};
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use hypercore_rs::{Core, Corestore, DiskStorage, GetOptions, Storage};
use swarm_rs::{
    Connections, DirDiscovery, DriverConfig, JoinMode, KeyPair, OsEntropy, SwarmBuilder,
    SwarmDriver, SwarmHandle, TcpTransport, Topic, Transport,
};

type BoxError = Box<dyn Error>;
/// The byte stream of [`TcpTransport`].
type TcpStream = <TcpTransport as Transport>::Stream;

struct Args {
    mode: String,
    topic: String,
    data: PathBuf,
    key: Option<String>,
    rendezvous: PathBuf,
    interval: Duration,
}

const USAGE: &str =
    "usage: swarm-replicate write --topic T --data DIR [--interval-ms N] [--rendezvous DIR]
       swarm-replicate read --topic T --key HEX --data DIR [--rendezvous DIR]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode")?;
    if mode != "write" && mode != "read" {
        return Err(format!("unknown mode {mode:?}"));
    }
    let (mut topic, mut data, mut key, mut rendezvous, mut interval) =
        (None, None, None, None, 1000);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--topic" => topic = Some(value),
            "--data" => data = Some(PathBuf::from(value)),
            "--key" => key = Some(value),
            "--rendezvous" => rendezvous = Some(PathBuf::from(value)),
            "--interval-ms" => interval = value.parse().map_err(|_| "bad --interval-ms")?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if mode == "read" && key.is_none() {
        return Err("read needs --key".into());
    }
    Ok(Args {
        mode,
        topic: topic.ok_or("missing --topic")?,
        data: data.ok_or("missing --data")?,
        key,
        rendezvous: rendezvous.unwrap_or_else(|| std::env::temp_dir().join("swarm-rs-rendezvous")),
        interval: Duration::from_millis(interval),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let result = pool.run_until(async {
        if args.mode == "write" {
            write(&args, &spawner).await
        } else {
            read(&args, &spawner).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the swarm on TCP loopback with the rendezvous folder.
async fn start_swarm(
    args: &Args,
) -> Result<(SwarmHandle, Connections<TcpStream>, SwarmDriver), BoxError> {
    let keypair = KeyPair::generate(&mut OsEntropy)?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let discovery = DirDiscovery::new(&args.rendezvous);
    // Looking in a local folder is cheap: look often, so a reader started
    // before the writer finds it within a second.
    let mut config = DriverConfig::default();
    config.refresh_interval = Duration::from_secs(1);
    Ok(SwarmBuilder::new(keypair)
        .config(config)
        .bind(TcpTransport, discovery, &loopback)
        .await?)
}

/// Replicates `core` with every peer the swarm hands out.
fn serve(
    core: Core,
    mut connections: Connections<TcpStream>,
    spawner: &LocalSpawner,
) -> Result<(), BoxError> {
    let inner = spawner.clone();
    spawner.spawn_local(async move {
        while let Some(conn) = connections.next().await {
            let peer = conn.remote_public_key();
            eprintln!("peer {peer} connected");
            let core = core.clone();
            let task = async move {
                let result = replicate_core(core, conn).await;
                eprintln!("peer {peer} gone: {result:?}");
            };
            if inner.spawn_local(task).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

async fn write(args: &Args, spawner: &LocalSpawner) -> Result<(), BoxError> {
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(&args.data)?);
    let store = Corestore::open(storage).await?;
    let core = store.get("swarm-replicate").await?;
    println!("key {}", hex(&core.key()));
    let (handle, connections, driver) = start_swarm(args).await?;
    spawner.spawn_local(driver)?;
    serve(core.clone(), connections, spawner)?;
    let server_only = JoinMode {
        server: true,
        client: false,
    };
    handle.join(&Topic::from_name(&args.topic), server_only)?;
    eprintln!(
        "writer {} listening on {}",
        handle.public_key(),
        handle.local_addr()
    );
    loop {
        let index = core.length();
        let line = format!("line {index}: blood pressure 120/80");
        core.append(line.as_bytes()).await?;
        core.flush().await?;
        println!("appended {index}: {line}");
        async_io::Timer::after(args.interval).await;
    }
}

async fn read(args: &Args, spawner: &LocalSpawner) -> Result<(), BoxError> {
    let key = args
        .key
        .as_deref()
        .and_then(parse_key)
        .ok_or("--key must be 64 hex digits")?;
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(&args.data)?);
    let core = Core::builder(storage).key(key).open().await?;
    let (handle, connections, driver) = start_swarm(args).await?;
    spawner.spawn_local(driver)?;
    serve(core.clone(), connections, spawner)?;
    let client_only = JoinMode {
        server: false,
        client: true,
    };
    handle.join(&Topic::from_name(&args.topic), client_only)?;
    eprintln!("reader {} looking for the topic", handle.public_key());
    // Follow the writer: download everything, and keep up as it appends.
    let _live = core.download_live();
    let mut wait = GetOptions::default();
    wait.wait = true;
    let mut index = 0;
    loop {
        // Blocks are stored only after their proof verified against the key.
        let block = core.get_with(index, wait).await?.unwrap_or_default();
        println!("block {index}: {}", String::from_utf8_lossy(&block));
        index += 1;
    }
}
