//! Turning `object_store` errors into `StoreError`s that name the store, the
//! key and the HTTP status, and say whether a retry may help.

use std::error::Error as StdError;
use std::io;

use object_store::client::{HttpError, HttpErrorKind};

use crate::store::StoreError;

/// What a failed request tells about itself.
struct Diagnosis {
    /// `403 Forbidden`
    status_text: Option<String>,
    status: Option<u16>,
    /// The most specific explanation: S3's `<Code>: <Message>` when the
    /// server sent one, else the text of the error chain.
    detail: String,
    transport: bool,
}

/// The `StoreError` for `err` from a request about `key` in `location`.
pub(crate) fn store_error(location: &str, key: &str, err: object_store::Error) -> StoreError {
    let diagnosis = diagnose(&err);
    let missing_bucket = diagnosis.detail.starts_with("NoSuchBucket");
    if matches!(err, object_store::Error::NotFound { .. }) && !missing_bucket {
        return StoreError::NotFound {
            key: format!("{location}/{key}"),
        };
    }
    remote_error(location, key, diagnosis)
}

fn remote_error(location: &str, key: &str, d: Diagnosis) -> StoreError {
    let transient = match d.status {
        Some(s) => s >= 500 || s == 429 || s == 408,
        None => d.transport,
    };
    let hint = match d.status {
        Some(401 | 403) => {
            " (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or \
             GOOGLE_APPLICATION_CREDENTIALS, the region, and the key's rights on the bucket)"
        }
        Some(404) => " (check the bucket name and the endpoint)",
        _ => "",
    };
    let message = match (&d.status_text, d.status) {
        (Some(text), _) => format!("{text}: {}{hint}", d.detail),
        (None, Some(status)) => format!("{status}: {}{hint}", d.detail),
        (None, None) => d.detail,
    };
    StoreError::Remote {
        location: location.to_string(),
        key: key.to_string(),
        status: d.status,
        message,
        transient,
    }
}

fn diagnose(err: &object_store::Error) -> Diagnosis {
    let chain = error_chain(err);
    let text = chain.join(": ");
    let status_text = status_text(&text);
    let status = status_text
        .as_deref()
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .or(match err {
            object_store::Error::NotFound { .. } => Some(404),
            object_store::Error::PermissionDenied { .. } => Some(403),
            object_store::Error::Unauthenticated { .. } => Some(401),
            object_store::Error::Precondition { .. } => Some(412),
            object_store::Error::AlreadyExists { .. } => Some(409),
            object_store::Error::NotModified { .. } => Some(304),
            _ => None,
        });
    let detail = match (xml_field(&text, "Code"), xml_field(&text, "Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => dedup_chain(&chain),
    };
    Diagnosis {
        status_text,
        status,
        detail,
        transport: is_transport(err, &text),
    }
}

/// The Display text of `err` and each of its sources.
fn error_chain(err: &(dyn StdError + 'static)) -> Vec<String> {
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    chain
}

/// The chain without messages already said: `object_store` embeds each
/// source's text in its own.
fn dedup_chain(chain: &[String]) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for (i, text) in chain.iter().enumerate() {
        let repeated_later = chain[i + 1..]
            .iter()
            .any(|later| later.contains(text.as_str()));
        let said_already = kept.iter().any(|k| k.contains(text.as_str()));
        if !repeated_later && !said_already {
            kept.push(text);
        }
    }
    if kept.is_empty() {
        return chain.first().cloned().unwrap_or_default();
    }
    kept.join(": ")
}

/// `403 Forbidden` out of `... non-2xx status code: 403 Forbidden: <body>`.
fn status_text(text: &str) -> Option<String> {
    const MARK: &str = "status code: ";
    let start = text.find(MARK)? + MARK.len();
    let rest = &text[start..];
    let end = rest.find(':').unwrap_or(rest.len());
    let status = rest[..end].trim();
    let code_ok = status.len() >= 3 && status.as_bytes()[..3].iter().all(u8::is_ascii_digit);
    code_ok.then(|| status.to_string())
}

/// The text of the first `<name>…</name>` element of an S3 XML error body.
fn xml_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim()).filter(|s| !s.is_empty())
}

