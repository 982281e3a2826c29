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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_path_segment() {
        assert_eq!(path_segment("/"), "%2F");
        assert_eq!(path_segment("ci builds"), "ci%20builds");
        assert_eq!(build_page("AMD64 Fedora 3.x", 7), "/builders/AMD64%20Fedora%203.x/builds/7");
    }
}
