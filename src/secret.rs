//! Secrets from the settings: a string that never prints itself, and where one comes from (inline,
//! or a file read at each use). Used by the Box credentials, the webhook signer, upload links and the
//! settings: it sits below all of them.
use std::fmt;
use std::path::PathBuf;

/// A secret string: never printed by `Debug` or `Display`, so it cannot leak into logs or errors.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret given in the settings, or the path of a file holding it (a Kubernetes Secret mount). A file
/// is read each time the secret is needed, so a rotated Secret is picked up without a restart.
#[derive(Clone, Debug)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

impl SecretSource {
    /// The secret, with the trailing newline that `echo` and editors leave in files removed. Errors
    /// name the file, never its content.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let value = text.trim_end_matches(['\r', '\n']);
                if value.trim().is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).read().unwrap().expose(),
            "s3cret"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = SecretSource::File(path).read().unwrap_err();
        assert!(err.ends_with("is empty"), "{err}");
    }
}
