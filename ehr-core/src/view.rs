//! The layout of the record's view (a hyperbee): keys and stored values.
//!
//! `apply` is the only writer of this layout; the record's read API is its
//! only reader. Values are postcard. Every key family has its own prefix:
//!
//! | key | value |
//! |---|---|
//! | `m/format` | [`VIEW_FORMAT`] |
//! | `m/genesis` | [`GenesisRec`] |
//! | `m/clock` | the latest owner-claimed time (u64 BE) |
//! | `w/<writer>` | [`WriterRec`] |
//! | `r/<Type>/<id>` | [`HeadRec`]: the latest version, conflicts, indexed fields |
//! | `v/<Type>/<id>/<version u64 BE>` | [`VersionRec`]: an older version |
//! | `x/<kind>/<Type>\0<value>\0<date>` + id | index entry (empty value) |
//! | `j/<writer><seq u64 BE><index u32 BE>` | [`RejectedRec`] |
//!
//! A version's body is the resource's JSON bytes as written, except a v2
//! sealed shell, which is kept *packed* (format 2): the envelope's base64
//! replaced by the binary it encodes (`scope_crypto::pack_shell`). Every
//! read through the record's API turns it back into the exact shell bytes.

use crate::consent::Grant;
use crate::fhir::{date_key, ResourceInfo};
use crate::op::WriterKey;
use serde::{Deserialize, Serialize};

/// The view layout version written by this code (2: sealed shells kept
/// packed; a view written by format 1 holds them as JSON, which every
/// reader still takes).
pub const VIEW_FORMAT: u8 = 2;

pub(crate) const FORMAT: &[u8] = b"m/format";
pub(crate) const GENESIS: &[u8] = b"m/genesis";
pub(crate) const CLOCK: &[u8] = b"m/clock";
pub(crate) const HEADS: &[u8] = b"r/";
pub(crate) const WRITERS: &[u8] = b"w/";
pub(crate) const REJECTED: &[u8] = b"j/";

/// The index families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    /// By clinical date only.
    Date,
    /// By `system|code`, then date.
    Code,
    /// By category `system|code`, then date.
    Category,
    /// By author (writer key, hex), then date.
    Author,
    /// By encounter id, then date.
    Encounter,
}

impl Index {
    fn tag(self) -> u8 {
        match self {
            Index::Date => b'd',
            Index::Code => b'c',
            Index::Category => b'k',
            Index::Author => b'a',
            Index::Encounter => b'e',
        }
    }
}

/// The record's patient and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenesisRec {
    pub(crate) patient: String,
    pub(crate) owner: WriterKey,
    pub(crate) time: u64,
    pub(crate) peer: Option<[u8; 32]>,
}

/// A writer's grant and whether it was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WriterRec {
    pub(crate) grant: Grant,
    pub(crate) revoked: bool,
    /// When it was granted (the granting op's claimed time).
    pub(crate) since: u64,
}

/// The fields indexes are built from, kept so they can be removed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct Fields {
    pub(crate) date: Option<i64>,
    pub(crate) codes: Vec<String>,
    pub(crate) categories: Vec<String>,
    pub(crate) encounter: Option<String>,
}

impl Fields {
    pub(crate) fn of(info: &ResourceInfo) -> Fields {
        let mut codes: Vec<String> = info.codes.iter().map(|c| c.token()).collect();
        codes.sort();
        codes.dedup();
        let mut categories: Vec<String> = info.categories.iter().map(|c| c.token()).collect();
        categories.sort();
        categories.dedup();
        Fields {
            date: info.date,
            codes,
            categories,
            encounter: info.encounter.as_ref().map(|e| e.id.clone()),
        }
    }
}

/// The latest state of one resource, including its latest version (so a
/// read is one lookup, and a create writes the bytes once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadRec {
    pub(crate) version: u64,
    /// Versions overwritten by a writer that had not seen them.
    pub(crate) conflicts: Vec<u64>,
    pub(crate) fields: Fields,
    pub(crate) current: VersionRec,
}

impl HeadRec {
    pub(crate) fn deleted(&self) -> bool {
        self.current.deleted
    }
}

/// [`HeadRec`] as a read of the latest version decodes it: the same
/// layout, but the conflicts and indexed fields are only stepped over and
/// the body is borrowed from the stored value (a read allocates nothing
/// here). The body is the last field of the encoding, so it is exactly the
/// value's tail (see `Record::read_latest`).
#[derive(Deserialize)]
pub(crate) struct HeadRecRef<'a> {
    pub(crate) version: u64,
    _conflicts: Skip<u64>,
    #[serde(borrow)]
    _fields: FieldsRef<'a>,
    #[serde(borrow)]
    pub(crate) current: VersionRecRef<'a>,
}

/// [`Fields`], stepped over.
#[derive(Deserialize)]
struct FieldsRef<'a> {
    _date: Option<i64>,
    #[serde(borrow)]
    _codes: Skip<&'a str>,
    #[serde(borrow)]
    _categories: Skip<&'a str>,
    _encounter: Option<&'a str>,
}

/// [`VersionRec`] with a borrowed body.
#[derive(Deserialize)]
pub(crate) struct VersionRecRef<'a> {
    pub(crate) author: WriterKey,
    pub(crate) _seq: u64,
    pub(crate) time: u64,
    pub(crate) deleted: bool,
    pub(crate) body: &'a [u8],
}

