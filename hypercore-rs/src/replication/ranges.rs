//! A set of block indices as sorted, disjoint, half-open ranges.

/// Sorted, disjoint, non-adjacent half-open ranges `[start, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of disjoint ranges (a measure of memory use).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Index of the first range whose end is > `i`.
    fn find(&self, i: u64) -> usize {
        self.ranges.partition_point(|&(_, e)| e <= i)
    }

    /// Whether `i` is in the set.
    pub fn contains(&self, i: u64) -> bool {
        let k = self.find(i);
        self.ranges.get(k).is_some_and(|&(s, _)| s <= i)
    }

    /// Whether every index in `[start, end)` is in the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let k = self.find(start);
        self.ranges
            .get(k)
            .is_some_and(|&(s, e)| s <= start && e >= end)
    }

    /// The first index `>= from` that is not in the set.
    pub fn next_missing(&self, from: u64) -> u64 {
        let k = self.find(from);
        match self.ranges.get(k) {
            Some(&(s, e)) if s <= from => e,
            _ => from,
        }
    }

    /// The first index `>= from` that is in the set.
    pub fn next_present(&self, from: u64) -> Option<u64> {
        let k = self.find(from);
        self.ranges.get(k).map(|&(s, _)| s.max(from))
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges that overlap or touch [start, end).
        let lo = self.ranges.partition_point(|&(_, e)| e < start);
        let hi = self.ranges.partition_point(|&(s, _)| s <= end);
        let (mut s, mut e) = (start, end);
        if lo < hi {
            s = s.min(self.ranges[lo].0);
            e = e.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(s, e)]);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let lo = self.ranges.partition_point(|&(_, e)| e <= start);
        let hi = self.ranges.partition_point(|&(s, _)| s < end);
        if lo >= hi {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        let (fs, _) = self.ranges[lo];
        let (_, le) = self.ranges[hi - 1];
        if fs < start {
            keep.push((fs, start));
        }
        if le > end {
            keep.push((end, le));
        }
        self.ranges.splice(lo..hi, keep);
    }

    /// Removes everything at or after `length`.
    pub fn truncate(&mut self, length: u64) {
        self.remove(length, u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec((any::<bool>(), 0u64..64, 0u64..64), 0..60)) {
            let mut r = RangeSet::new();
            let mut m = BTreeSet::new();
            for (add, a, b) in ops {
                let (s, e) = (a.min(b), a.max(b));
                if add {
                    r.insert(s, e);
                    m.extend(s..e);
                } else {
                    r.remove(s, e);
                    for i in s..e {
                        m.remove(&i);
                    }
                }
                for i in 0..70u64 {
                    prop_assert_eq!(r.contains(i), m.contains(&i));
                    let nm = (i..).find(|x| !m.contains(x)).unwrap_or(u64::MAX);
                    prop_assert_eq!(r.next_missing(i), nm);
                    prop_assert_eq!(r.next_present(i), m.range(i..).next().copied());
                }
                // Canonical: sorted, disjoint, not touching.
                for w in r.ranges.windows(2) {
                    prop_assert!(w[0].1 < w[1].0);
                }
                prop_assert!(r.ranges.iter().all(|&(s, e)| s < e));
            }
        }
    }
}
