//! The version this build says it is.
//!
//! Kept in one marked place in the binary rather than folded into the code where it is used:
//! a built binary can be stamped with another version of the same length or shorter without a
//! rebuild (tests/upgrade.rs makes its "newer" corral so, to upgrade to a binary that says it
//! is another), and `corral status` after an upgrade in place shows what the running image says
//! of itself, not what the one that started it said.

/// What precedes the version in the binary.
pub const MARK: &[u8] = b"corral-build-version:";
/// The room for the mark and the version, padded with NULs.
const ROOM: usize = 64;

#[used]
static STAMP: [u8; ROOM] = stamp();

const fn stamp() -> [u8; ROOM] {
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [0u8; ROOM];
    let mut i = 0;
    while i < MARK.len() {
        out[i] = MARK[i];
        i += 1;
    }
    let mut j = 0;
    while j < version.len() {
        out[i + j] = version[j];
        j += 1;
    }
    out
}

/// The version, as stamped (Cargo.toml's unless a stamp changed it).
pub fn get() -> &'static str {
    // Read through an opaque reference: the optimiser must not fold the stamp as built.
    let stamp: &'static [u8; ROOM] = std::hint::black_box(&STAMP);
    let text = &stamp[MARK.len()..];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    std::str::from_utf8(&text[..end]).unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// The most bytes a stamped version may have.
pub const MAX_LEN: usize = ROOM - MARK.len() - 1;

#[cfg(test)]
mod tests {
    #[test]
    fn the_stamp_says_cargos_version() {
        assert_eq!(super::get(), env!("CARGO_PKG_VERSION"));
    }
}
