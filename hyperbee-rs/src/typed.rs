//! Typed keys and values on top of the byte API.
//!
//! Values go through serde + postcard. Keys need an encoding whose byte
//! order is the key order (postcard's varints are not), so they go through
//! [`OrderedKey`]: big-endian integers (sign bit flipped for signed ones),
//! byte strings with `0x00` escaped as `0x00 0xff` and terminated by
//! `0x00 0x00`, and tuples as the concatenation of their parts. Because a
//! tuple's encoding starts with its first part's, `Range::prefix` on the
//! encoded first part selects every tuple that starts with it.

use crate::bee::{RangeIter, Sub};
use crate::error::{Error, Result};
use crate::read::Range;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::ops::Bound;

/// A key type with an order-preserving byte encoding: for all `a`, `b`,
/// `a.cmp(b)` equals the bytewise comparison of their encodings.
pub trait OrderedKey: Sized {
    /// Appends the encoding of `self`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Reads one key from the front of `input`, advancing it.
    fn decode_key(input: &mut &[u8]) -> Result<Self>;

    /// The encoding as a new vector.
    fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_key(&mut out);
        out
    }

    /// Decodes a whole key (no trailing bytes allowed).
    fn from_key_bytes(mut input: &[u8]) -> Result<Self> {
        let k = Self::decode_key(&mut input)?;
        if !input.is_empty() {
            return Err(Error::Encoding("trailing bytes after a key".into()));
        }
        Ok(k)
    }
}

fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let (head, rest) = input
        .split_first_chunk::<N>()
        .ok_or_else(|| Error::Encoding("key ends early".into()))?;
    *input = rest;
    Ok(*head)
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl OrderedKey for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn decode_key(input: &mut &[u8]) -> Result<Self> {
                Ok(<$t>::from_be_bytes(take(input)?))
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, u128);

macro_rules! signed {
    ($($t:ty => $u:ty),*) => {$(
        impl OrderedKey for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                let flipped = (*self as $u) ^ (1 << (<$u>::BITS - 1));
                out.extend_from_slice(&flipped.to_be_bytes());
            }
            fn decode_key(input: &mut &[u8]) -> Result<Self> {
                let u = <$u>::from_be_bytes(take(input)?);
                Ok((u ^ (1 << (<$u>::BITS - 1))) as $t)
            }
        }
    )*};
}
signed!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

impl OrderedKey for bool {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self> {
        match take::<1>(input)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(Error::Encoding("invalid bool".into())),
        }
    }
}

