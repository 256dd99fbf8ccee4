//! A small blocking HTTP/1.1 client for plain `http://` addresses: one request per
//! connection, JSON in and out. Enough for a runner's admin API (and a WebDriver server);
//! no TLS, no redirects.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// What went wrong with a request.
#[derive(Debug)]
pub enum HttpError {
    /// The address is not `http://host:port[/prefix]`.
    BadAddress(String),
    /// Nothing answered at the address (refused, unresolvable, timed out).
    Unreachable {
        /// The base address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The server answered something that is not HTTP with a JSON body.
    BadResponse(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadAddress(address) => write!(
                f,
                "`{address}` is not an admin address; give one like http://127.0.0.1:9090"
            ),
            HttpError::Unreachable { address, reason } => write!(
                f,
                "cannot reach the admin API at {address}: {reason} (is the runner up, with its \
                 admin API on that address? set it with --admin or CRUSTER_ADMIN)"
            ),
            HttpError::BadResponse(reason) => write!(f, "unexpected answer: {reason}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An HTTP response: status and body (JSON when it parses, else the text as a string).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body as JSON (`Value::String` with the raw text if it is not JSON).
    pub body: Value,
    /// The raw body.
    pub text: String,
}

/// A base address (`http://host:port[/prefix]`) to send requests to.
#[derive(Clone, Debug)]
pub struct HttpClient {
    base: String,
    host: String,
    port: u16,
    prefix: String,
    bearer: Option<String>,
    timeout: Duration,
}

impl HttpClient {
    /// A client of `address` (`http://host:port`, optionally with a path prefix).
    ///
    /// # Errors
    /// [`HttpError::BadAddress`] for anything else.
    pub fn new(address: &str) -> Result<Self, HttpError> {
        let bad = || HttpError::BadAddress(address.to_owned());
        let rest = address.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HttpClient {
            base: format!("http://{authority}{prefix}"),
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            bearer: None,
            timeout: Duration::from_secs(30),
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    #[must_use]
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token;
        self
    }

    /// How long connecting, sending and reading may each take (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with an optional JSON body and reads the whole response.
    ///
    /// # Errors
    /// [`HttpError::Unreachable`] when nothing answers; [`HttpError::BadResponse`] when the
    /// answer is not HTTP.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, HttpError> {
        let unreachable = |reason: String| HttpError::Unreachable {
            address: self.base.clone(),
            reason,
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", self.host)))?
            .collect();
        let mut last = String::from("no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let mut stream = stream.ok_or_else(|| unreachable(last))?;
        let io = |e: std::io::Error| unreachable(e.to_string());
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n",
            self.prefix,
            self.host,
            self.port,
            payload.len()
        );
        if body.is_some() {
            head.push_str("Content-Type: application/json; charset=utf-8\r\n");
        }
        if let Some(token) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(payload.as_bytes()).map_err(io)?;
        stream.flush().map_err(io)?;
        read_response(BufReader::new(stream))
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`HttpClient::request`].
    pub fn get(&self, path: &str) -> Result<HttpResponse, HttpError> {
        self.request("GET", path, None)
    }

    /// `POST path` with no body.
    ///
    /// # Errors
    /// As [`HttpClient::request`].
    pub fn post(&self, path: &str) -> Result<HttpResponse, HttpError> {
        self.request("POST", path, None)
    }
}

fn read_response(mut reader: impl BufRead) -> Result<HttpResponse, HttpError> {
    let bad = |what: &str| HttpError::BadResponse(what.to_owned());
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| HttpError::BadResponse(format!("reading the status line: {e}")))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| HttpError::BadResponse(format!("reading headers: {e}")))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                content_length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut raw = Vec::new();
    let read_err = |e: std::io::Error| HttpError::BadResponse(format!("reading the body: {e}"));
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).map_err(read_err)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("a malformed chunk size"))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).map_err(read_err)?;
            chunk.truncate(size);
            raw.extend(chunk);
        }
    } else if let Some(length) = content_length {
        raw.resize(length, 0);
        reader.read_exact(&mut raw).map_err(read_err)?;
    } else {
        reader.read_to_end(&mut raw).map_err(read_err)?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    Ok(HttpResponse { status, body, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let client = HttpClient::new("http://127.0.0.1:9090/admin/").unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:9090/admin");
        assert!(HttpClient::new("127.0.0.1:9090").is_err());
        assert!(HttpClient::new("http://:80").is_err());
        assert!(HttpClient::new("http://host:notaport").is_err());
    }

    #[test]
    fn reads_chunked_and_sized_bodies() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let response = read_response(chunked.as_bytes()).unwrap();
        assert_eq!(response.body, serde_json::json!({"a": 1}));
        let sized = "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
        let response = read_response(sized.as_bytes()).unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, Value::String("no".into()));
    }
}
