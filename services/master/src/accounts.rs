//! Per-worker accounts. With `worker_accounts` in settings.yaml, every worker
//! listed there logs in to RabbitMQ and to Redis as a user of its own
//! (`{ns}.worker.{name}`, with its password) that can touch only its own
//! queues and keys: a worker's password opens nothing of another worker's,
//! and the masters tell workers apart by RabbitMQ's validated `user_id`
//! (`Master::check_sender`), never by what a message says.
//!
//! Every master keeps the accounts in sync with its configuration: at start,
//! on reload, and every `sync_seconds`, which also gives them back to a
//! broker or a Redis that lost them. Syncing is idempotent, so masters need
//! no coordination; accounts of workers no longer configured are deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::config::{Config, WorkerAccountsSettings};
use shared::names::{Namespace, WorkerPermissions};
use tokio_util::sync::CancellationToken;

use shared::ids::WorkerName;

use crate::Master;
use crate::urls::path_segment;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("RabbitMQ's management API ({url}) could not be reached: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error(
        "RabbitMQ's management API answered {status} to {action}: {body}; check rabbitmq_management_url in \
         settings.yaml (an administrator's credentials, and the rabbitmq_management plugin enabled)"
    )]
    Refused { action: String, status: reqwest::StatusCode, body: String },
    #[error("Redis refused to manage ACL users (the master's Redis user needs ACL rights): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid RabbitMQ URL (amqp_url in settings.yaml): {0}")]
    BadAmqpUrl(String),
}

/// A message that speaks for a worker was published by an account that may
/// not.
#[derive(Debug, thiserror::Error)]
#[error(
    "a message for worker `{worker}` was published by {}; only the account `{expected}` may speak for it",
    published_by.as_deref().map_or("no stated user".to_owned(), |user| format!("`{user}`"))
)]
pub struct ImpersonationError {
    worker: WorkerName,
    published_by: Option<String>,
    expected: String,
}

impl Master {
    /// Whether a message speaking for `worker` may be believed, from the
    /// `user_id` RabbitMQ validated against the publisher's login. With
    /// `worker_accounts`, only the worker's own account (or the masters',
    /// for their local workers) may speak for it. Without, workers share
    /// credentials and cannot be told apart: every message is believed.
    pub(crate) fn check_sender(&self, user_id: Option<&str>, worker: &WorkerName) -> Result<(), ImpersonationError> {
        if self.catalog().config.settings.worker_accounts.is_none() {
            return Ok(());
        }
        let expected = self.namespace.worker_account(worker.as_str());
        match user_id {
            Some(user) if user == expected || user == self.amqp_user => Ok(()),
            _ => Err(ImpersonationError { worker: worker.clone(), published_by: user_id.map(str::to_owned), expected }),
        }
    }
}

/// The commands a worker account may send to Redis: writing its log streams
/// (in MULTI/EXEC batches) and its presence key, and connecting.
const WORKER_REDIS_COMMANDS: &[&str] = &[
    "+ping",
    "+auth",
    "+hello",
    "+select",
    "+multi",
    "+exec",
    "+discard",
    "+xadd",
    "+xlen",
    "+xrevrange",
    "+expire",
    "+set",
    "+setex",
    "+del",
];

/// One worker's account, as it should be.
struct Account<'a> {
    name: String,
    password: &'a str,
    permissions: WorkerPermissions,
    key_pattern: String,
}

fn wanted_accounts<'a>(config: &'a Config, namespace: &Namespace) -> Vec<Account<'a>> {
    config
        .settings
        .workers
        .iter()
        .map(|worker| {
            let builders = config.builders_for_worker(&worker.name, false);
            let builders: Vec<&str> = builders.iter().map(|builder| builder.name.as_str()).collect();
            Account {
                name: namespace.worker_account(&worker.name),
                password: worker.password.expose(),
                permissions: namespace.worker_permissions(&worker.name, &builders),
                key_pattern: namespace.worker_key_pattern(&worker.name),
            }
        })
        .collect()
}