impl OrderedKey for () {
    fn encode_key(&self, _out: &mut Vec<u8>) {}
    fn decode_key(_input: &mut &[u8]) -> Result<Self> {
        Ok(())
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    for &x in b {
        out.push(x);
        if x == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn decode_bytes(input: &mut &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let x = input[i];
        if x != 0 {
            out.push(x);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(0xff) => {
                out.push(0);
                i += 2;
            }
            Some(0) => {
                *input = &input[i + 2..];
                return Ok(out);
            }
            _ => break,
        }
    }
    Err(Error::Encoding("unterminated byte string in key".into()))
}

impl OrderedKey for Vec<u8> {
    fn encode_key(&self, out: &mut Vec<u8>) {
        encode_bytes(self, out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self> {
        decode_bytes(input)
    }
}

impl OrderedKey for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        encode_bytes(self.as_bytes(), out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self> {
        String::from_utf8(decode_bytes(input)?)
            .map_err(|_| Error::Encoding("key string is not UTF-8".into()))
    }
}

macro_rules! tuple {
    ($($n:ident),+) => {
        impl<$($n: OrderedKey),+> OrderedKey for ($($n,)+) {
            #[allow(non_snake_case)]
            fn encode_key(&self, out: &mut Vec<u8>) {
                let ($($n,)+) = self;
                $($n.encode_key(out);)+
            }
            fn decode_key(input: &mut &[u8]) -> Result<Self> {
                Ok(($($n::decode_key(input)?,)+))
            }
        }
    };
}
tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);

fn encode_value<V: Serialize>(v: &V) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::Encoding(e.to_string()))
}

fn decode_value<V: DeserializeOwned>(b: &[u8]) -> Result<V> {
    postcard::from_bytes(b).map_err(|e| Error::Encoding(e.to_string()))
}

/// A typed view of a bee or sub: keys through [`OrderedKey`], values
/// through serde + postcard.
pub struct Typed<K, V> {
    sub: Sub,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Typed<K, V> {
    fn clone(&self) -> Self {
        Typed {
            sub: self.sub.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Typed<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed").field("sub", &self.sub).finish()
    }
}

impl<K, V> Typed<K, V> {
    pub(crate) fn new(sub: Sub) -> Self {
        Typed {
            sub,
            _types: PhantomData,
        }
    }
}

impl<K: OrderedKey, V: Serialize + DeserializeOwned> Typed<K, V> {
    /// The value of `key`.
    pub async fn get(&self, key: &K) -> Result<Option<V>> {
        match self.sub.get(key.to_key_bytes()).await? {
            Some(e) => Ok(Some(decode_value(&e.value)?)),
            None => Ok(None),
        }
    }

    /// Puts `key`; returns the new version.
    pub async fn put(&self, key: &K, value: &V) -> Result<u64> {
        self.sub.put(key.to_key_bytes(), encode_value(value)?).await
    }

    /// Deletes `key`; returns the new version.
    pub async fn del(&self, key: &K) -> Result<u64> {
        self.sub.del(key.to_key_bytes()).await
    }

    /// Entries with keys between the bounds, in key order (or reversed).
    pub fn range(&self, lower: Bound<&K>, upper: Bound<&K>, reverse: bool) -> TypedIter<K, V> {
        let mut r = Range::all();
        r.lower = lower.map(|k| k.to_key_bytes());
        r.upper = upper.map(|k| k.to_key_bytes());
        r.reverse = reverse;
        self.range_raw(r)
    }

    /// Entries in a range given on encoded keys (e.g. `Range::prefix` of an
    /// encoded tuple head).
    pub fn range_raw(&self, range: Range) -> TypedIter<K, V> {
        TypedIter {
            inner: self.sub.range(range),
            _types: PhantomData,
        }
    }
}

/// Typed entries of a range.
pub struct TypedIter<K, V> {
    inner: RangeIter,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: OrderedKey, V: DeserializeOwned> TypedIter<K, V> {
    /// The next key and value.
    pub async fn next(&mut self) -> Result<Option<(K, V)>> {
        match self.inner.next().await? {
            Some(e) => Ok(Some((K::from_key_bytes(&e.key)?, decode_value(&e.value)?))),
            None => Ok(None),
        }
    }

    /// Every remaining entry.
    pub async fn collect(mut self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        while let Some(x) = self.next().await? {
            out.push(x);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn round<K: OrderedKey + PartialEq + std::fmt::Debug>(k: K) {
        assert_eq!(K::from_key_bytes(&k.to_key_bytes()).unwrap(), k);
    }

    proptest! {
        #[test]
        fn integers_keep_order(a: i64, b: i64, c: u32, d: u32) {
            prop_assert_eq!(a.cmp(&b), a.to_key_bytes().cmp(&b.to_key_bytes()));
            prop_assert_eq!(c.cmp(&d), c.to_key_bytes().cmp(&d.to_key_bytes()));
            round(a); round(c);
        }

        #[test]
        fn strings_and_tuples_keep_order(
            a in proptest::collection::vec(0u8..3, 0..6),
            b in proptest::collection::vec(0u8..3, 0..6),
            x: i16, y: i16,
        ) {
            prop_assert_eq!(a.cmp(&b), a.to_key_bytes().cmp(&b.to_key_bytes()));
            let (ta, tb) = ((a.clone(), x), (b.clone(), y));
            prop_assert_eq!(ta.cmp(&tb), ta.to_key_bytes().cmp(&tb.to_key_bytes()));
            round(ta);
            let s = String::from_utf8_lossy(&a).into_owned();
            round((s, x, true));
        }

        #[test]
        fn garbage_keys_are_errors(data in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = <(String, u64, Vec<u8>)>::from_key_bytes(&data);
        }
    }
}
