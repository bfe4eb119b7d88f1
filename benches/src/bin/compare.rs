//! The Rust side of `../shared/anchors/compare.sh`: runs the same workloads as
//! `js/bench.js` and prints one JSON line per figure on stdout.
//!
//! `cargo run --release -p ehr-benches --bin compare -- [GROUP ...]`
//! (GROUP: hypercore | replication | hyperbee | autobase; default all).
//! Honours the same count overrides as the JS suite (N_BLOCKS, BLOCK_SIZE, BATCH, ...).

use ehr_benches::{blocks, env_usize, error_line, rate_line};
use hyperbee_rs::{Bee, Range};
use hypercore_rs::replication::{self, ReplicateOptions};
use hypercore_rs::{Core, Corestore, DiskStorage, Storage};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let groups: Vec<&str> = if args.is_empty() {
        vec!["hypercore", "replication", "hyperbee", "autobase"]
    } else {
        args.iter().map(|s| s.as_str()).collect()
    };
    for g in groups {
        let t0 = Instant::now();
        let result = match g {
            "hypercore" => futures::executor::block_on(hypercore()),
            "replication" => replication(),
            "hyperbee" => futures::executor::block_on(hyperbee()),
            "autobase" => autobase(),
            other => Err(format!("{other}.error: unknown group")),
        };
        if let Err(e) = result {
            let (figure, msg) = e.split_once(": ").unwrap_or(("compare.error", e.as_str()));
            println!("{}", error_line(figure, msg));
        }
        eprintln!("[rust] {g} done in {:.1} s", t0.elapsed().as_secs_f64());
    }
}

/// replication.download: a 102,400 x 1 KiB core written beforehand on one
/// on-disk corestore; timed from connecting a second on-disk corestore over an
/// in-memory duplex until it holds every block, verified. Both sides run on
/// one thread, as the JS suite's two stores share one event loop;
/// `REPL_THREADS=2` gives each side its own thread instead.
///
/// replication.download.tcp: the same download into a third, empty on-disk
/// corestore, but over TCP loopback through a swarm-rs secure stream (Noise
/// XX handshake, identity proofs, ChaCha20-Poly1305 records), timed from the
/// TCP connect. Not in the JS suite: compare it with the JS in-process
/// replication.download figure.
fn replication() -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("replication.error: {e}");
    let n = env_usize("REPL_BLOCKS", 102_400) as u64;
    let size = env_usize("BLOCK_SIZE", 1024);
    let root = tempfile::tempdir().map_err(|e| fail(&e))?;
    let open_store = |name: &str| -> Result<Corestore, String> {
        let storage: Arc<dyn Storage> =
            Arc::new(DiskStorage::open(root.path().join(name)).map_err(|e| fail(&e))?);
        futures::executor::block_on(Corestore::open(storage)).map_err(|e| fail(&e))
    };
    let a = open_store("writer")?;
    let b = open_store("reader")?;
    let (writer, bytes) = futures::executor::block_on(async {
        let w = a.get("repl").await.map_err(|e| fail(&e))?;
        let data = blocks(n as usize, size, 3);
        for chunk in data.chunks(1000) {
            w.append_batch(chunk).await.map_err(|e| fail(&e))?;
        }
        w.flush().await.map_err(|e| fail(&e))?;
        Ok::<_, String>((w.clone(), w.byte_length()))
    })?;
    let reader = futures::executor::block_on(b.get_by_key(writer.key())).map_err(|e| fail(&e))?;

    let t0 = Instant::now();
    let cpu0 = process_cpu_secs();
    if std::env::var("REPL_THREADS").as_deref() != Ok("2") {
        let (x, y) = replication::duplex();
        let res: Result<(), String> = futures::executor::block_on(async {
            let sa = a.replicate(x, ReplicateOptions::new(true));
            let sb = b.replicate(y, ReplicateOptions::new(false));
            let work = async {
                reader.update().await?;
                reader.download(0, n).done().await
            };
            let sessions = futures::future::join(sa, sb);
            futures::pin_mut!(sessions);
            futures::pin_mut!(work);
            match futures::future::select(sessions, work).await {
                futures::future::Either::Left(_) => Err("sessions ended".to_string()),
                futures::future::Either::Right((r, _)) => r.map_err(|e| e.to_string()),
            }
        });
        res.map_err(|e| fail(&e))?;
        let secs = t0.elapsed().as_secs_f64();
        if reader.length() != n || reader.contiguous_length() != n {
            return Err(fail(&format!(
                "reader {}/{} != writer {n}",
                reader.length(),
                reader.contiguous_length()
            )));
        }
        println!(
            "{}",
            rate_line(
                "replication.download",
                n,
                bytes,
                secs,
                &[
                    ("block_size", size.to_string()),
                    ("threads", "1".into()),
                    ("cpu_secs", cpu_since(cpu0)),
                ]
            )
        );
        let c = open_store("reader-tcp")?;
        return replication_tcp(&a, &c, &writer, size, false).map_err(|e| fail(&e));
    }
    let (x, y) = replication::duplex();
    let a2 = a.clone();
    let serve = std::thread::spawn(move || {
        futures::executor::block_on(a2.replicate(x, ReplicateOptions::new(true)))
    });
    let r = reader.clone();
    let fetch = std::thread::spawn(move || {
        futures::executor::block_on(async {
            let session = b.replicate(y, ReplicateOptions::new(false));
            let work = async {
                r.update().await?;
                r.download(0, n).done().await
            };
            futures::pin_mut!(session);
            futures::pin_mut!(work);
            match futures::future::select(session, work).await {
                futures::future::Either::Left((res, _)) => Err(format!("session ended: {res:?}")),
                futures::future::Either::Right((res, _)) => res.map_err(|e| e.to_string()),
            }
        })
    });
    fetch
        .join()
        .map_err(|_| fail(&"reader thread panicked"))?
        .map_err(|e| fail(&e))?;
    let secs = t0.elapsed().as_secs_f64();
    // Dropping the reader's end closes the writer's session.
    let _ = serve.join();
    if reader.length() != n || reader.contiguous_length() != n {
        return Err(fail(&format!(
            "reader {}/{} != writer {n}",
            reader.length(),
            reader.contiguous_length()
        )));
    }
    println!(
        "{}",
        rate_line(
            "replication.download",
            n,
            bytes,
            secs,
            &[("block_size", size.to_string())]
        )
    );
    let c = open_store("reader-tcp")?;
    replication_tcp(&a, &c, &writer, size, true).map_err(|e| fail(&e))
}

