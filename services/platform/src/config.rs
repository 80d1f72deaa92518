//! Configuration from environment variables, with defaults that run locally without setup.
//!
//! Every service reads an [`Env`] once at start-up (`Env::from_process()`); tests build one
//! from pairs instead, so no test ever calls `std::env::set_var`.

use std::{collections::HashMap, fmt, net::SocketAddr, str::FromStr, time::Duration};

/// Exit code of a process started with invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// Exit code of a process that could not reach, or was refused by, a service it needs at
/// start (`EX_UNAVAILABLE`): NATS.
pub const EXIT_UNAVAILABLE: i32 = 69;

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

/// One variable that has an unusable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `key`, treating an empty value as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_owned()
    }

    pub fn parse<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e: T::Err| ConfigError::new(key, e.to_string())),
        }
    }

    /// A duration written in milliseconds (`…_MS`) or seconds (`…_SECS`).
    pub fn millis(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(key, default.as_millis() as u64)
            .map(Duration::from_millis)
    }

    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(ConfigError::new(
                key,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    pub fn addr(&self, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        self.string(key, default)
            .parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::new(key, e.to_string()))
    }
}

/// Checks that `value` (of variable `key`) is an http:// or https:// URL.
pub fn url(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::new(key, "must be an http:// or https:// URL"))
    }
}

/// A value that must never appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Runs `load`, or prints why the configuration is invalid and exits with code 64.
pub fn load_or_exit<T>(load: impl FnOnce() -> Result<T, ConfigError>) -> T {
    match load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(EXIT_INVALID_CONFIG)
        }
    }
}

/// PostgreSQL connection settings: `DATABASE_URL`, and per class of queries a pool size
/// and a statement timeout (`SALESPLAN_DB_MAX_CONNECTIONS` and
/// `SALESPLAN_DB_STATEMENT_TIMEOUT_MS` for writes, batches and point reads;
/// `SALESPLAN_DB_READ_MAX_CONNECTIONS` and `SALESPLAN_DB_READ_TIMEOUT_MS` for the reads
/// that scan: lists, boards, reports).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    /// Apply migrations at start-up (local development); in a cluster a Job runs `migrate`.
    pub migrate_on_start: bool,
    /// The longest any statement of the main pool may run (zero: no limit).
    pub statement_timeout: Duration,
    /// The pool of reads that scan: apart, so they can never take the connections of
    /// writes and intake, and with a shorter statement timeout.
    pub read_max_connections: u32,
    pub read_timeout: Duration,
}

