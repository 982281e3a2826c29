//! settings.yaml's `sign_in:`: the identity providers people sign in with
//! (GitHub, with roles from organisation teams; any OpenID Connect
//! provider, with roles from a claim). Local `users` and API tokens stay
//! beside them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Secret;

/// Where people sign in besides local passwords.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInSettings {
    /// Sign in with GitHub (or GitHub Enterprise), an OAuth App's web flow.
    pub github: Option<GitHubSignIn>,
    /// OpenID Connect providers, each a button on the login page.
    #[serde(default)]
    pub oidc: Vec<OidcProvider>,
}

impl SignInSettings {
    pub fn any(&self) -> bool {
        self.github.is_some() || !self.oidc.is_empty()
    }

    pub fn oidc(&self, name: &str) -> Option<&OidcProvider> {
        self.oidc.iter().find(|provider| provider.name == name)
    }
}

/// A GitHub OAuth App (Settings → Developer settings → OAuth Apps) whose
/// callback URL is `<web.url>/auth/github/callback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubSignIn {
    pub client_id: String,
    pub client_secret: Secret,
    /// GitHub's web address; GitHub Enterprise's, e.g.
    /// `https://github.example.com`.
    #[serde(default = "default_github_web")]
    pub url: String,
    /// GitHub's API; GitHub Enterprise's is `https://<host>/api/v3`.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Roles of every member of an organisation: `{python: [members]}`.
    #[serde(default)]
    pub organizations: BTreeMap<String, Vec<String>>,
    /// Roles of the members of a team, by `organisation/team-slug`:
    /// `{python/core-developers: [developers]}`.
    #[serde(default)]
    pub teams: BTreeMap<String, Vec<String>>,
    /// Roles of particular people, by GitHub login (as Buildbot's
    /// `RolesFromUsername`): `{vstinner: [admins]}`.
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
    /// How often a signed-in person's teams are read again, so that someone
    /// removed from a team loses its roles within this time.
    #[serde(default = "default_roles_refresh_seconds")]
    pub roles_refresh_seconds: u32,
}

impl GitHubSignIn {
    /// The organisations whose teams or membership give roles.
    pub fn organizations_of_interest(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.organizations.keys().map(String::as_str).collect();
        names.extend(self.teams.keys().filter_map(|team| team.split_once('/').map(|(org, _)| org)));
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }
}

fn default_github_web() -> String {
    "https://github.com".into()
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

fn default_roles_refresh_seconds() -> u32 {
    15 * 60
}

/// An OpenID Connect provider (Keycloak, GitLab, Google, a company's
/// single sign-on) whose client redirects to
/// `<web.url>/auth/oidc/<name>/callback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// In URLs and sessions: letters, digits, `-` and `_`.
    pub name: String,
    /// The button's words: "Sign in with <title>". Default: the name.
    pub title: Option<String>,
    /// The issuer; its `/.well-known/openid-configuration` is read.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Scopes asked for; `openid` is always asked.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that names the person.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The ID token claim listing the person's groups, e.g. `groups`.
    pub roles_claim: Option<String>,
    /// Roles of each group: `{ci-admins: [admins]}`. Without it, each group
    /// in `roles_claim` is a role of the same name.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
}

impl OidcProvider {
    pub fn title(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.name)
    }

    /// The roles the groups of an ID token give.
    pub fn roles_of(&self, groups: &[String]) -> Vec<String> {
        let mut roles: Vec<String> = if self.roles.is_empty() {
            groups.to_vec()
        } else {
            groups.iter().filter_map(|group| self.roles.get(group)).flatten().cloned().collect()
        };
        roles.sort();
        roles.dedup();
        roles
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_user_claim() -> String {
    "preferred_username".into()
}

/// Whether `name` may name an OpenID Connect provider in URLs: not
/// `github`, which names GitHub's own sign-in.
pub(super) fn is_valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        && name != "github"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_fit_a_url_and_leave_github_to_github() {
        assert!(is_valid_provider_name("company-sso_2"));
        for bad in ["", "bad name", "a/b", "github", &"x".repeat(41)] {
            assert!(!is_valid_provider_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn groups_become_roles_through_the_map_or_as_they_are() {
        let mut provider: OidcProvider = serde_yaml::from_str(
            "name: sso\nissuer: https://sso.example.org\nclient_id: c\nclient_secret: s\nroles_claim: groups\n",
        )
        .unwrap();
        let groups = vec!["ci-admins".to_owned(), "staff".to_owned()];
        assert_eq!(provider.roles_of(&groups), ["ci-admins", "staff"]);
        provider.roles.insert("ci-admins".into(), vec!["admins".into(), "developers".into()]);
        assert_eq!(provider.roles_of(&groups), ["admins", "developers"]);
        assert_eq!(provider.scopes, ["openid", "profile", "email"]);
    }
}
