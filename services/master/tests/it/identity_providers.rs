//! The identity providers people sign in with, for the sign-in tests: a
//! real OpenID Connect provider (`oidc-provider` on Node.js, in
//! `services/master/tests/oidc/`) started on a free port, and a stand-in of
//! GitHub's OAuth web flow and the REST endpoints sign-in reads (github.com
//! cannot be reached from here), written from GitHub's documentation:
//! "Authorizing OAuth apps" (authorize, access_token with its 200-with-error
//! answers, PKCE) and the REST API's `/user`, `/user/memberships/orgs`,
//! `/user/teams` (paged with `Link`, 401 "Bad credentials").

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{free_port, repository_root};
use crate::servers::ChildGuard;

// --- OpenID Connect -----------------------------------------------------------------

/// The client buildmaster is at the test provider.
pub const OIDC_CLIENT_ID: &str = "buildmaster";
pub const OIDC_CLIENT_SECRET: &str = "oidc-client-secret-not-to-print";

/// A running `oidc-provider`.
pub struct OidcProvider {
    pub port: u16,
    pub issuer: String,
    redirect_uri: String,
    accounts: Value,
    _process: ChildGuard,
}

impl OidcProvider {
    /// Starts the provider for a buildmaster at `public_url`, whose
    /// provider is named `name`, with `accounts` (id -> claims).
    pub async fn start(public_url: &str, name: &str, accounts: Value) -> OidcProvider {
        let redirect_uri = format!("{public_url}/auth/oidc/{name}/callback");
        Self::start_on(free_port(), redirect_uri, accounts, "key-1").await
    }

    async fn start_on(port: u16, redirect_uri: String, accounts: Value, key_id: &str) -> OidcProvider {
        let clients = json!([{
            "client_id": OIDC_CLIENT_ID,
            "client_secret": OIDC_CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
        }]);
        let dir = repository_root().join("services/master/tests/oidc");
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("CLIENTS", clients.to_string())
            .env("ACCOUNTS", accounts.to_string())
            .env("KEY_ID", key_id)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the test OpenID Connect provider (deploy/services.sh ensure --tests installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let process = ChildGuard(child);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("the OpenID Connect provider starts within 30 s")
            .expect("read its output")
            .expect("its first line");
        assert!(line.starts_with("oidc-provider listening on"), "the provider said: {line}");
        OidcProvider { port, issuer: format!("http://127.0.0.1:{port}"), redirect_uri, accounts, _process: process }
    }

    /// Stops it and starts it again on the same port with a new signing key
    /// (a key rotation); everything it held in memory is gone.
    pub async fn restart_with_key(self, key_id: &str) -> OidcProvider {
        let OidcProvider { port, redirect_uri, accounts, _process, .. } = self;
        drop(_process);
        Self::start_on(port, redirect_uri, accounts, key_id).await
    }

    /// Arms a tampering of the next ID token the provider gives: `claims`
    /// replaced, signed by its own key (`provider`) or another (`other`).
    pub async fn tamper(&self, claims: Value, sign_with: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/__test/tamper", self.issuer))
            .json(&json!({ "claims": claims, "sign_with": sign_with }))
            .send()
            .await
            .expect("the provider answers");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// Signs `account` in at the provider, following the authorization URL
    /// buildmaster sent the browser to; answers the callback URL the
    /// provider sends the browser back to.
    pub async fn authorize(&self, authorize_url: &str, account: &str) -> String {
        let http = no_redirects();
        let mut jar = Jar::default();
        let response = jar.send(http.get(authorize_url)).await;
        let interaction = location(&response);
        assert!(interaction.starts_with("/interaction/"), "the provider asks who signs in: {interaction}");
        let page = jar.send(http.get(format!("{}{interaction}", self.issuer))).await;
        assert_eq!(page.status(), StatusCode::OK);
        let response =
            jar.send(form_post(&http, &format!("{}{interaction}/login", self.issuer), &[("login", account)])).await;
        let mut next = location(&response);
        // Back through the provider's `/auth/<uid>` to the client.
        while next.starts_with(&self.issuer) {
            next = location(&jar.send(http.get(&next)).await);
        }
        next
    }
}

/// Cookies of one site, sent back on every request to it.
#[derive(Default)]
pub struct Jar(BTreeMap<String, String>);

impl Jar {
    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let cookies: Vec<String> = self.0.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let request = if cookies.is_empty() { request } else { request.header("cookie", cookies.join("; ")) };
        let response = request.send().await.expect("the request is answered");
        self.take(&response);
        response
    }

    pub fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_owned(), value.to_owned());
    }
}