/// True when a transport failure (connect, timeout, reset) is behind `err`.
fn is_transport(err: &(dyn StdError + 'static), text: &str) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = e.source();
    }
    // A request that failed without a response: object_store keeps its
    // `HttpError` behind a private retry error, out of the source chain, so
    // only its text is left to go by.
    text.contains("HTTP error: ")
}

/// The `io::Error` a streaming reader returns for `err`: its kind says
/// whether a retry may help (`StoreError::is_transient` reads it back).
pub(crate) fn io_error(err: StoreError) -> io::Error {
    let kind = match &err {
        StoreError::NotFound { .. } => io::ErrorKind::NotFound,
        e if e.is_transient() => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Text(&'static str);

    impl std::fmt::Display for Text {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Text {}

    fn generic(text: &'static str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Text(text)),
        }
    }

    #[test]
    fn status_and_s3_code_are_named() {
        let err = object_store::Error::PermissionDenied {
            path: "p/b/memfile.header".into(),
            source: Box::new(Text(
                "Error performing GET http://h/b/p in 3ms - Server returned non-2xx status code: \
                 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>\
                 <Message>Forbidden: bad key</Message></Error>",
            )),
        };
        let e = store_error("s3://b/p", "b/memfile.header", err);
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "s3://b/p: b/memfile.header: 403 Forbidden: AccessDenied: Forbidden: bad key"
            ),
            "{msg}"
        );
        assert!(matches!(
            e,
            StoreError::Remote {
                status: Some(403),
                transient: false,
                ..
            }
        ));
    }

    #[test]
    fn server_errors_are_transient_client_errors_are_not() {
        let e = store_error(
            "s3://b",
            "k",
            generic("Server returned non-2xx status code: 503 Service Unavailable: "),
        );
        assert!(e.is_transient(), "{e}");
        assert!(matches!(
            e,
            StoreError::Remote {
                status: Some(503),
                ..
            }
        ));
        let e = store_error(
            "s3://b",
            "k",
            generic("Server returned non-2xx status code: 400 Bad Request: nope"),
        );
        assert!(!e.is_transient(), "{e}");
        let e = store_error(
            "s3://b",
            "k",
            generic(
                "Error performing HEAD http://h/b/k in 2s - HTTP error: error sending request: operation timed out",
            ),
        );
        assert!(e.is_transient(), "{e}");
        let e = store_error("s3://b", "k", generic("XML parse error"));
        assert!(matches!(
            e,
            StoreError::Remote {
                status: None,
                transient: false,
                ..
            }
        ));
    }

    #[test]
    fn missing_object_and_missing_bucket_differ() {
        let missing = |body: &'static str| object_store::Error::NotFound {
            path: "k".into(),
            source: Box::new(Text(body)),
        };
        let e = store_error(
            "s3://b",
            "k",
            missing("status code: 404 Not Found: <Code>NoSuchKey</Code>"),
        );
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        let e = store_error(
            "s3://b",
            "k",
            missing(
                "status code: 404 Not Found: <Code>NoSuchBucket</Code><Message>Bucket not found: b</Message>",
            ),
        );
        assert!(
            matches!(
                e,
                StoreError::Remote {
                    status: Some(404),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("NoSuchBucket"), "{e}");
    }

    #[test]
    fn reader_errors_keep_transience() {
        let transient = StoreError::Remote {
            location: "s3://b".into(),
            key: "k".into(),
            status: None,
            message: "connection reset".into(),
            transient: true,
        };
        let io = io_error(transient);
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        assert!(io.to_string().contains("s3://b: k"));
    }

    #[test]
    fn chain_text_drops_repeats() {
        let chain = vec![
            "Generic S3 error: GET failed - HTTP error: error sending request".to_string(),
            "HTTP error: error sending request".to_string(),
            "connection refused".to_string(),
        ];
        assert_eq!(
            dedup_chain(&chain),
            "Generic S3 error: GET failed - HTTP error: error sending request: connection refused"
        );
    }
}
