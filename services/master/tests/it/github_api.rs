//! A stand-in for GitHub's REST API and Discord's webhooks, which cannot be
//! reached from here. It checks each call as their documentation defines
//! it (paths, authentication, headers, bodies and their limits), answers
//! as they do, errors and rate limits included, and keeps what it was sent
//! for the tests to read: commit statuses, comments, labels taken off,
//! Discord messages, GitHub App installation tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The token settings.yaml gives buildmaster for GitHub.
pub const TOKEN: &str = "ghs_a-token-that-may-write";

/// What the stand-in answers instead of success, in turn.
#[derive(Debug, Clone, Copy)]
pub enum Trouble {
    /// 500, as GitHub answers when it is having a bad day.
    ServerError,
    /// 403 with `x-ratelimit-remaining: 0`: the primary rate limit, reset
    /// in a second.
    RateLimited,
    /// 429 with `Retry-After: 1` (Discord adds `retry_after` in its body).
    TooManyRequests,
    /// No answer for longer than buildmaster waits, then 504.
    Hang,
}

/// How long a hanging target keeps the caller waiting.
pub const HANG: Duration = Duration::from_secs(15);

/// One call the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Value,
    /// What it answered.
    pub status: u16,
    pub at: Instant,
}

/// What the stand-in knows and was sent; tests arrange and read it.
#[derive(Clone, Default)]
pub struct StandIn {
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// GitHub answers 500 to every call until then.
    pub github_down_until: Arc<Mutex<Option<Instant>>>,
    /// The public key of the GitHub App it knows, and the installation
    /// tokens it sold, with how long each lives.
    pub app_public_key: Arc<Mutex<Option<String>>>,
    pub installation_tokens: Arc<Mutex<Vec<String>>>,
    pub token_lifetime: Arc<Mutex<Duration>>,
    pub github_trouble: Arc<Mutex<VecDeque<Trouble>>>,
    pub discord_trouble: Arc<Mutex<VecDeque<Trouble>>>,
    /// Comments on issues and pull requests: (id, number, body).
    pub comments: Arc<Mutex<Vec<(i64, i64, String)>>>,
    /// This many comments are made but answered 502, as when GitHub's
    /// answer is lost on its way.
    pub lose_comment_answers: Arc<Mutex<u32>>,
    /// The people who may write to every repository; others may read.
    pub writers: Arc<Mutex<Vec<String>>>,
    /// The head commit of each open pull request, by number.
    pub pull_heads: Arc<Mutex<HashMap<i64, String>>>,
    /// Labels taken off pull requests, in order.
    pub labels_taken_off: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    pub fn calls(&self, prefix: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|call| call.path.starts_with(prefix)).cloned().collect()
    }

    fn record(&self, path: String, body: Value, status: StatusCode) {
        self.calls.lock().unwrap().push(Call { path, body, status: status.as_u16(), at: Instant::now() });
    }
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}