/// A sequence of `T` decoded and dropped, element by element.
struct Skip<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Skip<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Each<T> {
            type Value = Skip<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Skip<T>, A::Error> {
                while a.next_element::<T>()?.is_some() {}
                Ok(Skip(std::marker::PhantomData))
            }
        }
        d.deserialize_seq(Each(std::marker::PhantomData))
    }
}

/// One version of one resource (under `v/` once a newer one exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionRec {
    pub(crate) author: WriterKey,
    pub(crate) seq: u64,
    pub(crate) time: u64,
    pub(crate) deleted: bool,
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
}

/// A write that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RejectedRec {
    pub(crate) time: u64,
    pub(crate) rejection: crate::apply::Rejection,
}

pub(crate) fn writer_key(w: &WriterKey) -> Vec<u8> {
    let mut k = b"w/".to_vec();
    k.extend_from_slice(w);
    k
}

pub(crate) fn head_key(ty: &str, id: &str) -> Vec<u8> {
    format!("r/{ty}/{id}").into_bytes()
}

pub(crate) fn version_prefix(ty: &str, id: &str) -> Vec<u8> {
    format!("v/{ty}/{id}/").into_bytes()
}

pub(crate) fn version_key(ty: &str, id: &str, version: u64) -> Vec<u8> {
    let mut k = version_prefix(ty, id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn rejected_key(w: &WriterKey, seq: u64, index: u32) -> Vec<u8> {
    let mut k = REJECTED.to_vec();
    k.extend_from_slice(w);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Index values longer than this, or holding a NUL, are stored hashed so
/// keys stay short and unambiguous.
const MAX_INDEX_VALUE: usize = 200;

pub(crate) fn index_value(v: &str) -> Vec<u8> {
    if v.len() > MAX_INDEX_VALUE || v.contains('\0') {
        let mut out = b"#".to_vec();
        out.extend_from_slice(blake3::hash(v.as_bytes()).to_hex().as_bytes());
        out
    } else {
        v.as_bytes().to_vec()
    }
}

/// The prefix of one index's entries for one type (and value).
pub(crate) fn index_prefix(index: Index, ty: &str, value: Option<&str>) -> Vec<u8> {
    let mut k = vec![b'x', b'/', index.tag(), b'/'];
    k.extend_from_slice(ty.as_bytes());
    k.push(0);
    if let Some(v) = value {
        k.extend_from_slice(&index_value(v));
        k.push(0);
    }
    k
}

fn index_key(index: Index, ty: &str, value: Option<&str>, date: Option<i64>, id: &str) -> Vec<u8> {
    let mut k = index_prefix(index, ty, value);
    k.extend_from_slice(&date_key(date));
    k.extend_from_slice(id.as_bytes());
    k
}

/// The id at the end of an index key (after the 8 date bytes).
pub(crate) fn index_id(prefix_len: usize, key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(prefix_len + 8..)?).ok()
}

/// Every index key of a live resource.
pub(crate) fn index_keys(ty: &str, id: &str, author: &WriterKey, f: &Fields) -> Vec<Vec<u8>> {
    let d = f.date;
    let mut keys = vec![index_key(Index::Date, ty, None, d, id)];
    for c in &f.codes {
        keys.push(index_key(Index::Code, ty, Some(c), d, id));
    }
    for c in &f.categories {
        keys.push(index_key(Index::Category, ty, Some(c), d, id));
    }
    keys.push(index_key(Index::Author, ty, Some(&hex(author)), d, id));
    if let Some(e) = &f.encounter {
        keys.push(index_key(Index::Encounter, ty, Some(e), d, id));
    }
    keys
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!` per byte: this runs for every index key.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Sized first: records carry resource bodies, and growing the vector
    // by doubling would copy them several times.
    let size = postcard::experimental::serialized_size(v).unwrap_or(0);
    postcard::to_extend(v, Vec::with_capacity(size)).unwrap_or_default()
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The read path's borrowed decode sees what the full decode sees,
        /// and the body is the stored value's tail (the read cuts it out
        /// of the value's buffer by that).
        #[test]
        fn the_borrowed_head_decode_matches_the_full_one(
            version in any::<u64>(),
            conflicts in proptest::collection::vec(any::<u64>(), 0..4),
            date in any::<Option<i64>>(),
            codes in proptest::collection::vec("[a-z|0-9]{0,20}", 0..4),
            categories in proptest::collection::vec("[a-z|]{0,12}", 0..3),
            encounter in proptest::option::of("[a-z0-9]{1,12}"),
            author in any::<[u8; 32]>(),
            seq in any::<u64>(),
            time in any::<u64>(),
            deleted in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let h = HeadRec {
                version,
                conflicts,
                fields: Fields { date, codes, categories, encounter },
                current: VersionRec { author, seq, time, deleted, body: body.clone() },
            };
            let bytes = encode(&h);
            let r: HeadRecRef<'_> = decode(&bytes).unwrap();
            prop_assert_eq!(r.version, version);
            prop_assert_eq!(r.current.author, author);
            prop_assert_eq!(r.current.time, time);
            prop_assert_eq!(r.current.deleted, deleted);
            prop_assert_eq!(r.current.body, &body[..]);
            prop_assert_eq!(&bytes[bytes.len() - body.len()..], &body[..]);
        }
    }
}
