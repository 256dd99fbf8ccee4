//! The query string of a request, parsed by hand into the few parameters the API takes.

use crate::admin::api_error::ApiError;

/// `key=value` pairs of a raw query string, percent-decoded.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((decode(key)?, decode(value)?));
        }
        Ok(QueryParams(pairs))
    }

    /// The value of `key`, if given and not empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A positive count `key`, `default` when absent, at most `max`.
    pub(crate) fn count(&self, key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n > 0 && n <= max => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "`{key}` must be a whole number from 1 to {max}, not `{text}`"
                ))),
            },
        }
    }
}

fn decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("malformed percent escape in `{text}`"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes_pairs() {
        let q = QueryParams::parse(Some("workflow=Order%20Flow&status=&limit=5")).unwrap();
        assert_eq!(q.get("workflow"), Some("Order Flow"));
        assert_eq!(q.get("status"), None, "empty means absent");
        assert_eq!(q.count("limit", 100, 1000).unwrap(), 5);
        assert_eq!(q.count("missing", 100, 1000).unwrap(), 100);
    }

    #[test]
    fn refuses_bad_counts_and_escapes() {
        let q = QueryParams::parse(Some("limit=0")).unwrap();
        assert!(q.count("limit", 1, 10).is_err());
        let q = QueryParams::parse(Some("limit=abc")).unwrap();
        assert!(q.count("limit", 1, 10).is_err());
        assert!(QueryParams::parse(Some("x=%zz")).is_err());
    }
}
