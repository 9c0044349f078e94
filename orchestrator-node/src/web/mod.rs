//! The web page of `conclave server --http` (and `conclave --web`): one HTML file, one
//! stylesheet, one script, embedded in the binary with `include_str!`.
//!
//! Why this shape: the page must work offline and build without a JavaScript toolchain, so
//! it is plain JavaScript with no third-party code, served as written. It talks only to the
//! existing HTTP API (list, status, submit, the SSE feed); there is no page-specific route.
//! Text from agents is untrusted: the script inserts it as DOM text, and its small Markdown
//! renderer escapes every character that HTML gives meaning to before adding its own tags
//! (links only for `http(s)://`). The server sends a Content-Security-Policy allowing only
//! its own scripts and styles, so even a renderer bug cannot run injected script.
//!
//! **The token.** The assets need none (they hold no secret); every API call does. The page
//! keeps the token in `sessionStorage` (gone when the tab closes), taken once from the
//! address fragment (`/#token=...`: a fragment is never sent to the server, so it stays out
//! of access logs and `Referer`; the page removes it from the address bar at once) or typed
//! into the form the page shows on a 401. The event feed is read with `fetch()` streaming,
//! not `EventSource`, so the token travels in the `Authorization` header like every other
//! request and never in a URL: the server accepts it nowhere else.

/// `/` : the page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// `/app.js`: the script.
pub const APP_JS: &str = include_str!("app.js");
/// `/app.css`: the stylesheet.
pub const APP_CSS: &str = include_str!("app.css");

/// What the page may load: its own script and stylesheet, its own API; nothing inline,
/// nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset served at `path`: its content type and body.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("src=\"/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/app.css\""));
        // Nothing from elsewhere: no absolute URL in the page or the stylesheet, no import
        // in the script (its only `http` is the link scheme its Markdown renderer allows).
        for text in [INDEX_HTML, APP_CSS] {
            assert!(!text.contains("http:") && !text.contains("https:") && !text.contains("//"));
        }
        assert!(!APP_JS.contains("import ") && !APP_JS.contains("//cdn"));
        assert!(asset("/app.js").is_some() && asset("/secret").is_none());
    }
}