/// A POST of an HTML form.
pub fn form_post(http: &reqwest::Client, url: &str, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    http.post(url).header("content-type", "application/x-www-form-urlencoded").body(body)
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

pub fn location(response: &reqwest::Response) -> String {
    let location = response.headers().get("location").unwrap_or_else(|| {
        panic!("a redirect, not {} from {}", response.status(), response.url());
    });
    location.to_str().unwrap().to_owned()
}

// --- GitHub -----------------------------------------------------------------------

pub const GITHUB_CLIENT_ID: &str = "Iv1.buildmaster";
pub const GITHUB_CLIENT_SECRET: &str = "github-client-secret-not-to-print";

/// People at the stand-in: login -> organisations and `org/team` slugs.
#[derive(Default)]
pub struct GitHubPeople {
    pub organizations: HashMap<String, Vec<String>>,
    pub teams: HashMap<String, Vec<String>>,
}

#[derive(Default)]
struct GitHubState {
    people: GitHubPeople,
    /// Codes handed out: code -> (login, redirect_uri, PKCE challenge).
    codes: HashMap<String, (String, String, Option<String>)>,
    /// Access tokens: token -> login.
    tokens: HashMap<String, String>,
    /// Requests to the REST API, by path.
    pub api_calls: Vec<String>,
}

/// A GitHub (or GitHub Enterprise, with the API under `/api/v3`) stand-in.
#[derive(Clone)]
pub struct GitHub {
    pub url: String,
    state: Arc<Mutex<GitHubState>>,
}

impl GitHub {
    pub async fn start(people: GitHubPeople) -> GitHub {
        let state = Arc::new(Mutex::new(GitHubState { people, ..Default::default() }));
        let app = axum::Router::new()
            .route("/login/oauth/authorize", get(github_authorize_page).post(github_authorize))
            .route("/login/oauth/access_token", post(github_access_token))
            .route("/api/v3/user", get(github_user))
            .route("/api/v3/user/memberships/orgs", get(github_memberships))
            .route("/api/v3/user/teams", get(github_teams))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GitHub { url, state }
    }

    /// settings.yaml's `sign_in.github` for this stand-in (GitHub
    /// Enterprise's shape: its own web address, the API under `/api/v3`).
    pub fn settings_yaml(&self, refresh_seconds: u32) -> String {
        format!(
            "  github:\n    client_id: {GITHUB_CLIENT_ID}\n    client_secret: {GITHUB_CLIENT_SECRET}\n    url: {url}\n\
             \x20   api_url: {url}/api/v3\n    organizations:\n      python: [members]\n    teams:\n\
             \x20     python/core-developers: [developers]\n      python/buildmaster-admins: [admins]\n\
             \x20   users:\n      Erin: [admins]\n    roles_refresh_seconds: {refresh_seconds}\n",
            url = self.url
        )
    }

    pub fn remove_from_team(&self, login: &str, team: &str) {
        let mut state = self.state.lock().unwrap();
        state.people.teams.get_mut(login).unwrap().retain(|member_of| member_of != team);
    }

    /// Revokes every token of `login` (as "Revoke access" does).
    pub fn revoke(&self, login: &str) {
        self.state.lock().unwrap().tokens.retain(|_, owner| owner != login);
    }

    pub fn api_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().api_calls.clone()
    }

    /// Signs `login` in at GitHub and approves the app, as a person would
    /// on the authorize page; answers the callback URL GitHub sends the
    /// browser back to.
    pub async fn authorize(&self, authorize_url: &str, login: &str) -> String {
        let query = authorize_url.split_once('?').expect("a query").1;
        let mut form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        form.push(("login".into(), login.into()));
        let pairs: Vec<(&str, &str)> = form.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let response = form_post(&no_redirects(), &format!("{}/login/oauth/authorize", self.url), &pairs).send().await;
        location(&response.expect("the stand-in answers"))
    }
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The page where a person signed in at GitHub approves the app; here
/// they also say who they are.
async fn github_authorize_page(Query(query): Query<AuthorizeQuery>) -> Response {
    if query.client_id != GITHUB_CLIENT_ID {
        return (StatusCode::NOT_FOUND, "unknown client_id").into_response();
    }
    let hidden = |name: &str, value: &str| {
        format!(r#"<input type="hidden" name="{name}" value="{}">"#, value.replace('"', "&quot;"))
    };
    let fields = [
        hidden("client_id", &query.client_id),
        hidden("redirect_uri", &query.redirect_uri),
        hidden("state", &query.state),
        hidden("scope", query.scope.as_deref().unwrap_or_default()),
        hidden("code_challenge", query.code_challenge.as_deref().unwrap_or_default()),
        hidden("code_challenge_method", query.code_challenge_method.as_deref().unwrap_or_default()),
    ]
    .concat();
    Html(format!(
        r#"<!doctype html><title>Authorize buildmaster</title><h1>Authorize buildmaster</h1>
        <p>buildmaster would like to read your organisation and team membership (read:org).</p>
        <form method="post">{fields}<label>Username <input name="login" id="login"></label>
        <button id="authorize" type="submit">Authorize</button></form>"#
    ))
    .into_response()
}

#[derive(Deserialize)]
struct Approval {
    client_id: String,
    redirect_uri: String,
    state: String,
    login: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

async fn github_authorize(State(state): State<Arc<Mutex<GitHubState>>>, Form(approval): Form<Approval>) -> Response {
    if approval.client_id != GITHUB_CLIENT_ID {
        return (StatusCode::NOT_FOUND, "unknown client_id").into_response();
    }
    if !approval.code_challenge.is_empty() && approval.code_challenge_method != "S256" {
        return (StatusCode::BAD_REQUEST, "code_challenge_method must be S256").into_response();
    }
    let code = uuid::Uuid::new_v4().simple().to_string();
    let challenge = Some(approval.code_challenge).filter(|challenge| !challenge.is_empty());
    state.lock().unwrap().codes.insert(code.clone(), (approval.login, approval.redirect_uri.clone(), challenge));
    let separator = if approval.redirect_uri.contains('?') { '&' } else { '?' };
    let state_param: String = url::form_urlencoded::byte_serialize(approval.state.as_bytes()).collect();
    Redirect::to(&format!("{}{separator}code={code}&state={state_param}", approval.redirect_uri)).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    client_id: String,
    client_secret: String,
    code: String,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

/// GitHub answers a bad code with 200 and an `error`, as JSON when asked.
async fn github_access_token(
    State(state): State<Arc<Mutex<GitHubState>>>,
    headers: HeaderMap,
    Form(request): Form<TokenRequest>,
) -> Response {
    let json_wanted = headers.get("accept").is_some_and(|accept| accept.to_str().unwrap().contains("json"));
    let answer = |fields: Vec<(&str, String)>| {
        if json_wanted {
            let object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(name, value)| (name.to_owned(), Value::String(value))).collect();
            axum::Json(Value::Object(object)).into_response()
        } else {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(fields);
            form.finish().into_response()
        }
    };
    let error = |error: &str, description: &str| {
        answer(vec![("error", error.to_owned()), ("error_description", description.to_owned())])
    };
    if request.client_id != GITHUB_CLIENT_ID || request.client_secret != GITHUB_CLIENT_SECRET {
        return error("incorrect_client_credentials", "The client_id and/or client_secret passed are incorrect.");
    }
    let mut state = state.lock().unwrap();
    let Some((login, redirect_uri, challenge)) = state.codes.remove(&request.code) else {
        return error("bad_verification_code", "The code passed is incorrect or expired.");
    };
    if request.redirect_uri.as_deref().is_some_and(|given| given != redirect_uri) {
        return error(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
        );
    }
    if let Some(challenge) = challenge {
        let verifier = request.code_verifier.unwrap_or_default();
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if computed != challenge {
            return error("bad_verification_code", "The code_verifier does not match the code_challenge.");
        }
    }
    let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
    state.tokens.insert(token.clone(), login);
    answer(vec![("access_token", token), ("token_type", "bearer".into()), ("scope", "read:org".into())])
}

fn bad_credentials() -> Response {
    let body = json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest" });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// The login a request's `Authorization: Bearer` token belongs to.
fn caller(state: &Mutex<GitHubState>, headers: &HeaderMap, path: &str) -> Option<String> {
    let mut state = state.lock().unwrap();
    state.api_calls.push(path.to_owned());
    let token = headers.get("authorization")?.to_str().ok()?;
    let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("token "))?;
    state.tokens.get(token).cloned()
}

async fn github_user(State(state): State<Arc<Mutex<GitHubState>>>, headers: HeaderMap) -> Response {
    match caller(&state, &headers, "/user") {
        Some(login) => axum::Json(json!({ "login": login, "id": 1, "type": "User" })).into_response(),
        None => bad_credentials(),
    }
}

#[derive(Deserialize)]
struct Page {
    page: Option<usize>,
    per_page: Option<usize>,
}

/// One page of `items` with GitHub's `Link` header (absolute URLs).
fn paged(headers: &HeaderMap, path: &str, items: Vec<Value>, page: &Page) -> Response {
    let host = headers.get("host").and_then(|host| host.to_str().ok()).unwrap_or("127.0.0.1");
    let per_page = page.per_page.unwrap_or(30).clamp(1, 100);
    let number = page.page.unwrap_or(1).max(1);
    let chunk: Vec<Value> = items.iter().skip((number - 1) * per_page).take(per_page).cloned().collect();
    let mut response = axum::Json(Value::Array(chunk)).into_response();
    if number * per_page < items.len() {
        let link = format!(r#"<http://{host}/api/v3{path}?per_page={per_page}&page={}>; rel="next""#, number + 1);
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

async fn github_memberships(
    State(state): State<Arc<Mutex<GitHubState>>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Response {
    let Some(login) = caller(&state, &headers, "/user/memberships/orgs") else { return bad_credentials() };
    let organizations = state.lock().unwrap().people.organizations.get(&login).cloned().unwrap_or_default();
    let items = organizations
        .iter()
        .map(|org| json!({ "state": "active", "role": "member", "organization": { "login": org } }))
        .collect();
    paged(&headers, "/user/memberships/orgs", items, &page)
}

async fn github_teams(
    State(state): State<Arc<Mutex<GitHubState>>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Response {
    let Some(login) = caller(&state, &headers, "/user/teams") else { return bad_credentials() };
    let teams = state.lock().unwrap().people.teams.get(&login).cloned().unwrap_or_default();
    let items = teams
        .iter()
        .map(|team| {
            let (org, slug) = team.split_once('/').unwrap();
            json!({ "slug": slug, "name": slug, "organization": { "login": org } })
        })
        .collect();
    paged(&headers, "/user/teams", items, &page)
}
