//! Tables for people and JSON for scripts.

use salesplan_proto::v1 as pb;
use serde_json::{Value, json};

/// Writes `text` and a newline to stdout. A reader that went away (`salesplanctl … | head`)
/// ends the program quietly, as a closed pipe ends other Unix tools, instead of a panic.
pub fn emit(text: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(err) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {err}");
        std::process::exit(1);
    }
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A plain text table: a header, then rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

pub fn money(m: Option<&pb::Money>) -> String {
    match m {
        Some(m) => format!(
            "{}.{:02} {}",
            m.amount_minor / 100,
            m.amount_minor % 100,
            m.currency
        ),
        None => String::new(),
    }
}

/// A total: from its exact decimal sum, which may be beyond the int64 range.
pub fn total(m: &pb::MoneyTotal) -> String {
    let exact: i128 = m
        .exact_amount_minor
        .parse()
        .unwrap_or(i128::from(m.amount_minor));
    format!("{}.{:02} {}", exact / 100, exact % 100, m.currency)
}

fn money_json(m: Option<&pb::Money>) -> Value {
    m.map(|m| json!({"amount_minor": m.amount_minor, "currency": m.currency}))
        .unwrap_or(Value::Null)
}

/// A wire time in RFC 3339, as every command prints times.
pub fn time_text(t: Option<&prost_types::Timestamp>) -> Option<String> {
    salesplan_proto::time::time_of(t?)?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub fn time_json(t: Option<&prost_types::Timestamp>) -> Value {
    time_text(t).map(Value::String).unwrap_or(Value::Null)
}

pub fn status_name(status: i32) -> &'static str {
    pb::DealStatus::try_from(status)
        .ok()
        .filter(|s| *s != pb::DealStatus::Unspecified)
        .map_or("?", pb::DealStatus::short_name)
}

fn kind_name(kind: i32) -> &'static str {
    pb::StageKind::try_from(kind)
        .ok()
        .filter(|k| *k != pb::StageKind::Unspecified)
        .map_or("?", pb::StageKind::short_name)
}

pub fn plan_json(p: &pb::Plan) -> Value {
    let d = p.distribution.unwrap_or_default();
    json!({
        "id": p.id,
        "name": p.name,
        "chat_label": p.chat_label,
        "average_amount": money_json(p.average_amount.as_ref()),
        "distribution": {
            "mode": pb::distribution::Mode::try_from(d.mode).map(|m| m.as_str_name()).unwrap_or("?"),
            "strategy": pb::distribution::Strategy::try_from(d.strategy).map(|s| s.as_str_name()).unwrap_or("?"),
            "prefer_related": d.prefer_related,
            "keep_related_when_unavailable": d.keep_related_when_unavailable,
            "response_deadline_seconds": d.response_deadline_seconds,
            "max_reassignments": d.max_reassignments,
        },
        "managers": p.manager_ids,
        "manager_weights": p.manager_weights,
        "manager_max_open_deals": p.manager_max_open_deals,
        "stages": p.stages.iter().map(|s| json!({"id": s.id, "name": s.name, "color": s.color, "kind": kind_name(s.kind)})).collect::<Vec<_>>(),
        "loss_reasons": p.loss_reasons.as_ref().map(|r| json!({
            "require_reason": r.require_reason,
            "reasons": r.reasons.iter().map(|x| json!({"id": x.id, "name": x.name, "archived": x.archived})).collect::<Vec<_>>(),
        })),
        "archived": p.archived,
        "version": p.version,
    })
}

/// The plan's distribution in a line: mode, strategy, related contacts, response deadline.
fn distribution_text(p: &pb::Plan) -> String {
    use pb::distribution::{Mode, Strategy};
    let d = p.distribution.unwrap_or_default();
    if Mode::try_from(d.mode) != Ok(Mode::Auto) {
        return "by hand".into();
    }
    let mut parts = vec![match Strategy::try_from(d.strategy) {
        Ok(Strategy::RoundRobin) => "automatic, round robin".to_owned(),
        Ok(Strategy::LeastOpenDeals) => "automatic, fewest open deals".to_owned(),
        Ok(Strategy::Random) => "automatic, random".to_owned(),
        _ => "automatic".to_owned(),
    }];
    if d.prefer_related {
        parts.push(if d.keep_related_when_unavailable {
            "a related contact's manager first (kept for them when away)".into()
        } else {
            "a related contact's manager first".into()
        });
    }
    if d.response_deadline_seconds > 0 {
        parts.push(format!(
            "accept within {} s of working time, at most {} reassignments",
            d.response_deadline_seconds, d.max_reassignments
        ));
    }
    parts.join("; ")
}

