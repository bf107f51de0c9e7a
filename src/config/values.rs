//! Parsers for the values inside strings: durations, sizes, signal names and
//! listen addresses (with their ports and decimal numbers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::Address;

/// `sizeof(sun_path) - 1`: room for the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

/// A TCP address or unix socket path, as in `ListenStream=`.
pub(super) fn parse_address(s: &str) -> Result<Address, String> {
    const FORMS: &str = "expected IP:PORT, [IPV6]:PORT, PORT or an absolute unix socket path";
    if s.is_empty() {
        return Err(format!("must not be empty; {FORMS}"));
    }
    if s.starts_with('/') {
        if s.contains('\0') {
            return Err("unix socket path must not contain NUL".into());
        }
        if s.len() > MAX_UNIX_PATH {
            return Err(format!(
                "unix socket path is {} bytes long; the limit is {MAX_UNIX_PATH}",
                s.len()
            ));
        }
        if s.ends_with('/') {
            return Err("unix socket path must name a file, not a directory".into());
        }
        return Ok(Address::Unix(PathBuf::from(s)));
    }
    if s.starts_with('@') {
        return Err(
            "abstract unix sockets are not supported; use a path like /run/app.sock".into(),
        );
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(s)?;
        return Ok(Address::Tcp(SocketAddr::new(
            Ipv6Addr::UNSPECIFIED.into(),
            port,
        )));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".into());
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("`{host}` is not a valid IPv6 address"))?;
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("missing port; write it like [{host}]:8080"));
        };
        return Ok(Address::Tcp(SocketAddr::new(ip.into(), parse_port(port)?)));
    }
    if s.contains('/') {
        return Err("unix socket paths must be absolute (start with '/')".into());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!("missing port; write it like {s}:8080"));
        }
        return Err(format!(
            "{FORMS}; hostnames are not resolved, use an IP address like 127.0.0.1:8080"
        ));
    };
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, like [::1]:8080".into());
    }
    if host.is_empty() {
        return Err(format!(
            "missing host; write 0.0.0.0:{port} or [::]:{port}, or just {port} for all addresses"
        ));
    }
    match host.parse::<Ipv4Addr>() {
        Ok(ip) => Ok(Address::Tcp(SocketAddr::new(ip.into(), parse_port(port)?))),
        Err(_) => {
            let example_port = parse_port(port).unwrap_or(8080);
            Err(format!(
                "`{host}` is not an IP address; hostnames are not resolved, use an IP address \
                 like 127.0.0.1:{example_port}"
            ))
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("missing port".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port `{s}`"));
    }
    match s.parse::<u16>() {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(format!("port must be between 1 and 65535, found {s}")),
    }
}

/// A decimal number `DIGITS[.DIGITS]` split into its parts; `None` if malformed.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return None;
            }
            (int, frac)
        }
        None => (s, ""),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    (!int.is_empty() && digits(int) && digits(frac)).then_some((int, frac))
}

/// `int.frac * unit`, rounded down; `None` on overflow.
fn scale(int: &str, frac: &str, unit: u128) -> Option<u128> {
    let whole = int.parse::<u128>().ok()?.checked_mul(unit)?;
    let frac = &frac[..frac.len().min(18)];
    let part = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().ok()? * unit / 10u128.pow(frac.len() as u32)
    };
    whole.checked_add(part)
}

