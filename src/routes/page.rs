//! The upload page: what an upload link opens. One HTML page, its stylesheet and its script, all in
//! `assets/` and built into the binary, nothing from elsewhere (it works on a network with no
//! internet). The script uploads over the tus endpoints with the link's token (`X-Upload-Link`).
//!
//! - `GET /upload/{token}`  the page; 401 / 410 / 404 with a page that says why when the link is
//!   forged, revoked, expired, or links are off
//! - `GET /assets/{name}`   its stylesheet and script
use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use sha1::{Digest, Sha1};

use super::AppState;

/// Where a link's page lives: `{base}/upload/{token}`. The token is a credential: it is kept out of
/// the logs in any spelling of this path (`middleware::loggable_path`).
pub const PAGE_PREFIX: &str = "/upload/";

const PAGE_HTML: &str = include_str!("../../assets/upload.html");
const REFUSED_HTML: &str = include_str!("../../assets/refused.html");
const PAGE_JS: &str = include_str!("../../assets/upload-page.js");
const PAGE_CSS: &str = include_str!("../../assets/upload-page.css");

/// Only the gateway's own files, and requests back to it: no inline script or style, no frames.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Changes with the assets, so a browser never pairs a new page with an old script.
fn assets_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = Sha1::new();
        hasher.update(PAGE_JS);
        hasher.update(PAGE_CSS);
        hex::encode(hasher.finalize())[..12].to_owned()
    })
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{NAME}}` placeholders with already escaped values.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        // The token is in the page's address: never sent on to another site.
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    response.body(body)
}

pub async fn show(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let token = req.match_info().get("token").unwrap_or_default();
    match state.access.check_link(token).await {
        Ok(link) => {
            let note = link.note.as_deref().map(escape).unwrap_or_default();
            let opt = |v: Option<String>| v.unwrap_or_default();
            html(
                StatusCode::OK,
                fill(
                    PAGE_HTML,
                    &[
                        ("VERSION", assets_version().to_owned()),
                        ("TOKEN", escape(token)),
                        ("LINK_ID", escape(&link.id)),
                        ("FOLDER_ID", escape(&link.folder_id)),
                        ("MAX_SIZE", opt(link.max_file_size_bytes.map(|v| v.to_string()))),
                        ("MAX_FILES", opt(link.max_files.map(|v| v.to_string()))),
                        ("EXPIRES_AT", link.expires_at.to_string()),
                        ("CHUNK_BYTES", state.upload_links.page_chunk_bytes.to_string()),
                        (
                            "NOTE_HIDDEN",
                            if note.is_empty() { " hidden" } else { "" }.to_owned(),
                        ),
                        ("NOTE", note),
                    ],
                ),
            )
        }
        Err(err) => {
            let (title, message) = match err.code {
                "link_expired" => (
                    "This upload link has expired",
                    "The link you followed is no longer valid. Ask the person who sent it for a new one.",
                ),
                "link_revoked" => (
                    "This upload link has been withdrawn",
                    "The person who sent it has revoked it. Ask them for a new one.",
                ),
                "upload_links_disabled" => (
                    "Upload links are off",
                    "This gateway does not accept upload links.",
                ),
                _ => (
                    "This upload link is not valid",
                    "The link may have been cut short or altered when it was copied, or it has been revoked. \
                     Check that you have the whole link, or ask the person who sent it for a new one.",
                ),
            };
            html(
                err.status,
                fill(
                    REFUSED_HTML,
                    &[
                        ("VERSION", assets_version().to_owned()),
                        ("TITLE", escape(title)),
                        ("MESSAGE", escape(message)),
                        ("CODE", escape(err.code)),
                    ],
                ),
            )
        }
    }
}

pub async fn asset(req: HttpRequest) -> HttpResponse {
    let (body, kind) = match req.match_info().get("name").unwrap_or_default() {
        "upload-page.js" => (PAGE_JS, "text/javascript; charset=utf-8"),
        "upload-page.css" => (PAGE_CSS, "text/css; charset=utf-8"),
        _ => {
            return HttpResponse::NotFound()
                .content_type("text/plain; charset=utf-8")
                .body("no such file")
        }
    };
    // The page names them with `?v=<digest of the assets>`: a new build is a new address.
    let cache = match req.query_string() == format!("v={}", assets_version()) {
        true => "public, max-age=31536000, immutable",
        false => "no-cache",
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type(kind)
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static(cache)));
    response.body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_escaped_and_placeholders_filled() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        let page = fill("a {{X}} b {{Y}}", &[("X", "1".into()), ("Y", "2".into())]);
        assert_eq!(page, "a 1 b 2");
        for placeholder in ["{{TOKEN}}", "{{NOTE}}", "{{VERSION}}", "{{CHUNK_BYTES}}"] {
            assert!(PAGE_HTML.contains(placeholder), "{placeholder}");
        }
        // Nothing from elsewhere: no absolute URL to fetch.
        for asset in [PAGE_HTML, REFUSED_HTML, PAGE_JS, PAGE_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
    }
}
