//! URLs buildmaster writes: links to its own pages, and paths of other
//! services' HTTP APIs (RabbitMQ's management API). Names may hold any
//! character, so each goes in as one escaped path segment.

/// `text` as one URL path segment: everything but unreserved characters
/// escaped.
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A builder's page.
pub fn builder_page(builder: &str) -> String {
    format!("/builders/{}", path_segment(builder))
}

/// A build's page.
pub fn build_page(builder: &str, number: i64) -> String {
    format!("/builders/{}/builds/{number}", path_segment(builder))
}

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`,
/// `::1`).
pub fn is_loopback(url: &str) -> bool {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split(['/', '?', '#']).next().unwrap_or("");
    let host_and_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_and_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_and_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// `url` without a user or password (`https://bot:token@host/x` is
/// `https://host/x`), to show or record where only the place matters.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_path_segment() {
        assert_eq!(path_segment("/"), "%2F");
        assert_eq!(path_segment("ci builds"), "ci%20builds");
        assert_eq!(build_page("AMD64 Fedora 3.x", 7), "/builders/AMD64%20Fedora%203.x/builds/7");
    }

    #[test]
    fn credentials_leave_a_url_and_the_rest_stays() {
        assert_eq!(
            without_credentials("https://bot:t0ken@github.com/python/cpython"),
            "https://github.com/python/cpython"
        );
        assert_eq!(without_credentials("https://github.com/a@b"), "https://github.com/a@b", "an @ in the path is path");
        assert_eq!(without_credentials("/srv/git/repo"), "/srv/git/repo");
        assert!(is_loopback("http://127.0.0.1:9011/") && is_loopback("http://localhost/"));
        assert!(!is_loopback("https://buildbot.python.org/"));
    }
}
