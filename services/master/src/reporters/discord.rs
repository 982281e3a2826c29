//! Messages in a Discord channel through one of its webhooks (Discord's
//! "Execute Webhook"). Discord has no idempotency key: a master that dies
//! between the post and recording it leaves the message to be posted again
//! by another, so a message may, rarely, arrive twice.

use serde_json::json;
use shared::config::reporters::{BuildReport, DiscordConfig};

use super::{Delivery, SendError, refusal, unreachable};

/// Discord keeps this much of a message.
const MESSAGE_CHARS: usize = 2000;

pub async fn post(
    http: &reqwest::Client,
    webhook_url: &str,
    config: &DiscordConfig,
    report: &BuildReport,
) -> Result<Delivery, SendError> {
    let message = config
        .message
        .render(report)
        .map_err(|error| SendError::Refused { problem: format!("the message template failed: {error}") })?;
    let content: String = message.chars().take(MESSAGE_CHARS).collect();
    let separator = if webhook_url.contains('?') { '&' } else { '?' };
    let response = http
        .post(format!("{webhook_url}{separator}wait=true"))
        .header("user-agent", "buildmaster")
        // Nobody is pinged by what a commit message or a branch name says.
        .json(&json!({ "content": content, "allowed_mentions": { "parse": [] } }))
        .send()
        .await
        .map_err(|error| unreachable("Discord", error))?;
    if !response.status().is_success() {
        return Err(refusal("Discord", response).await);
    }
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    let id = answer["id"].as_str().unwrap_or("without an id");
    Ok(Delivery::Told(format!("message {id}")))
}
