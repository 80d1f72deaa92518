//! Publishing with acknowledgement: a message counts as published only once JetStream
//! has stored it. Batches are pipelined: all sends first, then all acks.

use async_nats::{
    HeaderMap,
    jetstream::{
        ErrorCode,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        message::PublishMessage,
    },
};
use bytes::Bytes;

use super::{Bus, BusError};

/// One message to publish. The message id makes JetStream drop a re-publish within the
/// stream's duplicate window.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub message_id: String,
    pub payload: Bytes,
    /// Extra headers; without a `traceparent` the current span's trace context is added.
    pub headers: HeaderMap,
}

impl Outgoing {
    pub fn new(subject: String, message_id: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject,
            message_id: message_id.into(),
            payload: payload.into(),
            headers: HeaderMap::new(),
        }
    }
}

/// The outcome of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// JetStream had the message id already (a retry).
    pub duplicate: bool,
}

impl Bus {
    /// Publishes one message and waits until JetStream stored it.
    pub async fn publish(&self, message: Outgoing) -> Result<Stored, BusError> {
        let subject = message.subject.clone();
        let ack = self.send(message).await?;
        await_ack(subject, ack).await
    }

    /// Publishes every message, in order, with the acks awaited together at the end, and
    /// answers for each on its own: a message the broker refuses ([`BusError::Refused`])
    /// fails alone, the others go on. Once one fails for a passing reason (the connection)
    /// the rest are not sent and fail too.
    pub async fn publish_each(&self, messages: Vec<Outgoing>) -> Vec<Result<Stored, BusError>> {
        let mut pending = Vec::with_capacity(messages.len());
        let mut broken: Option<String> = None;
        for message in messages {
            let subject = message.subject.clone();
            if let Some(earlier) = &broken {
                pending.push(Err(BusError::Publish {
                    subject,
                    message: format!("not sent after an earlier failure: {earlier}"),
                }));
                continue;
            }
            match self.send(message).await {
                Ok(ack) => pending.push(Ok((subject, ack))),
                Err(err) => {
                    if !err.is_refused() {
                        broken = Some(err.to_string());
                    }
                    pending.push(Err(err));
                }
            }
        }
        let mut stored = Vec::with_capacity(pending.len());
        for item in pending {
            stored.push(match item {
                Ok((subject, ack)) => await_ack(subject, ack).await,
                Err(err) => Err(err),
            });
        }
        stored
    }

    /// Publishes every message, in order, with the acks awaited together at the end.
    /// On an error some of the batch may be stored: publish again with the same ids.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<Vec<Stored>, BusError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let subject = message.subject.clone();
            pending.push((subject, self.send(message).await?));
        }
        let mut stored = Vec::with_capacity(pending.len());
        for (subject, ack) in pending {
            stored.push(await_ack(subject, ack).await?);
        }
        Ok(stored)
    }

    async fn send(&self, message: Outgoing) -> Result<PublishAckFuture, BusError> {
        // While disconnected a publish would wait out the ack timeout; the caller is better
        // served by an immediate "unavailable" it can retry.
        if self.client.connection_state() == async_nats::connection::State::Disconnected {
            return Err(BusError::Publish {
                subject: message.subject,
                message: "not connected to NATS".into(),
            });
        }
        let mut headers = message.headers;
        // A message relayed from an outbox keeps the trace of the change that wrote it.
        if headers.get("traceparent").is_none() {
            crate::telemetry::inject_into_nats(&mut headers);
        }
        let publish = PublishMessage::build()
            .payload(message.payload)
            .headers(headers)
            .message_id(&message.message_id);
        self.js
            .send_publish(message.subject.clone(), publish)
            .await
            .map_err(|e| publish_error(message.subject, e))
    }
}

/// A refusal of this one message, or a passing failure.
fn publish_error(subject: String, err: PublishError) -> BusError {
    let refused = match err.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        // The stream's own size limit, answered by the server for this message.
        PublishErrorKind::Other => std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|e| e.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
        _ => false,
    };
    let message = match std::error::Error::source(&err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    };
    if refused {
        BusError::Refused {
            subject,
            reason: message,
        }
    } else {
        BusError::Publish { subject, message }
    }
}

async fn await_ack(subject: String, ack: PublishAckFuture) -> Result<Stored, BusError> {
    let ack = ack.await.map_err(|e| publish_error(subject, e))?;
    Ok(Stored {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// The producer span of publishing to `subject` inside one of the services' own spans (the
/// message then carries it as its parent); none outside them.
pub fn producer_span(subject: &str) -> tracing::Span {
    crate::telemetry::own_child(|| {
        tracing::info_span!(
        "publish",
        otel.name = "publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = subject,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        )
    })
}