pub fn plan_text(p: &pb::Plan) -> String {
    let mut out = format!("{} ({})\n", p.name, p.id);
    let managers: Vec<String> = p
        .manager_ids
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut terms = Vec::new();
            if let Some(w) = p.manager_weights.get(i).filter(|w| **w != 1) {
                terms.push(format!("weight {w}"));
            }
            if let Some(n) = p.manager_max_open_deals.get(i).filter(|n| **n > 0) {
                terms.push(format!("at most {n} open"));
            }
            if terms.is_empty() {
                m.clone()
            } else {
                format!("{m} ({})", terms.join(", "))
            }
        })
        .collect();
    out.push_str(&format!("  managers: {}\n", managers.join(", ")));
    out.push_str(&format!("  distribution: {}\n", distribution_text(p)));
    let rows: Vec<Vec<String>> = p
        .stages
        .iter()
        .map(|s| {
            vec![
                s.position.to_string(),
                s.name.clone(),
                kind_name(s.kind).into(),
                s.id.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["#", "stage", "kind", "id"], &rows));
    if let Some(r) = &p.loss_reasons
        && !r.reasons.is_empty()
    {
        let names: Vec<String> = r
            .reasons
            .iter()
            .map(|x| {
                if x.archived {
                    format!("{} (archived)", x.name)
                } else {
                    x.name.clone()
                }
            })
            .collect();
        out.push_str(&format!(
            "\n  reasons for refusal{}: {}",
            if r.require_reason { " (required)" } else { "" },
            names.join(", ")
        ));
    }
    out
}

pub fn deal_json(d: &pb::Deal) -> Value {
    let c = d.contact.clone().unwrap_or_default();
    json!({
        "id": d.id,
        "plan_id": d.plan_id,
        "stage_id": d.stage_id,
        "status": status_name(d.status),
        "manager_id": d.manager_id,
        "title": d.title,
        "amount": money_json(d.amount.as_ref()),
        "contact": {"external_id": c.external_id, "name": c.name, "email": c.email, "phone": c.phone},
        "loss_reason_id": d.loss_reason_id,
        "version": d.version,
        "created_at": time_json(d.created_at.as_ref()),
        "closed_at": time_json(d.closed_at.as_ref()),
        "waiting_since": time_json(d.waiting_since.as_ref()),
        "accepted_at": time_json(d.accepted_at.as_ref()),
        "escalated_at": time_json(d.escalated_at.as_ref()),
        "assigned_at": time_json(d.assigned_at.as_ref()),
        "accept_seconds": d.accept_seconds,
        "accepted_late": d.accepted_late,
        "response_due_at": time_json(d.response_due_at.as_ref()),
    })
}

pub fn deal_row(d: &pb::Deal) -> Vec<String> {
    vec![
        d.id.clone(),
        d.title.clone(),
        status_name(d.status).into(),
        match (&d.manager_id, &d.waiting_since) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) if d.escalated_at.is_some() => "(waiting for a person)".into(),
            (None, Some(_)) => "(waiting)".into(),
            (None, None) => "-".into(),
        },
        acceptance(d),
        money(d.amount.as_ref()),
        d.version.to_string(),
    ]
}

/// Whether the deal's manager took it on: in time, late (after the response deadline), or
/// not yet (until when, under a deadline); `-` without a manager.
fn acceptance(d: &pb::Deal) -> String {
    match (&d.manager_id, &d.accepted_at) {
        (None, _) => "-".into(),
        (Some(_), Some(_)) if d.accepted_late => "late".into(),
        (Some(_), Some(_)) => "yes".into(),
        (Some(_), None) => match time_text(d.response_due_at.as_ref()) {
            Some(due) => format!("no (due {due})"),
            None => "no".into(),
        },
    }
}