impl DatabaseConfig {
    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/salesplan";
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            url: Secret::new(env.string("DATABASE_URL", Self::DEFAULT_URL)),
            max_connections: env.parse("SALESPLAN_DB_MAX_CONNECTIONS", 10)?,
            migrate_on_start: env.flag("SALESPLAN_MIGRATE_ON_START", true)?,
            statement_timeout: env.millis(
                "SALESPLAN_DB_STATEMENT_TIMEOUT_MS",
                Self::DEFAULT_STATEMENT_TIMEOUT,
            )?,
            read_max_connections: env.parse("SALESPLAN_DB_READ_MAX_CONNECTIONS", 8)?,
            read_timeout: env.millis("SALESPLAN_DB_READ_TIMEOUT_MS", Self::DEFAULT_READ_TIMEOUT)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// For tests and local tools.
    pub fn local(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: 8,
            migrate_on_start: true,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            read_max_connections: 8,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "SALESPLAN_DB_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        if self.read_max_connections == 0 {
            return Err(ConfigError::new(
                "SALESPLAN_DB_READ_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        if self.read_timeout.is_zero() {
            return Err(ConfigError::new(
                "SALESPLAN_DB_READ_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// NATS settings (`NATS_URL`, `SALESPLAN_NATS_REPLICAS`, `SALESPLAN_MAX_DELIVER`, the
/// credentials and TLS of [`NatsSecurity`]).
#[derive(Clone)]
pub struct NatsConfig {
    /// One URL or several separated by commas; may hold a user and password, so it is shown
    /// only through [`NatsConfig::redacted_url`].
    pub url: String,
    pub security: NatsSecurity,
    /// Replicas of each stream: 1 locally, 3 in a JetStream cluster.
    pub replicas: usize,
    /// Deliveries of a message before it goes to the dead-letter subject.
    pub max_deliver: i64,
    /// Messages fetched per batch by a consumer.
    pub batch_size: usize,
    /// How long a consumer waits for a batch to fill once its first message is in: a few
    /// milliseconds of latency buy batches of hundreds instead of dozens under load.
    pub batch_wait: std::time::Duration,
    /// `SALESPLAN_INTAKE_RETENTION_HOURS`: how long the interactive lane keeps a lead,
    /// decided or not, and the bulk lane one nobody decided (nothing deletes decided leads
    /// in a nats-server 2.9 cluster safely: docs/privacy.md). Leads are personal data: the
    /// shortest window that outlasts the longest outage to ride out.
    pub intake_retention: std::time::Duration,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("security", &self.security)
            .field("replicas", &self.replicas)
            .field("max_deliver", &self.max_deliver)
            .finish_non_exhaustive()
    }
}

/// How a service proves itself to NATS, and TLS: a user and password
/// (`SALESPLAN_NATS_USER` + `SALESPLAN_NATS_PASSWORD`, or the user in `NATS_URL`), or a
/// credentials file with a JWT and nkey seed (`SALESPLAN_NATS_CREDS_FILE`); TLS with the CA
/// that signed the server's certificate (`SALESPLAN_NATS_TLS_CA`) and optionally a client
/// certificate (`SALESPLAN_NATS_TLS_CERT` + `SALESPLAN_NATS_TLS_KEY`).
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    pub user: Option<(String, Secret)>,
    pub creds_file: Option<std::path::PathBuf>,
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Two settings that only make sense together: both or neither, else the missing one is
/// named.
fn both<A, B>(
    (a_key, a): (&str, Option<A>),
    (b_key, b): (&str, Option<B>),
) -> Result<Option<(A, B)>, ConfigError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(b_key, format!("must be set with {a_key}"))),
        (None, Some(_)) => Err(ConfigError::new(a_key, format!("must be set with {b_key}"))),
    }
}

impl NatsSecurity {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let user = both(
            ("SALESPLAN_NATS_USER", env.get("SALESPLAN_NATS_USER")),
            (
                "SALESPLAN_NATS_PASSWORD",
                env.get("SALESPLAN_NATS_PASSWORD"),
            ),
        )?
        .map(|(user, password)| (user.to_owned(), Secret::new(password)));
        let file = |key: &str| -> Result<Option<std::path::PathBuf>, ConfigError> {
            let Some(path) = env.get(key) else {
                return Ok(None);
            };
            std::fs::metadata(path)
                .map_err(|err| ConfigError::new(key, format!("cannot read {path}: {err}")))?;
            Ok(Some(path.into()))
        };
        let creds_file = file("SALESPLAN_NATS_CREDS_FILE")?;
        if creds_file.is_some() && user.is_some() {
            return Err(ConfigError::new(
                "SALESPLAN_NATS_CREDS_FILE",
                "set either it or SALESPLAN_NATS_USER and SALESPLAN_NATS_PASSWORD, not both",
            ));
        }
        let tls_client = both(
            ("SALESPLAN_NATS_TLS_CERT", file("SALESPLAN_NATS_TLS_CERT")?),
            ("SALESPLAN_NATS_TLS_KEY", file("SALESPLAN_NATS_TLS_KEY")?),
        )?;
        Ok(Self {
            user,
            creds_file,
            tls_ca: file("SALESPLAN_NATS_TLS_CA")?,
            tls_client,
        })
    }
}

/// `SALESPLAN_INTAKE_RETENTION_HOURS`: 1 hour to a year.
fn intake_retention(env: &Env) -> Result<std::time::Duration, ConfigError> {
    const KEY: &str = "SALESPLAN_INTAKE_RETENTION_HOURS";
    let hours: u64 = env.parse(KEY, NatsConfig::DEFAULT_INTAKE_RETENTION_HOURS)?;
    if !(1..=366 * 24).contains(&hours) {
        return Err(ConfigError::new(KEY, "must be between 1 and 8784 (a year)"));
    }
    Ok(std::time::Duration::from_secs(hours * 3600))
}

impl NatsConfig {
    pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
    /// Seven days: a week-long outage of the distributor loses no lead.
    pub const DEFAULT_INTAKE_RETENTION_HOURS: u64 = 7 * 24;

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            url: env.string("NATS_URL", Self::DEFAULT_URL),
            security: NatsSecurity::from_env(env)?,
            replicas: env.parse("SALESPLAN_NATS_REPLICAS", 1)?,
            max_deliver: env.parse("SALESPLAN_MAX_DELIVER", 8)?,
            batch_size: env.parse("SALESPLAN_CONSUMER_BATCH", 500)?,
            batch_wait: std::time::Duration::from_millis(
                env.parse("SALESPLAN_CONSUMER_WAIT_MS", 10)?,
            ),
            intake_retention: intake_retention(env)?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            security: NatsSecurity::default(),
            replicas: 1,
            max_deliver: 8,
            batch_size: 500,
            batch_wait: std::time::Duration::from_millis(10),
            intake_retention: std::time::Duration::from_secs(
                3600 * Self::DEFAULT_INTAKE_RETENTION_HOURS,
            ),
        }
    }

    /// The servers of `NATS_URL`: one URL, or several separated by commas (the NATS
    /// convention) so that a service starts while any one node of a cluster is down.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Where the credentials a refusing server saw came from, for the error that stops
    /// the service.
    pub fn credentials_source(&self) -> &'static str {
        if self.security.creds_file.is_some() {
            "SALESPLAN_NATS_CREDS_FILE"
        } else if self.security.user.is_some() {
            "SALESPLAN_NATS_USER / SALESPLAN_NATS_PASSWORD"
        } else if self.url_credentials().is_some() {
            "the user and password in NATS_URL"
        } else {
            "no credentials: set SALESPLAN_NATS_USER and SALESPLAN_NATS_PASSWORD, SALESPLAN_NATS_CREDS_FILE, or a user in NATS_URL"
        }
    }

    /// The user and password of the first server in `NATS_URL` that has them (the client
    /// library does not read them from the URL itself).
    pub fn url_credentials(&self) -> Option<(String, Secret)> {
        self.servers().into_iter().find_map(|server| {
            let addr: async_nats::ServerAddr = server.parse().ok()?;
            let user = addr.username()?.to_owned();
            Some((user, Secret::new(addr.password().unwrap_or_default())))
        })
    }

    /// `NATS_URL` with every server's user and password replaced by `***`: the form that
    /// may appear in a log line or an error.
    pub fn redacted_url(&self) -> String {
        self.servers()
            .into_iter()
            .map(|server| match server.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}"),
                    None => server.to_owned(),
                },
                None => match server.rsplit_once('@') {
                    Some((_, host)) => format!("***@{host}"),
                    None => server.to_owned(),
                },
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let servers = self.servers();
        if servers.is_empty()
            || servers
                .iter()
                .any(|s| s.parse::<async_nats::ServerAddr>().is_err())
        {
            return Err(ConfigError::new(
                "NATS_URL",
                "must be one NATS URL or several separated by commas",
            ));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(ConfigError::new(
                "SALESPLAN_NATS_REPLICAS",
                "must be 1, 3 or 5",
            ));
        }
        if self.max_deliver < 1 {
            return Err(ConfigError::new(
                "SALESPLAN_MAX_DELIVER",
                "must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "SALESPLAN_CONSUMER_BATCH",
                "must be between 1 and 10000",
            ));
        }
        if self.batch_wait > std::time::Duration::from_secs(1) {
            return Err(ConfigError::new(
                "SALESPLAN_CONSUMER_WAIT_MS",
                "must be at most 1000",
            ));
        }
        Ok(())
    }
}

