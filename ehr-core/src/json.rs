//! A byte-level scan of JSON text: nesting depth, string literals, and which
//! object key each string value belongs to.
//!
//! Resources are kept as their original bytes, so the few edits the record
//! makes (rewriting `urn:uuid:` references, setting a server-assigned id) are
//! done on the text, never by re-serialising a parsed tree. This scanner must
//! never panic or loop on malformed input: it only ever advances, and every
//! index is checked. It does not validate JSON; `serde_json` does that.

use std::ops::Range;

/// One string literal in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StrTok {
    /// The literal including its quotes.
    pub(crate) span: Range<usize>,
    /// How many containers enclose it (1 = a member of the top-level object).
    pub(crate) depth: usize,
    /// Whether it is an object key.
    pub(crate) is_key: bool,
    /// For a string value inside an object: its key's span (with quotes).
    pub(crate) key: Option<Range<usize>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    Object {
        expect_key: bool,
        /// Span start/end of the latest key in this object.
        key: Option<(usize, usize)>,
    },
    Array,
}

/// The deepest container nesting in `text`, stopping early (returning
/// `Err(depth)`) once it exceeds `max`.
pub(crate) fn check_depth(text: &[u8], max: usize) -> Result<usize, usize> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0usize;
    while i < text.len() {
        match text[i] {
            b'"' => i = skip_string(text, i),
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > max {
                    return Err(depth);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(deepest)
}

/// Index just past the string literal that starts at `start` (a quote).
fn skip_string(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// Every string literal in `text`, in order.
#[cfg(test)]
pub(crate) fn strings(text: &[u8]) -> Vec<StrTok> {
    let mut out = Vec::new();
    for_each_string(text, |t| out.push(t));
    out
}

/// Calls `f` with every string literal in `text`, in order (no allocation
/// beyond the container stack).
pub(crate) fn for_each_string(text: &[u8], mut f: impl FnMut(StrTok)) {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0usize;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let end = skip_string(text, i);
                let depth = stack.len();
                match stack.last_mut() {
                    Some(Frame::Object { expect_key, key }) if *expect_key => {
                        *expect_key = false;
                        *key = Some((i, end));
                        f(StrTok {
                            span: i..end,
                            depth,
                            is_key: true,
                            key: None,
                        });
                    }
                    Some(Frame::Object { key, .. }) => f(StrTok {
                        span: i..end,
                        depth,
                        is_key: false,
                        key: key.map(|(a, b)| a..b),
                    }),
                    _ => f(StrTok {
                        span: i..end,
                        depth,
                        is_key: false,
                        key: None,
                    }),
                }
                i = end;
            }
            b'{' => {
                stack.push(Frame::Object {
                    expect_key: true,
                    key: None,
                });
                i += 1;
            }
            b'[' => {
                stack.push(Frame::Array);
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// The contents of a literal span (without quotes), if it has no escapes.
/// Values we match on (references, ids) never need escapes.
pub(crate) fn plain<'a>(text: &'a [u8], span: &Range<usize>) -> Option<&'a str> {
    let inner = text.get(span.start + 1..span.end.checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// Whether the token is the value of key `name`.
pub(crate) fn is_value_of(text: &[u8], tok: &StrTok, name: &str) -> bool {
    // Compared as bytes: a key with an escape never equals a plain name
    // (the name holds no backslash), exactly as `plain` would decide.
    !tok.is_key
        && tok.key.as_ref().is_some_and(|k| {
            k.end >= k.start + 2 && text.get(k.start + 1..k.end - 1) == Some(name.as_bytes())
        })
}

/// Builds a copy of `text` with the given byte ranges replaced. Ranges must
/// be sorted and disjoint; overlapping or out-of-bounds ones are skipped.
pub(crate) fn splice(text: &[u8], edits: &[(Range<usize>, Vec<u8>)]) -> Vec<u8> {
    let extra: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(text.len() + extra);
    let mut at = 0usize;
    for (r, with) in edits {
        if r.start < at || r.end > text.len() || r.start > r.end {
            continue;
        }
        out.extend_from_slice(&text[at..r.start]);
        out.extend_from_slice(with);
        at = r.end;
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// `s` as a JSON string literal (with quotes).
pub(crate) fn quote(s: &str) -> Vec<u8> {
    // serde_json escapes exactly what JSON requires; a &str cannot fail.
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_and_values() {
        let t = br#"{"a":"x","b":{"reference":"Patient/1"},"c":["y",{"reference":"z\"q"}]}"#;
        let toks = strings(t);
        let refs: Vec<_> = toks
            .iter()
            .filter(|k| is_value_of(t, k, "reference"))
            .map(|k| String::from_utf8_lossy(&t[k.span.clone()]).into_owned())
            .collect();
        assert_eq!(refs, vec!["\"Patient/1\"", "\"z\\\"q\""]);
        let a = &toks[1];
        assert!(!a.is_key && a.depth == 1 && is_value_of(t, a, "a"));
        // An array element is no key's value.
        let y = toks.iter().find(|k| &t[k.span.clone()] == b"\"y\"");
        assert!(y.is_some_and(|y| y.key.is_none()));
    }

    #[test]
    fn depth() {
        assert_eq!(check_depth(br#"{"a":[{"b":"[[[["}]}"#, 10), Ok(3));
        assert_eq!(check_depth(&[b'['; 100], 64), Err(65));
    }

    #[test]
    fn splice_replaces() {
        let out = splice(
            b"0123456789",
            &[(1..3, b"ab".to_vec()), (5..5, b"X".to_vec())],
        );
        assert_eq!(out, b"0ab34X56789");
        // Overlaps and out-of-range edits are ignored, not panics.
        let out = splice(b"0123", &[(1..3, vec![]), (2..9, vec![])]);
        assert_eq!(out, b"03");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let toks = strings(&bytes);
            for t in &toks {
                prop_assert!(t.span.end <= bytes.len());
                let _ = plain(&bytes, &t.span);
            }
            let _ = check_depth(&bytes, 8);
        }

        #[test]
        fn agrees_with_serde(v in arb_json()) {
            let text = serde_json::to_vec(&v).unwrap_or_default();
            let n_strings = count_strings(&v);
            prop_assert_eq!(strings(&text).len(), n_strings);
        }
    }

    fn count_strings(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(_) => 1,
            serde_json::Value::Array(a) => a.iter().map(count_strings).sum(),
            serde_json::Value::Object(o) => o.iter().map(|(_, v)| 1 + count_strings(v)).sum(),
            _ => 0,
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\{}\\[\\],:]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z{}\"]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