/// Parses a duration: `"250ms"`, `"30s"`, `"2m"`, `"1h"`, `"1m30s"`, `"1.5s"`,
/// `"100us"`, `"0"`. Units: `us`, `ms`, `s`, `m` (or `min`), `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use us, ms, s, m, min or h";
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write it like \"30s\"".into());
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid duration \"{}\": must not be negative",
            s.escape_debug()
        ));
    }
    if let Some((int, frac)) = split_number(text) {
        return if int.bytes().chain(frac.bytes()).all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err("missing unit (e.g. \"30s\")".into())
        };
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..len];
        let Some((int, frac)) = split_number(number) else {
            return Err(format!(
                "invalid duration \"{}\": expected a number followed by a unit ({UNITS})",
                s.escape_debug()
            ));
        };
        rest = rest[len..].trim_start();
        let len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..len] {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration \"{}\": missing unit after {number} ({UNITS})",
                    s.escape_debug()
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration \"{}\": unknown unit `{other}` ({UNITS})",
                    s.escape_debug()
                ))
            }
        };
        total = scale(int, frac, unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("duration \"{}\" is too large", s.escape_debug()))?;
        rest = rest[len..].trim_start();
    }
    // Far beyond any sensible timeout, and small enough that deadline arithmetic never
    // overflows.
    const MAX: u128 = 366 * 24 * 3_600_000_000_000;
    if total > MAX {
        return Err(format!(
            "duration \"{}\" is too large (at most a year)",
            s.escape_debug()
        ));
    }
    let secs = (total / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Parses a size in bytes: `"300M"`, `"1G"`, `"512K"`, `"1024"`, `"1.5G"`.
/// K, M, G and T are powers of 1024 and may be followed by `B` or `iB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty size; write it like \"512M\"".into());
    }
    let len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..len], text[len..].trim_start());
    let Some((int, frac)) = split_number(number) else {
        return Err(format!(
            "invalid size \"{}\": expected a number optionally followed by K, M, G or T",
            s.escape_debug()
        ));
    };
    let mut chars = unit.chars();
    let multiplier: u128 = match chars.next().map(|c| c.to_ascii_uppercase()) {
        None | Some('B') if unit.len() <= 1 => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        _ => 0,
    };
    let suffix = chars.as_str();
    if multiplier == 0 || (multiplier > 1 && !matches!(suffix, "" | "B" | "iB")) || unit == "b" {
        return Err(format!(
            "invalid size \"{}\": unknown unit `{unit}` (use K, M, G or T, optionally followed by B or iB)",
            s.escape_debug()
        ));
    }
    if multiplier == 1 && !frac.is_empty() {
        return Err(format!(
            "invalid size \"{}\": a size in bytes must be a whole number",
            s.escape_debug()
        ));
    }
    scale(int, frac, multiplier)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("size \"{}\" is too large", s.escape_debug()))
}

