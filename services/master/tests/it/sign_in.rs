//! Signing in as people already are: with an OpenID Connect provider (a
//! real one, `oidc-provider`), with GitHub (a stand-in of its OAuth flow
//! and REST API), and acting as the owner of what one forced. Through
//! HAProxy with two masters: a sign-in started on one master ends on
//! whichever takes the callback.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestStack, master_yaml};
use crate::identity_providers::{
    GitHub, GitHubPeople, Jar, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, location, no_redirects,
};

const SLOW: &str = "- name: work\n  command: echo begin; sleep 30\n";

/// Starts a sign-in at the stack: the provider's authorization URL, with
/// the stack's cookies (the sign-in cookie) in `jar`.
async fn start(stack: &TestStack, jar: &mut Jar, path: &str) -> String {
    let response = jar.send(no_redirects().get(format!("{}{path}", stack.base_url))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}: {}", response.text().await.unwrap_or_default());
    location(&response)
}

/// Comes back to the stack at the provider's callback URL: the answer, and
/// the session cookie if one was set.
async fn come_back(jar: &mut Jar, callback: &str) -> (StatusCode, String, Option<String>) {
    let before = jar.get("buildmaster_session").map(str::to_owned);
    let response = jar.send(no_redirects().get(callback)).await;
    let status = response.status();
    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap_or_default();
    let session = jar.get("buildmaster_session").map(str::to_owned).filter(|now| Some(now) != before.as_ref());
    (status, location.unwrap_or(body), session)
}

/// Who the stack says the jar's session is.
async fn me(stack: &TestStack, base: &str, jar: &mut Jar) -> Value {
    jar.send(stack.http.get(format!("{base}/auth/me"))).await.json().await.unwrap()
}

