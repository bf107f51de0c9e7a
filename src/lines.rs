//! A worker's output stream cut into lines, within one byte budget for the partial lines (the
//! bytes after a stream's last newline) that all relays hold together.
//!
//! The queue in [`crate::output`] bounds the lines waiting for the writer, but before a line is
//! complete its relay holds it, and each relay held up to [`MAX_LINE`] bytes on its own: with
//! 300 workers each writing 49,000 bytes without a newline, corral's RSS went from 11.5 MB to
//! 27 MB, and about 50 MB at 1024 workers, outside any budget. Now what every relay holds
//! counts against [`PARTIAL_BYTES`], and each relay may hold at most an equal share of it among
//! the relays holding something. A partial line that would not fit is emitted at once as a
//! piece of a line, as journald cuts a line at its LineMax= (journald.conf(5)); the rest of the
//! line follows as another piece. Under journald a piece says why it ended
//! ([`Break::field`]), as journald's own `_LINE_BREAK=` does (systemd.journal-fields(7)).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// A longer line is split, as journald splits at its LineMax= (journald.conf(5), 48K).
pub const MAX_LINE: usize = 48 * 1024;
/// The bytes all relays together may hold in partial lines: room for about twenty of the
/// longest, so a few workers writing long lines in several writes keep them whole, and what
/// any number of workers costs the supervisor besides the queue.
pub const PARTIAL_BYTES: usize = 1024 * 1024;

/// Why a piece of a worker's output ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// A newline: a whole line, or the last piece of one.
    Newline,
    /// [`MAX_LINE`] bytes without a newline.
    LineMax,
    /// The partial line did not fit in its relay's part of [`PARTIAL_BYTES`].
    Budget,
    /// The stream ended without a newline.
    Eof,
}

impl Break {
    /// The value of the journal field `CORRAL_LINE_BREAK=` of a piece that did not end with a
    /// newline, worded as journald's `_LINE_BREAK=` (systemd.journal-fields(7)), which a client
    /// may not set itself; none for a newline, as journald adds none.
    pub fn field(self) -> Option<&'static str> {
        match self {
            Break::Newline => None,
            Break::LineMax => Some("line-max"),
            Break::Budget => Some("budget"),
            Break::Eof => Some("eof"),
        }
    }
}

/// The partial lines of all relays: bytes allocated for them, and how many relays hold one.
#[derive(Debug, Default)]
pub struct Budget {
    held: AtomicUsize,
    holders: AtomicUsize,
}

