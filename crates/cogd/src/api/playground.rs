//! The web playground: the page a browser gets at `GET /`, which builds a form
//! from the model's `/openapi.json` and runs predictions through the public
//! HTTP API (`PUT /predictions/{id}` as an event stream or `respond-async` and
//! polling, `POST …/cancel`, `/health-check`), nothing else.
//!
//! The assets (`playground/index.html`, `.css`, `.js`: plain HTML, CSS and
//! JavaScript, no framework) are embedded in the binary and served as one
//! page, the style and script inlined so the form needs one request for the
//! page and one for the schema. Each answer gets a fresh nonce that the page's
//! Content-Security-Policy requires of scripts and styles, so nothing but the
//! embedded script runs on the page. API clients are told apart by `Accept`:
//! only a request that prefers `text/html` to JSON gets the page.
//!
//! The page holds no secret, so under `COG_API_TOKEN` it loads without the
//! token; it asks the user for it and sends it with each API call it makes.

use std::sync::LazyLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("playground/index.html");
const STYLE: &str = include_str!("playground/playground.css");
const SCRIPT: &str = include_str!("playground/playground.js");

/// Where `index.html` links its style and script (so the page also works
/// opened from disk while it is being written); replaced by the inlined text.
const STYLE_LINK: &str = r#"<link rel="stylesheet" href="playground.css">"#;
const SCRIPT_LINK: &str = r#"<script src="playground.js"></script>"#;
const NONCE_MARK: &str = "{NONCE}";

/// The page split where each answer's nonce goes.
static PAGE_PIECES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let page = INDEX
        .replacen(
            STYLE_LINK,
            &format!("<style nonce=\"{NONCE_MARK}\">\n{STYLE}</style>"),
            1,
        )
        .replacen(
            SCRIPT_LINK,
            &format!("<script nonce=\"{NONCE_MARK}\">\n{SCRIPT}</script>"),
            1,
        );
    // Made once per process and kept for its life.
    let page: &'static str = Box::leak(page.into_boxed_str());
    page.split(NONCE_MARK).collect()
});

/// True when the client prefers an HTML page to JSON: `text/html` (or
/// XHTML) is listed with a weight above zero and above any that JSON has.
/// `*/*`, no `Accept` at all and JSON clients get the discovery document.
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    let (mut html, mut json) = (0.0_f32, None::<f32>);
    for range in headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match kind.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(weight),
            "application/json" => json = Some(json.unwrap_or(0.0).max(weight)),
            _ => {}
        }
    }
    html > 0.0 && json.is_none_or(|json| html > json)
}

/// True for a request the page answers: `GET /` from a browser.
pub(super) fn is_page_request(request: &axum::extract::Request) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path() == "/"
        && wanted(request.headers())
}

/// The playground page, with a fresh nonce for its script and style.
pub(super) fn page() -> Response {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let body = PAGE_PIECES.join(&nonce);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data: blob: http: https:; \
         media-src 'self' data: blob: http: https:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    );
    let mut response = (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (CACHE_CONTROL, "no-cache".to_owned()),
            (CONTENT_SECURITY_POLICY, policy),
            (X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (REFERRER_POLICY, "no-referrer".to_owned()),
        ],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    response
}

/// Marks an answer of `/` as depending on `Accept`, so a cache never hands
/// the page to an API client or the document to a browser.
pub(super) fn varies_by_accept(answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_the_document() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,\
                        image/avif,image/webp,*/*;q=0.8";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wanted(&accept(chromium)));
        assert!(wanted(&accept(firefox)));
        assert!(wanted(&accept("text/html")));
        assert!(wanted(&accept("application/json;q=0.5, text/html")));
        assert!(!wanted(&HeaderMap::new()));
        assert!(!wanted(&accept("*/*")));
        assert!(!wanted(&accept("application/json")));
        assert!(!wanted(&accept("text/html, application/json")));
        assert!(!wanted(&accept("text/html;q=0.5, application/json")));
        assert!(!wanted(&accept("text/html;q=0")));
    }

    #[test]
    fn the_page_inlines_its_assets_under_a_fresh_nonce() {
        assert_eq!(PAGE_PIECES.len(), 3, "one nonce each for style and script");
        let (one, two) = (page(), page());
        let policy = |r: &Response| r.headers()[CONTENT_SECURITY_POLICY].clone();
        assert_ne!(policy(&one), policy(&two));
        let page = PAGE_PIECES.concat();
        assert!(!page.contains(STYLE_LINK) && !page.contains(SCRIPT_LINK));
        assert!(page.contains(STYLE) && page.contains(SCRIPT));
    }

    #[test]
    fn the_script_cannot_end_its_inline_element_early() {
        assert!(!SCRIPT.to_ascii_lowercase().contains("</script"));
        assert!(!STYLE.to_ascii_lowercase().contains("</style"));
    }
}
