//! ehr-core figures with CPU time as well as wall time (the machine is
//! shared, so wall time alone says little): import of a 500-entry
//! transaction Bundle, and the first page of a code + date search on a
//! 100,000-resource record, and a new provider's first full sync of a
//! 10,000-resource record over TCP loopback + Noise.
//!
//! `cargo run --release -p ehr-benches --bin ehr-figures -- [import] [search] [sync]`
//! (EHR_IMPORT_ROUNDS, EHR_SEARCH_RESOURCES, EHR_SEARCH_QUERIES,
//! EHR_SYNC_RESOURCES override the counts).

use ehr_benches::ehr::{filled_record, first_sync, record, transaction};
use ehr_benches::env_usize;
use ehr_core::fhir::parse_fhir_date;
use ehr_core::Query;
use futures::executor::block_on;
use hypercore_rs::{DiskStorage, MemoryStorage, Storage};
use std::sync::Arc;
use std::time::Instant;

/// This process's user + system CPU time in seconds (Linux `/proc`).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at 3.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

/// Peak resident memory of this process, in MiB (Linux `/proc`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |g: &str| args.is_empty() || args.iter().any(|a| a == g);
    if want("import") {
        import();
    }
    if want("search") {
        search();
    }
    if want("sync") {
        sync();
    }
}

fn sync() {
    let n = env_usize("EHR_SYNC_RESOURCES", 10_000);
    let patient = filled_record(n);
    let rss_before = peak_rss_mib();
    let (t, c) = (Instant::now(), cpu_secs());
    let doctor = first_sync(&patient);
    let secs = t.elapsed().as_secs_f64();
    let count = block_on(doctor.search(&Query::new("Observation").limit(1000)))
        .map(|p| p.entries.len())
        .unwrap_or(0);
    assert_eq!(count, 1000.min(n));
    println!(
        "{{\"figure\":\"ehr.first_sync.tcp_loopback\",\"resources\":{n},\"wall_s\":{secs:.2},\"cpu_s\":{:.2},\"peak_rss_mib_before\":{rss_before:.0},\"peak_rss_mib_after\":{:.0}}}",
        cpu_secs() - c,
        peak_rss_mib()
    );
}

fn import() {
    let rounds = env_usize("EHR_IMPORT_ROUNDS", 20);
    let bundle = transaction(499, 0, true);
    for disk in [false, true] {
        let (mut wall, mut cpu) = (0.0, 0.0);
        for _ in 0..rounds {
            let dir = tempfile::tempdir().ok();
            let storage: Arc<dyn Storage> = match (&dir, disk) {
                (Some(d), true) => match DiskStorage::open(d.path()) {
                    Ok(s) => Arc::new(s),
                    Err(e) => panic!("disk: {e}"),
                },
                _ => Arc::new(MemoryStorage::new()),
            };
            let rec = record(storage);
            let (t, c) = (Instant::now(), cpu_secs());
            if let Err(e) = block_on(rec.import_bundle(&bundle)) {
                panic!("import: {e}");
            }
            wall += t.elapsed().as_secs_f64();
            cpu += cpu_secs() - c;
        }
        let n = (rounds * 500) as f64;
        println!(
            "{{\"figure\":\"ehr.import.transaction500.{}\",\"resources\":{n},\"wall_per_s\":{:.0},\"cpu_per_s\":{:.0}}}",
            if disk { "disk" } else { "memory" },
            n / wall,
            n / cpu.max(0.01)
        );
    }
}

fn search() {
    let n = env_usize("EHR_SEARCH_RESOURCES", 100_000);
    let rec = record(Arc::new(MemoryStorage::new()));
    let (t, c) = (Instant::now(), cpu_secs());
    for salt in 0..n / 500 {
        if let Err(e) = block_on(rec.import_bundle(&transaction(500, salt, false))) {
            panic!("fill: {e}");
        }
    }
    println!(
        "{{\"figure\":\"ehr.fill\",\"resources\":{n},\"wall_per_s\":{:.0},\"cpu_per_s\":{:.0}}}",
        n as f64 / t.elapsed().as_secs_f64(),
        n as f64 / (cpu_secs() - c).max(0.01)
    );
    let q = Query::new("Observation")
        .code("http://loinc.org|7-1")
        .dates(parse_fhir_date("2021-01-01"), parse_fhir_date("2022-01-01"))
        .limit(20);
    let queries = env_usize("EHR_SEARCH_QUERIES", 2000);
    let mut lat = Vec::with_capacity(queries);
    let c = cpu_secs();
    for _ in 0..queries {
        let t = Instant::now();
        match block_on(rec.search(&q)) {
            Ok(p) => assert_eq!(p.entries.len(), 20),
            Err(e) => panic!("search: {e}"),
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let cpu_us = (cpu_secs() - c) / queries as f64 * 1e6;
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"figure\":\"ehr.search.code_date.first_page20\",\"resources\":{n},\"p50_us\":{:.0},\"p99_us\":{:.0},\"cpu_us\":{:.0}}}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        cpu_us
    );
}
