//! Shared helpers for the benchmarks and the `compare` binary: deterministic
//! payloads and the JSON lines that `../shared/anchors/compare.sh` reads.

#![forbid(unsafe_code)]

pub mod ehr;
pub mod security;
pub mod tcp;

/// `n` pseudo-random blocks of `size` bytes from a fixed seed (BLAKE3 XOF).
pub fn blocks(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    (0..n)
        .map(|_| {
            let mut b = vec![0u8; size];
            xof.fill(&mut b);
            b
        })
        .collect()
}

/// An integer from the environment, or the default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One throughput figure as a JSON line in the anchors' format.
pub fn rate_line(figure: &str, n: u64, bytes: u64, secs: f64, extra: &[(&str, String)]) -> String {
    let mut s = format!(
        "{{\"suite\":\"rust\",\"figure\":\"{figure}\",\"n\":{n},\"secs\":{:.4},\"ops_per_s\":{:.1}",
        secs,
        n as f64 / secs
    );
    if bytes > 0 {
        s.push_str(&format!(
            ",\"bytes\":{bytes},\"mb_per_s\":{:.2}",
            bytes as f64 / secs / 1e6
        ));
    }
    for (k, v) in extra {
        s.push_str(&format!(",\"{k}\":{v}"));
    }
    s.push('}');
    s
}

/// A figure that could not be measured, in the anchors' format.
pub fn error_line(figure: &str, error: &str) -> String {
    format!(
        "{{\"suite\":\"rust\",\"figure\":\"{figure}\",\"error\":\"{}\"}}",
        error.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_shaped() {
        let l = rate_line("x.y", 10, 100, 2.0, &[("block_size", "1024".into())]);
        assert_eq!(
            l,
            "{\"suite\":\"rust\",\"figure\":\"x.y\",\"n\":10,\"secs\":2.0000,\"ops_per_s\":5.0,\"bytes\":100,\"mb_per_s\":0.00,\"block_size\":1024}"
        );
        assert_eq!(
            error_line("a", "say \"no\""),
            "{\"suite\":\"rust\",\"figure\":\"a\",\"error\":\"say \\\"no\\\"\"}"
        );
        let b = blocks(3, 8, 1);
        assert_eq!(b.len(), 3);
        assert_ne!(b[0], b[1]);
        assert_eq!(blocks(3, 8, 1), b);
    }
}