/// Token verification: an HS256 secret for local use and/or RS256 public keys (PEM) for
/// production (`SALESPLAN_JWT_HS256_SECRET`, `SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES`).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub hs256_secret: Option<Secret>,
    pub rs256_public_keys_pem: Vec<String>,
    /// For services that call others on behalf of an account (the distributor, the
    /// tunnel-listener):
    /// `SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE`; without it they sign with the HS256 secret.
    pub rs256_private_key_pem: Option<Secret>,
    /// Earlier HS256 secrets still accepted while tokens signed with them live (a rotation's
    /// overlap), never used to sign: `SALESPLAN_JWT_HS256_PREVIOUS_SECRETS`, comma-separated.
    pub hs256_previous: Vec<Secret>,
    /// RS256 public keys whose tokens may carry only the listed permissions (a service's
    /// own signing key: the listener's can mint plan look-ups and nothing else):
    /// `SALESPLAN_JWT_RS256_LIMITED_KEY_FILES`, entries `path=perm+perm` separated by commas.
    pub limited_keys: Vec<(String, Vec<crate::Permission>)>,
    /// When set, every token must name it (`aud`) and services' own tokens do:
    /// `SALESPLAN_JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// When set, every token must name it (`iss`) and services' own tokens do:
    /// `SALESPLAN_JWT_ISSUER`.
    pub issuer: Option<String>,
}

