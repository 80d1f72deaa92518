//! Who is calling: bearer JWTs verified into an [`Actor`] (account, user, permissions).
//!
//! Tokens are HS256 (a shared secret, for local development) or RS256 (public keys, for
//! production). Claims: `sub` (user id), `acct` (account id), `perms` (permission names),
//! `exp`. The account id travels in NATS subjects, so it is restricted to `[A-Za-z0-9_-]`.

use std::{collections::BTreeSet, fmt, str::FromStr, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, metadata::MetadataMap, service::Interceptor};

use crate::{ApiError, config::AuthConfig};

/// What a token allows beyond reading and working one's own deals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Change any deal of the account, not only one's own.
    DealsEditAll,
    /// Bulk operations and transfers.
    DealsBulkEdit,
    /// Plan, stage, manager and loss-reason settings.
    PlansAdmin,
    /// Add leads (tunnel webhooks and intake clients).
    IntakeWrite,
    /// The platform's operators: operational calls across every account (parked outbox
    /// events). Never given to an account's users; not in [`Permission::ALL`].
    PlatformOperate,
    /// The distributor creating the deals of accepted leads: its CreateDeals calls are
    /// bounded by the intake lanes, not by the account's limit on CreateDeals. Never given
    /// to an account's users; not in [`Permission::ALL`].
    PlatformIntake,
    /// Read the account's plans, deals, boards, history and assignment explanations.
    /// Implied by every permission that changes deals or plans (one cannot change what one
    /// cannot see); a funnel's token (`intake:write` alone) reads nothing.
    DealsRead,
    /// Read the account's reports (ReportService). Implied by `plans:admin`.
    ReportsRead,
    /// Erase a person's data from the account (ContactService.EraseContact): implied by
    /// nothing, since it cannot be undone.
    ContactsErase,
    /// The listener's look-ups: a lead's plan (GetPlan), and whether a lead is a deal
    /// already (GetDeal by idempotency key, answered with the deal's id only). Never given
    /// to an account's users; not in [`Permission::ALL`].
    PlatformLookup,
}

impl Permission {
    /// The permissions of an account's users.
    pub const ALL: [Permission; 7] = [
        Self::DealsEditAll,
        Self::DealsBulkEdit,
        Self::PlansAdmin,
        Self::IntakeWrite,
        Self::DealsRead,
        Self::ReportsRead,
        Self::ContactsErase,
    ];

    /// Every permission a token may carry: the account's, and the platform's.
    pub const KNOWN: [Permission; 10] = [
        Self::DealsEditAll,
        Self::DealsBulkEdit,
        Self::PlansAdmin,
        Self::IntakeWrite,
        Self::DealsRead,
        Self::ReportsRead,
        Self::ContactsErase,
        Self::PlatformOperate,
        Self::PlatformIntake,
        Self::PlatformLookup,
    ];