/// replication.download.tcp (see [`replication()`]): `writer`, held by
/// `source`, downloaded into the empty store `dest` over TCP loopback +
/// Noise; on one thread, or each side on its own with `threads`.
fn replication_tcp(
    source: &Corestore,
    dest: &Corestore,
    writer: &Core,
    size: usize,
    threads: bool,
) -> Result<(), String> {
    use futures::future::{select, Either};
    let n = writer.length();
    let reader = async_io::block_on(dest.get_by_key(writer.key())).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let cpu0 = process_cpu_secs();
    let (a, b) = async_io::block_on(ehr_benches::tcp::secure_pair()).map_err(|e| e.to_string())?;
    let hash = a.handshake_hash().map(|h| h.as_bytes().to_vec());
    let mut serve_options = ReplicateOptions::new(true);
    serve_options.handshake_hash = hash.clone();
    let mut fetch_options = ReplicateOptions::new(false);
    fetch_options.handshake_hash = hash;
    let source = source.clone();
    let serve = async move {
        source
            .replicate(ehr_benches::tcp::frames(a), serve_options)
            .await
    };
    let fetch = dest.replicate(ehr_benches::tcp::frames(b), fetch_options);
    let r = reader.clone();
    let work = async move {
        r.update().await?;
        r.download(0, n).done().await
    };
    let download = async move {
        futures::pin_mut!(fetch);
        futures::pin_mut!(work);
        match select(fetch, work).await {
            Either::Left((res, _)) => Err(format!("session ended: {res:?}")),
            Either::Right((res, _)) => res.map_err(|e| e.to_string()),
        }
    };
    if threads {
        let served = std::thread::spawn(move || async_io::block_on(serve));
        async_io::block_on(download)?;
        // The serving session ends when the reader's end is dropped.
        let _ = served;
    } else {
        async_io::block_on(async {
            futures::pin_mut!(serve);
            futures::pin_mut!(download);
            match select(serve, download).await {
                Either::Left((res, _)) => Err(format!("serving session ended: {res:?}")),
                Either::Right((res, _)) => res,
            }
        })?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if reader.length() != n || reader.contiguous_length() != n {
        return Err(format!(
            "reader {}/{} != writer {n}",
            reader.length(),
            reader.contiguous_length()
        ));
    }
    println!(
        "{}",
        rate_line(
            "replication.download.tcp",
            n,
            writer.byte_length(),
            secs,
            &[
                ("block_size", size.to_string()),
                ("threads", if threads { "2" } else { "1" }.into()),
                ("transport", "\"tcp+noise\"".into()),
                ("cpu_secs", cpu_since(cpu0)),
            ]
        )
    );
    Ok(())
}

/// CPU time (user + system, all threads) this process has used so far,
/// from `/proc/self/stat` (Linux; clock ticks of 10 ms): the steadier
/// figure when the machine is shared and wall-clock time swings.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, so the 12th and 13th here.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds used since `start` as a JSON number (`null` if unknown).
fn cpu_since(start: Option<f64>) -> String {
    match (start, process_cpu_secs()) {
        (Some(a), Some(b)) => format!("{:.2}", b - a),
        _ => "null".into(),
    }
}

async fn open_core(dir: &std::path::Path) -> Result<Core, String> {
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir).map_err(|e| e.to_string())?);
    Core::builder(storage)
        .open()
        .await
        .map_err(|e| e.to_string())
}

