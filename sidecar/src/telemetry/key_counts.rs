//! A table's shard-key counts: since start, and over a sliding window.
//!
//! Each is a frequent-items sketch (Apache DataSketches, a Space-Saving
//! style summary: memory bounded by its capacity, every count with error
//! bounds). The window is a ring of 5-second slices, merged when asked: a
//! key that turns hot ranks first within one slice, where a count since
//! start leaves it behind keys that were hot an hour ago.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::Mutex;

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};

/// Seconds one slice of the window covers.
pub const SLICE_S: u64 = 5;

pub struct KeyCounts<T> {
    capacity: usize,
    /// Slices in the window, the one being filled included.
    slices_kept: usize,
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    /// Counts of every slice closed so far: a slice is merged in when the
    /// next one opens, so a key is counted once per statement, not twice.
    lifetime: FrequentItemsSketch<T>,
    /// (the slice's first second, its counts), oldest first.
    slices: VecDeque<(u64, FrequentItemsSketch<T>)>,
}

/// Keys counted, most first, with the total they are counted among.
pub struct Counted<T> {
    pub rows: Vec<Counts<T>>,
    pub total: u64,
    /// Counts may be over by at most this much.
    pub max_error: u64,
}

pub struct Counts<T> {
    pub item: T,
    pub estimate: u64,
    pub lower_bound: u64,
    pub upper_bound: u64,
}

impl<T: Eq + Hash + Clone> KeyCounts<T> {
    /// `capacity`: a power of two of at least 8 (checked with the config).
    pub fn new(capacity: usize, window_s: u64) -> KeyCounts<T> {
        KeyCounts {
            capacity,
            slices_kept: window_s.div_ceil(SLICE_S).max(1) as usize,
            inner: Mutex::new(Inner { lifetime: sketch(capacity), slices: VecDeque::new() }),
        }
    }

    /// Counts `items` at second `now_s`.
    pub fn record(&self, items: impl IntoIterator<Item = T>, now_s: u64) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let start = now_s - now_s % SLICE_S;
        if inner.slices.back().is_none_or(|(s, _)| *s < start) {
            let Inner { lifetime, slices } = &mut *inner;
            if let Some((_, closed)) = slices.back() {
                lifetime.merge(closed);
            }
            slices.push_back((start, sketch(self.capacity)));
            self.expire(&mut inner, now_s);
        }
        let Some((_, slice)) = inner.slices.back_mut() else { return };
        for item in items {
            slice.update(item);
        }
    }

    fn expire(&self, inner: &mut Inner<T>, now_s: u64) {
        let oldest_kept = (now_s - now_s % SLICE_S).saturating_sub((self.slices_kept as u64 - 1) * SLICE_S);
        while inner.slices.front().is_some_and(|(s, _)| *s < oldest_kept) {
            let Some((_, slice)) = inner.slices.pop_front() else { break };
            if inner.slices.is_empty() {
                // The slice being filled is merged when the next one opens:
                // dropped from the window first, it is merged now.
                inner.lifetime.merge(&slice);
            }
        }
    }

    pub fn lifetime(&self) -> Counted<T> {
        let Ok(inner) = self.inner.lock() else { return counted(&sketch(8)) };
        let mut all = inner.lifetime.clone();
        if let Some((_, open)) = inner.slices.back() {
            all.merge(open);
        }
        counted(&all)
    }

    /// The counts of the window that ends at `now_s`.
    pub fn window(&self, now_s: u64) -> Counted<T> {
        let Ok(mut inner) = self.inner.lock() else { return counted(&sketch(8)) };
        self.expire(&mut inner, now_s);
        let mut merged = sketch(self.capacity);
        for (_, slice) in &inner.slices {
            merged.merge(slice);
        }
        counted(&merged)
    }
}

fn sketch<T: Eq + Hash>(capacity: usize) -> FrequentItemsSketch<T> {
    FrequentItemsSketch::new(capacity)
        .unwrap_or_else(|_| FrequentItemsSketch::new(1024).expect("1024 is a valid sketch size"))
}

fn counted<T: Eq + Hash + Clone>(s: &FrequentItemsSketch<T>) -> Counted<T> {
    let rows = s
        .frequent_items_with_threshold(ErrorType::NoFalseNegatives, 0)
        .into_iter()
        .map(|row| Counts {
            item: row.item().clone(),
            estimate: row.estimate(),
            lower_bound: row.lower_bound(),
            upper_bound: row.upper_bound(),
        })
        .collect();
    Counted { rows, total: s.total_weight(), max_error: s.maximum_error() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(c: &Counted<u32>) -> Option<(u32, u64)> {
        c.rows.first().map(|r| (r.item, r.estimate))
    }

    #[test]
    fn a_key_that_turns_hot_ranks_first_in_the_window_and_old_ones_expire() {
        let counts = KeyCounts::new(64, 30);
        // Key 1 was hot for a minute, long ago.
        for t in 0..60 {
            counts.record(std::iter::repeat_n(1, 100), t);
        }
        // Key 2 is hot now, at a tenth of that rate, for one slice.
        for t in 1000..1005 {
            counts.record(std::iter::repeat_n(2, 10), t);
        }
        let window = counts.window(1004);
        assert_eq!(top(&window), Some((2, 50)));
        assert_eq!(window.total, 50, "shares are of the window's traffic");
        assert_eq!(top(&counts.lifetime()), Some((1, 6000)), "since start, key 1 still leads");
        assert_eq!(counts.lifetime().total, 6050, "closed slices and the open one");
        // Nothing recorded for longer than the window: it is empty, and
        // the slice it dropped (the one being filled) stays counted since start.
        assert!(counts.window(1100).rows.is_empty());
        assert_eq!(counts.lifetime().total, 6050, "a quiet spell loses nothing since start");
        counts.record([3], 1200);
        assert_eq!(counts.lifetime().total, 6051);
    }

    #[test]
    fn the_window_covers_its_slices() {
        let counts = KeyCounts::new(64, 30);
        for t in 0..40 {
            counts.record([t as u32], t);
        }
        // Slices 10..39 (the window rounds down to whole slices).
        assert_eq!(counts.window(39).total, 30);
    }
}
