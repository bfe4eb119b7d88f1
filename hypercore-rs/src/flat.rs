//! Flat-tree arithmetic: the numbering of a Merkle tree's nodes in one sequence.
//!
//! Block `i` is leaf `2 * i`; a node at depth `d` and offset `o` has index
//! `(o << (d + 1)) | ((1 << d) - 1)`, so a parent sits between its two children.
//! These functions are pure and never panic: indices near `u64::MAX` saturate
//! instead of overflowing, and callers reject them as out of range.

/// Depth of a node: the number of trailing one bits of its index (leaves are 0).
#[inline]
pub fn depth(index: u64) -> u32 {
    index.trailing_ones()
}

/// Offset of a node among the nodes of its depth.
#[inline]
pub fn offset(index: u64) -> u64 {
    let d = depth(index);
    if d >= 63 {
        0
    } else {
        index >> (d + 1)
    }
}

/// The index of the node at `depth` and `offset`.
#[inline]
pub fn index(depth: u32, offset: u64) -> u64 {
    if depth >= 63 {
        return u64::MAX;
    }
    offset
        .checked_shl(depth + 1)
        .map(|o| o | ((1u64 << depth) - 1))
        .unwrap_or(u64::MAX)
}

/// The parent of a node.
#[inline]
pub fn parent(i: u64) -> u64 {
    let d = depth(i);
    index(d + 1, offset(i) >> 1)
}

/// The other child of a node's parent.
#[inline]
pub fn sibling(i: u64) -> u64 {
    let d = depth(i);
    index(d, offset(i) ^ 1)
}

/// The two children of a node, or `None` for a leaf.
#[inline]
pub fn children(i: u64) -> Option<(u64, u64)> {
    let d = depth(i);
    if d == 0 {
        return None;
    }
    let o = offset(i) * 2;
    Some((index(d - 1, o), index(d - 1, o + 1)))
}

/// The blocks a node covers, as a half-open range `[start, end)`.
#[inline]
pub fn span(i: u64) -> (u64, u64) {
    let d = depth(i);
    if d >= 63 {
        return (0, u64::MAX);
    }
    let o = offset(i);
    let start = o.saturating_mul(1u64 << d);
    let end = (o.saturating_add(1)).saturating_mul(1u64 << d);
    (start, end)
}

/// Whether node `i` belongs to the tree of a log with `length` blocks.
#[inline]
pub fn in_tree(i: u64, length: u64) -> bool {
    span(i).1 <= length
}

/// Whether a node is the left child of its parent.
#[inline]
pub fn is_left(i: u64) -> bool {
    offset(i) & 1 == 0
}

/// The roots of the tree of a log with `length` blocks, left to right.
///
/// Every log length decomposes into at most 64 perfect subtrees, one per set bit.
pub fn full_roots(length: u64) -> Vec<u64> {
    let mut roots = Vec::with_capacity(length.count_ones() as usize);
    let mut start = 0u64;
    let mut remaining = length;
    while remaining > 0 {
        let d = 63 - remaining.leading_zeros();
        let size = 1u64 << d;
        roots.push(index(d, start >> d));
        start += size;
        remaining -= size;
    }
    roots
}

/// Whether `i` is one of the roots of a log with `length` blocks.
pub fn is_root(i: u64, length: u64) -> bool {
    in_tree(i, length) && !in_tree(parent(i), length)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn numbering() {
        assert_eq!(index(0, 0), 0);
        assert_eq!(index(0, 3), 6);
        assert_eq!(index(1, 0), 1);
        assert_eq!(index(2, 0), 3);
        assert_eq!(index(1, 1), 5);
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(0), 2);
        assert_eq!(sibling(5), 1);
        assert_eq!(children(3), Some((1, 5)));
        assert_eq!(children(4), None);
        assert_eq!(span(3), (0, 4));
        assert_eq!(span(9), (4, 6));
    }

    #[test]
    fn roots() {
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(1), vec![0]);
        assert_eq!(full_roots(2), vec![1]);
        assert_eq!(full_roots(3), vec![1, 4]);
        assert_eq!(full_roots(5), vec![3, 8]);
        assert_eq!(full_roots(7), vec![3, 9, 12]);
        for len in 0..200u64 {
            let roots = full_roots(len);
            let covered: u64 = roots.iter().map(|&r| span(r).1 - span(r).0).sum();
            assert_eq!(covered, len);
            for r in roots {
                assert!(is_root(r, len));
            }
        }
    }

    #[test]
    fn extreme_indices_do_not_panic() {
        for i in [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1] {
            let _ = (
                depth(i),
                offset(i),
                parent(i),
                sibling(i),
                children(i),
                span(i),
            );
            let _ = in_tree(i, u64::MAX);
        }
        let _ = full_roots(u64::MAX);
    }
}
