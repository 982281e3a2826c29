//! Who may do what, and the secrets that prove who someone is: the roles
//! each control action needs (settings.yaml `authorization`, with `owner`
//! for whoever forced or triggered a build), password hashes (argon2), API
//! tokens and session tokens. The HTTP edge
//! (`http::auth`) reads credentials from requests and asks here.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use shared::config::{AuthorizationSettings, UserSettings};
use shared::ids::{BuildId, BuildRequestId};

use crate::Master;
use crate::store::StoreError;

/// What a control request asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Force,
    StopBuild,
    Rebuild,
    Cancel,
    SetPriority,
    ManageWorkers,
    ManageBuilders,
}

impl Action {
    pub fn allowed_roles(self, authorization: &AuthorizationSettings) -> &[String] {
        match self {
            Action::Force => &authorization.force,
            Action::StopBuild => &authorization.stop_build,
            Action::Rebuild => &authorization.rebuild,
            Action::Cancel => &authorization.cancel,
            Action::SetPriority => &authorization.set_priority,
            Action::ManageWorkers => &authorization.manage_workers,
            Action::ManageBuilders => &authorization.manage_builders,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Action::Force => "force builds",
            Action::StopBuild => "stop builds",
            Action::Rebuild => "rebuild builds",
            Action::Cancel => "cancel build requests",
            Action::SetPriority => "change priorities",
            Action::ManageWorkers => "pause, unpause or stop workers",
            Action::ManageBuilders => "pause or unpause builders",
        }
    }
}

/// The role `authorization` lists for whoever forced or triggered a build
/// (Buildbot's `RolesFromOwner`).
pub const OWNER_ROLE: &str = "owner";

/// Someone known: their name, who vouched for them (`local` for
/// settings.yaml's users, `github`, `oidc:<name>`), and their roles.
#[derive(Debug, Clone)]
pub struct Person {
    pub user: String,
    pub provider: String,
    pub roles: Vec<String>,
}

impl Person {
    /// Who they are across providers, as buildsets' `owned_by` records it.
    pub fn identity(&self) -> String {
        identity(&self.provider, &self.user)
    }
}

/// `provider:user`: the same name at two providers is two people.
pub fn identity(provider: &str, user: &str) -> String {
    format!("{provider}:{user}")
}

/// What an action is done to, for the `owner` role.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Nothing,
    Build(BuildId),
    Request(BuildRequestId),
}

/// Why someone may not act.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error(
        "user `{user}` may not {action}: that needs one of the roles {roles} (authorization in settings.yaml){owner}"
    )]
    MissingRole { user: String, action: &'static str, roles: String, owner: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Master {
    /// Whether `person` may do `action` to `target`: one of their roles
    /// must be among the action's, or the action allows `owner` and they
    /// own the target.
    pub async fn may(&self, person: &Person, action: Action, target: Target) -> Result<(), Denied> {
        let allowed = action.allowed_roles(&self.catalog().config.settings.authorization).to_vec();
        if person.roles.iter().any(|role| role != OWNER_ROLE && allowed.contains(role)) {
            return Ok(());
        }
        let owner_may = allowed.iter().any(|role| role == OWNER_ROLE);
        if owner_may {
            let owned_by = match target {
                Target::Nothing => None,
                Target::Build(id) => self.store.build_owned_by(id).await?,
                Target::Request(id) => self.store.request_owned_by(id).await?,
            };
            if owned_by.is_some_and(|owned_by| owned_by == person.identity()) {
                return Ok(());
            }
        }
        Err(Denied::MissingRole {
            user: person.user.clone(),
            action: action.describe(),
            roles: allowed.iter().map(|role| format!("`{role}`")).collect::<Vec<_>>().join(", "),
            owner: if owner_may { ", or to own what it is done to" } else { "" },
        })
    }
}

/// Password checks running at once on one master.
pub static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// What a session remembers of the password hash it was opened with.
pub fn password_fingerprint(user: &UserSettings) -> Option<String> {
    user.password_hash.as_ref().map(|hash| sha256_hex(hash.expose())[..16].to_owned())
}

/// An argon2id hash of `password`, for settings.yaml's `password_hash`.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system gives random bytes");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a salt");
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes a password").to_string()
}

/// Checks `password` against `hash`; without a hash (an unknown user), a
/// hash of nothing is checked instead, so the answer takes as long either
/// way and does not tell which user names exist.
pub fn verify_password(hash: Option<&str>, password: &str) -> bool {
    static NOBODY: OnceLock<String> = OnceLock::new();
    let nobody = NOBODY.get_or_init(|| hash_password("no user has this password"));
    let Ok(parsed) = PasswordHash::new(hash.unwrap_or(nobody)) else {
        tracing::error!("a password_hash in settings.yaml is not a valid argon2 hash; that user cannot log in");
        return false;
    };
    argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && hash.is_some()
}

/// A new API token and the SHA-256 settings.yaml lists for it.
pub fn new_token() -> (String, String) {
    let token = format!("bm_{}", random_token());
    let hash = sha256_hex(&token);
    (token, hash)
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    hex(&bytes)
}

pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse battery staple");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(Some(&hash), "correct horse battery staple"));
        assert!(!verify_password(Some(&hash), "correct horse battery stapler"));
        assert!(!verify_password(None, "no user has this password"), "an unknown user never logs in");
    }
}