impl Budget {
    /// The bytes allocated for partial lines now, by all relays.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

/// One stream cut into lines: each complete line (without its newline), each [`MAX_LINE`] bytes
/// of a longer one, and each partial line that outgrows its room go to `emit`. What is kept is
/// one partial line, paid for in the [`Budget`] by its allocation, and freed once it is empty.
pub struct Lines {
    partial: Vec<u8>,
    budget: Arc<Budget>,
    /// What this relay has counted in `budget.held`: the capacity of `partial` after the last
    /// feed. Non-zero exactly when it is counted in `budget.holders`.
    paid: usize,
}

impl Lines {
    pub fn new(budget: Arc<Budget>) -> Lines {
        Lines {
            partial: Vec::new(),
            budget,
            paid: 0,
        }
    }

    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], Break)) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                emit(&data[..nl], Break::Newline);
            } else {
                self.partial.extend_from_slice(&data[..nl]);
                emit(&self.partial, Break::Newline);
                self.partial.clear();
            }
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        let whole = self.partial.len() - self.partial.len() % MAX_LINE;
        for piece in self.partial[..whole].chunks(MAX_LINE) {
            emit(piece, Break::LineMax);
        }
        self.partial.drain(..whole);
        let room = self.room();
        if self.partial.len() > room {
            emit(&self.partial, Break::Budget);
            self.partial.clear();
        }
        if self.partial.is_empty() {
            // Most lines end within one read: a relay between lines holds nothing.
            self.partial = Vec::new();
        } else if self.partial.capacity() > room.min(2 * self.partial.len()) {
            // The budget counts what is allocated: no more than the room, and after a long
            // piece went, not its whole allocation for the few bytes after it.
            self.partial.shrink_to(self.partial.len());
        }
        self.pay();
    }

    /// The partial line held, given up (an upgrade in place hands it to the next image's
    /// relay, which feeds it first).
    pub fn take_partial(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.partial);
        self.pay();
        held
    }

    /// At EOF: the last line, even without its newline.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], Break)) {
        if !self.partial.is_empty() {
            emit(&self.partial, Break::Eof);
        }
        self.partial = Vec::new();
        self.pay();
    }

    /// The most this relay may keep: its share among the relays holding a partial line (itself
    /// included), and no more than the others leave of the budget. A relay that held more
    /// before others started holding keeps it until its next read, but the sum never passes
    /// the budget.
    fn room(&self) -> usize {
        let others = self.budget.held.load(Relaxed).saturating_sub(self.paid);
        let holders = self.budget.holders.load(Relaxed) + usize::from(self.paid == 0);
        (PARTIAL_BYTES / holders).min(PARTIAL_BYTES.saturating_sub(others))
    }

    /// Counts the allocation of `partial` in the budget, in place of what was counted before.
    fn pay(&mut self) {
        let now = self.partial.capacity();
        match (self.paid, now) {
            (0, 0) => return,
            (0, _) => self.budget.holders.fetch_add(1, Relaxed),
            (_, 0) => self.budget.holders.fetch_sub(1, Relaxed),
            _ => 0,
        };
        self.budget.held.fetch_add(now, Relaxed);
        self.budget.held.fetch_sub(self.paid, Relaxed);
        self.paid = now;
    }
}

impl Drop for Lines {
    /// A relay that ends (EOF, or its task dropped with the event loop) gives its part back.
    fn drop(&mut self) {
        self.partial = Vec::new();
        self.pay();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces a stream was cut into, with why each ended.
    type Pieces = Vec<(Vec<u8>, Break)>;

    fn collect(pieces: &mut Pieces) -> impl FnMut(&[u8], Break) + '_ {
        |text: &[u8], b| pieces.push((text.to_vec(), b))
    }

    #[test]
    fn lines_are_cut_across_reads_and_a_long_one_leaves_no_buffer() {
        let budget = Arc::new(Budget::default());
        let mut lines = Lines::new(budget.clone());
        let mut got = Pieces::new();
        let mut emit = collect(&mut got);
        lines.feed(b"a\nhal", &mut emit);
        assert_eq!(budget.held(), lines.partial.capacity());
        lines.feed(b"f\n\nb", &mut emit);
        // 100 KiB without a newline, as a pipe gives it: 16 KiB at a time.
        let long = vec![b'y'; 100 * 1024];
        for chunk in long.chunks(16 * 1024) {
            lines.feed(chunk, &mut emit);
            assert!(lines.partial.len() < MAX_LINE, "{}", lines.partial.len());
            assert!(budget.held() < MAX_LINE, "{}", budget.held());
        }
        lines.feed(b"\nend", &mut emit);
        assert_eq!(budget.held(), lines.partial.capacity());
        assert!(
            budget.held() < 16,
            "{} bytes held for \"end\"",
            budget.held()
        );
        lines.finish(&mut emit);
        assert_eq!((lines.partial.capacity(), budget.held()), (0, 0));
        drop(emit);
        let texts: Vec<&[u8]> = got.iter().map(|(t, _)| &t[..]).collect();
        assert_eq!(&texts[..3], [&b"a"[..], b"half", b""]);
        // "b" + 100 KiB of y: two pieces of MAX_LINE, then the rest with its newline.
        let cut: Vec<(usize, Break)> = got[3..].iter().map(|(t, b)| (t.len(), *b)).collect();
        assert_eq!(
            cut,
            [
                (MAX_LINE, Break::LineMax),
                (MAX_LINE, Break::LineMax),
                (1 + 100 * 1024 - 2 * MAX_LINE, Break::Newline),
                (3, Break::Eof)
            ]
        );
    }

