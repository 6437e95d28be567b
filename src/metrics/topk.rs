//! The most frequent error patterns, in bounded memory (the Space-Saving algorithm).

use std::collections::HashMap;

/// A Space-Saving sketch of at most `k` counters (Metwally, Agrawal, El Abbadi, 2005).
///
/// A tracked item's count goes up by one; an untracked one replaces the smallest counter and
/// inherits its count plus one, recording that count as its possible overestimate. Any item
/// that occurs more than `n / k` times out of `n` is guaranteed to be tracked, and memory
/// never exceeds `k` entries, however many distinct items arrive.
#[derive(Debug)]
pub(crate) struct SpaceSaving {
    k: usize,
    counts: HashMap<String, (u64, u64)>,
    /// Where a two-part item is put together: kept, so that counting a tracked item
    /// allocates nothing.
    scratch: String,
}

impl SpaceSaving {
    pub(crate) fn new(k: usize) -> Self {
        SpaceSaving {
            k: k.max(1),
            // Grown as patterns arrive: a large `k` reserves nothing up front.
            counts: HashMap::new(),
            scratch: String::new(),
        }
    }

    /// Counts the item `first|second`, allocating only when it is not tracked yet.
    pub(crate) fn add_pair(&mut self, first: &str, second: &str) {
        let mut item = std::mem::take(&mut self.scratch);
        item.clear();
        item.push_str(first);
        item.push('|');
        item.push_str(second);
        self.add(&item);
        self.scratch = item;
    }

    pub(crate) fn add(&mut self, item: &str) {
        if let Some((count, _)) = self.counts.get_mut(item) {
            *count += 1;
            return;
        }
        if self.counts.len() < self.k {
            self.counts.insert(item.to_owned(), (1, 0));
            return;
        }
        let (victim, floor) = match self.counts.iter().min_by_key(|(_, (count, _))| *count) {
            Some((key, (count, _))) => (key.clone(), *count),
            None => return,
        };
        self.counts.remove(&victim);
        self.counts.insert(item.to_owned(), (floor + 1, floor));
    }

    /// The tracked items with their counts and possible overestimates.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.counts.iter().map(|(k, (c, e))| (k.as_str(), *c, *e))
    }

    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_counted_as_one_item_joined_by_a_bar() {
        let mut top = SpaceSaving::new(4);
        top.add_pair("timeout", "edge");
        top.add_pair("timeout", "edge");
        top.add("timeout|edge");
        top.add_pair("timeout", "backend");
        let mut entries: Vec<_> = top.entries().collect();
        entries.sort();
        assert_eq!(entries, [("timeout|backend", 1, 0), ("timeout|edge", 3, 0)]);
    }
}