    /// The permissions that grant this one too.
    fn granted_by(self) -> &'static [Permission] {
        match self {
            Self::DealsRead => &[
                Self::DealsRead,
                Self::DealsEditAll,
                Self::DealsBulkEdit,
                Self::PlansAdmin,
            ],
            Self::ReportsRead => &[Self::ReportsRead, Self::PlansAdmin],
            Self::DealsEditAll => &[Self::DealsEditAll],
            Self::DealsBulkEdit => &[Self::DealsBulkEdit],
            Self::PlansAdmin => &[Self::PlansAdmin],
            Self::IntakeWrite => &[Self::IntakeWrite],
            Self::ContactsErase => &[Self::ContactsErase],
            Self::PlatformOperate => &[Self::PlatformOperate],
            Self::PlatformIntake => &[Self::PlatformIntake],
            Self::PlatformLookup => &[Self::PlatformLookup],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DealsEditAll => "deals:edit_all",
            Self::DealsBulkEdit => "deals:bulk_edit",
            Self::PlansAdmin => "plans:admin",
            Self::IntakeWrite => "intake:write",
            Self::PlatformOperate => "platform:operate",
            Self::PlatformIntake => "platform:intake",
            Self::DealsRead => "deals:read",
            Self::ReportsRead => "reports:read",
            Self::ContactsErase => "contacts:erase",
            Self::PlatformLookup => "platform:lookup",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::KNOWN.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub account_id: String,
    pub user_id: String,
    pub permissions: BTreeSet<Permission>,
    /// Signed by a limited key (a service's, e.g. the listener's): the token opens only
    /// the calls that ask for one of its permissions ([`actor_for`]), never a call any
    /// user of the account may make ([`actor`]), since its signer chooses the user.
    pub limited: bool,
}

impl Actor {
    pub fn new(
        account_id: impl Into<String>,
        user_id: impl Into<String>,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Self {
        Self {
            account_id: account_id.into(),
            user_id: user_id.into(),
            permissions: permissions.into_iter().collect(),
            limited: false,
        }
    }

    /// Whether the actor holds `permission` or one that grants it.
    pub fn has(&self, permission: Permission) -> bool {
        permission
            .granted_by()
            .iter()
            .any(|p| self.permissions.contains(p))
    }

    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(permission.to_string()))
        }
    }
}

/// Whether `id` may be an account id: it becomes a NATS subject token.
pub fn valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    acct: String,
    #[serde(default)]
    perms: Vec<String>,
    exp: u64,
    #[serde(default)]
    iat: u64,
    // Checked by the validation (audience, issuer, not-before) when configured; written
    // by services into their own tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed authorization header")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        ApiError::Unauthenticated(err.to_string())
    }
}

/// A key tokens are checked with, and the permissions its tokens may carry (`None`:
/// any; a service's limited key: only those).
struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
    may_grant: Option<Vec<Permission>>,
}

/// Checks tokens against the configured keys.
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
}

/// The token of an `Authorization` header value (`Bearer <jwt>`, either case of the
/// scheme as clients send it); `None` for anything else.
pub fn bearer_token(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl TokenVerifier {
    pub fn from_config(config: &AuthConfig) -> Result<Self, jsonwebtoken::errors::Error> {
        let full = |key, alg| VerifyingKey {
            key,
            validation: validation(alg, config),
            may_grant: None,
        };
        let mut keys = Vec::new();
        for secret in config.hs256_secret.iter().chain(&config.hs256_previous) {
            keys.push(full(
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ));
        }
        for pem in &config.rs256_public_keys_pem {
            keys.push(full(
                DecodingKey::from_rsa_pem(pem.as_bytes())?,
                Algorithm::RS256,
            ));
        }
        for (pem, permissions) in &config.limited_keys {
            keys.push(VerifyingKey {
                key: DecodingKey::from_rsa_pem(pem.as_bytes())?,
                validation: validation(Algorithm::RS256, config),
                may_grant: Some(permissions.clone()),
            });
        }
        Ok(Self { keys })
    }

    /// Verifies the value of an `Authorization` header (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Actor, AuthError> {
        self.verify_header_until(header).map(|(actor, _)| actor)
    }

    /// The actor of an `authorization` header and when its token expires.
    pub fn verify_header_until(
        &self,
        header: Option<&str>,
    ) -> Result<(Actor, TokenExpiry), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        self.verify_until(bearer_token(header).ok_or(AuthError::Malformed)?)
    }

    pub fn verify(&self, token: &str) -> Result<Actor, AuthError> {
        self.verify_until(token).map(|(actor, _)| actor)
    }

    /// The actor of `token` and when it expires.
    pub fn verify_until(&self, token: &str) -> Result<(Actor, TokenExpiry), AuthError> {
        let mut outcome = AuthError::Invalid;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let expiry = TokenExpiry(data.claims.exp);
                    let mut actor = actor_from(data.claims)?;
                    if let Some(allowed) = &key.may_grant {
                        // A limited key signing more than it may: refused whole, never
                        // trimmed (it is a compromised or misconfigured signer).
                        if actor.permissions.iter().any(|p| !allowed.contains(p)) {
                            return Err(AuthError::Invalid);
                        }
                        actor.limited = true;
                    }
                    return Ok((actor, expiry));
                }
                Err(err) => {
                    if matches!(
                        err.kind(),
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature
                    ) {
                        outcome = AuthError::Expired;
                    }
                }
            }
        }
        Err(outcome)
    }
}