impl AuthConfig {
    /// Only for local development: a cluster sets its own secret or keys.
    pub const DEV_SECRET: &str = "salesplan-local-development-secret";

    /// For a service that signs its calls to deal-service: a key to sign with, checked at
    /// start (exit 64) rather than at the first call.
    pub fn require_signing_key(&self, service: &str) -> Result<(), ConfigError> {
        if self.hs256_secret.is_none() && self.rs256_private_key_pem.is_none() {
            return Err(ConfigError::new(
                "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE",
                format!(
                    "the {service} signs its calls to deal-service: set a private key or an HS256 secret"
                ),
            ));
        }
        Ok(())
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let key = "SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES";
        let mut rs256_public_keys_pem = Vec::new();
        for path in env.get(key).into_iter().flat_map(|v| v.split(',')) {
            let pem = std::fs::read_to_string(path.trim())
                .map_err(|e| ConfigError::new(key, format!("{path}: {e}")))?;
            rs256_public_keys_pem.push(pem);
        }
        let hs256_secret = Self::hs256_from_env(env, rs256_public_keys_pem.is_empty())?;
        let key = "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE";
        let rs256_private_key_pem = match env.get(key) {
            Some(path) => {
                Some(Secret::new(std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(key, format!("{path}: {e}"))
                })?))
            }
            None => None,
        };
        let config = Self {
            hs256_secret,
            rs256_public_keys_pem,
            rs256_private_key_pem,
            hs256_previous: env
                .get("SALESPLAN_JWT_HS256_PREVIOUS_SECRETS")
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(|s| Secret::new(s.trim()))
                .collect(),
            limited_keys: Self::limited_keys_from_env(env)?,
            audience: env.get("SALESPLAN_JWT_AUDIENCE").map(str::to_owned),
            issuer: env.get("SALESPLAN_JWT_ISSUER").map(str::to_owned),
        };
        config.validate()?;
        if env.get("SALESPLAN_ENV") != Some("development")
            && config
                .hs256_previous
                .iter()
                .any(|s| s.expose() == Self::DEV_SECRET)
        {
            return Err(ConfigError::new(
                "SALESPLAN_JWT_HS256_PREVIOUS_SECRETS",
                "holds the public development secret",
            ));
        }
        Ok(config)
    }

    fn limited_keys_from_env(
        env: &Env,
    ) -> Result<Vec<(String, Vec<crate::Permission>)>, ConfigError> {
        let key = "SALESPLAN_JWT_RS256_LIMITED_KEY_FILES";
        let mut keys = Vec::new();
        for entry in env.get(key).into_iter().flat_map(|v| v.split(',')) {
            let (path, permissions) = entry.trim().split_once('=').ok_or_else(|| {
                ConfigError::new(key, format!("{entry}: expected path=permission+permission"))
            })?;
            let permissions = permissions
                .split('+')
                .map(|p| {
                    p.trim()
                        .parse()
                        .map_err(|()| ConfigError::new(key, format!("unknown permission {p:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(key, format!("{path}: {e}")))?;
            keys.push((pem, permissions));
        }
        Ok(keys)
    }

    /// `SALESPLAN_JWT_HS256_SECRET`. Without it and without RS256 keys, the public
    /// development secret, but only where `SALESPLAN_ENV=development` (the demo, the tests,
    /// compose); anywhere else that is a start-up error, as is the development secret set
    /// explicitly: a token anyone can sign would open every account.
    fn hs256_from_env(env: &Env, no_rs256: bool) -> Result<Option<Secret>, ConfigError> {
        let key = "SALESPLAN_JWT_HS256_SECRET";
        let development = match env.get("SALESPLAN_ENV") {
            None | Some("production") => false,
            Some("development") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "SALESPLAN_ENV",
                    format!("expected production or development, got {other:?}"),
                ));
            }
        };
        match env.get(key) {
            Some(secret) if secret == Self::DEV_SECRET && !development => Err(ConfigError::new(
                key,
                "is the public development secret: set a secret of your own or RS256 keys \
                 (it is accepted only with SALESPLAN_ENV=development)",
            )),
            Some(secret) => Ok(Some(Secret::new(secret))),
            None if no_rs256 && development => Ok(Some(Secret::new(Self::DEV_SECRET))),
            None if no_rs256 => Err(ConfigError::new(
                key,
                "no key to verify tokens: set SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES or \
                 SALESPLAN_JWT_HS256_SECRET (SALESPLAN_ENV=development falls back to the \
                 public development secret)",
            )),
            None => Ok(None),
        }
    }

    pub fn dev() -> Self {
        Self {
            hs256_secret: Some(Secret::new(Self::DEV_SECRET)),
            ..Self::default()
        }
    }

    /// Checks every key now, so a key that cannot be used stops the service at start
    /// (exit 64) rather than at its first token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.hs256_secret
            && secret.expose().len() < 16
        {
            return Err(ConfigError::new(
                "SALESPLAN_JWT_HS256_SECRET",
                "must be at least 16 bytes",
            ));
        }
        if self.hs256_previous.iter().any(|s| s.expose().len() < 16) {
            return Err(ConfigError::new(
                "SALESPLAN_JWT_HS256_PREVIOUS_SECRETS",
                "each must be at least 16 bytes",
            ));
        }
        for (pem, _) in &self.limited_keys {
            jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|err| {
                ConfigError::new(
                    "SALESPLAN_JWT_RS256_LIMITED_KEY_FILES",
                    format!("not an RSA public key in PEM: {err}"),
                )
            })?;
        }
        for pem in &self.rs256_public_keys_pem {
            jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|err| {
                ConfigError::new(
                    "SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES",
                    format!("not an RSA public key in PEM: {err}"),
                )
            })?;
        }
        if let Some(pem) = &self.rs256_private_key_pem {
            jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|err| {
                ConfigError::new(
                    "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE",
                    format!("not an RSA private key in PEM: {err}"),
                )
            })?;
        }
        Ok(())
    }
}

