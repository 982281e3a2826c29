//! GitHub's OAuth web flow (an OAuth App, scope `read:org`), and a person's
//! roles from their organisations and teams, read with their own token:
//! `GET /user`, `GET /user/memberships/orgs`, `GET /user/teams`.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::config::GitHubSignIn;

use super::SignInError;
use crate::github_app;

/// Pages of organisations or teams read at most (100 each).
const MAX_PAGES: usize = 10;

pub(super) fn authorize_url(github: &GitHubSignIn, redirect_uri: &str, state: &str, challenge: &str) -> String {
    let query = [
        ("client_id", github.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", "read:org"),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("allow_signup", "false"),
    ];
    format!("{}/login/oauth/authorize?{}", github.url.trim_end_matches('/'), form(&query))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(pairs);
    serializer.finish()
}

fn unavailable(reason: impl std::fmt::Display) -> SignInError {
    SignInError::Unavailable { provider: "GitHub".into(), reason: reason.to_string() }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Trades the callback's code for the person's access token.
pub(super) async fn exchange(
    http: &reqwest::Client,
    github: &GitHubSignIn,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<String, SignInError> {
    let response = http
        .post(format!("{}/login/oauth/access_token", github.url.trim_end_matches('/')))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("client_id", &github.client_id),
            ("client_secret", github.client_secret.expose()),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ]))
        .send()
        .await
        .map_err(unavailable)?;
    let status = response.status();
    let answer: TokenAnswer = response
        .json()
        .await
        .map_err(|error| unavailable(format!("its token answer ({status}) is not JSON: {error}")))?;
    // GitHub answers a bad code with 200 and an `error`.
    match (answer.access_token, answer.error) {
        (Some(token), None) => Ok(token),
        (_, error) => Err(SignInError::Refused {
            provider: "GitHub".into(),
            reason: format!(
                "{} ({})",
                error.unwrap_or_else(|| format!("status {status}")),
                answer.error_description.unwrap_or_default()
            ),
        }),
    }
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Organization {
    login: String,
}

#[derive(Deserialize)]
struct Membership {
    organization: Organization,
    state: String,
}

#[derive(Deserialize)]
struct Team {
    slug: String,
    organization: Organization,
}

/// The person's login and the roles their organisations, teams and login
/// give;
/// `None` when GitHub no longer takes the token.
pub(super) async fn identify(
    http: &reqwest::Client,
    github: &GitHubSignIn,
    token: &str,
) -> Result<Option<(String, Vec<String>)>, SignInError> {
    let Some(user) = get::<User>(http, github, token, "/user").await? else {
        return Ok(None);
    };
    let mut roles = Vec::new();
    if !github.organizations.is_empty() {
        let Some(memberships) =
            get_all::<Membership>(http, github, token, "/user/memberships/orgs?state=active").await?
        else {
            return Ok(None);
        };
        for membership in memberships.iter().filter(|membership| membership.state == "active") {
            let org = &membership.organization.login;
            roles.extend(
                github
                    .organizations
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(org))
                    .flat_map(|(_, roles)| roles.iter().cloned()),
            );
        }
    }
    if !github.teams.is_empty() {
        let Some(teams) = get_all::<Team>(http, github, token, "/user/teams").await? else {
            return Ok(None);
        };
        for team in &teams {
            let name = format!("{}/{}", team.organization.login, team.slug);
            roles.extend(
                github
                    .teams
                    .iter()
                    .filter(|(configured, _)| configured.eq_ignore_ascii_case(&name))
                    .flat_map(|(_, roles)| roles.iter().cloned()),
            );
        }
    }
    roles.extend(
        github
            .users
            .iter()
            .filter(|(login, _)| login.eq_ignore_ascii_case(&user.login))
            .flat_map(|(_, roles)| roles.iter().cloned()),
    );
    roles.sort();
    roles.dedup();
    Ok(Some((user.login, roles)))
}

/// One resource of the REST API; `None` on 401 (the token is not taken).
async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    github: &GitHubSignIn,
    token: &str,
    path: &str,
) -> Result<Option<T>, SignInError> {
    Ok(get_page(http, github, token, &api_url(github, path)).await?.map(|(value, _)| value))
}

/// Every page of a list, following `Link: <...>; rel="next"`.
async fn get_all<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    github: &GitHubSignIn,
    token: &str,
    path: &str,
) -> Result<Option<Vec<T>>, SignInError> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut next = Some(api_url(github, &format!("{path}{separator}per_page=100")));
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let Some(url) = next.take() else { break };
        let Some((page, link)) = get_page::<Vec<T>>(http, github, token, &url).await? else {
            return Ok(None);
        };
        all.extend(page);
        next = link;
    }
    Ok(Some(all))
}

fn api_url(github: &GitHubSignIn, path: &str) -> String {
    format!("{}{path}", github.api_url.trim_end_matches('/'))
}

async fn get_page<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    github: &GitHubSignIn,
    token: &str,
    url: &str,
) -> Result<Option<(T, Option<String>)>, SignInError> {
    // `request` adds GitHub's headers to a path; the URL here is whole.
    let response = github_app::request(http, "", reqwest::Method::GET, url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(unavailable)?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    if !status.is_success() {
        let path = url.strip_prefix(github.api_url.trim_end_matches('/')).unwrap_or(url);
        return Err(unavailable(format!("GET {path} answered {status}")));
    }
    let next = response.headers().get("link").and_then(|link| link.to_str().ok()).and_then(next_link);
    let value =
        response.json().await.map_err(|error| unavailable(format!("an answer is not what was expected: {error}")))?;
    Ok(Some((value, next)))
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_owned())
    })
}

/// The key tokens are sealed with: from the OAuth App's secret, which only
/// settings.yaml holds. A new secret makes old tokens unreadable, which
/// ends their sessions.
fn key(github: &GitHubSignIn) -> LessSafeKey {
    let mut hasher = Sha256::new();
    hasher.update(b"buildmaster sign-in token key\0");
    hasher.update(github.client_secret.expose().as_bytes());
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &hasher.finalize()).expect("a 32-byte key");
    LessSafeKey::new(unbound)
}

/// `nonce || ciphertext || tag`.
pub(super) fn seal(github: &GitHubSignIn, token: &str) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system gives random bytes");
    let mut sealed = token.as_bytes().to_vec();
    key(github)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
        .expect("sealing a short token");
    [nonce.as_slice(), &sealed].concat()
}

pub(super) fn open(github: &GitHubSignIn, sealed: &[u8]) -> Option<String> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut sealed = sealed.to_vec();
    let opened = key(github).open_in_place(nonce, Aad::empty(), &mut sealed).ok()?;
    String::from_utf8(opened.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github(secret: &str) -> GitHubSignIn {
        serde_yaml::from_str(&format!("client_id: id\nclient_secret: {secret}\n")).unwrap()
    }

    #[test]
    fn a_sealed_token_opens_only_with_the_same_secret() {
        let sealed = seal(&github("one"), "gho_secret");
        assert!(!sealed.windows(10).any(|window| window == b"gho_secret"));
        assert_eq!(open(&github("one"), &sealed).as_deref(), Some("gho_secret"));
        assert_eq!(open(&github("two"), &sealed), None);
        assert_eq!(open(&github("one"), &sealed[..5]), None);
    }

    #[test]
    fn the_next_page_is_found_in_a_link_header() {
        let link = r#"<https://api.github.com/user/teams?page=1>; rel="prev", <https://api.github.com/user/teams?page=3>; rel="next""#;
        assert_eq!(next_link(link).as_deref(), Some("https://api.github.com/user/teams?page=3"));
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="first""#), None);
    }
}
