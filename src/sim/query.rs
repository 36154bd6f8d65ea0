//! The legacy OMS API's query-string rules: decoding, a repeated name's last value winning, and
//! a listing's `limit`/`offset` with their 422 messages. The simulated OMS (the reference) and
//! the pooled query paths (`db::query`) both use this, so they answer alike.

/// Page size of a listing when the request gives none.
pub const DEFAULT_LIMIT: usize = 20;
/// Largest page size the legacy API accepts.
pub const MAX_LIMIT: usize = 100;

/// Decoded query parameters; a repeated name's last value wins.
pub struct QueryString(Vec<(String, String)>);

impl QueryString {
    /// Decodes `a=1&b=x%20y` (`+` is a space; a malformed escape stays as it is), with the
    /// decoder the gateway's cache keys and audit use ([`crate::canonical::query_pairs`]).
    pub fn parse(query: &str) -> QueryString {
        QueryString(crate::canonical::query_pairs(query))
    }

    /// Every decoded pair, in request order.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` (1..=100, default 20) and `offset` (>= 0, default 0), or the legacy API's 422
    /// message (the `detail` of its body). Numbers are plain decimal digits, as the legacy API's
    /// `str.isdigit()` check takes them: no sign (`%2B5` is rejected, although Rust's integer
    /// parser would take `+5`).
    pub fn page(&self) -> Result<(usize, usize), &'static str> {
        let limit = match self.get("limit") {
            None | Some("") => DEFAULT_LIMIT,
            Some(v) => digits(v)
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or("limit must be an integer from 1 to 100")?,
        };
        let offset = match self.get("offset") {
            None | Some("") => 0,
            Some(v) => digits(v).ok_or("offset must be a non-negative integer")?,
        };
        Ok((limit, offset))
    }
}

/// A number written in decimal digits only (and small enough for a `usize`).
fn digits(v: &str) -> Option<usize> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded_and_last_value_wins() {
        let q =
            QueryString::parse("status=open&customer=Pied%20Piper+Inc&status=paid&bad=%zz&end=%4");
        assert_eq!(q.get("status"), Some("paid"));
        assert_eq!(q.get("customer"), Some("Pied Piper Inc"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn page_parameters_are_validated() {
        assert_eq!(QueryString::parse("").page(), Ok((20, 0)));
        assert_eq!(
            QueryString::parse("limit=100&offset=7").page(),
            Ok((100, 7))
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limit=-1",
            "limit=+5",
            "limit=%2B5",
        ] {
            assert_eq!(
                QueryString::parse(bad).page(),
                Err("limit must be an integer from 1 to 100"),
                "{bad}"
            );
        }
        for bad in ["offset=-1", "offset=1.5", "offset=%2B1"] {
            assert_eq!(
                QueryString::parse(bad).page(),
                Err("offset must be a non-negative integer"),
                "{bad}"
            );
        }
    }
}
