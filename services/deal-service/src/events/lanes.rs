//! EraseContact's reach into the broker: the person's leads still in the intake lanes
//! (decided ones stay in the interactive lane until its age limit), and dead letters that
//! hold a lead or a deal event of theirs, are deleted (their data overwritten). A lead
//! deleted while the distributor had it in hand still becomes a deal, created without the
//! person (deal-service remembers the erasure).

use anyhow::Context as _;
use async_nats::jetstream::stream::RawMessageErrorKind;
use prost::Message as _;
use salesplan_platform::{
    bus::{Bus, HEADER_ORIGINAL_SUBJECT, streams},
    privacy::ContactKeys,
};
use salesplan_proto::v1 as pb;

/// Messages deleted, by stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub intake: i64,
    pub bulk: i64,
    pub dead_letters: i64,
}

/// Deletes the messages of `account_id`'s person (any of `known`, keyed keys) from the
/// intake lanes and the dead letters.
pub async fn delete_person(
    bus: &Bus,
    keys: &ContactKeys,
    account_id: &str,
    known: &[String],
) -> anyhow::Result<Deleted> {
    let is_theirs = |contact: Option<&pb::Contact>| {
        contact.is_some_and(|c| {
            keys.every_of(account_id, &c.external_id, &c.email, &c.phone)
                .iter()
                .any(|k| known.contains(k))
        })
    };
    let lead_of = |payload: &[u8]| {
        pb::IntakeEvent::decode(payload)
            .ok()
            .filter(|e| e.account_id == account_id)
            .is_some_and(|e| is_theirs(e.lead.as_ref().and_then(|l| l.contact.as_ref())))
    };
    let intake = delete_matching(
        bus,
        streams::INTAKE.name,
        &format!("salesplan.intake.v1.{account_id}.*"),
        |m| lead_of(&m.payload),
    )
    .await?;
    let bulk = delete_matching(
        bus,
        streams::BULK.name,
        &streams::bulk_subjects_of(account_id),
        |m| lead_of(&m.payload),
    )
    .await?;
    // The account's dead letters (`salesplan.dlq.v1.<consumer>.<account>`), and those from
    // before subjects named the account (`salesplan.dlq.v1.<consumer>`, gone within the
    // retention window), each read as the lead or deal event it was.
    let theirs = |m: &async_nats::jetstream::message::StreamMessage| {
        let original = m
            .headers
            .get(HEADER_ORIGINAL_SUBJECT)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        if streams::account_of(&original) != Some(account_id) {
            return false;
        }
        if original.starts_with("salesplan.deals.") {
            pb::DealEvent::decode(m.payload.as_ref())
                .ok()
                .is_some_and(|e| {
                    known.contains(&e.contact_key)
                        || is_theirs(e.deal.as_ref().and_then(|d| d.contact.as_ref()))
                })
        } else {
            lead_of(&m.payload)
        }
    };
    let mut dead_letters = 0;
    for subject in [
        format!("salesplan.dlq.v1.*.{account_id}"),
        "salesplan.dlq.v1.*".to_owned(),
    ] {
        dead_letters += delete_matching(bus, streams::DEAD_LETTERS.name, &subject, &theirs).await?;
    }
    Ok(Deleted {
        intake,
        bulk,
        dead_letters,
    })
}

/// Parts of a stream read at once by one erasure: the scan is one request per message of
/// the account, so its time is round trips; eight in flight read several times as many
/// messages a second (`just bench --only privacy`) and stay a small share of the broker.
const SCAN_PARTS: u64 = 8;

/// Deletes every message of `stream` on `subject` (a wildcard) for which `theirs` holds,
/// reading [`SCAN_PARTS`] parts of the stream at once (the last one also whatever arrives
/// during the scan).
async fn delete_matching(
    bus: &Bus,
    stream: &str,
    subject: &str,
    theirs: impl Fn(&async_nats::jetstream::message::StreamMessage) -> bool,
) -> anyhow::Result<i64> {
    let handle = bus
        .jetstream()
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    let state = &handle.cached_info().state;
    let parts = parts(state.first_sequence, state.last_sequence, SCAN_PARTS);
    let scans = parts
        .into_iter()
        .map(|(from, to)| delete_matching_in(bus, &handle, stream, subject, from, to, &theirs));
    Ok(futures::future::try_join_all(scans).await?.iter().sum())
}

/// `first..=last` cut into at most `n` consecutive parts `(from, to)`; the last one open
/// (`to` = `u64::MAX`).
fn parts(first: u64, last: u64, n: u64) -> Vec<(u64, u64)> {
    let first = first.max(1);
    let size = (last.saturating_sub(first) + 1).div_ceil(n.max(1)).max(1);
    let mut cut: Vec<(u64, u64)> = (0..n.max(1))
        .map(|k| first + k * size)
        .take_while(|from| *from <= last.max(first))
        .map(|from| (from, from + size - 1))
        .collect();
    if let Some(open) = cut.last_mut() {
        open.1 = u64::MAX;
    }
    cut
}

/// [`delete_matching`] over the messages `from..=to`.
async fn delete_matching_in(
    bus: &Bus,
    handle: &async_nats::jetstream::stream::Stream,
    stream: &str,
    subject: &str,
    from: u64,
    to: u64,
    theirs: &impl Fn(&async_nats::jetstream::message::StreamMessage) -> bool,
) -> anyhow::Result<i64> {
    let (mut seq, mut deleted) = (from, 0);
    loop {
        let message = match handle.get_first_raw_message_by_subject(subject, seq).await {
            Ok(message) if message.sequence <= to => message,
            Ok(_) => return Ok(deleted),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(deleted),
            Err(err) => return Err(err).with_context(|| format!("reading {stream}")),
        };
        seq = message.sequence + 1;
        if theirs(&message)
            && bus
                .delete_message(stream, message.sequence)
                .await
                .with_context(|| format!("{stream} #{}", message.sequence))?
        {
            deleted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parts;

    #[test]
    fn parts_cover_the_stream_once_and_the_last_stays_open() {
        assert_eq!(
            parts(1, 100, 4),
            [(1, 25), (26, 50), (51, 75), (76, u64::MAX)]
        );
        assert_eq!(parts(10, 12, 8), [(10, 10), (11, 11), (12, u64::MAX)]);
        // An empty stream (first past last) or one message: one open part.
        assert_eq!(parts(5, 4, 8), [(5, u64::MAX)]);
        assert_eq!(parts(0, 0, 8), [(1, u64::MAX)]);
        assert_eq!(parts(7, 7, 8), [(7, u64::MAX)]);
    }
}