fn validation(alg: Algorithm, config: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 30;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &config.audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(issuer) = &config.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn actor_from(claims: Claims) -> Result<Actor, AuthError> {
    if !valid_account_id(&claims.acct) || claims.sub.is_empty() || claims.sub.len() > 128 {
        return Err(AuthError::Invalid);
    }
    // Unknown permission names are ignored: a newer issuer may know more than we do.
    let permissions = claims.perms.iter().filter_map(|p| p.parse().ok());
    Ok(Actor::new(claims.acct, claims.sub, permissions))
}

/// Mints tokens: for services calling each other on behalf of an account, for the CLI's
/// development tokens and for tests.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
    algorithm: Algorithm,
    /// Written into every token when the verifiers require them.
    audience: Option<String>,
    issuer: Option<String>,
}

impl TokenIssuer {
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
            audience: None,
            issuer: None,
        }
    }

    pub fn rs256_pem(private_key_pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self {
            key: EncodingKey::from_rsa_pem(private_key_pem)?,
            algorithm: Algorithm::RS256,
            audience: None,
            issuer: None,
        })
    }

    /// The RS256 private key when configured, else the HS256 secret; `None` without either.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, jsonwebtoken::errors::Error> {
        let issuer = match &config.rs256_private_key_pem {
            Some(pem) => Some(Self::rs256_pem(pem.expose().as_bytes())?),
            None => config
                .hs256_secret
                .as_ref()
                .map(|s| Self::hs256(s.expose().as_bytes())),
        };
        Ok(issuer.map(|issuer| Self {
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            ..issuer
        }))
    }

    pub fn issue(
        &self,
        actor: &Actor,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: actor.user_id.clone(),
            acct: actor.account_id.clone(),
            perms: actor.permissions.iter().map(|p| p.to_string()).collect(),
            iat: now,
            exp: now + ttl.as_secs(),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
    }
}

/// The tonic interceptor of authenticated services: verifies the bearer token and stores
/// the [`Actor`] in the request's extensions.
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<TokenVerifier>,
}

impl AuthInterceptor {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = authorization(request.metadata());
        let (actor, expiry) = self
            .verifier
            .verify_header_until(header)
            .map_err(|e| Status::from(crate::ApiError::Unauthenticated(e.to_string())))?;
        request.extensions_mut().insert(actor);
        request.extensions_mut().insert(expiry);
        Ok(request)
    }
}

/// When the token of a call expires (its `exp`, seconds since the epoch): a long call (a
/// watch) ends then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry(pub u64);

impl TokenExpiry {
    /// The expiry of the call's token, stored by the [`AuthInterceptor`].
    pub fn of<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().copied()
    }

    /// How long from now until the token expires (zero once it has).
    pub fn remaining(self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        std::time::Duration::from_secs(self.0).saturating_sub(now)
    }
}

fn authorization(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("authorization").and_then(|v| v.to_str().ok())
}

/// The actor of a read, refused (PERMISSION_DENIED naming it) without `permission`.
pub fn reader<T>(request: &Request<T>, permission: Permission) -> Result<Actor, ApiError> {
    let actor = actor(request)?;
    actor.require(permission)?;
    Ok(actor)
}

/// The actor the [`AuthInterceptor`] stored; a handler behind it always has one. A token
/// of a limited key is refused here: it opens only the calls that ask for its permission
/// by name ([`actor_for`]).
pub fn actor<T>(request: &Request<T>) -> Result<Actor, ApiError> {
    let actor = stored_actor(request)?;
    if actor.limited {
        return Err(ApiError::PermissionDenied(
            "a service's limited token opens only the calls of its permissions".into(),
        ));
    }
    Ok(actor)
}