async fn hypercore() -> Result<(), String> {
    let fail = |e: hypercore_rs::Error| format!("hypercore.error: {e}");
    let n = env_usize("N_BLOCKS", 100_000);
    let size = env_usize("BLOCK_SIZE", 1024);
    let batch = env_usize("BATCH", 100).max(1);
    let data = blocks(n, size, 1);
    let bytes = (n * size) as u64;
    let root = tempfile::tempdir().map_err(|e| format!("hypercore.error: {e}"))?;
    let block_size = [("block_size", size.to_string())];

    // (1a) one append call per block, fresh on-disk core, no fsync per append.
    let single = open_core(&root.path().join("append-single"))
        .await
        .map_err(|e| format!("hypercore.error: {e}"))?;
    let t0 = Instant::now();
    for b in &data {
        single.append(b).await.map_err(fail)?;
    }
    println!(
        "{}",
        rate_line(
            "hypercore.append.single",
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &block_size
        )
    );

    // (1b) BATCH blocks per append call.
    let batched = open_core(&root.path().join("append-batch"))
        .await
        .map_err(|e| format!("hypercore.error: {e}"))?;
    let t0 = Instant::now();
    for chunk in data.chunks(batch) {
        batched.append_batch(chunk).await.map_err(fail)?;
    }
    let calls = n.div_ceil(batch).to_string();
    println!(
        "{}",
        rate_line(
            &format!("hypercore.append.batch{batch}"),
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &[("block_size", size.to_string()), ("calls", calls)]
        )
    );
    drop(batched);

    // (2) sequential get of every block of the single-append core.
    let t0 = Instant::now();
    let mut got = 0u64;
    for i in 0..n as u64 {
        got += single
            .get(i)
            .await
            .map_err(fail)?
            .map(|b| b.len() as u64)
            .unwrap_or(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!(
            "hypercore.error: get returned {got} bytes, expected {bytes}"
        ));
    }
    println!(
        "{}",
        rate_line("hypercore.get.seq", n as u64, bytes, secs, &block_size)
    );
    Ok(())
}

