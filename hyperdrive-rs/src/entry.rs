//! The stored formats: the drive header and file entries.
//!
//! Every value starts with a format version byte ([`FORMAT_VERSION`]) and is
//! followed by a postcard record. Decoding checks the version, the record and
//! every invariant an honest writer keeps (a file's block count matches its
//! byte length and the chunk size; offsets do not overflow) before anything
//! is used, so a hostile value is an error, never a panic.

use crate::error::{CorruptError, Error, Result};
use serde::{Deserialize, Serialize};

/// The version byte that starts every header and entry value.
pub const FORMAT_VERSION: u8 = 1;

/// The metadata key of the drive header (`0xff` never starts a path).
pub(crate) const HEADER_KEY: &[u8] = b"\xffhyperdrive-rs/header";

/// Where a file's content lives in the blobs core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Blob {
    /// The first block of the blobs core holding the content.
    pub block_offset: u64,
    /// How many blocks (chunks) hold it.
    pub block_length: u64,
    /// The byte offset of the first block in the blobs core (informational).
    pub byte_offset: u64,
    /// The file size in bytes.
    pub byte_length: u64,
}

impl Blob {
    /// The first block after the blob.
    pub fn block_end(&self) -> u64 {
        self.block_offset.saturating_add(self.block_length)
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Where its content lives.
        blob: Blob,
        /// BLAKE3 hash of the whole content.
        hash: [u8; 32],
        /// The executable flag.
        executable: bool,
    },
    /// A symbolic link (relative to its folder, or absolute from the root).
    Symlink {
        /// The link target as written.
        target: String,
    },
}

/// A file or symlink in a drive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Canonical path (`/a/b/c`).
    pub path: String,
    /// The metadata block that recorded this entry.
    pub seq: u64,
    /// File or symlink.
    pub kind: EntryKind,
    /// Opaque user metadata.
    pub metadata: Vec<u8>,
}

impl Entry {
    /// The file size (0 for symlinks).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { blob, .. } => blob.byte_length,
            EntryKind::Symlink { .. } => 0,
        }
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, EntryKind::File { .. })
    }

    /// The content hash, for files.
    pub fn hash(&self) -> Option<[u8; 32]> {
        match &self.kind {
            EntryKind::File { hash, .. } => Some(*hash),
            EntryKind::Symlink { .. } => None,
        }
    }

    /// The blob, for files.
    pub fn blob(&self) -> Option<Blob> {
        match &self.kind {
            EntryKind::File { blob, .. } => Some(*blob),
            EntryKind::Symlink { .. } => None,
        }
    }

    /// Whether the executable flag is set.
    pub fn executable(&self) -> bool {
        matches!(
            self.kind,
            EntryKind::File {
                executable: true,
                ..
            }
        )
    }

    /// The symlink target, for symlinks.
    pub fn link_target(&self) -> Option<&str> {
        match &self.kind {
            EntryKind::Symlink { target } => Some(target),
            EntryKind::File { .. } => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct EntryRecord {
    blob: Option<Blob>,
    hash: Option<[u8; 32]>,
    executable: bool,
    link: Option<String>,
    metadata: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct HeaderRecord {
    blobs_key: [u8; 32],
    chunk_size: u32,
}

/// The decoded drive header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) blobs_key: [u8; 32],
    pub(crate) chunk_size: u64,
}

/// Smallest and largest chunk sizes a header may declare.
const MIN_CHUNK: u64 = 1024;
const MAX_CHUNK: u64 = 4 << 20;

fn versioned<T: Serialize>(rec: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Serialising plain structs of integers, byte arrays and strings into a
    // Vec cannot fail; an empty body would fail decoding loudly, not silently.
    if let Ok(body) = postcard::to_allocvec(rec) {
        out.extend_from_slice(&body);
    }
    out
}

fn unversioned(bytes: &[u8]) -> Result<&[u8]> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => Ok(rest),
        Some((&v, _)) => Err(Error::UnsupportedVersion(v)),
        None => Err(CorruptError::Header("empty value").into()),
    }
}

pub(crate) fn encode_header(h: &Header) -> Vec<u8> {
    versioned(&HeaderRecord {
        blobs_key: h.blobs_key,
        chunk_size: u32::try_from(h.chunk_size).unwrap_or(u32::MAX),
    })
}

pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header> {
    let body = unversioned(bytes)?;
    let (rec, rest): (HeaderRecord, _) =
        postcard::take_from_bytes(body).map_err(|_| CorruptError::Header("undecodable record"))?;
    if !rest.is_empty() {
        return Err(CorruptError::Header("trailing bytes").into());
    }
    let chunk_size = u64::from(rec.chunk_size);
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return Err(CorruptError::Header("chunk size out of bounds").into());
    }
    Ok(Header {
        blobs_key: rec.blobs_key,
        chunk_size,
    })
}