/// Forces `builder` with the jar's session and its CSRF token; the status.
async fn force_as(stack: &TestStack, jar: &mut Jar, builder: &str) -> (StatusCode, Value) {
    let csrf = me(stack, &stack.base_url, jar).await["csrf_token"].as_str().unwrap_or_default().to_owned();
    let request = stack
        .http
        .post(format!("{}/api/v2/forceschedulers/force", stack.base_url))
        .header("x-csrf-token", csrf)
        .json(&json!({ "jsonrpc": "2.0", "method": "force", "params": { "builderNames": [builder] }, "id": 1 }));
    let response = jar.send(request).await;
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// A JSON-RPC call on `path` with the jar's session; the status and body.
async fn control_as(stack: &TestStack, jar: &mut Jar, path: &str, method: &str) -> (StatusCode, Value) {
    let csrf = me(stack, &stack.base_url, jar).await["csrf_token"].as_str().unwrap_or_default().to_owned();
    let request = stack
        .http
        .post(format!("{}/api/v2{path}", stack.base_url))
        .header("x-csrf-token", csrf)
        .json(&json!({ "jsonrpc": "2.0", "method": method, "params": {}, "id": 1 }));
    let response = jar.send(request).await;
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

fn oidc_settings(provider: &OidcProvider) -> String {
    format!(
        "sign_in:\n  oidc:\n    - name: sso\n      title: Example SSO\n      issuer: {issuer}\n      client_id: {OIDC_CLIENT_ID}\n\
         \x20     client_secret: {OIDC_CLIENT_SECRET}\n      scopes: [openid, profile, email, groups]\n\
         \x20     roles_claim: groups\n      roles:\n        ci-admins: [admins]\n        ci-developers: [developers]\n\
         \x20   - name: partners\n      issuer: {issuer}\n      client_id: partners\n      client_secret: partners-secret\n\
         authorization:\n  force: [developers, admins]\n",
        issuer = provider.issuer
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_connect_sign_in_checks_state_nonce_signature_issuer_audience_and_expiry() {
    let mut stack = TestStack::new(&master_yaml(&[("slow", SLOW)]), &["slow"]).await;
    let public = stack.public_url();
    let accounts = json!({
        "alice": { "preferred_username": "alice", "email": "alice@example.org", "groups": ["ci-developers"] },
        "root": { "preferred_username": "root", "groups": ["ci-admins", "unrelated"] },
    });
    let mut provider = OidcProvider::start(&public, "sso", accounts).await;
    stack.append_settings(&oidc_settings(&provider));
    let a = format!("http://{}", stack.start_master("a").await);
    let b = format!("http://{}", stack.start_master("b").await);
    stack.start_haproxy().await;
    stack.start_worker("w1");

    // The login page offers the provider.
    let mut anonymous = Jar::default();
    let nobody = me(&stack, &a, &mut anonymous).await;
    assert_eq!(nobody["user"], Value::Null);
    assert_eq!(nobody["providers"][0]["login"], "/auth/oidc/sso/login", "{nobody}");
    assert_eq!(nobody["providers"][0]["title"], "Example SSO");
    assert_eq!(nobody["providers"][1]["login"], "/auth/oidc/partners/login", "each provider is a button");

    // alice signs in and comes back where she was, a developer by her group.
    let mut jar = Jar::default();
    let authorize = start(&stack, &mut jar, "/auth/oidc/sso/login?return_to=/builders").await;
    assert!(authorize.starts_with(&provider.issuer), "{authorize}");
    for asked in ["code_challenge_method=S256", "nonce=", "state=", "scope=openid+profile+email+groups"] {
        assert!(authorize.contains(asked), "{asked} in {authorize}");
    }
    let callback = provider.authorize(&authorize, "alice").await;
    assert!(callback.starts_with(&format!("{public}/auth/oidc/sso/callback?")), "{callback}");
    let (status, went_to, session) = come_back(&mut jar, &callback).await;
    assert_eq!((status, went_to.as_str()), (StatusCode::SEE_OTHER, "/builders"));
    assert!(session.is_some());
    // The session made by whichever master took the callback holds on both.
    for base in [&a, &b] {
        let alice = me(&stack, base, &mut jar).await;
        assert_eq!((&alice["user"], &alice["provider"]), (&json!("alice"), &json!("oidc:sso")), "{alice}");
        assert_eq!(alice["roles"], json!(["developers"]));
    }
    let (status, body) = force_as(&stack, &mut jar, "slow").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The same callback again (a replay) opens nothing.
    let mut replay = Jar::default();
    let state = callback.split("state=").nth(1).unwrap().split('&').next().unwrap();
    replay.insert("buildmaster_sign_in", state);
    let (status, said, session) = come_back(&mut replay, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{said}");
    assert!(said.contains("expired or was already used"), "{said}");
    assert!(session.is_none());

    // A callback for a sign-in this browser did not start: refused.
    let mut mine = Jar::default();
    let authorize = start(&stack, &mut mine, "/auth/oidc/sso/login").await;
    let callback = provider.authorize(&authorize, "alice").await;
    let mut victim = Jar::default();
    victim.insert("buildmaster_sign_in", "another-state");
    let (status, said, session) = come_back(&mut victim, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{said}");
    assert!(said.contains("did not start in this browser"), "{said}");
    assert!(session.is_none());

    // Sent elsewhere after signing in: refused before leaving.
    for elsewhere in ["https://evil.example/", "//evil.example/x"] {
        let url = format!("{}/auth/oidc/sso/login?return_to={elsewhere}", stack.base_url);
        let response = no_redirects().get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{elsewhere}");
        assert!(response.headers().get("location").is_none());
    }

    // A token for another sign-in (the nonce changed on the way): refused.
    let mut jar2 = Jar::default();
    let authorize = start(&stack, &mut jar2, "/auth/oidc/sso/login").await;
    let nonce = authorize.split("nonce=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let callback = provider.authorize(&authorize.replace(&nonce, "someone-elses-nonce"), "alice").await;
    let (status, said, session) = come_back(&mut jar2, &callback).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{said}");
    assert!(said.contains("nonce is not this sign-in"), "{said}");
    assert!(session.is_none());

    // Tokens changed on the way, each refused for what is wrong with it.
    let now = chrono::Utc::now().timestamp();
    let cases = [
        (json!({}), "other", "signature does not match"),
        (json!({ "exp": now - 120, "iat": now - 720 }), "provider", "has expired"),
        (json!({ "iss": "http://127.0.0.1:1" }), "provider", "issuer is not the provider"),
        (json!({ "aud": "someone-else" }), "provider", "meant for another client"),
    ];
    for (claims, key, why) in cases {
        let mut jar = Jar::default();
        let authorize = start(&stack, &mut jar, "/auth/oidc/sso/login").await;
        provider.tamper(claims.clone(), key).await;
        let callback = provider.authorize(&authorize, "alice").await;
        let (status, said, session) = come_back(&mut jar, &callback).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{claims} {key}: {said}");
        assert!(said.contains(why), "{claims} {key}: expected `{why}` in {said}");
        assert!(session.is_none(), "{claims}");
    }

    // The provider rotates its key: the new one is read, root signs in,
    // an admin by group (the unrelated group gives nothing).
    provider = provider.restart_with_key("key-2").await;
    let mut root = Jar::default();
    let authorize = start(&stack, &mut root, "/auth/oidc/sso/login").await;
    let callback = provider.authorize(&authorize, "root").await;
    let (status, said, _) = come_back(&mut root, &callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{said}");
    assert_eq!(me(&stack, &b, &mut root).await["roles"], json!(["admins"]));

    // Logging out on one master ends the session on every one; root's
    // goes on.
    let alices = jar.get("buildmaster_session").unwrap().to_owned();
    let response = jar.send(stack.http.post(format!("{a}/auth/logout"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut kept = Jar::default();
    kept.insert("buildmaster_session", &alices);
    assert_eq!(me(&stack, &b, &mut kept).await["user"], Value::Null, "a copy of the cookie opens nothing");
    assert_eq!(me(&stack, &b, &mut root).await["user"], "root");
}

fn github_people() -> GitHubPeople {
    let mut people = GitHubPeople::default();
    for login in ["alice", "dave", "erin"] {
        people.organizations.insert(login.into(), vec!["python".into(), "elsewhere".into()]);
    }
    // More teams than one page holds, the one that matters last.
    let mut teams: Vec<String> = (0..150).map(|n| format!("elsewhere/team-{n}")).collect();
    teams.push("python/core-developers".into());
    people.teams.insert("alice".into(), teams);
    people.teams.insert("dave".into(), vec!["python/triage".into()]);
    people.teams.insert("erin".into(), Vec::new());
    people
}

/// Signs `login` in with GitHub; the jar holds the session.
async fn github_sign_in(stack: &TestStack, github: &GitHub, login: &str) -> Jar {
    let mut jar = Jar::default();
    let authorize = start(stack, &mut jar, "/auth/github/login?return_to=/workers").await;
    assert!(authorize.starts_with(&format!("{}/login/oauth/authorize?", github.url)), "{authorize}");
    assert!(authorize.contains("scope=read%3Aorg"), "{authorize}");
    let callback = github.authorize(&authorize, login).await;
    let (status, went_to, session) = come_back(&mut jar, &callback).await;
    assert_eq!((status, went_to.as_str()), (StatusCode::SEE_OTHER, "/workers"), "{login}");
    assert!(session.is_some());
    jar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_sign_in_gives_roles_from_teams_and_takes_them_away_after_the_refresh_interval() {
    let mut stack = TestStack::new(&master_yaml(&[("slow", SLOW)]), &["slow"]).await;
    stack.public_url();
    let github = GitHub::start(github_people()).await;
    stack.append_settings(&format!("sign_in:\n{}authorization:\n  force: [developers]\n", github.settings_yaml(3)));
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");

    // alice's teams (on the second page) make her a developer; membership
    // of python a member.
    let mut alice = github_sign_in(&stack, &github, "alice").await;
    let said = me(&stack, &stack.base_url, &mut alice).await;
    assert_eq!((&said["user"], &said["provider"]), (&json!("alice"), &json!("github")), "{said}");
    assert_eq!(said["roles"], json!(["developers", "members"]));
    assert!(github.api_calls().iter().filter(|path| *path == "/user/teams").count() >= 2, "both pages were read");
    let (status, body) = force_as(&stack, &mut alice, "slow").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // dave is in no team that gives a role: signed in, he reads, he may
    // not force.
    let mut dave = github_sign_in(&stack, &github, "dave").await;
    assert_eq!(me(&stack, &stack.base_url, &mut dave).await["roles"], json!(["members"]));
    let reads = dave.send(stack.http.get(format!("{}/api/v2/builders", stack.base_url))).await;
    assert_eq!(reads.status(), StatusCode::OK);
    let (status, body) = force_as(&stack, &mut dave, "slow").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("user `dave` may not force builds"), "{body}");

    // erin is in no team either, but settings.yaml gives her login a role.
    let mut erin = github_sign_in(&stack, &github, "erin").await;
    assert_eq!(me(&stack, &stack.base_url, &mut erin).await["roles"], json!(["admins", "members"]));

    // alice leaves core-developers: once the interval has passed, whichever
    // master she reaches reads her teams again and she can no longer force.
    github.remove_from_team("alice", "python/core-developers");
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (status, body) = force_as(&stack, &mut alice, "slow").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(me(&stack, &stack.base_url, &mut alice).await["roles"], json!(["members"]));

    // Her token revoked at GitHub, her session ends at the next check.
    github.revoke("alice");
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(me(&stack, &stack.base_url, &mut alice).await["user"], Value::Null);

    // A code that GitHub does not know (made up, or used) signs no one in.
    let mut jar = Jar::default();
    let authorize = start(&stack, &mut jar, "/auth/github/login").await;
    let state = authorize.split("state=").nth(1).unwrap().split('&').next().unwrap();
    let callback = format!("{}/auth/github/callback?code=made-up&state={state}", stack.base_url);
    let (status, said, session) = come_back(&mut jar, &callback).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{said}");
    assert!(said.contains("bad_verification_code"), "{said}");
    assert!(session.is_none());
    // A person who said no at GitHub comes back with an error.
    let mut jar = Jar::default();
    let authorize = start(&stack, &mut jar, "/auth/github/login").await;
    let state = authorize.split("state=").nth(1).unwrap().split('&').next().unwrap();
    let denied = format!(
        "{}/auth/github/callback?error=access_denied&error_description=The+user+has+denied+your+application+access.&state={state}",
        stack.base_url
    );
    let (status, said, _) = come_back(&mut jar, &denied).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{said}");
    assert!(said.contains("access_denied"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_of_a_build_may_stop_it_and_nobody_elses() {
    let mut stack = TestStack::new(&master_yaml(&[("slow", SLOW)]), &["slow"]).await;
    let mut hashes = HashMap::new();
    for user in ["bob", "carol"] {
        hashes.insert(user, master::auth::hash_password(&format!("{user}-password-1")));
    }
    stack.append_settings(&format!(
        "users:\n  - name: bob\n    password_hash: '{}'\n    roles: [developers]\n\
         \x20 - name: carol\n    password_hash: '{}'\n    roles: [developers]\n\
         authorization:\n  force: [developers]\n  stop_build: [admins, owner]\n  cancel: [admins, owner]\n",
        hashes["bob"], hashes["carol"],
    ));
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    stack.start_worker("w2");

    let mut sessions = HashMap::new();
    for user in ["bob", "carol"] {
        let mut jar = Jar::default();
        let response = jar
            .send(stack.http.post(format!("{}/auth/login", stack.base_url)).json(&json!({
                "username": user, "password": format!("{user}-password-1")
            })))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        sessions.insert(user, jar);
    }
    let mut builds = HashMap::new();
    for user in ["bob", "carol"] {
        let (status, body) = force_as(&stack, sessions.get_mut(user).unwrap(), "slow").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let request = body["result"][1]["1"].as_i64().unwrap();
        builds.insert(user, stack.wait_for_build_to_start(request).await["buildid"].as_i64().unwrap());
    }

    // bob may not stop carol's build: stopping needs `admins`, or owning it.
    let bob = sessions.get_mut("bob").unwrap();
    let (status, body) = control_as(&stack, bob, &format!("/builds/{}", builds["carol"]), "stop").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let said = body["error"]["message"].as_str().unwrap();
    assert!(said.contains("user `bob` may not stop builds") && said.contains("or to own what it is done to"), "{said}");
    // His own, he may.
    let (status, body) = control_as(&stack, bob, &format!("/builds/{}", builds["bob"]), "stop").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stopped = stack
        .eventually(30, "bob's build ends CANCELLED", async || {
            let build = stack.get(&format!("/api/v2/builds/{}", builds["bob"])).await;
            build["builds"][0]["complete"].as_bool().filter(|done| *done).map(|_| build["builds"][0]["results"].clone())
        })
        .await;
    assert_eq!(stopped, json!(6));
    let carols = stack.get(&format!("/api/v2/builds/{}", builds["carol"])).await;
    assert_eq!(carols["builds"][0]["complete"], false, "carol's build runs on");
}