/// How long a stopping service may take to drain (`SALESPLAN_SHUTDOWN_GRACE_MS`).
pub fn shutdown_grace(env: &Env) -> Result<Duration, ConfigError> {
    env.millis("SALESPLAN_SHUTDOWN_GRACE_MS", Duration::from_secs(20))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_service_that_signs_needs_a_key_at_start() {
        let none = AuthConfig {
            rs256_public_keys_pem: vec!["-----BEGIN PUBLIC KEY-----".into()],
            ..AuthConfig::default()
        };
        let err = none.require_signing_key("tunnel-listener").unwrap_err();
        assert!(
            err.to_string()
                .contains("SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE"),
            "{err}"
        );
        let secret = AuthConfig {
            hs256_secret: Some(Secret::new("s")),
            ..none
        };
        assert!(secret.require_signing_key("distributor").is_ok());
    }

    use super::*;

    #[test]
    fn the_development_secret_opens_nothing_outside_development() {
        let explicit = [("SALESPLAN_JWT_HS256_SECRET", AuthConfig::DEV_SECRET)];
        let err = AuthConfig::from_env(&Env::from_pairs(explicit)).unwrap_err();
        assert_eq!(err.key, "SALESPLAN_JWT_HS256_SECRET");
        let production = [
            ("SALESPLAN_JWT_HS256_SECRET", AuthConfig::DEV_SECRET),
            ("SALESPLAN_ENV", "production"),
        ];
        assert!(AuthConfig::from_env(&Env::from_pairs(production)).is_err());
        let development = [
            ("SALESPLAN_JWT_HS256_SECRET", AuthConfig::DEV_SECRET),
            ("SALESPLAN_ENV", "development"),
        ];
        assert!(AuthConfig::from_env(&Env::from_pairs(development)).is_ok());
        let own = [(
            "SALESPLAN_JWT_HS256_SECRET",
            "a-secret-of-this-deployment-only",
        )];
        assert!(AuthConfig::from_env(&Env::from_pairs(own)).is_ok());
        let typo = [("SALESPLAN_ENV", "dev")];
        assert_eq!(
            AuthConfig::from_env(&Env::from_pairs(typo))
                .unwrap_err()
                .key,
            "SALESPLAN_ENV"
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_key_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nnot a key\n").unwrap();
        let path = path.display().to_string();
        for key in [
            "SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES",
            "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE",
        ] {
            let env = Env::from_pairs([(key, path.as_str()), ("SALESPLAN_ENV", "development")]);
            assert_eq!(AuthConfig::from_env(&env).unwrap_err().key, key);
        }
    }

    #[test]
    fn defaults_need_no_environment() {
        let env = Env::default();
        let db = DatabaseConfig::from_env(&env).unwrap();
        assert_eq!(db.url.expose(), DatabaseConfig::DEFAULT_URL);
        let nats = NatsConfig::from_env(&env).unwrap();
        assert_eq!(nats.url, NatsConfig::DEFAULT_URL);
        // Tokens need a key: without one, only development falls back to the public secret.
        assert_eq!(
            AuthConfig::from_env(&env).unwrap_err().key,
            "SALESPLAN_JWT_HS256_SECRET"
        );
        let development = Env::from_pairs([("SALESPLAN_ENV", "development")]);
        let auth = AuthConfig::from_env(&development).unwrap();
        assert_eq!(
            auth.hs256_secret.map(|s| s.expose().to_owned()).as_deref(),
            Some(AuthConfig::DEV_SECRET)
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let env = Env::from_pairs([("SALESPLAN_DB_MAX_CONNECTIONS", "many")]);
        let err = DatabaseConfig::from_env(&env).unwrap_err();
        assert_eq!(err.key, "SALESPLAN_DB_MAX_CONNECTIONS");

        let env = Env::from_pairs([("DATABASE_URL", "mysql://x")]);
        assert_eq!(
            DatabaseConfig::from_env(&env).unwrap_err().key,
            "DATABASE_URL"
        );

        let env = Env::from_pairs([("SALESPLAN_NATS_REPLICAS", "2")]);
        assert_eq!(
            NatsConfig::from_env(&env).unwrap_err().key,
            "SALESPLAN_NATS_REPLICAS"
        );

        let env = Env::from_pairs([("SALESPLAN_MIGRATE_ON_START", "maybe")]);
        assert!(DatabaseConfig::from_env(&env).is_err());

        let env = Env::from_pairs([("NATS_URL", "nats://a:4222,not a url")]);
        assert_eq!(NatsConfig::from_env(&env).unwrap_err().key, "NATS_URL");

        for hours in ["0", "8785", "99999999999999999"] {
            let env = Env::from_pairs([("SALESPLAN_INTAKE_RETENTION_HOURS", hours)]);
            assert_eq!(
                NatsConfig::from_env(&env).unwrap_err().key,
                "SALESPLAN_INTAKE_RETENTION_HOURS",
                "{hours}"
            );
        }
    }

    #[test]
    fn intake_retention_is_a_week_unless_set() {
        let default =
            NatsConfig::from_env(&Env::from_pairs([("NATS_URL", "nats://a:4222")])).unwrap();
        assert_eq!(default.intake_retention.as_secs(), 7 * 24 * 3600);
        let env = Env::from_pairs([("SALESPLAN_INTAKE_RETENTION_HOURS", "48")]);
        let set = NatsConfig::from_env(&env).unwrap();
        assert_eq!(set.intake_retention.as_secs(), 48 * 3600);
    }

    #[test]
    fn nats_url_lists_servers_and_hides_credentials() {
        let config = NatsConfig::local("nats://svc:pw@a:4222, nats://b:4222,tls://u:p@c:4222");
        assert_eq!(
            config.servers(),
            ["nats://svc:pw@a:4222", "nats://b:4222", "tls://u:p@c:4222"]
        );
        let shown = config.redacted_url();
        assert_eq!(shown, "nats://***@a:4222,nats://b:4222,tls://***@c:4222");
        assert!(!shown.contains("pw"));
        config.validate().unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2hunter2hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let auth = AuthConfig::dev();
        assert!(!format!("{auth:?}").contains(AuthConfig::DEV_SECRET));
    }

    #[test]
    fn short_hs256_secret_is_refused() {
        let env = Env::from_pairs([("SALESPLAN_JWT_HS256_SECRET", "short")]);
        assert_eq!(
            AuthConfig::from_env(&env).unwrap_err().key,
            "SALESPLAN_JWT_HS256_SECRET"
        );
    }
}
