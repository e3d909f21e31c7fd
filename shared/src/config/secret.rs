use std::fmt;

use serde::{Deserialize, Serialize};

/// A service URL that may carry a password. `Debug` and `Display` hide the password, so the
/// URL can be logged; call [`SecretUrl::expose`] only where the connection is opened.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for opening a connection.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn scheme(&self) -> Option<&str> {
        self.0.split_once("://").map(|(scheme, _)| scheme)
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Setting a password only fails for URLs that cannot have one, excluded above.
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "<unparsable url>".to_owned(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_prints() {
        let url = SecretUrl::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert!(!format!("{url}").contains("hunter2"));
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(format!("{url}").contains("guest:***@127.0.0.1"));
        assert_eq!(url.expose(), "amqp://guest:hunter2@127.0.0.1:5672/%2f");
    }

    #[test]
    fn unparsable_url_is_not_echoed() {
        let url = SecretUrl::new("not a url with pass:word@");
        assert_eq!(url.to_string(), "<unparsable url>");
    }
}
