//! Retries with exponential backoff for the LLM and image API clients.
//!
//! Timeouts, connection failures, 429 and 5xx responses are transient. Malformed replies
//! (bad JSON, corrupt or oversized images) are retried too, because a sampled reply may be
//! fine on the next try. Any other 4xx status ends the attempts at once.

use std::future::Future;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

/// Characters of a reply kept for error messages.
pub const EXCERPT_CHARS: usize = 200;

/// Maximum wait honoured from a Retry-After header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Delay between attempts: `initial`, doubling per attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// Delay after failed attempt number `attempt` (1-based). A Retry-After value from the
    /// server replaces the computed delay, up to [`MAX_RETRY_AFTER`].
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(MAX_RETRY_AFTER);
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Failure of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// Timeout, connection failure, 429 or 5xx: worth another attempt.
    Transient { reason: String, retry_after: Option<Duration> },
    /// The server responded, but the reply is unusable: worth another attempt.
    Malformed { reason: String, excerpt: String },
    /// The server rejected the request with a 4xx status other than 429: retrying cannot help.
    Rejected { status: u16, excerpt: String },
}

/// The last failure after the attempts ran out, or a rejection.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryFailure {
    pub attempts: u32,
    pub last: AttemptError,
}

/// Run `attempt` up to `max_attempts` times, sleeping per `backoff` between failures. `what`
/// names the request in logs.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    max_attempts: u32,
    backoff: Backoff,
    mut attempt: F,
) -> Result<T, RetryFailure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let max_attempts = max_attempts.max(1);
    let mut number = 1;
    loop {
        let error = match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let retry_after = match &error {
            AttemptError::Rejected { .. } => return Err(RetryFailure { attempts: number, last: error }),
            AttemptError::Transient { retry_after, .. } => *retry_after,
            AttemptError::Malformed { .. } => None,
        };
        if number >= max_attempts {
            return Err(RetryFailure { attempts: number, last: error });
        }

        let delay = backoff.delay(number, retry_after);
        tracing::warn!(request = what, attempt = number, max_attempts, delay_ms = delay.as_millis() as u64, error = ?error, "request failed, retrying");
        tokio::time::sleep(delay).await;
        number += 1;
    }
}

/// Classify a failed send: every transport failure is transient.
pub fn send_error(error: &reqwest::Error) -> AttemptError {
    let reason = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        format!("failed to connect: {}", error_chain(error))
    } else {
        format!("request failed: {}", error_chain(error))
    };
    AttemptError::Transient { reason, retry_after: None }
}

/// Classify a non-success status: 429 and 5xx are transient, other codes are rejections.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> AttemptError {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return AttemptError::Transient {
            reason: format!("HTTP {status}: {}", excerpt(body)),
            retry_after: retry_after(headers),
        };
    }
    AttemptError::Rejected { status: status.as_u16(), excerpt: excerpt(body) }
}

/// Parse a Retry-After header given in seconds.
// NOTE: an HTTP-date Retry-After is ignored, so the exponential backoff applies.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// Read a response body, failing as soon as it passes `max_bytes`.
pub async fn read_limited(response: &mut reqwest::Response, max_bytes: usize) -> Result<Vec<u8>, AttemptError> {
    let too_large = |size: String| AttemptError::Malformed {
        reason: format!("the response is {size} bytes, above the limit of {max_bytes} bytes"),
        excerpt: String::new(),
    };
    if let Some(length) = response.content_length() {
        if length > max_bytes as u64 {
            return Err(too_large(length.to_string()));
        }
    }

    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| send_error(&error))? {
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large(format!("more than {max_bytes}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Return the start of a reply as text, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(EXCERPT_CHARS).collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(350) };
        assert_eq!(backoff.delay(1, None), Duration::from_millis(100));
        assert_eq!(backoff.delay(2, None), Duration::from_millis(200));
        assert_eq!(backoff.delay(3, None), Duration::from_millis(350));
        assert_eq!(backoff.delay(40, None), Duration::from_millis(350));
    }

    #[test]
    fn retry_after_replaces_backoff() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(9999))), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_header_parses_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn status_classes() {
        let headers = HeaderMap::new();
        assert!(matches!(status_error(StatusCode::TOO_MANY_REQUESTS, &headers, b""), AttemptError::Transient { .. }));
        assert!(matches!(status_error(StatusCode::BAD_GATEWAY, &headers, b""), AttemptError::Transient { .. }));
        let rejected = status_error(StatusCode::UNAUTHORIZED, &headers, b"bad key");
        assert_eq!(rejected, AttemptError::Rejected { status: 401, excerpt: "bad key".into() });
    }

    #[tokio::test]
    async fn with_retries_stops_on_rejection_and_after_max() {
        let fast = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(1) };
        let mut calls = 0;
        let failure = with_retries("test", 5, fast, |_| {
            calls += 1;
            async { Err::<(), _>(AttemptError::Rejected { status: 400, excerpt: String::new() }) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(failure.attempts, 1);

        let failure = with_retries("test", 3, fast, |_| async {
            Err::<(), _>(AttemptError::Transient { reason: "down".into(), retry_after: None })
        })
        .await
        .unwrap_err();
        assert_eq!(failure.attempts, 3);

        let value = with_retries("test", 3, fast, |number| async move {
            if number < 2 {
                Err(AttemptError::Malformed { reason: "bad".into(), excerpt: String::new() })
            } else {
                Ok(number)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 2);
    }
}