pub(crate) fn encode_entry(kind: &EntryKind, metadata: &[u8]) -> Vec<u8> {
    let rec = match kind {
        EntryKind::File {
            blob,
            hash,
            executable,
        } => EntryRecord {
            blob: Some(*blob),
            hash: Some(*hash),
            executable: *executable,
            link: None,
            metadata: metadata.to_vec(),
        },
        EntryKind::Symlink { target } => EntryRecord {
            blob: None,
            hash: None,
            executable: false,
            link: Some(target.clone()),
            metadata: metadata.to_vec(),
        },
    };
    versioned(&rec)
}

/// Blocks a file of `len` bytes occupies.
pub(crate) fn blocks_for(len: u64, chunk: u64) -> u64 {
    len.div_ceil(chunk)
}

pub(crate) fn decode_entry(path: String, seq: u64, bytes: &[u8], chunk: u64) -> Result<Entry> {
    let bad = |path: &str, what| -> Error {
        CorruptError::Entry {
            path: path.to_string(),
            what,
        }
        .into()
    };
    let body = match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => rest,
        Some((&v, _)) => return Err(Error::UnsupportedVersion(v)),
        None => return Err(bad(&path, "empty value")),
    };
    let (rec, rest): (EntryRecord, _) =
        postcard::take_from_bytes(body).map_err(|_| bad(&path, "undecodable record"))?;
    if !rest.is_empty() {
        return Err(bad(&path, "trailing bytes"));
    }
    let kind = match (rec.blob, rec.hash, rec.link) {
        (Some(blob), Some(hash), None) => {
            if blob.block_offset.checked_add(blob.block_length).is_none()
                || blob.byte_offset.checked_add(blob.byte_length).is_none()
            {
                return Err(bad(&path, "blob offsets overflow"));
            }
            if blob.block_length != blocks_for(blob.byte_length, chunk) {
                return Err(bad(&path, "block count does not match the size"));
            }
            EntryKind::File {
                blob,
                hash,
                executable: rec.executable,
            }
        }
        (None, None, Some(target)) => EntryKind::Symlink { target },
        _ => return Err(bad(&path, "neither a file nor a symlink")),
    };
    Ok(Entry {
        path,
        seq,
        kind,
        metadata: rec.metadata,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_inconsistency() {
        let blob = Blob {
            block_offset: 3,
            block_length: 2,
            byte_offset: 100,
            byte_length: 70_000,
        };
        let kind = EntryKind::File {
            blob,
            hash: [7; 32],
            executable: true,
        };
        let bytes = encode_entry(&kind, b"meta");
        assert_eq!(bytes[0], FORMAT_VERSION);
        let e = decode_entry("/a".into(), 9, &bytes, 65536).unwrap();
        assert_eq!(e.kind, kind);
        assert_eq!(e.metadata, b"meta");
        // The same entry read with another chunk size is inconsistent.
        assert!(decode_entry("/a".into(), 9, &bytes, 1024).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            decode_entry("/a".into(), 9, &v2, 65536),
            Err(Error::UnsupportedVersion(2))
        ));
        for cut in 0..bytes.len() {
            assert!(decode_entry("/a".into(), 9, &bytes[..cut], 65536).is_err());
        }
    }

    #[test]
    fn header_round_trips_and_bounds_the_chunk_size() {
        let h = Header {
            blobs_key: [1; 32],
            chunk_size: 65536,
        };
        assert_eq!(decode_header(&encode_header(&h)).unwrap(), h);
        let bad = Header {
            chunk_size: 16,
            ..h
        };
        assert!(decode_header(&encode_header(&bad)).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod golden {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The stored bytes are a contract: these vectors must keep decoding.
    #[test]
    fn version_1_encodings_are_stable() {
        let file = EntryKind::File {
            blob: Blob {
                block_offset: 300,
                block_length: 2,
                byte_offset: 1,
                byte_length: 65_537,
            },
            hash: [0xab; 32],
            executable: true,
        };
        let f = encode_entry(&file, b"m");
        let want_f = format!("0101ac02020181800401{}0100016d", "ab".repeat(32));
        assert_eq!(hex(&f), want_f);
        let link = EntryKind::Symlink {
            target: "../x".into(),
        };
        let l = encode_entry(&link, b"");
        assert_eq!(hex(&l), "0100000001042e2e2f7800");
        let h = encode_header(&Header {
            blobs_key: [1; 32],
            chunk_size: 65_536,
        });
        assert_eq!(hex(&h), format!("01{}808004", "01".repeat(32)));
        assert_eq!(decode_entry("/f".into(), 1, &f, 65_536).unwrap().kind, file);
        assert_eq!(decode_entry("/l".into(), 1, &l, 65_536).unwrap().kind, link);
    }
}
