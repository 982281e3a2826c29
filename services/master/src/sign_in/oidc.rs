//! An OpenID Connect provider, as a confidential client: discovery from
//! the issuer, the authorization code flow with PKCE, and the ID token
//! checked as the specification asks (signature against the provider's
//! published keys, read again when a token names a new one; issuer,
//! audience, expiry, nonce).

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use shared::config::OidcProvider;

use super::SignInError;
use crate::store::SignInAttempt;

/// The keys are read again for an unknown `kid` at most this often.
const KEYS_REREAD_AFTER: Duration = Duration::from_secs(1);

/// The provider's published keys, and when a token last named one not
/// among them (which made them be read again).
struct Keys {
    set: JwkSet,
    missed_at: Option<Instant>,
}

/// Signature algorithms taken: asymmetric only (a client secret is not a
/// provider's key, and `none` is no signature).
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// A provider's discovery document and its keys.
pub(super) struct Discovered {
    /// The issuer as configured (a changed configuration reads it again).
    configured_issuer: String,
    metadata: Metadata,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn unavailable(provider: &OidcProvider, reason: impl std::fmt::Display) -> SignInError {
    SignInError::Unavailable { provider: provider.title().to_owned(), reason: reason.to_string() }
}

fn invalid(provider: &OidcProvider, reason: impl Into<String>) -> SignInError {
    SignInError::InvalidToken { provider: provider.title().to_owned(), reason: reason.into() }
}

impl Discovered {
    /// Reads `<issuer>/.well-known/openid-configuration` and the keys it
    /// names. The document's issuer must be the configured one.
    pub(super) async fn read(http: &reqwest::Client, provider: &OidcProvider) -> Result<Discovered, SignInError> {
        let url = format!("{}/.well-known/openid-configuration", provider.issuer.trim_end_matches('/'));
        let metadata: Metadata = get_json(http, provider, &url).await?;
        if metadata.issuer.trim_end_matches('/') != provider.issuer.trim_end_matches('/') {
            return Err(unavailable(
                provider,
                format!(
                    "its discovery document names the issuer `{}`, not the configured `{}`",
                    metadata.issuer, provider.issuer
                ),
            ));
        }
        let keys: JwkSet = get_json(http, provider, &metadata.jwks_uri).await?;
        Ok(Discovered {
            configured_issuer: provider.issuer.clone(),
            metadata,
            keys: tokio::sync::Mutex::new(Keys { set: keys, missed_at: None }),
        })
    }

    pub(super) fn issuer_is(&self, issuer: &str) -> bool {
        self.configured_issuer == issuer
    }

