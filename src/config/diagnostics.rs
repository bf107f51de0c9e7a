//! The diagnostics a check keeps: the earliest [`MAX_LISTED_DIAGNOSTICS`] by position, and a
//! count of the rest.
//!
//! A file of 1 MiB can hold over a hundred thousand problems, found in the order the document
//! is walked, not the order of the file (a missing `command` is found last but is on line 1).
//! Keeping every one cost tens of megabytes for a list of which only the first hundred are ever
//! shown; a bounded max-heap by position keeps exactly those, in memory independent of the file.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Diagnostic, MAX_LISTED_DIAGNOSTICS};

/// The earliest diagnostics seen so far, and how many others there were.
#[derive(Default)]
pub(super) struct Earliest {
    /// At most [`MAX_LISTED_DIAGNOSTICS`], the latest in the file on top.
    kept: BinaryHeap<Placed>,
    /// How many were seen, to keep the order they came in among those at one position.
    seen: u64,
    /// How many were dropped, or never kept, for being later in the file than those kept.
    more: usize,
}

/// A diagnostic ordered by its place in the file, then by when it was found.
struct Placed {
    order: (usize, usize, u64),
    diagnostic: Diagnostic,
}

impl PartialEq for Placed {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}
impl Eq for Placed {}
impl PartialOrd for Placed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Placed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order.cmp(&other.order)
    }
}

impl Earliest {
    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        self.seen += 1;
        let placed = Placed {
            order: (diagnostic.line, diagnostic.col, self.seen),
            diagnostic,
        };
        if self.kept.len() < MAX_LISTED_DIAGNOSTICS {
            self.kept.push(placed);
            return;
        }
        self.more += 1;
        // Full: the new one takes the place of the latest kept if it comes before it (the
        // heap is put back in order when `latest` goes out of scope).
        if let Some(mut latest) = self.kept.peek_mut() {
            if placed < *latest {
                *latest = placed;
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The kept diagnostics sorted by position (those at one position in the order they were
    /// found), and how many more there were.
    pub(super) fn into_sorted(self) -> (Vec<Diagnostic>, usize) {
        let kept = self.kept.into_sorted_vec();
        (kept.into_iter().map(|p| p.diagnostic).collect(), self.more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, col: usize, message: &str) -> Diagnostic {
        Diagnostic {
            line,
            col,
            message: message.into(),
        }
    }

    #[test]
    fn keeps_the_earliest_in_the_file_whatever_order_they_are_found_in() {
        let mut e = Earliest::default();
        // Lines 1000 down to 1, then line 1 again: found last, listed second (after the
        // first diagnostic at the same place).
        for line in (1..=1000).rev() {
            e.push(at(line, 2, "walked"));
        }
        e.push(at(1, 2, "found last"));
        e.push(at(1, 1, "first"));
        let (kept, more) = e.into_sorted();
        assert_eq!(kept.len(), MAX_LISTED_DIAGNOSTICS);
        assert_eq!(kept.len() + more, 1002);
        assert_eq!(kept[0], at(1, 1, "first"));
        assert_eq!(kept[1], at(1, 2, "walked"));
        assert_eq!(kept[2], at(1, 2, "found last"));
        let lines: Vec<usize> = kept[3..].iter().map(|d| d.line).collect();
        assert_eq!(lines, (2..=98).collect::<Vec<_>>());
    }

    #[test]
    fn fewer_than_the_cap_are_all_kept_in_order() {
        let mut e = Earliest::default();
        assert!(e.is_empty());
        e.push(at(3, 1, "c"));
        e.push(at(1, 5, "a"));
        e.push(at(2, 1, "b"));
        assert!(!e.is_empty());
        let (kept, more) = e.into_sorted();
        let messages: Vec<&str> = kept.iter().map(|d| d.message.as_str()).collect();
        assert_eq!((messages, more), (vec!["a", "b", "c"], 0));
    }
}
