//! `/oauth2/token`: Client Credentials and JWT grants, answering RFC 6749 bodies as Box does.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::Endpoint;
use super::super::state::IssuedToken;
use super::super::{Shared, DEV_CLIENT_ID, DEV_CLIENT_SECRET};
use super::{absolute, gate};
use actix_web::{web, HttpRequest, HttpResponse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::time::Instant;

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const BOX_AUDIENCE: &str = "https://api.box.com/oauth2/token";

pub async fn token(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, Some(Endpoint::Token), false).await?;
    let form: HashMap<String, String> = serde_urlencoded_like(&body)?;
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    check_client(&shared, field("client_id"), field("client_secret"))?;
    let user = match field("grant_type") {
        "client_credentials" => {
            check_subject(&shared, field("box_subject_type"), field("box_subject_id"))?;
            (field("box_subject_type") == "user").then(|| field("box_subject_id").to_owned())
        }
        JWT_GRANT => {
            check_assertion(&req, &shared, field("assertion"), field("client_id"))?;
            None
        }
        "" => return Err(invalid_request("grant_type is missing")),
        other => {
            return Err(BoxApiError::oauth(
                400,
                "unsupported_grant_type",
                format!("Grant type {other} is not supported"),
            ))
        }
    };
    Ok(issue(&shared, user))
}

/// `application/x-www-form-urlencoded`, parsed with the query-string parser actix already has.
fn serde_urlencoded_like(body: &[u8]) -> Result<HashMap<String, String>, BoxApiError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid_request("body is not UTF-8"))?;
    web::Query::<HashMap<String, String>>::from_query(text)
        .map(web::Query::into_inner)
        .map_err(|_| invalid_request("body is not application/x-www-form-urlencoded"))
}

fn invalid_request(why: &str) -> BoxApiError {
    BoxApiError::oauth(400, "invalid_request", why)
}

fn invalid_grant(why: impl Into<String>) -> BoxApiError {
    BoxApiError::oauth(400, "invalid_grant", why)
}

fn check_client(shared: &Shared, id: &str, secret: &str) -> Result<(), BoxApiError> {
    let ok = if shared.config.clients.is_empty() {
        id == DEV_CLIENT_ID && secret == DEV_CLIENT_SECRET
    } else {
        shared.config.clients.iter().any(|(i, s)| i == id && s == secret)
    };
    if ok {
        Ok(())
    } else {
        Err(BoxApiError::oauth(
            400,
            "invalid_client",
            "The client credentials are invalid",
        ))
    }
}

fn check_subject(shared: &Shared, kind: &str, id: &str) -> Result<(), BoxApiError> {
    if !matches!(kind, "enterprise" | "user") {
        return Err(invalid_request("box_subject_type must be enterprise or user"));
    }
    if id.is_empty() {
        return Err(invalid_request("box_subject_id is missing"));
    }
    if !known_subject(shared, kind, id) {
        // What Box answers when the app is not authorised in that enterprise, or the user is not its.
        return Err(invalid_grant("Grant credentials are invalid"));
    }
    Ok(())
}

/// Whether the configured enterprise and users include this subject (any, when none is configured).
fn known_subject(shared: &Shared, kind: &str, id: &str) -> bool {
    let config = &shared.config;
    match kind {
        "enterprise" => config.enterprise_id.as_deref().is_none_or(|e| e == id),
        _ => config.users.is_empty() || config.users.iter().any(|u| u == id),
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    box_sub_type: Option<String>,
    aud: Option<String>,
    jti: Option<String>,
    exp: Option<i64>,
}

fn check_assertion(
    req: &HttpRequest,
    shared: &Shared,
    assertion: &str,
    client_id: &str,
) -> Result<(), BoxApiError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| invalid_grant(format!("Invalid assertion: {e}")))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) {
        return Err(invalid_grant(
            "The assertion must be signed with RS256, RS384 or RS512",
        ));
    }
    let key = header
        .kid
        .as_ref()
        .and_then(|kid| shared.config.jwt_public_keys.iter().find(|(k, _)| k == kid));
    let claims: Claims = match key {
        Some((_, pem)) => verified_claims(assertion, pem, header.alg)?,
        // With keys configured, Box knows every key of the app: an unknown kid is refused.
        None if !shared.config.jwt_public_keys.is_empty() => {
            return Err(invalid_grant(
                "Please check the 'kid' header: no public key with that id is registered for the app",
            ))
        }
        None => {
            jsonwebtoken::dangerous::insecure_decode::<Claims>(assertion)
                .map_err(|e| invalid_grant(format!("Invalid assertion: {e}")))?
                .claims
        }
    };
    check_claims(req, shared, &claims, client_id)
}

fn verified_claims(assertion: &str, pem: &str, alg: Algorithm) -> Result<Claims, BoxApiError> {
    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| BoxApiError::internal(format!("configured JWT key: {e}")))?;
    let mut v = Validation::new(alg);
    // The claims are checked below with Box's own rules and messages.
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Claims>(assertion, &key, &v)
        .map(|d| d.claims)
        .map_err(|_| invalid_grant("Signature verification error. The public key identified by \"kid\" must correspond to the private key used for signing."))
}

fn check_claims(req: &HttpRequest, shared: &Shared, c: &Claims, client_id: &str) -> Result<(), BoxApiError> {
    if c.iss.as_deref() != Some(client_id) {
        return Err(invalid_grant("Please check the 'iss' claim."));
    }
    if c.sub.as_deref().unwrap_or("").is_empty() {
        return Err(invalid_grant("Please check the 'sub' claim."));
    }
    if !matches!(c.box_sub_type.as_deref(), Some("enterprise" | "user")) {
        return Err(invalid_grant("Please check the 'box_sub_type' claim."));
    }
    if !known_subject(
        shared,
        c.box_sub_type.as_deref().unwrap_or(""),
        c.sub.as_deref().unwrap_or(""),
    ) {
        return Err(invalid_grant("Please check the 'sub' claim."));
    }
    let own = absolute(req, "/oauth2/token");
    if !matches!(c.aud.as_deref(), Some(a) if a == BOX_AUDIENCE || a == own) {
        return Err(invalid_grant("Please check the 'aud' claim."));
    }
    let now = chrono::Utc::now().timestamp();
    match c.exp {
        Some(exp) if exp > now && exp <= now + 60 => {}
        _ => return Err(invalid_grant("Please check the 'exp' claim.")),
    }
    let jti = c.jti.as_deref().unwrap_or("");
    if !(16..=128).contains(&jti.len()) {
        return Err(invalid_grant("Please check the 'jti' claim."));
    }
    if !shared.lock().used_jtis.insert(jti.to_owned()) {
        return Err(invalid_grant(
            "Please check the 'jti' claim. A unique 'jti' value is required.",
        ));
    }
    Ok(())
}

fn issue(shared: &Shared, user: Option<String>) -> HttpResponse {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let ttl = shared.config.token_ttl;
    let mut state = shared.lock();
    state.tokens.insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + ttl,
            revoked: false,
            user,
        },
    );
    state.counters.tokens_issued += 1;
    HttpResponse::Ok().json(json!({
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "token_type": "bearer",
        "restricted_to": [],
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }))
}
