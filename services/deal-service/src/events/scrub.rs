//! `deal-service scrub-events`: the one-time rewrite of the deal events published before
//! events stopped carrying personal data (docs/privacy.md). The deals stream is kept
//! forever (reporting rebuilds from it), so those events would keep their contacts for
//! good. Each one is published again without its contact and title, with the keyed
//! contact key, and the original is then deleted with its data overwritten (JetStream's
//! secure delete).
//!
//! Consumers see each copy as a new message of a version they have applied already, which
//! changes nothing (both apply a deal's state only when it is newer); a rebuild reads the
//! copies instead of the originals. Running it again finds nothing to do; after a crash
//! between a copy and the deletion of its original it copies again (the copy's message id
//! is the same, so within the duplicate window JetStream keeps one) and deletes.
//! The broker user needs to delete messages of SALESPLAN_DEALS, which no service's own
//! user may: it is run with an operator's credentials (docs/operations.md).

use anyhow::Context as _;
use async_nats::jetstream::stream::RawMessageErrorKind;
use prost::Message as _;
use salesplan_platform::{
    bus::{Bus, Outgoing, streams},
    privacy::ContactKeys,
};
use salesplan_proto::v1 as pb;

/// Messages copied and deleted at a time (their acks awaited together).
const BATCH: usize = 200;

/// What a scrub did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Deal events read.
    pub read: u64,
    /// Of them, published again without personal data and deleted.
    pub rewritten: u64,
    /// Of them, carrying none but before the last that did: published again as they were
    /// and deleted (no gap left behind).
    pub moved: u64,
}

/// `event` without personal data, when it carries any.
pub fn scrubbed(event: &pb::DealEvent, keys: &ContactKeys) -> Option<pb::DealEvent> {
    let deal = event.deal.as_ref()?;
    if deal.contact.is_none() && deal.title.is_empty() {
        return None;
    }
    let contact_key = keys.of_deal_event(event).unwrap_or_default();
    Some(pb::DealEvent {
        deal: Some(crate::convert::without_personal_data(deal.clone())),
        contact_key,
        ..event.clone()
    })
}

/// Refuses to start while a consumer of the stream has messages to take or to acknowledge:
/// reporting records its progress over an unbroken run of sequences, so an original erased
/// before reporting took it would leave a gap its progress never passes.
async fn consumers_caught_up(stream: &async_nats::jetstream::stream::Stream) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let mut consumers = stream.consumers();
    let mut behind = Vec::new();
    while let Some(info) = consumers.next().await {
        let info = info.context("listing the deal stream's consumers")?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            behind.push(format!(
                "{} ({} to deliver, {} unacknowledged)",
                info.name, info.num_pending, info.num_ack_pending
            ));
        }
    }
    anyhow::ensure!(
        behind.is_empty(),
        "consumers have not caught up with the deal stream: {}; run again once they have",
        behind.join(", ")
    );
    Ok(())
}

/// Rewrites the deal events of the stream that carry personal data, up to its last message
/// when it starts. The events before the last of them that carry none are published again
/// too (unchanged) and their originals deleted, so the stream keeps no gap a consumer
/// reading it from its start would have to cross (reporting's progress needs an unbroken
/// run of sequences).
pub async fn scrub_deal_events(bus: &Bus, keys: &ContactKeys) -> anyhow::Result<Scrubbed> {
    let mut stream = bus
        .jetstream()
        .get_stream(streams::DEALS.name)
        .await
        .context("the deals stream")?;
    let state = stream.info().await?.state.clone();
    consumers_caught_up(&stream).await?;
    let mut done = Scrubbed::default();
    if state.messages == 0 {
        return Ok(done);
    }
    // First pass: the last event that carries personal data.
    let mut upto = None;
    for at in state.first_sequence..=state.last_sequence {
        if let Some((_, event)) = event_at(&stream, at).await? {
            done.read += 1;
            if scrubbed(&event, keys).is_some() {
                upto = Some(at);
            }
        }
    }
    let Some(upto) = upto else {
        return Ok(done);
    };
    let mut seq = state.first_sequence;
    while seq <= upto {
        let end = (seq + BATCH as u64).min(upto + 1);
        let mut copies = Vec::new();
        let mut originals = Vec::new();
        for at in seq..end {
            let Some((subject, event)) = event_at(&stream, at).await? else {
                continue;
            };
            let (suffix, copy) = match scrubbed(&event, keys) {
                Some(clean) => {
                    done.rewritten += 1;
                    ("scrubbed", clean)
                }
                None => {
                    done.moved += 1;
                    ("moved", event)
                }
            };
            copies.push(Outgoing::new(
                subject,
                format!("{}.{suffix}", copy.event_id),
                copy.encode_to_vec(),
            ));
            originals.push(at);
        }
        // Not even the copies while a replica is catching up: its originals could not go.
        bus.in_step(streams::DEALS.name).await?;
        bus.publish_all(copies).await?;
        // Each delete only while every replica is current (one can reset a replica that
        // is catching up); not a purge (a replica replaying it after a restart would take
        // the copies too). docs/reliability.md.
        for at in &originals {
            bus.delete_message(streams::DEALS.name, *at)
                .await
                .with_context(|| format!("deleting deal event #{at}"))?;
        }
        seq = end;
    }
    Ok(done)
}

/// The deal event at `at` and its subject; `None` where the stream holds none (an original
/// deleted before).
async fn event_at(
    stream: &async_nats::jetstream::stream::Stream,
    at: u64,
) -> anyhow::Result<Option<(String, pb::DealEvent)>> {
    let message = match stream.get_raw_message(at).await {
        Ok(message) => message,
        Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading deal event #{at}")),
    };
    let event = pb::DealEvent::decode(message.payload.clone())
        .with_context(|| format!("deal event #{at} does not decode"))?;
    Ok(Some((message.subject.to_string(), event)))
}
