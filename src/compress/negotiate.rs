//! `Accept-Encoding` negotiation: q-values, the client's choice among the configured codings.

use http::header::HeaderValue;

use super::*;

// === Negotiation ===

/// Quality values (0–1000) of the codings a client listed in `Accept-Encoding`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepts {
    present: bool,
    gzip: Option<u16>,
    br: Option<u16>,
    zstd: Option<u16>,
    identity: Option<u16>,
    any: Option<u16>,
}

impl Accepts {
    /// Parses every `Accept-Encoding` field value of a request (RFC 9110 §12.5.3). Entries with
    /// a malformed q-value are ignored. No header means identity only: a client that did not
    /// ask for a coding never gets one.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Accepts {
        let mut a = Accepts::default();
        for value in values {
            a.present = true;
            let Ok(text) = value.to_str() else { continue };
            for entry in text.split(',') {
                let mut parts = entry.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    if let Some((name, v)) = param.split_once('=') {
                        if name.trim().eq_ignore_ascii_case("q") {
                            q = parse_qvalue(v.trim());
                        }
                    }
                }
                let Some(q) = q else { continue };
                let slot = match coding.as_str() {
                    "gzip" | "x-gzip" => &mut a.gzip,
                    "br" => &mut a.br,
                    "zstd" => &mut a.zstd,
                    "identity" => &mut a.identity,
                    "*" => &mut a.any,
                    _ => continue,
                };
                // A coding listed twice keeps its first q-value.
                slot.get_or_insert(q);
            }
        }
        a
    }

    /// A client that accepts `algorithm` only.
    pub fn only(algorithm: Algorithm) -> Accepts {
        let mut a = Accepts {
            present: true,
            ..Accepts::default()
        };
        *match algorithm {
            Algorithm::Gzip => &mut a.gzip,
            Algorithm::Brotli => &mut a.br,
            Algorithm::Zstd => &mut a.zstd,
        } = Some(1000);
        a
    }

    /// The q-value of `algorithm`: listed explicitly, else through `*`, else 0.
    pub fn q(&self, algorithm: Algorithm) -> u16 {
        let explicit = match algorithm {
            Algorithm::Gzip => self.gzip,
            Algorithm::Brotli => self.br,
            Algorithm::Zstd => self.zstd,
        };
        explicit.or(self.any).unwrap_or(0)
    }

    /// Whether the client accepts `algorithm` (q > 0).
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        self.q(algorithm) > 0
    }

    /// The best configured algorithm for this client: highest q-value, ties broken by the
    /// configured order; none when the client accepts none of them or explicitly prefers
    /// `identity` to all of them.
    pub fn choose(&self, algorithms: &[(Algorithm, u32)]) -> Option<(Algorithm, u32)> {
        let mut best: Option<((Algorithm, u32), u16)> = None;
        for &(a, level) in algorithms {
            let q = self.q(a);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some(((a, level), q));
            }
        }
        let (choice, q) = best?;
        match self.identity {
            Some(identity) if identity > q => None,
            _ => Some(choice),
        }
    }
}

/// Parses a q-value (`0`, `0.5`, `1.000`) into thousandths; `None` when malformed.
pub(super) fn parse_qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}