pub const DEAL_HEADER: [&str; 7] = [
    "id", "title", "status", "manager", "accepted", "amount", "version",
];

pub fn report_json(r: &pb::ReportRow) -> Value {
    json!({
        "key": r.key,
        "name": r.name,
        "won": r.won,
        "lost": r.lost,
        "won_percent": r.won_percent,
        "lost_percent": r.lost_percent,
        "reasons": r.reasons.iter().map(|x| json!({"reason_id": x.reason_id, "name": x.name, "archived": x.archived, "count": x.count, "percent_of_lost": x.percent_of_lost})).collect::<Vec<_>>(),
        "details": r.details.iter().map(report_json).collect::<Vec<_>>(),
    })
}

pub fn report_rows(r: &pb::ReportRow, indent: &str, out: &mut Vec<Vec<String>>) {
    out.push(vec![
        format!("{indent}{}", r.name),
        r.won.to_string(),
        r.lost.to_string(),
        format!("{:.1}", r.won_percent),
        format!("{:.1}", r.lost_percent),
        r.reasons
            .iter()
            .map(|x| format!("{} {} ({:.1}%)", x.name, x.count, x.percent_of_lost))
            .collect::<Vec<_>>()
            .join(", "),
    ]);
    for d in &r.details {
        report_rows(d, &format!("{indent}  "), out);
    }
}

pub fn board_json(board: &pb::GetBoardResponse) -> Value {
    json!({"columns": board.columns.iter().map(|c| json!({
        "stage": c.stage.as_ref().map(|s| s.name.clone()),
        "count": c.count,
        "amounts": c.amounts.iter().map(total).collect::<Vec<_>>(),
        "deals": c.deals.iter().map(deal_json).collect::<Vec<_>>(),
    })).collect::<Vec<_>>(), "total_count": board.total_count})
}

/// Per stage: its deals, their sums and the first cards' titles.
pub fn board_text(board: &pb::GetBoardResponse) -> String {
    let rows: Vec<Vec<String>> = board
        .columns
        .iter()
        .map(|c| {
            let amounts: Vec<String> = c.amounts.iter().map(total).collect();
            let titles: Vec<String> = c.deals.iter().map(|d| d.title.clone()).collect();
            vec![
                c.stage.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                c.count.to_string(),
                amounts.join(" + "),
                titles.join(", "),
            ]
        })
        .collect();
    table(&["stage", "deals", "amount", "first cards"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table shows what only `--json` showed before: whether the manager took the
    /// deal on, late or by when, and how the plan distributes.
    #[test]
    fn tables_show_acceptance_and_distribution() {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let given = pb::Deal {
            manager_id: Some("ann".into()),
            response_due_at: at(0),
            ..Default::default()
        };
        assert_eq!(acceptance(&given), "no (due 1970-01-01T00:00:00Z)");
        let late = pb::Deal {
            accepted_at: at(60),
            accepted_late: true,
            ..given.clone()
        };
        assert_eq!(acceptance(&late), "late");
        let in_time = pb::Deal {
            accepted_late: false,
            ..late
        };
        assert_eq!(acceptance(&in_time), "yes");
        assert_eq!(acceptance(&pb::Deal::default()), "-");
        assert_eq!(deal_row(&given).len(), DEAL_HEADER.len());

        let mut plan = pb::Plan {
            distribution: Some(pb::Distribution {
                mode: pb::distribution::Mode::Auto as i32,
                strategy: pb::distribution::Strategy::RoundRobin as i32,
                prefer_related: true,
                keep_related_when_unavailable: true,
                response_deadline_seconds: 900,
                max_reassignments: 2,
            }),
            ..Default::default()
        };
        assert_eq!(
            distribution_text(&plan),
            "automatic, round robin; a related contact's manager first (kept for them when \
             away); accept within 900 s of working time, at most 2 reassignments"
        );
        plan.distribution = None;
        assert_eq!(distribution_text(&plan), "by hand");
    }
}
