//! GitHub's webhook, `POST /change_hook/github`. Every delivery must carry
//! a valid `X-Hub-Signature-256` (HMAC-SHA256 of the body with the webhook
//! secret); anything else gets 401 and changes nothing. What a delivery
//! asks for is decided by `changes::github`; its change and buildsets are
//! written in one transaction before the answer, so a delivery GitHub saw
//! acknowledged is never lost, and the same delivery sent again (under its
//! id or another: a body is recognised by its SHA-256) changes nothing.
//! With `github.repositories` set, only those repositories' deliveries are
//! taken.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiResult};
use crate::Master;
use crate::changes::{self, Delivery, Recorded};

pub async fn hook(State(master): State<Arc<Master>>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let catalog = master.catalog();
    let Some(github) = &catalog.config.settings.github else {
        return Err(ApiError::NotFound("the GitHub webhook (it is off: no `github` in settings.yaml)".into()));
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !signature_matches(github.webhook_secret.expose().as_bytes(), &body, header("x-hub-signature-256")) {
        return Err(ApiError::Unauthorized(
            "X-Hub-Signature-256 is missing or wrong; the webhook's secret must equal github.webhook_secret".into(),
        ));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("the delivery is not JSON: {error}")))?;
    // Each delivery is recorded once, by its id: one without is refused,
    // or a resent body would build again.
    let Some(delivery) = headers.get("x-github-delivery").and_then(|value| value.to_str().ok()) else {
        return Err(ApiError::BadRequest("X-GitHub-Delivery is missing".into()));
    };
    let event = header("x-github-event");
    if event == "ping" {
        return Ok(Json(json!({ "ok": "pong" })));
    }
    // Any repository whose webhook knows the secret can sign; only the
    // configured ones may start builds.
    let repository = payload["repository"]["full_name"].as_str().unwrap_or_default();
    if !github.repositories.is_empty()
        && !github.repositories.iter().any(|known| known.eq_ignore_ascii_case(repository))
    {
        return Err(ApiError::Forbidden(format!(
            "deliveries from `{repository}` are not taken; add it to github.repositories in settings.yaml"
        )));
    }
    let api = changes::github::Api { github, credentials: &master.github };
    let plan = changes::github::plan(&catalog.config, &api, event, &payload).await?;
    let payload_sha256 = Sha256::digest(&body);
    let delivery = Delivery { id: delivery, payload_sha256: Some(&payload_sha256) };
    match changes::record(&master, "github", delivery, &plan).await? {
        Recorded::Ignored => Ok(Json(json!({ "ignored": plan.why }))),
        Recorded::Before => Ok(Json(json!({ "ignored": "this delivery was recorded before" }))),
        Recorded::New { change, buildsets } => {
            Ok(Json(json!({ "change": change, "buildsets": buildsets, "why": plan.why })))
        }
    }
}

/// HMAC-SHA256 of `body`, compared in constant time with `sha256=<hex>`.
fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_checked_against_the_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(signature_matches(b"s3cret", b"{}", &format!("sha256={good}")));
        assert!(!signature_matches(b"s3cret", b"{ }", &format!("sha256={good}")));
        assert!(!signature_matches(b"other", b"{}", &format!("sha256={good}")));
        assert!(!signature_matches(b"s3cret", b"{}", ""));
    }
}