/// A small deterministic generator for the random picks of get.random.
fn pick(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

async fn hyperbee() -> Result<(), String> {
    let fail = |e: hyperbee_rs::Error| format!("hyperbee.error: {e}");
    let n = env_usize("BEE_KEYS", 100_000).max(1);
    let gets = env_usize("BEE_GETS", 10_000);
    let keys = blocks(n, 16, 2);
    let values = blocks(n, 100, 3);
    let bytes = (n * (16 + 100)) as u64;
    let root = tempfile::tempdir().map_err(|e| format!("hyperbee.error: {e}"))?;
    let open = |name: &str| {
        let dir = root.path().join(name);
        async move {
            let core = open_core(&dir)
                .await
                .map_err(|e| format!("hyperbee.error: {e}"))?;
            Bee::open(core).await.map_err(fail)
        }
    };

    // (4a) one put per key, fresh on-disk bee.
    let single = open("bee-single").await?;
    let t0 = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        single.put(k, v).await.map_err(fail)?;
    }
    println!(
        "{}",
        rate_line(
            "hyperbee.put.single",
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &[]
        )
    );
    drop(single);

    // (4b) every key in one atomic batch, flushed once.
    let bee = open("bee-batch").await?;
    let t0 = Instant::now();
    let mut batch = bee.batch().await.map_err(fail)?;
    for (k, v) in keys.iter().zip(&values) {
        batch.put(k, v).await.map_err(fail)?;
    }
    batch.flush().await.map_err(fail)?;
    println!(
        "{}",
        rate_line(
            "hyperbee.put.batch",
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &[("batches", "1".into())]
        )
    );

    // (4c) random point gets of existing keys on the batch-built tree.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let picks: Vec<&Vec<u8>> = (0..gets).map(|_| &keys[pick(&mut state, n)]).collect();
    let t0 = Instant::now();
    for k in &picks {
        if bee.get(k).await.map_err(fail)?.is_none() {
            return Err("hyperbee.error: missing key in get".into());
        }
    }
    println!(
        "{}",
        rate_line(
            "hyperbee.get.random",
            gets as u64,
            0,
            t0.elapsed().as_secs_f64(),
            &[]
        )
    );

    // (4d) full ordered scan.
    let t0 = Instant::now();
    let mut it = bee.range(Range::all());
    let mut count = 0u64;
    while it.next().await.map_err(fail)?.is_some() {
        count += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    if count != n as u64 {
        return Err(format!(
            "hyperbee.error: scan saw {count} entries, expected {n}"
        ));
    }
    println!(
        "{}",
        rate_line("hyperbee.scan.full", count, bytes, secs, &[])
    );
    Ok(())
}

/// The autobase workload's apply: `[0][key len u8][key][value]` puts into the
/// view, `[1][32-byte key]` adds an indexer (as the JS suite's JSON values).
struct BenchApply;

#[async_trait::async_trait]
impl autobase_rs::Apply for BenchApply {
    async fn apply(
        &self,
        nodes: &[autobase_rs::Node],
        view: &mut autobase_rs::View,
        host: &mut autobase_rs::Host,
    ) -> Result<(), autobase_rs::ApplyError> {
        let bad = || autobase_rs::ApplyError::Rejected("malformed op".into());
        for n in nodes {
            match n.value.split_first() {
                Some((0, rest)) => {
                    let (&klen, rest) = rest.split_first().ok_or_else(bad)?;
                    if rest.len() < klen as usize {
                        return Err(bad());
                    }
                    let (k, v) = rest.split_at(klen as usize);
                    view.bee("view")?.put(k, v).await?;
                }
                Some((1, key)) => {
                    let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
                    host.add_writer(key, true)?;
                }
                _ => return Err(bad()),
            }
        }
        Ok(())
    }
}

fn op_key(w: usize, i: usize) -> String {
    format!("w{w}-{i:08}")
}

fn put_op(w: usize, i: usize, value: &[u8]) -> Vec<u8> {
    let k = op_key(w, i);
    let mut v = vec![0u8, k.len() as u8];
    v.extend_from_slice(k.as_bytes());
    v.extend_from_slice(value);
    v
}

/// Gives other tasks on this thread (the replication sessions) a turn.
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// (5) autobase: two indexer writers on on-disk corestores, a hyperbee view,
/// live in-process replication; both write concurrently; timed from the
/// first append until both views are identical (length and Merkle tree hash,
/// same heads) and hold both writers' last op.
fn autobase() -> Result<(), String> {
    let batch = env_usize("AUTO_BATCH", 100).max(1);
    autobase_figure(
        "autobase.2writers.converge.single",
        env_usize("AUTO_OPS_SINGLE", 3000).max(1),
        1,
    )?;
    autobase_figure(
        &format!("autobase.2writers.converge.batch{batch}"),
        env_usize("AUTO_OPS", 10_000).max(1),
        batch,
    )
}

fn autobase_figure(figure: &str, ops: usize, per_call: usize) -> Result<(), String> {
    use autobase_rs::Autobase;
    let fail = |e: &dyn std::fmt::Display| format!("{figure}.error: {e}");
    let root = tempfile::tempdir().map_err(|e| fail(&e))?;
    let r = futures::executor::block_on(async {
        let open_store = |name: &str| {
            let dir = root.path().join(name);
            async move {
                let storage: Arc<dyn Storage> =
                    Arc::new(DiskStorage::open(dir).map_err(|e| e.to_string())?);
                Corestore::open(storage).await.map_err(|e| e.to_string())
            }
        };
        let a = Autobase::builder(
            open_store("auto-a").await.map_err(|e| fail(&e))?,
            BenchApply,
        )
        .open()
        .await
        .map_err(|e| fail(&e))?;
        let b = Autobase::builder(
            open_store("auto-b").await.map_err(|e| fail(&e))?,
            BenchApply,
        )
        .bootstrap(Some(a.key()))
        .open()
        .await
        .map_err(|e| fail(&e))?;
        let (x, y) = replication::duplex();
        let sessions = futures::future::join(a.replicate(x, true), b.replicate(y, false));
        let work = async {
            // Setup (untimed): A adds B as an indexer; wait until B can write.
            let mut add = vec![1u8];
            add.extend_from_slice(&b.local_writer_key());
            a.append(add).await.map_err(|e| fail(&e))?;
            while !b.writable().await {
                a.update().await.map_err(|e| fail(&e))?;
                b.update().await.map_err(|e| fail(&e))?;
                yield_now().await;
            }
            let value = vec![b'x'; 100];
            let writer = |base: Autobase, w: usize| {
                let value = value.clone();
                async move {
                    let mut i = 0;
                    while i < ops {
                        let end = (i + per_call).min(ops);
                        let batch: Vec<Vec<u8>> = (i..end).map(|j| put_op(w, j, &value)).collect();
                        base.append_batch(batch).await?;
                        i = end;
                        yield_now().await;
                    }
                    Ok::<(), autobase_rs::Error>(())
                }
            };
            let t0 = Instant::now();
            let (ra, rb) = futures::future::join(writer(a.clone(), 0), writer(b.clone(), 1)).await;
            ra.map_err(|e| fail(&e))?;
            rb.map_err(|e| fail(&e))?;
            let append_secs = t0.elapsed().as_secs_f64();
            let last = [op_key(0, ops - 1), op_key(1, ops - 1)];
            loop {
                if t0.elapsed().as_secs() > 120 {
                    return Err(fail(&"views did not converge within 120 s"));
                }
                a.update().await.map_err(|e| fail(&e))?;
                b.update().await.map_err(|e| fail(&e))?;
                let (va, vb) = (
                    a.view("view").await.map_err(|e| fail(&e))?,
                    b.view("view").await.map_err(|e| fail(&e))?,
                );
                let same = a.heads().await == b.heads().await
                    && va.version() == vb.version()
                    && a.view_tip_hash("view").await.map_err(|e| fail(&e))?
                        == b.view_tip_hash("view").await.map_err(|e| fail(&e))?;
                let mut has_last = same;
                for v in [&va, &vb] {
                    for k in &last {
                        has_last &= v.get(k.as_bytes()).await.map_err(|e| fail(&e))?.is_some();
                    }
                }
                if has_last {
                    break;
                }
                yield_now().await;
            }
            let secs = t0.elapsed().as_secs_f64();
            // Validation (untimed): both views hold exactly 2 * ops keys.
            for base in [&a, &b] {
                let n = base
                    .view("view")
                    .await
                    .map_err(|e| fail(&e))?
                    .range(Range::all())
                    .collect()
                    .await
                    .map_err(|e| fail(&e))?
                    .len();
                if n != 2 * ops {
                    return Err(fail(&format!("view has {n} keys, expected {}", 2 * ops)));
                }
            }
            let view_length = a.view("view").await.map_err(|e| fail(&e))?.version();
            Ok(rate_line(
                figure,
                2 * ops as u64,
                0,
                secs,
                &[
                    ("writers", "2".into()),
                    ("ops_per_writer", ops.to_string()),
                    ("ops_per_call", per_call.to_string()),
                    ("append_phase_secs", format!("{append_secs:.4}")),
                    ("view_length", view_length.to_string()),
                    ("indexed_length", a.indexed_length().await.to_string()),
                ],
            ))
        };
        futures::pin_mut!(sessions);
        futures::pin_mut!(work);
        match futures::future::select(sessions, work).await {
            futures::future::Either::Left(((ra, rb), _)) => {
                Err(fail(&format!("replication sessions ended: {ra:?} {rb:?}")))
            }
            futures::future::Either::Right((line, _)) => {
                println!("{}", line?);
                Ok(())
            }
        }
    });
    drop(root);
    r
}