    pub(super) fn authorize_url(
        &self,
        provider: &OidcProvider,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> String {
        let mut scopes = vec!["openid"];
        scopes.extend(provider.scopes.iter().map(String::as_str).filter(|scope| *scope != "openid"));
        let scope = scopes.join(" ");
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.extend_pairs([
            ("response_type", "code"),
            ("client_id", provider.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", &scope),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]);
        let separator = if self.metadata.authorization_endpoint.contains('?') { '&' } else { '?' };
        format!("{}{separator}{}", self.metadata.authorization_endpoint, query.finish())
    }

    /// Trades the code for an ID token, checks it, and answers who it names
    /// and the roles of their groups.
    pub(super) async fn sign_in(
        &self,
        http: &reqwest::Client,
        provider: &OidcProvider,
        code: &str,
        redirect_uri: &str,
        attempt: &SignInAttempt,
    ) -> Result<(String, Vec<String>), SignInError> {
        let id_token = self.exchange(http, provider, code, redirect_uri, &attempt.pkce_verifier).await?;
        let claims = self.validate(http, provider, &id_token).await?;
        if claims.get("nonce").and_then(Value::as_str) != Some(attempt.nonce.as_str()) {
            return Err(invalid(provider, "its nonce is not this sign-in's (a token meant for another sign-in)"));
        }
        let user = claims.get(&provider.user_claim).and_then(Value::as_str).filter(|user| !user.is_empty());
        let Some(user) = user else {
            return Err(invalid(
                provider,
                format!(
                    "it has no `{}` claim to name the person by (user_claim in settings.yaml; ask for the scope \
                     that carries it)",
                    provider.user_claim
                ),
            ));
        };
        let groups: Vec<String> = match provider.roles_claim.as_ref().and_then(|claim| claims.get(claim)) {
            Some(Value::Array(groups)) => groups.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(group)) => vec![group.clone()],
            _ => Vec::new(),
        };
        Ok((user.to_owned(), provider.roles_of(&groups)))
    }

    async fn exchange(
        &self,
        http: &reqwest::Client,
        provider: &OidcProvider,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, SignInError> {
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let methods = &self.metadata.token_endpoint_auth_methods_supported;
        // client_secret_basic is the default; post only where it is all the
        // provider takes.
        let post_only = !methods.is_empty()
            && !methods.iter().any(|method| method == "client_secret_basic")
            && methods.iter().any(|method| method == "client_secret_post");
        let mut request = http.post(&self.metadata.token_endpoint).header("accept", "application/json");
        if post_only {
            pairs.extend([
                ("client_id", provider.client_id.as_str()),
                ("client_secret", provider.client_secret.expose()),
            ]);
        } else {
            // RFC 6749 2.3.1: both form-encoded before the basic encoding.
            let encode = |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
            request = request.basic_auth(encode(&provider.client_id), Some(encode(provider.client_secret.expose())));
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|error| unavailable(provider, error))?;
        let status = response.status();
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|error| unavailable(provider, format!("its token answer ({status}) is not JSON: {error}")))?;
        match (answer.id_token, answer.error) {
            (Some(id_token), None) if status.is_success() => Ok(id_token),
            (_, Some(error)) => Err(SignInError::Refused {
                provider: provider.title().to_owned(),
                reason: format!("{error} ({})", answer.error_description.unwrap_or_default()),
            }),
            _ => Err(unavailable(provider, format!("its token answer ({status}) has no id_token"))),
        }
    }

    /// The ID token's claims once its signature, issuer, audience and
    /// times are checked.
    async fn validate(
        &self,
        http: &reqwest::Client,
        provider: &OidcProvider,
        id_token: &str,
    ) -> Result<serde_json::Map<String, Value>, SignInError> {
        let header =
            jsonwebtoken::decode_header(id_token).map_err(|error| invalid(provider, format!("unreadable: {error}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(provider, format!("it is signed with {:?}, which is not taken", header.alg)));
        }
        let key = self.key(http, provider, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.metadata.issuer]);
        validation.set_audience(&[&provider.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(id_token, &key, &validation)
            .map_err(|error| invalid(provider, describe(&error)))?;
        let claims = data.claims;
        // With other audiences beside this client, it must be the party the
        // token was issued to.
        let audiences = claims.get("aud").and_then(Value::as_array).map_or(1, Vec::len);
        if audiences > 1 && claims.get("azp").and_then(Value::as_str) != Some(provider.client_id.as_str()) {
            return Err(invalid(provider, "it has several audiences and was not issued to this client (azp)"));
        }
        Ok(claims)
    }

    /// The provider's key named `kid`, reading the keys again once if it is
    /// not among those known (the provider rotated them).
    async fn key(
        &self,
        http: &reqwest::Client,
        provider: &OidcProvider,
        kid: Option<&str>,
    ) -> Result<DecodingKey, SignInError> {
        let mut keys = self.keys.lock().await;
        for attempt in 0..2 {
            let found = match kid {
                Some(kid) => keys.set.find(kid),
                None if keys.set.keys.len() == 1 => keys.set.keys.first(),
                None => None,
            };
            if let Some(jwk) = found {
                return DecodingKey::from_jwk(jwk)
                    .map_err(|error| invalid(provider, format!("its key {kid:?} cannot be used: {error}")));
            }
            let recently = keys.missed_at.is_some_and(|missed| missed.elapsed() < KEYS_REREAD_AFTER);
            if attempt == 0 && !recently {
                keys.set = get_json(http, provider, &self.metadata.jwks_uri).await?;
                keys.missed_at = Some(Instant::now());
            }
        }
        Err(invalid(provider, format!("it is signed with a key the provider does not publish (kid {kid:?})")))
    }
}

/// What was wrong with a token, in words.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => "its signature does not match the provider's key".into(),
        ErrorKind::ExpiredSignature => "it has expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet".into(),
        ErrorKind::InvalidIssuer => "its issuer is not the provider's".into(),
        ErrorKind::InvalidAudience => "it is meant for another client (aud)".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
        _ => error.to_string(),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    provider: &OidcProvider,
    url: &str,
) -> Result<T, SignInError> {
    let response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|error| unavailable(provider, format!("GET {url}: {error}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(provider, format!("GET {url} answered {status}")));
    }
    response.json().await.map_err(|error| unavailable(provider, format!("GET {url}: not what was expected: {error}")))
}
