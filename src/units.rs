//! Parsers for the human units used in `config.toml`: durations (`"500ms"`, `"5s"`, `"1m"`),
//! byte sizes (`"256MiB"`, `"10GiB"`, `"1000"`) and quotas (`"100/minute"`).

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"5s"`, `"1m"`, `"2h"`, `"1d"` or `"1m30s"`.
///
/// A bare `"0"` is zero. Units: `us`, `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration; write e.g. \"500ms\", \"5s\" or \"1m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write e.g. \"500ms\", \"5s\" or \"1m\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            "" => {
                return Err(format!(
                    "`{text}` has no unit; write e.g. \"{n}ms\" or \"{n}s\" (units: us, ms, s, m, h, d)"
                ))
            }
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}` (units: us, ms, s, m, h, d)"
                ))
            }
        };
        total += d;
    }
    Ok(total)
}

/// Parses a byte size such as `"1000"`, `"64KiB"`, `"256MiB"`, `"10GiB"`, `"2MB"`.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024; decimal ones (`KB`, `MB`, `GB`,
/// `TB`) powers of 1000; `B` or no unit is bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!(
            "`{text}` is not a size; write e.g. \"1000\", \"64KiB\" or \"256MiB\""
        ));
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
            "`{text}` has an unknown unit `{other}` (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A size in config: either a bare integer (bytes) or a string with a unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// Bytes as an integer.
    Bytes(u64),
    /// A string such as `"256MiB"`.
    Text(String),
}

impl ByteSize {
    /// The size in bytes, or why the text is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(t) => parse_bytes(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        assert!(parse_bytes("2 furlongs").is_err());
    }
}