/// `POST /repos/{owner}/{repo}/statuses/{sha}`, as GitHub's REST API
/// documents it.
async fn github_status(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, sha)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/statuses/{sha}");
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let refuse = |status: StatusCode, message: &str| {
        stand_in.record(path.clone(), body.clone(), status);
        answer(status, &[], json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }))
    };
    if header("user-agent").is_empty() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    let sold = header("authorization")
        .strip_prefix("Bearer ")
        .is_some_and(|token| stand_in.installation_tokens.lock().unwrap().iter().any(|sold| sold == token));
    if header("authorization") != format!("Bearer {TOKEN}")
        && header("authorization") != format!("token {TOKEN}")
        && !sold
    {
        return refuse(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    if header("accept") != "application/vnd.github+json" || header("x-github-api-version") != "2022-11-28" {
        return refuse(StatusCode::BAD_REQUEST, "unexpected Accept or X-GitHub-Api-Version");
    }
    let valid = sha.len() == 40
        && sha.chars().all(|c| c.is_ascii_hexdigit())
        && matches!(body["state"].as_str(), Some("error" | "failure" | "pending" | "success"))
        && body["context"].as_str().is_some_and(|context| !context.is_empty())
        && body["target_url"].as_str().is_some_and(|url| url.starts_with("https://"))
        && body["description"].as_str().is_some_and(|text| text.chars().count() <= 140);
    if !valid {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let down = stand_in.github_down_until.lock().unwrap().is_some_and(|until| Instant::now() < until);
    let trouble = if down { Some(Trouble::ServerError) } else { stand_in.github_trouble.lock().unwrap().pop_front() };
    match trouble {
        Some(Trouble::ServerError) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
        Some(Trouble::Hang) => {
            tokio::time::sleep(HANG).await;
            refuse(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
        }
        Some(Trouble::RateLimited) => {
            stand_in.record(path, body, StatusCode::FORBIDDEN);
            let reset = (chrono::Utc::now().timestamp() + 1).to_string();
            answer(
                StatusCode::FORBIDDEN,
                &[
                    ("x-ratelimit-limit", "5000".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset),
                ],
                json!({ "message": "API rate limit exceeded" }),
            )
        }
        Some(Trouble::TooManyRequests) => {
            stand_in.record(path, body, StatusCode::TOO_MANY_REQUESTS);
            answer(
                StatusCode::TOO_MANY_REQUESTS,
                &[("retry-after", "1".into())],
                json!({ "message": "secondary rate limit" }),
            )
        }
        None => {
            stand_in.record(path, body.clone(), StatusCode::CREATED);
            answer(StatusCode::CREATED, &[], json!({ "id": 1, "state": body["state"], "context": body["context"] }))
        }
    }
}

/// Why GitHub would refuse a call with these headers, if it would.
fn github_refuses(stand_in: &StandIn, headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    if header("user-agent").is_empty() {
        return Some((StatusCode::FORBIDDEN, "Request forbidden by administrative rules"));
    }
    let sold = header("authorization")
        .strip_prefix("Bearer ")
        .is_some_and(|token| stand_in.installation_tokens.lock().unwrap().iter().any(|sold| sold == token));
    if header("authorization") != format!("Bearer {TOKEN}") && !sold {
        return Some((StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    if header("accept") != "application/vnd.github+json" || header("x-github-api-version") != "2022-11-28" {
        return Some((StatusCode::BAD_REQUEST, "unexpected Accept or X-GitHub-Api-Version"));
    }
    None
}

/// GitHub's answer to a call it refuses for its headers, recorded.
fn refusal(stand_in: &StandIn, headers: &HeaderMap, path: &str, body: &Value) -> Option<Response> {
    let (status, message) = github_refuses(stand_in, headers)?;
    stand_in.record(path.to_owned(), body.clone(), status);
    Some(answer(status, &[], json!({ "message": message })))
}

/// A comment's text as GitHub takes it (1 to 65,536 characters), or its
/// refusal of the call, recorded.
fn comment_text(stand_in: &StandIn, headers: &HeaderMap, path: &str, body: &Value) -> Result<String, Box<Response>> {
    if let Some(refused) = refusal(stand_in, headers, path, body) {
        return Err(Box::new(refused));
    }
    match body["body"].as_str().filter(|text| !text.is_empty() && text.chars().count() <= 65_536) {
        Some(text) => Ok(text.to_owned()),
        None => {
            stand_in.record(path.to_owned(), body.clone(), StatusCode::UNPROCESSABLE_ENTITY);
            Err(Box::new(answer(StatusCode::UNPROCESSABLE_ENTITY, &[], json!({ "message": "Validation Failed" }))))
        }
    }
}

/// A comment as GitHub's REST API shows one.
fn comment_json(owner: &str, repo: &str, (id, number, body): &(i64, i64, String)) -> Value {
    json!({
        "id": id,
        "body": body,
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}#issuecomment-{id}"),
        "user": { "login": "buildmaster[bot]" },
    })
}

/// `POST /repos/{owner}/{repo}/issues/{number}/comments` ("Create an issue
/// comment"; a pull request is an issue).
async fn make_comment(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/{number}/comments");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = match comment_text(&stand_in, &headers, &path, &body) {
        Ok(text) => text,
        Err(refused) => return *refused,
    };
    let comment = {
        let mut comments = stand_in.comments.lock().unwrap();
        let comment = (comments.len() as i64 + 1001, number, text);
        comments.push(comment.clone());
        comment
    };
    let lost = {
        let mut lose = stand_in.lose_comment_answers.lock().unwrap();
        let lost = *lose > 0;
        *lose = lose.saturating_sub(1);
        lost
    };
    if lost {
        stand_in.record(path, body, StatusCode::BAD_GATEWAY);
        return answer(StatusCode::BAD_GATEWAY, &[], json!({ "message": "Server Error" }));
    }
    stand_in.record(path, body, StatusCode::CREATED);
    answer(StatusCode::CREATED, &[], comment_json(&owner, &repo, &comment))
}

/// `GET /repos/{owner}/{repo}/issues/{number}/comments`, oldest first,
/// `per_page` (at most 100) at a time.
async fn list_comments(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, i64)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/{number}/comments");
    if let Some(refused) = refusal(&stand_in, &headers, &path, &Value::Null) {
        return refused;
    }
    let per_page: usize = query.get("per_page").and_then(|n| n.parse().ok()).unwrap_or(30).min(100);
    let page: usize = query.get("page").and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
    let comments = stand_in.comments.lock().unwrap().clone();
    let listed: Vec<Value> = comments
        .iter()
        .filter(|(_, of, _)| *of == number)
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|comment| comment_json(&owner, &repo, comment))
        .collect();
    stand_in.record(path, Value::Null, StatusCode::OK);
    answer(StatusCode::OK, &[], Value::Array(listed))
}

/// `PATCH /repos/{owner}/{repo}/issues/comments/{id}` ("Update an issue
/// comment").
async fn edit_comment(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/comments/{id}");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = match comment_text(&stand_in, &headers, &path, &body) {
        Ok(text) => text,
        Err(refused) => return *refused,
    };
    let mut comments = stand_in.comments.lock().unwrap();
    let Some(comment) = comments.iter_mut().find(|(known, _, _)| *known == id) else {
        drop(comments);
        stand_in.record(path, body, StatusCode::NOT_FOUND);
        return answer(StatusCode::NOT_FOUND, &[], json!({ "message": "Not Found" }));
    };
    comment.2 = text;
    let edited = comment_json(&owner, &repo, comment);
    drop(comments);
    stand_in.record(path, body, StatusCode::OK);
    answer(StatusCode::OK, &[], edited)
}

/// `POST /api/webhooks/{id}/{token}`, Discord's "Execute Webhook".
async fn discord_webhook(
    State(stand_in): State<StandIn>,
    UrlPath((id, token)): UrlPath<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/api/webhooks/{id}/{token}");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if token != "webhook-token" {
        stand_in.record(path, body, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, &[], json!({ "message": "Invalid Webhook Token", "code": 50027 }));
    }
    let content = body["content"].as_str().unwrap_or_default();
    if content.is_empty() || content.chars().count() > 2000 {
        stand_in.record(path, body, StatusCode::BAD_REQUEST);
        return answer(StatusCode::BAD_REQUEST, &[], json!({ "message": "Invalid Form Body", "code": 50035 }));
    }
    let trouble = stand_in.discord_trouble.lock().unwrap().pop_front();
    if let Some(Trouble::Hang) = trouble {
        tokio::time::sleep(HANG).await;
        stand_in.record(path, body, StatusCode::GATEWAY_TIMEOUT);
        return answer(StatusCode::GATEWAY_TIMEOUT, &[], json!({ "message": "upstream timed out" }));
    }
    if trouble.is_some() {
        stand_in.record(path, body, StatusCode::TOO_MANY_REQUESTS);
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "1".into())],
            json!({ "message": "You are being rate limited.", "retry_after": 0.8, "global": false }),
        );
    }
    stand_in.record(path, body.clone(), StatusCode::OK);
    if query.get("wait").map(String::as_str) == Some("true") {
        answer(StatusCode::OK, &[], json!({ "id": "1180000000000000001", "content": content }))
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// `POST /app/installations/{id}/access_tokens`, paid for with the App's
/// JWT (RS256, issued by its id, living at most ten minutes).
async fn installation_token(
    State(stand_in): State<StandIn>,
    UrlPath(installation): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    let refuse = |status: StatusCode, message: &str| answer(status, &[], json!({ "message": message }));
    let Some(public_key) = stand_in.app_public_key.lock().unwrap().clone() else {
        return refuse(StatusCode::NOT_FOUND, "Not Found");
    };
    let jwt = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&["4242"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key.as_bytes()).unwrap();
    let Some(Ok(claims)) = jwt.map(|jwt| jsonwebtoken::decode::<Value>(jwt, &key, &validation)) else {
        return refuse(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded");
    };
    let (iat, exp) = (claims.claims["iat"].as_i64().unwrap_or(0), claims.claims["exp"].as_i64().unwrap_or(0));
    if exp - iat > 600 || iat > chrono::Utc::now().timestamp() {
        return refuse(StatusCode::UNAUTHORIZED, "'Expiration time' claim ('exp') is too far in the future");
    }
    if installation != 99 {
        return refuse(StatusCode::NOT_FOUND, "Not Found");
    }
    let mut tokens = stand_in.installation_tokens.lock().unwrap();
    let token = format!("ghs_installation-{}", tokens.len() + 1);
    tokens.push(token.clone());
    let lifetime = *stand_in.token_lifetime.lock().unwrap();
    let expires_at = chrono::Utc::now() + chrono::Duration::from_std(lifetime).unwrap();
    answer(StatusCode::CREATED, &[], json!({ "token": token, "expires_at": expires_at.to_rfc3339() }))
}

/// `GET /repos/{owner}/{repo}/collaborators/{username}/permission`
/// ("Get repository permissions for a user").
async fn permission(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, user)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/collaborators/{user}/permission");
    if let Some(refused) = refusal(&stand_in, &headers, &path, &Value::Null) {
        return refused;
    }
    let writes = stand_in.writers.lock().unwrap().contains(&user);
    stand_in.record(path, Value::Null, StatusCode::OK);
    let permission = if writes { "write" } else { "read" };
    answer(StatusCode::OK, &[], json!({ "permission": permission, "role_name": permission, "user": { "login": user } }))
}

/// `GET /repos/{owner}/{repo}/pulls/{number}` ("Get a pull request"): 404
/// for one it does not know.
async fn pull_request(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/pulls/{number}");
    if let Some(refused) = refusal(&stand_in, &headers, &path, &Value::Null) {
        return refused;
    }
    let Some(head) = stand_in.pull_heads.lock().unwrap().get(&number).cloned() else {
        stand_in.record(path, Value::Null, StatusCode::NOT_FOUND);
        return answer(StatusCode::NOT_FOUND, &[], json!({ "message": "Not Found" }));
    };
    stand_in.record(path, Value::Null, StatusCode::OK);
    answer(StatusCode::OK, &[], json!({ "number": number, "state": "open", "head": { "sha": head } }))
}

/// `DELETE /repos/{owner}/{repo}/issues/{number}/labels/{name}` ("Remove
/// a label from an issue"): 404 when the label is not on it.
async fn remove_label(
    State(stand_in): State<StandIn>,
    UrlPath((owner, repo, number, label)): UrlPath<(String, String, i64, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/{number}/labels/{label}");
    if let Some(refused) = refusal(&stand_in, &headers, &path, &Value::Null) {
        return refused;
    }
    let mut taken = stand_in.labels_taken_off.lock().unwrap();
    if taken.contains(&label) {
        drop(taken);
        stand_in.record(path, Value::Null, StatusCode::NOT_FOUND);
        return answer(StatusCode::NOT_FOUND, &[], json!({ "message": "Label does not exist" }));
    }
    taken.push(label);
    drop(taken);
    stand_in.record(path, Value::Null, StatusCode::OK);
    answer(StatusCode::OK, &[], json!([]))
}

/// Serves `stand_in` on a free port of 127.0.0.1; its base URL.
pub async fn serve(stand_in: StandIn) -> String {
    let app = axum::Router::new()
        .route("/repos/{owner}/{repo}/statuses/{sha}", axum::routing::post(github_status))
        .route("/app/installations/{id}/access_tokens", axum::routing::post(installation_token))
        .route("/api/webhooks/{id}/{token}", axum::routing::post(discord_webhook))
        .route("/repos/{owner}/{repo}/issues/{number}/comments", axum::routing::post(make_comment).get(list_comments))
        .route("/repos/{owner}/{repo}/issues/comments/{id}", axum::routing::patch(edit_comment))
        .route("/repos/{owner}/{repo}/collaborators/{user}/permission", axum::routing::get(permission))
        .route("/repos/{owner}/{repo}/pulls/{number}", axum::routing::get(pull_request))
        .route("/repos/{owner}/{repo}/issues/{number}/labels/{label}", axum::routing::delete(remove_label))
        .with_state(stand_in);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}
