//! Shamir secret sharing of a 32-byte secret over GF(256).
//!
//! [`split`] draws, for each byte of the secret, a random polynomial of
//! degree `k - 1` whose constant term is that byte, and hands out its values
//! at `x = 1..=n`. [`combine`] interpolates any `k` of them at `x = 0`
//! (Lagrange). Fewer than `k` shares are consistent with every possible
//! secret, so they reveal nothing about it. The field is GF(2^8) with the
//! AES polynomial `x^8 + x^4 + x^3 + x + 1`; multiplication is a
//! branch-free shift-and-add, inversion is `a^254`.
//!
//! Shares are not authenticated here: a wrong share combines into a wrong
//! secret. Callers check the result (the emergency key's public key) and
//! each share's commitment ([`crate::emergency_contacts`]).

use crate::keys::{random, KeyError};
use hypercore_rs::Entropy;
use serde::{Deserialize, Serialize};

/// One share: the polynomials' values at `x`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The evaluation point (1 to 255).
    pub x: u8,
    /// The 32 values.
    pub y: [u8; 32],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// What splitting or combining can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// `k` or `n` out of range (`1 <= k <= n <= 255`).
    #[error("a threshold of {k} of {n} is not possible (need 1 <= k <= n <= 255)")]
    Threshold {
        /// The threshold.
        k: usize,
        /// The number of shares.
        n: usize,
    },
    /// No shares, a share at `x = 0`, or two shares at one `x`.
    #[error("shares must be non-empty with distinct, non-zero x")]
    BadShares,
    /// The entropy source failed.
    #[error("{0}")]
    Entropy(#[from] KeyError),
}

/// Multiplication in GF(2^8) (AES polynomial), without branches on data.
pub(crate) fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let hi = a >> 7;
        a = (a << 1) ^ (0x1b & 0u8.wrapping_sub(hi));
        b >>= 1;
    }
    p
}

/// The multiplicative inverse (`a^254`; 0 maps to 0).
pub(crate) fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// Splits `secret` into `n` shares, any `k` of which recover it.
pub fn split(
    secret: &[u8; 32],
    k: usize,
    n: usize,
    entropy: &dyn Entropy,
) -> Result<Vec<Share>, ShamirError> {
    if k == 0 || k > n || n > 255 {
        return Err(ShamirError::Threshold { k, n });
    }
    // coeffs[d][i]: the degree-d coefficient of byte i's polynomial.
    let mut coeffs = vec![*secret];
    for _ in 1..k {
        coeffs.push(random::<32>(entropy)?);
    }
    Ok((1..=n)
        .map(|x| {
            let x = u8::try_from(x).unwrap_or(u8::MAX);
            let mut y = [0u8; 32];
            for (i, out) in y.iter_mut().enumerate() {
                // Horner, highest degree first.
                let mut acc = 0u8;
                for c in coeffs.iter().rev() {
                    acc = mul(acc, x) ^ c[i];
                }
                *out = acc;
            }
            Share { x, y }
        })
        .collect())
}

/// Interpolates `shares` at `x = 0`. With at least `k` genuine shares of one
/// split this is the secret; with fewer, or a wrong one, it is another value.
pub fn combine(shares: &[Share]) -> Result<[u8; 32], ShamirError> {
    if shares.is_empty() {
        return Err(ShamirError::BadShares);
    }
    for (i, s) in shares.iter().enumerate() {
        if s.x == 0 || shares[..i].iter().any(|t| t.x == s.x) {
            return Err(ShamirError::BadShares);
        }
    }
    let mut secret = [0u8; 32];
    for (i, s) in shares.iter().enumerate() {
        // The Lagrange basis polynomial of s at 0: prod x_j / (x_j - x_i).
        let mut l = 1u8;
        for (j, t) in shares.iter().enumerate() {
            if i != j {
                l = mul(l, mul(t.x, inv(t.x ^ s.x)));
            }
        }
        for (out, y) in secret.iter_mut().zip(s.y.iter()) {
            *out ^= mul(l, *y);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercore_rs::SeededEntropy;
    use proptest::prelude::*;

    #[test]
    fn field_laws() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1, "inverse of {a}");
            }
        }
        // A known AES value: {57} x {83} = {c1}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn bad_parameters_and_shares_are_typed_errors() {
        let e = SeededEntropy::new(1);
        let s = [9u8; 32];
        assert!(matches!(
            split(&s, 0, 3, &e),
            Err(ShamirError::Threshold { .. })
        ));
        assert!(matches!(
            split(&s, 4, 3, &e),
            Err(ShamirError::Threshold { .. })
        ));
        assert!(matches!(
            split(&s, 2, 256, &e),
            Err(ShamirError::Threshold { .. })
        ));
        let shares = split(&s, 2, 3, &e).unwrap();
        assert_eq!(combine(&[]), Err(ShamirError::BadShares));
        let twice = [shares[0].clone(), shares[0].clone()];
        assert_eq!(combine(&twice), Err(ShamirError::BadShares));
        let zero = [Share { x: 0, y: [0; 32] }, shares[1].clone()];
        assert_eq!(combine(&zero), Err(ShamirError::BadShares));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any k of the n shares, in any order, recover the secret.
        #[test]
        fn any_k_shares_recover(secret in any::<[u8; 32]>(), n in 1usize..8, seed in any::<u64>(), pick in any::<u64>()) {
            let k = 1 + (pick as usize % n);
            let shares = split(&secret, k, n, &SeededEntropy::new(seed)).unwrap();
            // A pseudo-random choice of k distinct shares in a shuffled order.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut r = pick;
            for i in (1..n).rev() {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (r >> 33) as usize % (i + 1));
            }
            let chosen: Vec<Share> = idx[..k].iter().map(|&i| shares[i].clone()).collect();
            prop_assert_eq!(combine(&chosen).unwrap(), secret);
        }

        /// Any k-1 shares are consistent with every secret: for any target
        /// t there is a k-th point under which they combine to t. So k-1
        /// shares say nothing about the secret, and on their own do not
        /// recover it.
        #[test]
        fn k_minus_one_shares_reveal_nothing(secret in any::<[u8; 32]>(), target in any::<[u8; 32]>(), n in 2usize..8, seed in any::<u64>(), kk in any::<u8>()) {
            let k = 2 + (kk as usize % (n - 1));
            let shares = split(&secret, k, n, &SeededEntropy::new(seed)).unwrap();
            let few = &shares[..k - 1];
            // The polynomial through few and (0, target), evaluated at the
            // k-th share's x: combine() at that x by shifting coordinates.
            let xk = shares[k - 1].x;
            let mut pts: Vec<Share> = few.to_vec();
            pts.push(Share { x: 0, y: target });
            let mut yk = [0u8; 32];
            for (i, s) in pts.iter().enumerate() {
                let mut l = 1u8;
                for (j, t) in pts.iter().enumerate() {
                    if i != j {
                        l = mul(l, mul(t.x ^ xk, inv(t.x ^ s.x)));
                    }
                }
                for (o, y) in yk.iter_mut().zip(s.y.iter()) {
                    *o ^= mul(l, *y);
                }
            }
            let mut with_forged = few.to_vec();
            with_forged.push(Share { x: xk, y: yk });
            prop_assert_eq!(combine(&with_forged).unwrap(), target);
            // k-1 shares interpolated alone give another value (except
            // with probability 2^-256).
            prop_assert_ne!(combine(few).unwrap(), secret);
        }
    }
}
