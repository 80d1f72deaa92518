//! The NATS JetStream bus: streams and subjects, publishing with acks, and the batch
//! consumer loop with dead letters.

mod consumer;
mod fair;
mod publish;
pub mod streams;

use std::time::Duration;

use async_nats::jetstream;

pub use consumer::{
    BatchHandler, ConsumerSpec, Delivery, HEADER_DELIVERED, HEADER_ORIGINAL_SUBJECT, HEADER_REASON,
    Outcome, apply_each_on_refusal, end_spans, run_consumer,
};
pub use fair::{
    Activity, ActivityGuard, FairSpec, MAX_YIELD, SHARING_WINDOW, pending_by_account,
    run_fair_consumer,
};
pub use publish::{Outgoing, Stored, producer_span};

use crate::config::NatsConfig;

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// At start: the servers (without passwords), why, and which setting to look at.
    #[error("cannot connect to NATS at {url}: {source} ({hint})")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
        hint: String,
    },
    #[error("JetStream {what}: {message}")]
    JetStream { what: &'static str, message: String },
    #[error("publish to {subject} not acknowledged: {message}")]
    Publish { subject: String, message: String },
    /// The broker (or the client on its behalf) will never take this message as it is,
    /// e.g. it is larger than the broker's max payload. Retrying it cannot help; other
    /// messages are unaffected.
    #[error("publish to {subject} refused: {reason}")]
    Refused { subject: String, reason: String },
}

impl BusError {
    /// Whether this message can never be published as it is (see [`BusError::Refused`]).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    fn jetstream(what: &'static str, err: impl std::fmt::Display) -> Self {
        Self::JetStream {
            what,
            message: err.to_string(),
        }
    }
}

/// The client's options for `config`'s credentials and TLS.
async fn connect_options(config: &NatsConfig) -> std::io::Result<async_nats::ConnectOptions> {
    let security = &config.security;
    let mut options = match (&security.creds_file, &security.user) {
        (Some(file), _) => async_nats::ConnectOptions::with_credentials_file(file).await?,
        (None, Some((user, password))) => async_nats::ConnectOptions::with_user_and_password(
            user.clone(),
            password.expose().to_owned(),
        ),
        (None, None) => match config.url_credentials() {
            Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(
                user,
                password.expose().to_owned(),
            ),
            None => async_nats::ConnectOptions::new(),
        },
    };
    if let Some(ca) = &security.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &security.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}

/// The inbox prefix of a client named `client_name` (deploy/k8s/nats/values.yaml lets each
/// user subscribe to `_INBOX_<its name>.>` only).
pub fn inbox_prefix(client_name: &str) -> String {
    format!("_INBOX_{client_name}")
}

/// Which setting to look at when the connection at start failed this way.
fn connect_hint(config: &NatsConfig, kind: async_nats::ConnectErrorKind) -> String {
    use async_nats::ConnectErrorKind as K;
    match kind {
        K::Authentication | K::AuthorizationViolation => format!(
            "the server refused the credentials: {}",
            config.credentials_source()
        ),
        K::Tls => "TLS failed: check SALESPLAN_NATS_TLS_CA, SALESPLAN_NATS_TLS_CERT and \
                   SALESPLAN_NATS_TLS_KEY"
            .into(),
        _ => "check NATS_URL".into(),
    }
}

impl From<BusError> for crate::ApiError {
    fn from(err: BusError) -> Self {
        tracing::warn!(error = %err, "message bus unavailable");
        crate::ApiError::Unavailable("message bus unavailable, retry later".into())
    }
}

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
}

impl Bus {
    /// Connects; fails when NATS is unreachable at start-up (the orchestrator restarts the
    /// service). Later disconnects are retried by the client in the background.
    pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Self, BusError> {
        let connect_error = |source: async_nats::ConnectError| BusError::Connect {
            url: config.redacted_url(),
            hint: connect_hint(config, source.kind()),
            source,
        };
        let options = connect_options(config)
            .await
            .map_err(|err| {
                connect_error(async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::Authentication,
                    err,
                ))
            })?
            .name(client_name)
            // Replies (requests' answers, pulled messages) come to an inbox of this
            // service's own: the broker lets each user subscribe to its own inboxes only,
            // so no service can read what is delivered to another.
            .custom_inbox_prefix(inbox_prefix(client_name))
            .connection_timeout(Duration::from_secs(5));
        let client = options
            .connect(config.servers())
            .await
            .map_err(connect_error)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        Ok(Self {
            client,
            js,
            config: config.clone(),
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Creates the streams that do not exist yet (idempotent, safe from many replicas).
    pub async fn ensure_streams(&self, specs: &[streams::StreamSpec]) -> Result<(), BusError> {
        for spec in specs {
            self.js
                .get_or_create_stream(
                    spec.config(self.config.replicas, self.config.intake_retention),
                )
                .await
                .map_err(|e| BusError::jetstream("create stream", e))?;
        }
        Ok(())
    }

    /// Deletes message `seq` of stream `name`, its data overwritten; `Ok(false)` when it is
    /// gone already (deleted by someone else meanwhile, or aged out): a delete that races
    /// another is not a failure.
    ///
    /// Refused while the stream has no leader or a replica is missing, offline or not
    /// current ([`replicas_behind`]), checked before each delete: nats-server before
    /// 2.12.1 resets a replica's copy of a clustered stream when it applies the delete of
    /// a message it does not hold yet (a replica catching up), and such a reset can lose
    /// acknowledged messages (nats-server#7308; docs/reliability.md). The caller answers
    /// "unavailable" and is repeated later. (Purges are no way out on 2.9: a replica that
    /// replays a purge after a restart purges up to the stream's last message at the time,
    /// whatever the purge's own bound.)
    pub async fn delete_message(&self, name: &str, seq: u64) -> Result<bool, BusError> {
        use jetstream::{ErrorCode, stream::DeleteMessageErrorKind};
        let stream = self.in_step(name).await?;
        match stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            Err(err) => match err.kind() {
                DeleteMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                        || js.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        || js.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(BusError::jetstream("delete a message", err)),
            },
        }
    }

    /// The stream `name`, refused while it is not safe to delete single messages from
    /// ([`replicas_behind`]; see [`Bus::delete_message`]).
    pub async fn in_step(&self, name: &str) -> Result<jetstream::stream::Stream, BusError> {
        let stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| BusError::jetstream("get stream", e))?;
        let info = stream.cached_info();
        let behind = replicas_behind(info.cluster.as_ref(), info.config.num_replicas);
        if !behind.is_empty() {
            return Err(BusError::JetStream {
                what: "delete messages",
                message: format!(
                    "{name} is not in step ({}); try again in a moment",
                    behind.join(", ")
                ),
            });
        }
        Ok(stream)
    }

