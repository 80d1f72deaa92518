//! History rows and outbox events of deal and plan changes, written in batches inside the
//! change's transaction.

use std::collections::HashMap;

use prost::Message as _;
use salesplan_platform::{bus::streams, ids, telemetry};

use super::StoreError;
use salesplan_platform::privacy::ContactKeys;
use salesplan_proto::v1 as pb;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

use super::OUTBOX_CHANNEL;
use crate::domain::{
    deal::{Change, Deal},
    manager::Manager,
    plan::Plan,
};

/// One history row.
struct Entry {
    action: &'static str,
    from: Option<String>,
    to: Option<String>,
    loss_reason_id: Option<uuid::Uuid>,
    status: Option<&'static str>,
    /// Why the system made the change (kept in the row's detail).
    note: Option<String>,
}

fn entry(change: &Change) -> Entry {
    let id = |u: &uuid::Uuid| Some(u.to_string());
    match change {
        Change::Created => Entry {
            action: "created",
            from: None,
            to: None,
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Moved { from, to } => Entry {
            action: "moved",
            from: id(from),
            to: id(to),
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Closed {
            from,
            to,
            status,
            reason,
        } => Entry {
            action: "closed",
            from: id(from),
            to: id(to),
            loss_reason_id: *reason,
            status: Some(status.as_str()),
            note: None,
        },
        Change::Reopened { from, to, status } => Entry {
            action: "reopened",
            from: id(from),
            to: id(to),
            loss_reason_id: None,
            status: Some(status.as_str()),
            note: None,
        },
        Change::Assigned { from, to } => Entry {
            action: "assigned",
            from: from.clone(),
            to: to.clone(),
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Transferred { from, to } => Entry {
            action: "transferred",
            from: from.clone(),
            to: to.clone(),
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Reassigned { from, to, note, .. } => Entry {
            action: "assigned",
            from: from.clone(),
            to: to.clone(),
            loss_reason_id: None,
            status: None,
            note: Some(note.clone()),
        },
        Change::Accepted => Entry {
            action: "accepted",
            from: None,
            to: None,
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Edited { fields } => Entry {
            action: "edited",
            from: None,
            to: Some(fields.join(",")),
            loss_reason_id: None,
            status: None,
            note: None,
        },
        Change::Erased { .. } => Entry {
            action: "erased",
            from: None,
            to: None,
            loss_reason_id: None,
            status: None,
            note: None,
        },
    }
}

fn event_kind(change: &Change) -> pb::deal_event::Kind {
    use pb::deal_event::Kind;
    match change {
        Change::Created => Kind::Created,
        Change::Moved { .. } => Kind::Moved,
        Change::Closed { .. } => Kind::Closed,
        Change::Reopened { .. } => Kind::Reopened,
        Change::Assigned { .. } | Change::Transferred { .. } | Change::Reassigned { .. } => {
            Kind::Assigned
        }
        Change::Accepted => Kind::Accepted,
        Change::Edited { .. } => Kind::Updated,
        Change::Erased { .. } => Kind::Erased,
    }
}

/// Writes the history rows and outbox events of `changes` (each: the deal after the
/// change, and what changed). The events of a change of one deal continue the request's
/// trace; those of a change of many continue none (one trace of thousands would bury the
/// request).
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    keys: &ContactKeys,
    actor_id: &str,
    changes: &[(Deal, Change)],
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    record_caused(tx, keys, actor_id, changes, at, &HashMap::new()).await
}

/// [`record`], each deal's event continuing its own cause's trace where `causes` has one
/// (a W3C traceparent by the deal's idempotency key: the deals of leads).
pub async fn record_caused(
    tx: &mut Transaction<'_, Postgres>,
    keys: &ContactKeys,
    actor_id: &str,
    changes: &[(Deal, Change)],
    at: OffsetDateTime,
    causes: &HashMap<String, String>,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let entries: Vec<Entry> = changes.iter().map(|(_, c)| entry(c)).collect();
    sqlx::query(
        "INSERT INTO deal_history (account_id, deal_id, at, actor_id, action, from_value, to_value,
            loss_reason_id, status, detail)
         SELECT a, d, $3, $4, act, f, t, r, s,
            CASE WHEN n IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('note', n) END
         FROM UNNEST($1::text[], $2::uuid[], $5::text[], $6::text[], $7::text[], $8::uuid[], $9::text[],
            $10::text[]) AS x(a, d, act, f, t, r, s, n)",
    )
    .bind(changes.iter().map(|(d, _)| d.account_id.clone()).collect::<Vec<_>>())
    .bind(changes.iter().map(|(d, _)| d.id).collect::<Vec<_>>())
    .bind(at)
    .bind(actor_id)
    .bind(entries.iter().map(|e| e.action).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.from.clone()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.to.clone()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.loss_reason_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.status).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.note.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;

    let mut subjects = Vec::with_capacity(changes.len());
    let mut ids = Vec::with_capacity(changes.len());
    let mut payloads = Vec::with_capacity(changes.len());
    for (deal, change) in changes {
        let kind = event_kind(change);
        let event_id = ids::new_id().to_string();
        let (previous_manager_id, previous_stage_id) = match change {
            Change::Assigned { from, .. }
            | Change::Transferred { from, .. }
            | Change::Reassigned { from, .. } => (from.clone(), None),
            Change::Moved { from, .. }
            | Change::Closed { from, .. }
            | Change::Reopened { from, .. } => (None, Some(from.to_string())),
            _ => (None, None),
        };
        let event = pb::DealEvent {
            event_id: event_id.clone(),
            account_id: deal.account_id.clone(),
            occurred_at: Some(crate::convert::timestamp(at)),
            kind: kind as i32,
            actor_id: actor_id.to_owned(),
            deal: Some(crate::convert::without_personal_data(deal.into())),
            previous_manager_id,
            previous_stage_id,
            previous_assigned_at: match change {
                Change::Reassigned {
                    missed_assigned_at, ..
                } => missed_assigned_at.map(crate::convert::timestamp),
                _ => None,
            },
            contact_key: {
                // An erasure names the contact it erased, for consumers to forget.
                let contact = match change {
                    Change::Erased { former } => former,
                    _ => &deal.contact,
                };
                keys.of(
                    &deal.account_id,
                    &contact.external_id,
                    &contact.email,
                    &contact.phone,
                )
                .unwrap_or_default()
            },
        };
        subjects.push(streams::deal_subject(
            &deal.account_id,
            &kind_token(kind.as_str_name()),
        ));
        ids.push(event_id);
        payloads.push(event.encode_to_vec());
    }
    let request = (changes.len() == 1).then(telemetry::trace_headers);
    let headers = changes
        .iter()
        .map(|(deal, _)| match causes.get(&deal.idempotency_key) {
            Some(cause) => HashMap::from([(telemetry::TRACEPARENT.to_owned(), cause.clone())]),
            None => request.clone().unwrap_or_default(),
        })
        .collect();
    enqueue(tx, subjects, ids, payloads, headers).await
}

pub async fn record_plan(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    kind: pb::plan_event::Kind,
    actor_id: &str,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let event_id = ids::new_id().to_string();
    let event = pb::PlanEvent {
        event_id: event_id.clone(),
        account_id: plan.account_id.clone(),
        occurred_at: Some(crate::convert::timestamp(at)),
        kind: kind as i32,
        actor_id: actor_id.to_owned(),
        plan: Some(plan.into()),
    };
    let subject = streams::plan_subject(&plan.account_id, &kind_token(kind.as_str_name()));
    enqueue(
        tx,
        vec![subject],
        vec![event_id],
        vec![event.encode_to_vec()],
        vec![telemetry::trace_headers()],
    )
    .await
}

/// A manager's availability changed: the distributor keeps a copy.
pub async fn record_manager(
    tx: &mut Transaction<'_, Postgres>,
    manager: &Manager,
    actor_id: &str,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let event_id = ids::new_id().to_string();
    let event = pb::ManagerEvent {
        event_id: event_id.clone(),
        account_id: manager.account_id.clone(),
        occurred_at: Some(crate::convert::timestamp(at)),
        actor_id: actor_id.to_owned(),
        availability: Some(crate::convert::availability_to(manager, at)),
    };
    enqueue(
        tx,
        vec![streams::manager_subject(&manager.account_id)],
        vec![event_id],
        vec![event.encode_to_vec()],
        vec![telemetry::trace_headers()],
    )
    .await
}

/// `KIND_CREATED` → `created`: the last token of the event's subject.
fn kind_token(name: &str) -> String {
    name.strip_prefix("KIND_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    subjects: Vec<String>,
    message_ids: Vec<String>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<HashMap<String, String>>,
) -> Result<(), StoreError> {
    let headers = headers
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| StoreError::Internal(format!("trace headers: {err}")))?;
    sqlx::query(
        "INSERT INTO outbox (subject, message_id, payload, headers)
         SELECT s, m, p, h FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[])
            AS x(s, m, p, h)",
    )
    .bind(subjects)
    .bind(message_ids)
    .bind(payloads)
    .bind(headers)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
