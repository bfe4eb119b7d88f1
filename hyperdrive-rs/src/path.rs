//! Drive paths: normalisation, validation and the metadata key layout.
//!
//! A path is a list of non-empty UTF-8 segments. Its metadata key is the
//! segments joined by a NUL byte (NUL is banned inside segments). NUL sorts
//! before every other byte, so every folder is one contiguous key range
//! (`folder ‖ 0x00` up to `folder ‖ 0x01`), its direct children come in name
//! order, and a deeper subtree can be skipped with one seek. Keys that start
//! with `0xff` can never be paths (UTF-8 never holds that byte): the drive
//! keeps its header there. This module must never accept a path that could
//! name something outside the drive's root.

use crate::error::PathError;

/// The longest metadata key (encoded path) accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1000;
/// The longest path segment accepted, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;

pub(crate) const SEP: u8 = 0x00;
/// Keys at and above this byte are reserved for the drive itself.
pub(crate) const RESERVED: u8 = 0xff;

/// Normalises a file path: an optional leading `/`, segments separated by
/// `/`, `.` segments dropped. Returns the segments.
pub(crate) fn segments(path: &str, folder: bool) -> Result<Vec<&str>, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut p = path.strip_prefix('/').unwrap_or(path);
    if folder {
        p = p.strip_suffix('/').unwrap_or(p);
    }
    let mut out = Vec::new();
    if p.is_empty() {
        return if folder {
            Ok(out)
        } else {
            Err(PathError::Empty)
        };
    }
    let mut total = 0usize;
    for s in p.split('/') {
        match s {
            "" => return Err(PathError::EmptySegment),
            "." => continue,
            ".." => return Err(PathError::DotDot),
            _ if s.len() > MAX_SEGMENT_LEN => return Err(PathError::SegmentTooLong(s.len())),
            _ => {}
        }
        total += s.len() + 1;
        out.push(s);
    }
    if total > MAX_PATH_LEN {
        return Err(PathError::TooLong(total));
    }
    if out.is_empty() && !folder {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// The metadata key of a list of segments.
pub(crate) fn key_of(segs: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(segs.iter().map(|s| s.len() + 1).sum());
    for (i, s) in segs.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(s.as_bytes());
    }
    k
}

/// The canonical display form (`/a/b/c`) of a list of segments.
pub(crate) fn display(segs: &[&str]) -> String {
    let mut s = String::new();
    for seg in segs {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The canonical path of a metadata key, if the key is a valid path.
pub(crate) fn path_of_key(key: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(key).ok()?;
    let segs: Vec<&str> = s.split('\0').collect();
    let canonical = segs.join("/");
    match segments(&canonical, false) {
        Ok(n) if n.len() == segs.len() => Some(display(&n)),
        _ => None,
    }
}

/// The key range holding everything under a folder: `[start, end)`.
pub(crate) fn folder_range(segs: &[&str]) -> (Vec<u8>, Vec<u8>) {
    if segs.is_empty() {
        return (Vec::new(), vec![RESERVED]);
    }
    let mut start = key_of(segs);
    start.push(SEP);
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = SEP + 1;
    }
    (start, end)
}

/// Resolves a symlink `target` found at `link` (segments of the link
/// itself) to the segments it names, allowing `..` as long as it stays
/// inside the root.
pub(crate) fn resolve_link(link: &[String], target: &str) -> Result<Vec<String>, PathError> {
    if target.contains('\0') {
        return Err(PathError::Nul);
    }
    if target.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut out: Vec<String> = if target.starts_with('/') {
        Vec::new()
    } else {
        link[..link.len().saturating_sub(1)].to_vec()
    };
    let t = target.strip_prefix('/').unwrap_or(target);
    if t.is_empty() {
        return Err(PathError::Empty);
    }
    for s in t.split('/') {
        match s {
            "" => return Err(PathError::EmptySegment),
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
            }
            _ if s.len() > MAX_SEGMENT_LEN => return Err(PathError::SegmentTooLong(s.len())),
            _ => out.push(s.to_string()),
        }
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    let total: usize = out.iter().map(|s| s.len() + 1).sum();
    if total > MAX_PATH_LEN {
        return Err(PathError::TooLong(total));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(segments("/a/b", false), Ok(vec!["a", "b"]));
        assert_eq!(segments("a/./b", false), Ok(vec!["a", "b"]));
        assert_eq!(segments("/", true), Ok(vec![]));
        assert_eq!(segments("/a/", true), Ok(vec!["a"]));
        assert_eq!(segments("/", false), Err(PathError::Empty));
        assert_eq!(segments("a//b", false), Err(PathError::EmptySegment));
        assert_eq!(segments("a/", false), Err(PathError::EmptySegment));
        assert_eq!(segments("//etc", false), Err(PathError::EmptySegment));
        assert_eq!(segments("a/../b", false), Err(PathError::DotDot));
        assert_eq!(segments("a\0b", false), Err(PathError::Nul));
        assert_eq!(segments("a\\b", false), Err(PathError::Backslash));
        let long = "x".repeat(256);
        assert_eq!(segments(&long, false), Err(PathError::SegmentTooLong(256)));
    }

    #[test]
    fn keys_round_trip_and_folders_are_contiguous() {
        let k = key_of(&["a", "b c", "d"]);
        assert_eq!(path_of_key(&k).as_deref(), Some("/a/b c/d"));
        assert_eq!(path_of_key(b"a\0\0b"), None);
        assert_eq!(path_of_key(b"a\0..\0b"), None);
        assert_eq!(path_of_key(&[0xff, 1]), None);
        let (s, e) = folder_range(&["a"]);
        for inside in [key_of(&["a", "z"]), key_of(&["a", "b", "c"])] {
            assert!(inside >= s && inside < e);
        }
        for outside in [key_of(&["a"]), key_of(&["a-b"]), key_of(&["a!", "x"])] {
            assert!(outside < s || outside >= e);
        }
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let link = vec!["a".to_string(), "b".to_string(), "l".to_string()];
        assert_eq!(resolve_link(&link, "x").unwrap(), vec!["a", "b", "x"]);
        assert_eq!(resolve_link(&link, "../x").unwrap(), vec!["a", "x"]);
        assert_eq!(resolve_link(&link, "/y").unwrap(), vec!["y"]);
        assert_eq!(resolve_link(&link, "../../../x"), Err(PathError::Escapes));
        assert_eq!(resolve_link(&link, "..").unwrap(), vec!["a"]);
    }
}