/// The actor of a call that `permission` opens to a limited key's token as well (e.g.
/// GetPlan for `platform:lookup`); any other token is taken as [`actor`] takes it, and the
/// call checks its own permissions.
pub fn actor_for<T>(request: &Request<T>, permission: Permission) -> Result<Actor, ApiError> {
    let actor = stored_actor(request)?;
    if actor.limited && !actor.has(permission) {
        return Err(ApiError::PermissionDenied(permission.to_string()));
    }
    Ok(actor)
}

/// The authenticated caller; its account goes on the call's span (find an account's calls).
fn stored_actor<T>(request: &Request<T>) -> Result<Actor, ApiError> {
    let actor = request
        .extensions()
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))?;
    tracing::Span::current().record("salesplan.account_id", actor.account_id.as_str());
    Ok(actor)
}

/// Short-lived tokens a service uses to call another on behalf of an account, cached per
/// account until shortly before they expire.
pub struct ServiceTokens {
    issuer: TokenIssuer,
    user_id: String,
    permissions: Vec<Permission>,
    ttl: Duration,
    cache: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl ServiceTokens {
    pub fn new(
        issuer: TokenIssuer,
        user_id: impl Into<String>,
        permissions: &[Permission],
    ) -> Self {
        Self {
            issuer,
            user_id: user_id.into(),
            permissions: permissions.to_vec(),
            ttl: Duration::from_secs(600),
            cache: Default::default(),
        }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn for_account(&self, account_id: &str) -> Result<String, ApiError> {
        let now = std::time::Instant::now();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, renew_at)) = cache.get(account_id)
            && *renew_at > now
        {
            return Ok(token.clone());
        }
        let actor = Actor::new(account_id, self.user_id.clone(), self.permissions.clone());
        let token = self
            .issuer
            .issue(&actor, self.ttl)
            .map_err(ApiError::internal)?;
        cache.insert(account_id.to_owned(), (token.clone(), now + self.ttl / 2));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn dev() -> (TokenIssuer, TokenVerifier) {
        let config = AuthConfig::dev();
        (
            TokenIssuer::from_config(&config).unwrap().unwrap(),
            TokenVerifier::from_config(&config).unwrap(),
        )
    }

    #[test]
    fn a_token_round_trips_into_the_actor() {
        let (issuer, verifier) = dev();
        let actor = Actor::new(
            "acme",
            "u1",
            [Permission::PlansAdmin, Permission::DealsEditAll],
        );
        let token = issuer.issue(&actor, Duration::from_secs(60)).unwrap();
        let got = verifier
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(got, actor);
        assert!(got.require(Permission::PlansAdmin).is_ok());
        let denied = got.require(Permission::DealsBulkEdit).unwrap_err();
        assert_eq!(denied.to_string(), "missing permission deals:bulk_edit");
    }

    #[test]
    fn refuses_missing_malformed_expired_and_foreign_tokens() {
        let (issuer, verifier) = dev();
        assert_eq!(verifier.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            verifier.verify_header(Some("Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(verifier.verify("not.a.jwt"), Err(AuthError::Invalid));

        let actor = Actor::new("acme", "u1", []);
        let claims = Claims {
            sub: "u1".into(),
            acct: "acme".into(),
            perms: vec![],
            exp: jsonwebtoken::get_current_timestamp() - 3600,
            iat: 0,
            aud: None,
            iss: None,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &issuer.key).unwrap();
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));

        let other = TokenIssuer::hs256(b"another-secret-of-enough-length");
        let foreign = other.issue(&actor, Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify(&foreign), Err(AuthError::Invalid));
    }

    #[test]
    fn account_ids_must_be_subject_safe() {
        let (issuer, verifier) = dev();
        for bad in ["", "a.b", "a*", "a>", "a b"] {
            let token = issuer
                .issue(&Actor::new(bad, "u1", []), Duration::from_secs(60))
                .unwrap();
            assert_eq!(verifier.verify(&token), Err(AuthError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn rs256_tokens_verify_against_the_public_key_only() {
        let private = include_str!("../tests/fixtures/rs256-test-private.pem");
        let public = include_str!("../tests/fixtures/rs256-test-public.pem");
        let config = AuthConfig {
            rs256_public_keys_pem: vec![public.to_owned()],
            rs256_private_key_pem: Some(Secret::new(private)),
            ..AuthConfig::default()
        };
        let verifier = TokenVerifier::from_config(&config).unwrap();
        let issuer = TokenIssuer::from_config(&config).unwrap().unwrap();
        let actor = Actor::new("acme", "u1", [Permission::DealsBulkEdit]);
        let token = issuer.issue(&actor, Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify(&token), Ok(actor));

        // An HS256 token is refused by an RS256-only verifier, whatever its secret.
        let hs = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes())
            .issue(&Actor::new("acme", "u1", []), Duration::from_secs(60))
            .unwrap();
        assert_eq!(verifier.verify(&hs), Err(AuthError::Invalid));
    }

    #[test]
    fn verifier_with_only_rs256_keys_refuses_hs256_tokens() {
        let config = AuthConfig::default();
        let verifier = TokenVerifier::from_config(&config).unwrap();
        let token = TokenIssuer::hs256(Secret::new(AuthConfig::DEV_SECRET).expose().as_bytes())
            .issue(&Actor::new("acme", "u1", []), Duration::from_secs(60))
            .unwrap();
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims =
            serde_json::json!({"sub": "u1", "acct": "acme", "perms": [], "exp": now + 60});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    fn hs256(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn audience_issuer_and_not_before_are_checked_when_configured() {
        let secret = "a-secret-of-enough-length";
        let config = AuthConfig {
            hs256_secret: Some(Secret::new(secret)),
            audience: Some("salesplan".into()),
            issuer: Some("https://id.example".into()),
            ..AuthConfig::default()
        };
        let verifier = TokenVerifier::from_config(&config).unwrap();
        let good = serde_json::json!({"aud": "salesplan", "iss": "https://id.example"});
        assert!(verifier.verify(&hs256(secret, &claims(good))).is_ok());
        for bad in [
            serde_json::json!({"iss": "https://id.example"}),
            serde_json::json!({"aud": "other", "iss": "https://id.example"}),
            serde_json::json!({"aud": "salesplan"}),
            serde_json::json!({"aud": "salesplan", "iss": "https://evil.example"}),
        ] {
            assert_eq!(
                verifier.verify(&hs256(secret, &claims(bad.clone()))),
                Err(AuthError::Invalid),
                "{bad}"
            );
        }
        // Not valid before a minute from now (beyond the 30 s leeway).
        let later = jsonwebtoken::get_current_timestamp() + 60;
        let early =
            serde_json::json!({"aud": "salesplan", "iss": "https://id.example", "nbf": later});
        assert_eq!(
            verifier.verify(&hs256(secret, &claims(early))),
            Err(AuthError::Invalid)
        );
        // The services' own tokens carry both.
        let issuer = TokenIssuer::from_config(&config).unwrap().unwrap();
        let own = issuer
            .issue(&Actor::new("acme", "svc", []), Duration::from_secs(60))
            .unwrap();
        assert!(verifier.verify(&own).is_ok());
    }

    #[test]
    fn a_previous_secret_verifies_during_a_rotation_and_never_signs() {
        let (old, new) = (
            "the-old-secret-of-enough-length",
            "the-new-secret-of-enough-length",
        );
        let config = AuthConfig {
            hs256_secret: Some(Secret::new(new)),
            hs256_previous: vec![Secret::new(old)],
            ..AuthConfig::default()
        };
        let verifier = TokenVerifier::from_config(&config).unwrap();
        assert!(
            verifier
                .verify(&hs256(old, &claims(serde_json::json!({}))))
                .is_ok()
        );
        assert!(
            verifier
                .verify(&hs256(new, &claims(serde_json::json!({}))))
                .is_ok()
        );
        let signed = TokenIssuer::from_config(&config)
            .unwrap()
            .unwrap()
            .issue(&Actor::new("acme", "svc", []), Duration::from_secs(60))
            .unwrap();
        let only_new = TokenVerifier::from_config(&AuthConfig {
            hs256_previous: Vec::new(),
            ..config
        })
        .unwrap();
        assert!(
            only_new.verify(&signed).is_ok(),
            "services sign with the current secret"
        );
    }

    #[test]
    fn a_limited_key_cannot_mint_more_than_it_may() {
        let private = include_str!("../tests/fixtures/rs256-test-private.pem");
        let public = include_str!("../tests/fixtures/rs256-test-public.pem");
        let verifier = TokenVerifier::from_config(&AuthConfig {
            limited_keys: vec![(public.to_owned(), vec![Permission::PlatformLookup])],
            ..AuthConfig::default()
        })
        .unwrap();
        let listener = TokenIssuer::rs256_pem(private.as_bytes()).unwrap();
        let lookup = Actor::new("acme", "tunnel-listener", [Permission::PlatformLookup]);
        let token = listener.issue(&lookup, Duration::from_secs(60)).unwrap();
        assert_eq!(
            verifier.verify(&token),
            Ok(Actor {
                limited: true,
                ..lookup
            })
        );
        for wanted in [
            Permission::PlansAdmin,
            Permission::DealsRead,
            Permission::PlatformOperate,
        ] {
            let admin = Actor::new(
                "acme",
                "tunnel-listener",
                [Permission::PlatformLookup, wanted],
            );
            let token = listener.issue(&admin, Duration::from_secs(60)).unwrap();
            assert_eq!(verifier.verify(&token), Err(AuthError::Invalid), "{wanted}");
        }
    }

    #[test]
    fn a_limited_token_opens_only_the_calls_of_its_permission() {
        let request = |actor: Actor| {
            let mut request = Request::new(());
            request.extensions_mut().insert(actor);
            request
        };
        let limited = |perms: &[Permission]| Actor {
            limited: true,
            ..Actor::new("acme", "m1", perms.iter().copied())
        };
        for perms in [&[Permission::PlatformLookup][..], &[]] {
            let call = request(limited(perms));
            assert!(matches!(actor(&call), Err(ApiError::PermissionDenied(_))));
            assert!(matches!(
                actor_for(&call, Permission::DealsRead),
                Err(ApiError::PermissionDenied(_))
            ));
        }
        let lookup = request(limited(&[Permission::PlatformLookup]));
        assert!(actor_for(&lookup, Permission::PlatformLookup).is_ok());
        // Any other token: as `actor` takes it.
        let user = request(Actor::new("acme", "m1", []));
        assert!(actor(&user).is_ok());
        assert!(actor_for(&user, Permission::PlatformLookup).is_ok());
    }

    #[test]
    fn reading_is_granted_by_every_permission_that_changes() {
        let reads = |perms: &[Permission]| {
            let actor = Actor::new("acme", "u", perms.iter().copied());
            (
                actor.has(Permission::DealsRead),
                actor.has(Permission::ReportsRead),
            )
        };
        assert_eq!(reads(&[]), (false, false));
        assert_eq!(reads(&[Permission::IntakeWrite]), (false, false));
        assert_eq!(reads(&[Permission::PlatformLookup]), (false, false));
        assert_eq!(reads(&[Permission::DealsRead]), (true, false));
        assert_eq!(reads(&[Permission::ReportsRead]), (false, true));
        assert_eq!(reads(&[Permission::DealsEditAll]), (true, false));
        assert_eq!(reads(&[Permission::DealsBulkEdit]), (true, false));
        assert_eq!(reads(&[Permission::PlansAdmin]), (true, true));
    }
}
