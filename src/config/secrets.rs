//! "Inline or `_file`, not both": how every secret setting is given, checked in one place. A problem
//! names the key, never the secret.
use std::path::PathBuf;

use crate::secret::{Secret, SecretSource};

/// Where `key`'s secret comes from: `inline` (`key`) or `file` (`key_file`); `Ok(None)` when neither
/// is set (the caller decides whether it is required), `Err` when it is set but refused (the problem
/// is already said). A file must be readable and not empty now; it is read again at each use (a
/// rotated Kubernetes Secret needs no restart).
pub(super) fn secret_source(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&str>,
    problems: &mut Vec<String>,
) -> Result<Option<SecretSource>, ()> {
    let inline = inline.filter(|s| !s.expose().trim().is_empty());
    let file = file.filter(|f| !f.trim().is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{key}: set either {key} or {key}_file, not both"));
            Err(())
        }
        (Some(secret), None) => Ok(Some(SecretSource::Inline(secret.clone()))),
        (None, Some(file)) => {
            let source = SecretSource::File(PathBuf::from(file));
            match source.read() {
                Ok(_) => Ok(Some(source)),
                Err(why) => {
                    problems.push(format!("{key}_file: {why}"));
                    Err(())
                }
            }
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_at_most_and_files_are_read() {
        let mut problems = Vec::new();
        let s = Secret::new("hunter2");
        assert!(secret_source("k", Some(&s), Some("/x"), &mut problems).is_err());
        assert!(matches!(
            secret_source("k", Some(&Secret::new(" ")), None, &mut problems),
            Ok(None)
        ));
        assert!(matches!(secret_source("k", None, None, &mut problems), Ok(None)));
        assert!(secret_source("k", None, Some("/no/such/file"), &mut problems).is_err());
        assert!(matches!(
            secret_source("k", Some(&s), Some(""), &mut problems),
            Ok(Some(SecretSource::Inline(_)))
        ));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("not both") && problems[1].starts_with("k_file: "));
        assert!(!problems.join(" ").contains("hunter2"));
    }
}
