//! Attachments (imaging, PDFs, DICOM) live in hyperdrives, not in the
//! record's view: each device writes into its own drive, and a resource
//! (DocumentReference, Media, DiagnosticReport) refers to the content by an
//! `ehr-blob://<drive key>/<BLAKE3 hash>` URL plus its size.
//!
//! Reading verifies the content against the hash and size in the URL, so a
//! peer serving the drive cannot substitute other bytes. Content is stored
//! once per hash per drive.

use crate::error::Error;
use crate::record::Record;
use crate::view::hex;
use hyperdrive_rs::Drive;
use std::time::Duration;

/// The URL scheme of attachment references.
pub const ATTACHMENT_SCHEME: &str = "ehr-blob://";

const DRIVE_NAME: &str = "ehr/attachments";

/// Where an attachment is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attachment {
    /// The key of the drive that holds it.
    pub drive: [u8; 32],
    /// The BLAKE3 hash of the content.
    pub hash: [u8; 32],
    /// The content size in bytes.
    pub size: u64,
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Attachment {
    /// The reference URL, for `Attachment.url` in a resource.
    pub fn url(&self) -> String {
        format!(
            "{ATTACHMENT_SCHEME}{}/{}",
            hex(&self.drive),
            hex(&self.hash)
        )
    }

    /// Parses a reference URL and the size the resource states.
    pub fn parse(url: &str, size: u64) -> Option<Attachment> {
        let rest = url.strip_prefix(ATTACHMENT_SCHEME)?;
        let (drive, hash) = rest.split_once('/')?;
        Some(Attachment {
            drive: unhex32(drive)?,
            hash: unhex32(hash)?,
            size,
        })
    }

    fn path(&self) -> String {
        format!("/blobs/{}", hex(&self.hash))
    }
}

impl Record {
    async fn local_drive(&self) -> Result<Drive, Error> {
        let mut slot = self.inner.drive.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let d = Drive::open(&self.inner.store, DRIVE_NAME)
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Stores content in this device's attachments drive (durably) and
    /// returns its reference.
    pub async fn put_attachment(&self, data: &[u8]) -> Result<Attachment, Error> {
        let drive = self.local_drive().await?;
        let a = Attachment {
            drive: drive.key(),
            hash: *blake3::hash(data).as_bytes(),
            size: data.len() as u64,
        };
        let storage = |e: hyperdrive_rs::Error| Error::Storage(e.to_string());
        if !drive.exists(&a.path()).await.map_err(storage)? {
            drive.put(&a.path(), data).await.map_err(storage)?;
            drive.flush().await.map_err(storage)?;
        }
        Ok(a)
    }

    /// Reads an attachment, from this device's drive or from peers (waiting
    /// at most `wait` for each missing piece), and checks it against the
    /// reference's hash and size.
    pub async fn get_attachment(&self, a: &Attachment, wait: Duration) -> Result<Vec<u8>, Error> {
        let storage = |e: hyperdrive_rs::Error| Error::Storage(e.to_string());
        let local = self.local_drive().await?;
        let drive = if a.drive == local.key() {
            local
        } else {
            Drive::open_remote(&self.inner.store, a.drive, wait)
                .await
                .map_err(storage)?
        };
        let data = drive
            .get(&a.path())
            .await
            .map_err(storage)?
            .ok_or_else(|| Error::NotFound(a.url()))?;
        if data.len() as u64 != a.size || *blake3::hash(&data).as_bytes() != a.hash {
            return Err(Error::AttachmentMismatch(a.url()));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_and_reject_junk() {
        let a = Attachment {
            drive: [1; 32],
            hash: [0xab; 32],
            size: 9,
        };
        assert_eq!(Attachment::parse(&a.url(), 9), Some(a.clone()));
        for bad in [
            "http://x",
            "ehr-blob://",
            "ehr-blob://0101/abab",
            &a.url().replace("ab", "zz"),
            &format!("{}/", a.url()),
        ] {
            assert_eq!(Attachment::parse(bad, 9), None, "{bad}");
        }
    }
}
