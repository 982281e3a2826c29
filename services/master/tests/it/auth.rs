//! People and scripts: reading is public; with users in settings.yaml,
//! control actions need a login (session cookie plus CSRF token) or an API
//! token, and a role the action allows. Through HAProxy with two masters, so
//! a session made on one is honoured by the other.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::harness::{TestStack, master_yaml};

/// A JSON-RPC call with the given extra headers; (status, body).
async fn call(
    stack: &TestStack,
    base: &str,
    path: &str,
    method: &str,
    params: Value,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = stack
        .http
        .post(format!("{base}/api/v2{path}"))
        .json(&json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 1 }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("POST reaches the stack");
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// Logs in; (status, cookie header value, body).
async fn log_in(stack: &TestStack, username: &str, password: &str) -> (StatusCode, Option<String>, Value) {
    let response = stack
        .http
        .post(format!("{}/auth/login", stack.base_url))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    let cookie = response.headers().get(SET_COOKIE).map(|value| value.to_str().unwrap().to_owned());
    (response.status(), cookie, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_actions_need_a_login_or_a_token_and_a_role_that_allows_them() {
    let mut stack =
        TestStack::new(&master_yaml(&[("slow", "- name: work\n  command: echo begin; sleep 30\n")]), &["slow"]).await;
    let (token, token_sha256) = master::auth::new_token();
    stack.append_settings(&format!(
        "users:\n  - name: alice\n    password_hash: '{}'\n    roles: [developers]\n\
         \x20 - name: root\n    password_hash: '{}'\n    roles: [admins]\n\
         \x20 - name: release-bot\n    roles: [developers]\n    token_sha256: [{token_sha256}]\n\
         authorization:\n  force: [developers, admins]\n  stop_build: [developers, admins]\n",
        master::auth::hash_password("alice-password-1"),
        master::auth::hash_password("root-password-12"),
    ));
    let a = format!("http://{}", stack.start_master("a").await);
    let b = format!("http://{}", stack.start_master("b").await);
    stack.start_haproxy().await;
    stack.start_worker("w1");
    let base = stack.base_url.clone();
    let force = json!({ "builderNames": ["slow"] });

    // Reading is public; forcing is not, and nothing is written.
    assert_eq!(stack.get("/api/v2/builds").await["meta"]["total"], 0);
    let anonymous = stack
        .http
        .post(format!("{base}/api/v2/forceschedulers/force"))
        .json(&json!({ "jsonrpc": "2.0", "method": "force", "params": force, "id": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer realm=\"buildmaster\"");
    let (status, body) = call(&stack, &base, "/forceschedulers/force", "force", force.clone(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("log in to force builds"), "{body}");
    assert_eq!(stack.get("/api/v2/buildrequests").await["meta"]["total"], 0, "a refused force writes nothing");

    // A wrong password and an unknown user get the same answer.
    let (wrong, _, body) = log_in(&stack, "alice", "not-her-password").await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED, "{body}");
    let (unknown, _, same) = log_in(&stack, "mallory", "alice-password-1").await;
    assert_eq!((unknown, &same), (StatusCode::UNAUTHORIZED, &body));

    // alice logs in on master A; her cookie is HttpOnly, SameSite, Secure.
    let (status, cookie, body) = log_in(&stack, "alice", "alice-password-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = cookie.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(body["roles"], json!(["developers"]));

    // The cookie alone is not enough (another site could make the browser
    // send it); with the CSRF token it forces, on either master.
    let with_cookie = [(COOKIE.as_str(), session.as_str())];
    let (status, body) = call(&stack, &a, "/forceschedulers/force", "force", force.clone(), &with_cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("x-csrf-token"), "{body}");
    let with_csrf = [(COOKIE.as_str(), session.as_str()), ("X-CSRF-Token", csrf.as_str())];
    let (status, body) = call(&stack, &b, "/forceschedulers/force", "force", force.clone(), &with_csrf).await;
    assert_eq!(status, StatusCode::OK, "a session made on master A works on master B: {body}");
    let request = body["result"][1]["1"].as_i64().expect("a build request id");
    let build = stack.wait_for_build_to_start(request).await;
    let build_id = build["buildid"].as_i64().unwrap();
    let properties = stack.get(&format!("/api/v2/builds/{build_id}?property=owner")).await;
    assert_eq!(properties["builds"][0]["properties"]["owner"][0], "alice", "she owns what she forced");

    // Her role does not allow rebuilds (admins only, the default).
    let (status, body) = call(&stack, &a, &format!("/builds/{build_id}"), "rebuild", json!({}), &with_csrf).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let said = body["error"]["message"].as_str().unwrap();
    assert!(said.contains("user `alice` may not rebuild builds") && said.contains("`admins`"), "{said}");

    // A script's token forces; a wrong token is refused.
    let bearer = format!("Bearer {token}");
    let (status, body) =
        call(&stack, &base, "/forceschedulers/force", "force", force.clone(), &[(AUTHORIZATION.as_str(), &bearer)])
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let scripted = body["result"][1]["1"].as_i64().unwrap();
    let wrong = [(AUTHORIZATION.as_str(), "Bearer bm_0000")];
    let (status, body) = call(&stack, &base, "/forceschedulers/force", "force", force.clone(), &wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // root (admins) may manage workers; alice may not; alice stops the build.
    let (status, body) = call(&stack, &base, "/workers/w1", "pause", json!({}), &with_csrf).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, root_cookie, root) = log_in(&stack, "root", "root-password-12").await;
    let root_session = root_cookie.unwrap().split(';').next().unwrap().to_owned();
    let as_root = [(COOKIE.as_str(), root_session.as_str()), ("X-CSRF-Token", root["csrf_token"].as_str().unwrap())];
    let (status, body) = call(&stack, &base, "/workers/w1", "pause", json!({}), &as_root).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&stack, &base, "/workers/w1", "unpause", json!({}), &as_root).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&stack, &base, &format!("/builds/{build_id}"), "stop", json!({}), &with_csrf).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stack.wait_for_build(request).await["results"], 6, "CANCELLED");
    let (status, _) = call(&stack, &base, &format!("/buildrequests/{scripted}"), "cancel", json!({}), &as_root).await;
    assert_eq!(status, StatusCode::OK);

    // /auth/me says who is logged in; after logout the cookie opens nothing.
    let me: Value =
        stack.http.get(format!("{base}/auth/me")).header(COOKIE, &session).send().await.unwrap().json().await.unwrap();
    assert_eq!((me["user"].as_str(), me["csrf_token"].as_str()), (Some("alice"), Some(csrf.as_str())));
    let logout = stack.http.post(format!("{base}/auth/logout")).header(COOKIE, &session).send().await.unwrap();
    assert_eq!(logout.status(), StatusCode::OK);
    let (status, body) = call(&stack, &base, "/forceschedulers/force", "force", force.clone(), &with_csrf).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A password changed in settings.yaml ends the sessions opened with the
    // old one, on every master, once they reload.
    let (status, _) = call(&stack, &base, "/workers/w1", "pause", json!({}), &as_root).await;
    assert_eq!(status, StatusCode::OK, "root's session works before the change");
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let root_hash = settings.lines().find(|l| l.contains("password_hash")).map(str::to_owned);
    let mut lines: Vec<String> = settings.lines().map(str::to_owned).collect();
    let root_line = lines.iter().rposition(|l| l.contains("password_hash")).unwrap();
    assert_ne!(Some(&lines[root_line]), root_hash.as_ref(), "root's is the second hash");
    lines[root_line] = format!("    password_hash: '{}'", master::auth::hash_password("root-password-new"));
    std::fs::write(&stack.settings_path, lines.join("\n") + "\n").unwrap();
    stack.reload_masters();
    for base in [&a, &b] {
        stack
            .eventually(10, "root's old session refused", async || {
                let (status, _) = call(&stack, base, "/workers/w1", "unpause", json!({}), &as_root).await;
                (status == StatusCode::UNAUTHORIZED).then_some(())
            })
            .await;
    }
    let (status, _, _) = log_in(&stack, "root", "root-password-new").await;
    assert_eq!(status, StatusCode::OK, "the new password logs in");
}