    #[test]
    fn one_relay_keeps_a_line_just_under_max_line_whole() {
        let budget = Arc::new(Budget::default());
        let mut lines = Lines::new(budget.clone());
        let mut got = Pieces::new();
        let mut emit = collect(&mut got);
        for chunk in vec![b'z'; MAX_LINE - 1].chunks(16 * 1024) {
            lines.feed(chunk, &mut emit);
        }
        lines.feed(b"\n", &mut emit);
        drop(emit);
        assert_eq!(got, [(vec![b'z'; MAX_LINE - 1], Break::Newline)]);
        assert_eq!(budget.held(), 0);
    }

    /// The reviewer's case: hundreds of workers each write 49,000 bytes without a newline.
    /// Together the relays hold at most PARTIAL_BYTES; the rest is emitted at once, as pieces
    /// marked `budget`, and nothing is lost: at EOF every byte has been emitted.
    #[test]
    fn many_relays_hold_no_more_than_the_budget_and_lose_nothing() {
        const RELAYS: usize = 600;
        const WRITE: usize = 49_000;
        let budget = Arc::new(Budget::default());
        let mut relays: Vec<Lines> = (0..RELAYS).map(|_| Lines::new(budget.clone())).collect();
        let mut emitted = vec![0usize; RELAYS];
        let mut cuts = 0;
        let data = vec![b'x'; WRITE];
        // Round after round of 16 KiB reads, as the pipes fill in turn.
        for chunk in data.chunks(16 * 1024) {
            for (i, lines) in relays.iter_mut().enumerate() {
                lines.feed(chunk, &mut |t: &[u8], b| {
                    assert_eq!(b, Break::Budget);
                    emitted[i] += t.len();
                    cuts += 1;
                });
                assert!(budget.held() <= PARTIAL_BYTES, "{} held", budget.held());
            }
        }
        let allocated: usize = relays.iter().map(|l| l.partial.capacity()).sum();
        assert_eq!(allocated, budget.held());
        assert!(budget.held() <= PARTIAL_BYTES, "{} held", budget.held());
        assert!(cuts > 0);
        // Past the first ~20, the relays hold less than a whole write each.
        let holding = relays.iter().filter(|l| !l.partial.is_empty()).count();
        assert!(holding >= 20, "{holding} relays hold a partial line");
        for (i, lines) in relays.iter_mut().enumerate() {
            lines.finish(&mut |t: &[u8], b| {
                assert_eq!(b, Break::Eof);
                emitted[i] += t.len();
            });
        }
        assert!(emitted.iter().all(|&n| n == WRITE), "bytes were lost");
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.holders.load(Relaxed), 0);
    }

    /// A relay that holds its room keeps it; once others hold partial lines too, its next read
    /// cuts it down to its share, so no relay keeps the whole budget from the rest.
    #[test]
    fn a_relay_is_held_to_its_share_once_others_hold_lines_too() {
        let budget = Arc::new(Budget::default());
        let mut relays: Vec<Lines> = (0..64).map(|_| Lines::new(budget.clone())).collect();
        // Whether the read made the relay emit its partial line.
        let feed = |lines: &mut Lines, data: &[u8]| {
            let mut cut = false;
            lines.feed(data, &mut |_: &[u8], b| {
                assert_eq!(b, Break::Budget);
                cut = true;
            });
            cut
        };
        // Each of 64 relays holds a small partial line: 64 holders, a share of 16 KiB each.
        for lines in &mut relays {
            assert!(!feed(lines, b"progress: "));
        }
        assert_eq!(budget.holders.load(Relaxed), 64);
        // One relay gets 40 KB more: above its share, so it is emitted, not kept.
        assert!(feed(&mut relays[0], &vec![b'x'; 40_000]));
        assert!(relays[0].partial.is_empty());
        // Another gets 10 KB more: within its share, kept whole.
        assert!(!feed(&mut relays[1], &vec![b'x'; 10_000]));
        assert_eq!(relays[1].partial.len(), 10 + 10_000);
        drop(relays);
        assert_eq!(budget.held(), 0, "a dropped relay gives its part back");
    }
}
