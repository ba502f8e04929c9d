//! The two grants that mint Box tokens for a service account (box-api.md, "Tokens"): Client Credentials
//! and JWT from the app config file the Box console downloads.
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretSource};

/// Box checks `aud` against this exact URL, whatever host the token request goes to.
const BOX_AUDIENCE: &str = "https://api.box.com/oauth2/token";
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Box refuses an `exp` more than 60 s ahead; 30 s leaves room for clock skew both ways.
const ASSERTION_LIFETIME_SECS: i64 = 30;

/// Whom the token acts for: the enterprise's service account, or an app user / managed user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: SubjectType,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectType {
    Enterprise,
    User,
}

impl SubjectType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "enterprise" => Some(Self::Enterprise),
            "user" => Some(Self::User),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enterprise => "enterprise",
            Self::User => "user",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: SecretSource,
        subject: Subject,
    },
    /// The app config file is read at each token request, so a rotated Secret mount is picked up.
    Jwt {
        config_file: PathBuf,
        /// None: the enterprise named in the config file.
        subject: Option<Subject>,
    },
}

impl Grant {
    /// The same grant acting for another subject (an API key's own principal).
    pub fn for_subject(&self, subject: Subject) -> Self {
        match self {
            Self::ClientCredentials {
                client_id,
                client_secret,
                ..
            } => Self::ClientCredentials {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                subject,
            },
            Self::Jwt { config_file, .. } => Self::Jwt {
                config_file: config_file.clone(),
                subject: Some(subject),
            },
        }
    }

    /// The form of one token request (a JWT grant signs a fresh assertion, with a new `jti`, each time).
    /// Errors say what is wrong with the credentials, never their values.
    pub fn form(&self) -> Result<Vec<(&'static str, String)>, String> {
        match self {
            Self::ClientCredentials {
                client_id,
                client_secret,
                subject,
            } => Ok(vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.read()?.expose().to_owned()),
                ("box_subject_type", subject.kind.as_str().into()),
                ("box_subject_id", subject.id.clone()),
            ]),
            Self::Jwt { config_file, subject } => {
                let app = JwtApp::load(config_file)?;
                let subject = subject.clone().map_or_else(|| app.enterprise(), Ok)?;
                Ok(vec![
                    ("grant_type", JWT_GRANT.into()),
                    ("assertion", app.assertion(&subject)?),
                    ("client_id", app.client_id.clone()),
                    ("client_secret", app.client_secret.expose().to_owned()),
                ])
            }
        }
    }
}

/// A Box app config file, as the developer console downloads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppConfigFile {
    box_app_settings: AppSettings,
    #[serde(rename = "enterpriseID", default)]
    enterprise_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppSettings {
    #[serde(rename = "clientID")]
    client_id: String,
    client_secret: Secret,
    app_auth: AppAuth,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppAuth {
    #[serde(rename = "publicKeyID")]
    public_key_id: String,
    private_key: Secret,
    #[serde(default)]
    passphrase: Option<Secret>,
}

/// A JWT app, its private key decrypted and ready to sign.
pub struct JwtApp {
    client_id: String,
    client_secret: Secret,
    public_key_id: String,
    enterprise_id: Option<String>,
    key: EncodingKey,
}

impl JwtApp {
    /// Reads and checks the config file; the errors name the file and the field, never a value.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: AppConfigFile = serde_json::from_str(&text).map_err(|e| {
            // serde_json's message names the field and position, not the value.
            format!("{} is not a Box app config file: {e}", path.display())
        })?;
        let settings = file.box_app_settings;
        let auth = settings.app_auth;
        let passphrase = auth.passphrase.as_ref().map(Secret::expose).unwrap_or("");
        let key = signing_key(auth.private_key.expose(), passphrase)
            .map_err(|why| format!("{}: boxAppSettings.appAuth.privateKey: {why}", path.display()))?;
        // Box writes enterpriseID as a string; some tools write a number.
        let enterprise_id = match file.enterprise_id {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Ok(Self {
            client_id: settings.client_id,
            client_secret: settings.client_secret,
            public_key_id: auth.public_key_id,
            enterprise_id,
            key,
        })
    }

    fn enterprise(&self) -> Result<Subject, String> {
        self.enterprise_id
            .clone()
            .map(|id| Subject {
                kind: SubjectType::Enterprise,
                id,
            })
            .ok_or_else(|| {
                "the app config file has no enterpriseID: set box_subject_type and box_subject_id".into()
            })
    }

    /// An RS256 assertion with Box's claims (`iss, sub, box_sub_type, aud, jti, exp`) and `kid`.
    fn assertion(&self, subject: &Subject) -> Result<String, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            box_sub_type: &'a str,
            aud: &'a str,
            jti: String,
            exp: i64,
        }
        let claims = Claims {
            iss: &self.client_id,
            sub: &subject.id,
            box_sub_type: subject.kind.as_str(),
            aud: BOX_AUDIENCE,
            jti: uuid::Uuid::new_v4().to_string(),
            exp: chrono::Utc::now().timestamp() + ASSERTION_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.public_key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the JWT assertion: {e}"))
    }
}

/// The RSA key of a Box app: encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2 with 3DES or AES, as the
/// Box console generates it) or, for keys made by hand, plain PKCS#8 / PKCS#1 PEM.
fn signing_key(pem: &str, passphrase: &str) -> Result<EncodingKey, String> {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::der::{Decode, SecretDocument};
    let plain = if pem.contains("ENCRYPTED PRIVATE KEY") {
        let (_, der) = SecretDocument::from_pem(pem).map_err(|e| format!("not a PEM key: {e}"))?;
        let encrypted = pkcs8::EncryptedPrivateKeyInfo::from_der(der.as_bytes())
            .map_err(|e| format!("not an encrypted PKCS#8 key: {e}"))?;
        let decrypted = encrypted
            .decrypt(passphrase)
            .map_err(|_| "cannot decrypt it with boxAppSettings.appAuth.passphrase".to_owned())?;
        decrypted
            .to_pem("PRIVATE KEY", LineEnding::LF)
            .map_err(|e| format!("cannot re-encode the key: {e}"))?
            .to_string()
    } else {
        pem.to_owned()
    };
    EncodingKey::from_rsa_pem(plain.as_bytes()).map_err(|e| format!("not an RSA private key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_form_carries_the_subject() {
        let grant = Grant::ClientCredentials {
            client_id: "cid".into(),
            client_secret: SecretSource::Inline(Secret::new("cs")),
            subject: Subject {
                kind: SubjectType::Enterprise,
                id: "42".into(),
            },
        };
        let user = grant.for_subject(Subject {
            kind: SubjectType::User,
            id: "7".into(),
        });
        let form = user.form().unwrap();
        assert!(form.contains(&("box_subject_type", "user".into())));
        assert!(form.contains(&("box_subject_id", "7".into())));
        assert!(form.contains(&("client_secret", "cs".into())));
    }

    #[test]
    fn a_broken_config_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"boxAppSettings":{"clientID":"c","clientSecret":"TOPSECRET","appAuth":{"publicKeyID":"k","privateKey":"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n","passphrase":"PASSWORD"}}}"#,
        )
        .unwrap();
        let err = JwtApp::load(&path).err().expect("the key is garbage");
        assert!(err.contains("privateKey"), "{err}");
        assert!(
            !err.contains("TOPSECRET") && !err.contains("PASSWORD") && !err.contains("AAAA"),
            "{err}"
        );
    }
}