/// Brings RabbitMQ's and Redis's worker accounts in line with the current
/// configuration. Does nothing when settings.yaml has no `worker_accounts`.
pub async fn sync(master: &Master) -> Result<(), AccountsError> {
    let catalog = master.catalog();
    let config = &catalog.config;
    let Some(settings) = &config.settings.worker_accounts else {
        return Ok(());
    };
    let accounts = wanted_accounts(config, &master.namespace);
    let vhost = shared::amqp::uri(config.settings.amqp_url.expose()).map_err(AccountsError::BadAmqpUrl)?.vhost;
    let rabbitmq = Management::new(settings);
    let changed = rabbitmq.sync(&vhost, &accounts, &master.namespace).await?;
    sync_redis(&mut master.redis.clone(), &accounts, &master.namespace).await?;
    if changed > 0 {
        tracing::info!(changed, accounts = accounts.len(), "worker accounts synced");
    }
    Ok(())
}

/// Syncs every `sync_seconds` until `shutdown`.
pub async fn keep_in_sync(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), crate::MasterError> {
    loop {
        let Some(every) = master.catalog().config.settings.worker_accounts.as_ref().map(|a| a.sync_seconds) else {
            // Turned on only by a restart: service settings are not reloaded.
            shutdown.cancelled().await;
            return Ok(());
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        if let Err(error) = sync(&master).await {
            tracing::error!(%error, "worker accounts not synced; workers added since the last sync cannot log in yet");
        }
    }
}

/// RabbitMQ's management HTTP API.
struct Management {
    http: reqwest::Client,
    /// Without a trailing `/`; credentials stay in it (the client sends
    /// them as basic authentication).
    base: String,
}

#[derive(Deserialize)]
struct User {
    name: String,
    password_hash: String,
    #[serde(default)]
    hashing_algorithm: String,
}

#[derive(Deserialize, PartialEq, Eq)]
struct Permission {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

impl Management {
    fn new(settings: &WorkerAccountsSettings) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client builds");
        Self { http, base: settings.rabbitmq_management_url.expose().trim_end_matches('/').to_owned() }
    }

    /// Returns how many users or permissions it created, changed or deleted.
    async fn sync(&self, vhost: &str, accounts: &[Account<'_>], namespace: &Namespace) -> Result<usize, AccountsError> {
        let users: Vec<User> = self.get("users").await?;
        let permissions: Vec<Permission> = self.get("permissions").await?;
        let users: HashMap<&str, &User> = users.iter().map(|user| (user.name.as_str(), user)).collect();
        let prefix = namespace.worker_account_prefix();
        let mut changed = 0;
        for account in accounts {
            let current = users.get(account.name.as_str());
            if !current.is_some_and(|user| password_matches(user, account.password)) {
                let body = serde_json::json!({
                    "password_hash": rabbitmq_password_hash(account.password),
                    "hashing_algorithm": HASHING_ALGORITHM,
                    "tags": "",
                });
                self.put(&format!("users/{}", account.name), &body).await?;
                changed += 1;
            }
            let wanted = Permission {
                user: account.name.clone(),
                vhost: vhost.to_owned(),
                configure: account.permissions.configure.clone(),
                write: account.permissions.write.clone(),
                read: account.permissions.read.clone(),
            };
            if !permissions.contains(&wanted) {
                let body = serde_json::json!({
                    "configure": wanted.configure,
                    "write": wanted.write,
                    "read": wanted.read,
                });
                self.put(&format!("permissions/{}/{}", path_segment(vhost), account.name), &body).await?;
                changed += 1;
            }
        }
        let configured: Vec<&str> = accounts.iter().map(|account| account.name.as_str()).collect();
        for stale in users.keys().filter(|name| name.starts_with(&prefix) && !configured.contains(name)) {
            self.delete(&format!("users/{stale}")).await?;
            tracing::info!(account = %stale, "deleted the RabbitMQ account of a worker no longer configured");
            changed += 1;
        }
        Ok(changed)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AccountsError> {
        let response = self.send(self.http.get(self.url(path)), &format!("GET /api/{path}")).await?;
        response
            .json()
            .await
            .map_err(|source| AccountsError::Unreachable { url: self.shown_base(), source: source.without_url() })
    }

    async fn put(&self, path: &str, body: &serde_json::Value) -> Result<(), AccountsError> {
        self.send(self.http.put(self.url(path)).json(body), &format!("PUT /api/{path}")).await.map(drop)
    }

    async fn delete(&self, path: &str) -> Result<(), AccountsError> {
        self.send(self.http.delete(self.url(path)), &format!("DELETE /api/{path}")).await.map(drop)
    }

    async fn send(&self, request: reqwest::RequestBuilder, action: &str) -> Result<reqwest::Response, AccountsError> {
        let response = request
            .send()
            .await
            .map_err(|source| AccountsError::Unreachable { url: self.shown_base(), source: source.without_url() })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(AccountsError::Refused { action: action.to_owned(), status, body: body.chars().take(300).collect() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.base)
    }

    /// The API's address without its credentials, for messages.
    fn shown_base(&self) -> String {
        let Some((scheme, rest)) = self.base.split_once("://") else {
            return self.base.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
            None => self.base.clone(),
        }
    }
}

/// RabbitMQ's salted SHA-256 password hash: base64(salt ‖ sha256(salt ‖ password)).
fn rabbitmq_password_hash(password: &str) -> String {
    let salt: [u8; 4] = uuid::Uuid::new_v4().as_bytes()[..4].try_into().expect("four bytes");
    BASE64.encode(salted_hash(&salt, password))
}

fn salted_hash(salt: &[u8], password: &str) -> Vec<u8> {
    let digest = Sha256::new().chain_update(salt).chain_update(password.as_bytes()).finalize();
    let mut hash = salt.to_vec();
    hash.extend_from_slice(&digest);
    hash
}

fn password_matches(user: &User, password: &str) -> bool {
    if user.hashing_algorithm != HASHING_ALGORITHM {
        return false;
    }
    match BASE64.decode(&user.password_hash) {
        Ok(stored) if stored.len() == 4 + 32 => salted_hash(&stored[..4], password) == stored,
        _ => false,
    }
}

/// Redis ACL users: each `SETUSER` states the whole user (`reset` first), so
/// running it again changes nothing, and one command is atomic.
async fn sync_redis(
    redis: &mut redis::aio::ConnectionManager,
    accounts: &[Account<'_>],
    namespace: &Namespace,
) -> Result<(), AccountsError> {
    let existing: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(redis).await?;
    let mut pipe = redis::pipe();
    for account in accounts {
        let password_sha256: String =
            Sha256::digest(account.password.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
        pipe.cmd("ACL")
            .arg("SETUSER")
            .arg(&account.name)
            .arg("reset")
            .arg("on")
            .arg(format!("#{password_sha256}"))
            .arg(format!("~{}", account.key_pattern))
            .arg("resetchannels")
            .arg("-@all")
            .arg(WORKER_REDIS_COMMANDS)
            .ignore();
    }
    let prefix = namespace.worker_account_prefix();
    let configured: BTreeMap<&str, ()> = accounts.iter().map(|account| (account.name.as_str(), ())).collect();
    for stale in existing.iter().filter(|name| name.starts_with(&prefix) && !configured.contains_key(name.as_str())) {
        pipe.cmd("ACL").arg("DELUSER").arg(stale).ignore();
        tracing::info!(account = %stale, "deleting the Redis account of a worker no longer configured");
    }
    pipe.query_async::<()>(redis).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_hash_verifies_its_own_password_only() {
        let user = User {
            name: "bm.worker.w1".into(),
            password_hash: rabbitmq_password_hash("correct horse battery"),
            hashing_algorithm: HASHING_ALGORITHM.into(),
        };
        assert!(password_matches(&user, "correct horse battery"));
        assert!(!password_matches(&user, "correct horse battery "));
    }

    #[test]
    fn a_vhost_is_one_path_segment() {
        assert_eq!(path_segment("/"), "%2F");
    }
}