    /// Sets the age limit of the streams that hold leads (the intake lanes, the dead
    /// letters) to this deployment's `intake_retention` where a stream made earlier has
    /// another (streams are created once; the setting may change later). Only the
    /// distributor, which decides the leads, may change them.
    pub async fn keep_intake_retention(&self) -> Result<(), BusError> {
        let wanted = self.config.intake_retention;
        for spec in streams::ALL.iter().filter(|spec| spec.holds_leads) {
            let mut stream = self
                .js
                .get_stream(spec.name)
                .await
                .map_err(|e| BusError::jetstream("get stream", e))?;
            let info = stream
                .info()
                .await
                .map_err(|e| BusError::jetstream("stream info", e))?;
            if info.config.max_age == wanted {
                continue;
            }
            let mut config = info.config.clone();
            let target = spec.config(self.config.replicas, wanted);
            config.max_age = target.max_age;
            config.duplicate_window = target.duplicate_window;
            self.js
                .update_stream(config)
                .await
                .map_err(|e| BusError::jetstream("update stream", e))?;
            tracing::info!(
                stream = spec.name,
                from_secs = info.config.max_age.as_secs(),
                to_secs = wanted.as_secs(),
                "intake retention changed"
            );
        }
        Ok(())
    }

    /// The sequence of the last message `stream` holds (0 when empty).
    pub async fn last_sequence(&self, stream: &streams::StreamSpec) -> Result<u64, BusError> {
        let mut stream = self
            .js
            .get_stream(stream.name)
            .await
            .map_err(|e| BusError::jetstream("get stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| BusError::jetstream("stream info", e))?;
        Ok(info.state.last_sequence)
    }

    /// Flushes what was published (acks included) and closes the connection; gives up
    /// after a few seconds when the server is gone, since nothing more can be sent then.
    pub async fn close(self) {
        let close = async {
            if let Err(err) = self.client.flush().await {
                tracing::warn!(error = %err, "flush on close");
            }
            if let Err(err) = self.client.drain().await {
                tracing::warn!(error = %err, "drain on close");
            }
        };
        if tokio::time::timeout(Duration::from_secs(3), close)
            .await
            .is_err()
        {
            tracing::warn!("NATS unreachable on close, giving up");
        }
    }
}

/// Why a stream with `replicas` copies is not safe to delete single messages from: no
/// leader, a replica missing from the leader's view, or one offline or not current. Empty
/// when it is (a stream of one copy always is).
fn replicas_behind(
    cluster: Option<&jetstream::stream::ClusterInfo>,
    replicas: usize,
) -> Vec<String> {
    let Some(cluster) = cluster.filter(|_| replicas > 1) else {
        return Vec::new();
    };
    let mut behind = Vec::new();
    if cluster.leader.is_none() {
        behind.push("no leader".to_owned());
    }
    let followers = cluster.replicas.len();
    if followers + 1 < replicas {
        behind.push(format!("{followers} of {} followers known", replicas - 1));
    }
    behind.extend(
        cluster
            .replicas
            .iter()
            .filter(|replica| replica.offline || !replica.current)
            .map(|replica| format!("{} catching up", replica.name)),
    );
    behind
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::stream::{ClusterInfo, PeerInfo};

    fn follower(name: &str, current: bool, offline: bool) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            current,
            offline,
            ..Default::default()
        }
    }

    fn cluster(leader: Option<&str>, followers: Vec<PeerInfo>) -> ClusterInfo {
        ClusterInfo {
            leader: leader.map(str::to_owned),
            replicas: followers,
            ..Default::default()
        }
    }

    #[test]
    fn a_stream_is_in_step_only_with_a_leader_and_every_follower_current() {
        let both = || vec![follower("n1", true, false), follower("n2", true, false)];
        assert!(replicas_behind(Some(&cluster(Some("n0"), both())), 3).is_empty());
        // One copy, or a single server (no cluster info): nothing to be out of step.
        assert!(replicas_behind(Some(&cluster(None, vec![])), 1).is_empty());
        assert!(replicas_behind(None, 3).is_empty());
        assert_eq!(
            replicas_behind(Some(&cluster(None, both())), 3),
            ["no leader"]
        );
        assert_eq!(
            replicas_behind(
                Some(&cluster(Some("n0"), vec![follower("n1", true, false)])),
                3
            ),
            ["1 of 2 followers known"]
        );
        assert_eq!(
            replicas_behind(
                Some(&cluster(
                    Some("n0"),
                    vec![follower("n1", false, false), follower("n2", true, true)]
                )),
                3
            ),
            ["n1 catching up", "n2 catching up"]
        );
    }
}