/// Parses a signal name, `"SIGTERM"` or `"TERM"` (upper case).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let lookup = |name: &str| -> Option<Signal> {
        if name.starts_with("SIG") {
            name.parse().ok()
        } else {
            format!("SIG{name}").parse().ok()
        }
    };
    if let Some(signal) = lookup(s) {
        return Ok(signal);
    }
    let upper = s.to_ascii_uppercase();
    if upper != s && lookup(&upper).is_some() {
        return Err(format!(
            "unknown signal \"{}\"; signal names are upper case, like \"{upper}\"",
            s.escape_debug()
        ));
    }
    Err(format!(
        "unknown signal \"{}\" (use a name like \"SIGTERM\" or \"TERM\")",
        s.escape_debug()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(s: &str) -> Result<Address, String> {
        parse_address(s)
    }

    #[test]
    fn listen_addresses() {
        let tcp = |s: &str| Address::Tcp(s.parse().unwrap());
        assert_eq!(address("127.0.0.1:8080"), Ok(tcp("127.0.0.1:8080")));
        assert_eq!(address("0.0.0.0:80"), Ok(tcp("0.0.0.0:80")));
        assert_eq!(address("[::1]:8080"), Ok(tcp("[::1]:8080")));
        assert_eq!(address("[::]:443"), Ok(tcp("[::]:443")));
        assert_eq!(address("8080"), Ok(tcp("[::]:8080")));
        assert_eq!(
            address("/run/x.sock"),
            Ok(Address::Unix("/run/x.sock".into()))
        );
        let long = format!("/{}", "a".repeat(106));
        assert_eq!(address(&long), Ok(Address::Unix(long.clone().into())));
        let too_long = format!("/{}", "a".repeat(107));
        assert!(address(&too_long)
            .unwrap_err()
            .contains("108 bytes long; the limit is 107"));
        for bad in ["0", "65536", "127.0.0.1:0", "[::1]:99999"] {
            let e = address(bad).unwrap_err();
            assert!(e.contains("port must be between 1 and 65535"), "{bad}: {e}");
        }
        let e = address("localhost:8080").unwrap_err();
        assert!(e.contains("use an IP address like 127.0.0.1:8080"), "{e}");
        let e = address("example.com:443").unwrap_err();
        assert!(e.contains("use an IP address like 127.0.0.1:443"), "{e}");
        assert!(address("localhost").unwrap_err().contains("127.0.0.1:8080"));
        assert!(address("run/x.sock")
            .unwrap_err()
            .contains("must be absolute"));
        assert!(address("::1").unwrap_err().contains("brackets"));
        assert!(address("[::1]").unwrap_err().contains("missing port"));
        assert!(address("[::1:80").unwrap_err().contains("missing ']'"));
        assert!(address("[nope]:80")
            .unwrap_err()
            .contains("not a valid IPv6"));
        assert!(address("127.0.0.1").unwrap_err().contains("missing port"));
        assert!(address("127.0.0.1:").unwrap_err().contains("missing port"));
        assert!(address(":80").unwrap_err().contains("missing host"));
        assert!(address("1.2.3.4:http")
            .unwrap_err()
            .contains("invalid port"));
        assert!(address("@abstract").unwrap_err().contains("abstract"));
        assert!(address("").is_err());
        assert!(address("/run/dir/").is_err());
    }

    #[test]
    fn durations() {
        // Capped at a year, so no deadline computed from them can overflow.
        assert_eq!(
            parse_duration("8000h"),
            Ok(Duration::from_secs(8000 * 3600))
        );
        assert!(parse_duration("9000h")
            .unwrap_err()
            .contains("too large (at most a year)"));
        assert!(parse_duration("3000000000000000h")
            .unwrap_err()
            .contains("too large"));
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h 2m 3s"), Duration::from_secs(3723));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
        assert_eq!(ok("100us"), Duration::from_micros(100));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(" 5s "), Duration::from_secs(5));
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert_eq!(err("30"), "missing unit (e.g. \"30s\")");
        assert_eq!(err("1.5"), "missing unit (e.g. \"30s\")");
        assert!(err("").contains("empty"));
        assert!(err("30x").contains("unknown unit `x`"));
        assert!(err("30 sec").contains("unknown unit `sec`"));
        assert!(err("1m30").contains("missing unit after 30"));
        assert!(err("s").contains("expected a number"));
        assert!(err("1.s").contains("expected a number"));
        assert!(err(".5s").contains("expected a number"));
        assert!(err("1..5s").contains("expected a number"));
        assert!(err("-1s").contains("negative"));
        assert!(err("99999999999999999999999h").contains("too large"));
        assert!(err("1S").contains("unknown unit `S`"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300M"), Ok(300 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1024B"), Ok(1024));
        assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 M"), Ok(512 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").unwrap_err().contains("unknown unit `X`"));
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        assert!(parse_size("1Mb").is_err());
        assert!(parse_size("1b").is_err());
        assert!(parse_size("1GiBB").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("INT"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
        assert!(parse_signal("term")
            .unwrap_err()
            .contains("upper case, like \"TERM\""));
        assert!(parse_signal("SIGterm").unwrap_err().contains("upper case"));
        assert!(parse_signal("SIGFOO")
            .unwrap_err()
            .contains("unknown signal \"SIGFOO\""));
        assert!(parse_signal("15").is_err());
        assert!(parse_signal("").is_err());
        assert!(parse_signal("SIG").is_err());
    }
}

/// A signal by its number, for what is saved and read back (supervisor_state.rs).
pub mod signal_number {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        (*sig as i32).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(d)?;
        Signal::try_from(n).map_err(|_| serde::de::Error::custom(format!("no signal {n}")))
    }
}
