//! One function per command: build the request, call, print.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, grpc::outgoing,
};
use salesplan_proto::v1::{
    self as pb, contact_service_client::ContactServiceClient,
    deal_service_client::DealServiceClient, distributor_service_client::DistributorServiceClient,
    intake_service_client::IntakeServiceClient, outbox_service_client::OutboxServiceClient,
    plan_service_client::PlanServiceClient, report_service_client::ReportServiceClient,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::{
    args::{
        Cli, Command, Contacts, Deals, Filter, Global, Intake, NewDeal, NewPlan, Outbox, Person,
        Plans, Reports, usage,
    },
    output::{self, DEAL_HEADER, deal_json, deal_row, plan_json, plan_text, table},
};

/// Every item of a paged list: `fetch` gets a page token (empty for the first page) and
/// answers the page's items and the next token (empty after the last page).
async fn every_page<T, Fut>(mut fetch: impl FnMut(String) -> Fut) -> anyhow::Result<Vec<T>>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut items, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

pub(crate) struct Ctx {
    pub(crate) global: Global,
    token: String,
}

impl Ctx {
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        outgoing(message, &self.token)
    }

    pub(crate) async fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                anyhow::Error::new(tonic::Status::unavailable(format!(
                    "cannot reach {url}: {e}"
                )))
            })
    }

    async fn plans(&self) -> anyhow::Result<PlanServiceClient<Channel>> {
        Ok(PlanServiceClient::new(
            self.channel(&self.global.deal_service).await?,
        ))
    }

    async fn deals(&self) -> anyhow::Result<DealServiceClient<Channel>> {
        Ok(DealServiceClient::new(
            self.channel(&self.global.deal_service).await?,
        ))
    }

    pub(crate) fn print(&self, json: serde_json::Value, text: impl FnOnce() -> String) {
        if self.global.json {
            output::emit(&json);
        } else {
            output::emit(&text());
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Token {
        account,
        user,
        perms,
        ttl,
    } = &cli.command
    {
        return token(account, user, perms, *ttl);
    }
    let token = cli.global.token.clone().ok_or_else(|| {
        tonic::Status::unauthenticated("no token: pass --token or set SALESPLAN_TOKEN")
    })?;
    let ctx = Ctx {
        global: cli.global,
        token,
    };
    match cli.command {
        Command::Token { .. } => Ok(()),
        Command::Plans(c) => plans(&ctx, c).await,
        Command::Deals(c) => deals(&ctx, c).await,
        Command::Intake(c) => intake(&ctx, c).await,
        Command::Reports(c) => reports(&ctx, c).await,
        Command::Outbox(c) => outbox(&ctx, c).await,
        Command::Contacts(c) => contacts(&ctx, c).await,
        Command::Managers(c) => crate::managers::run(&ctx, c).await,
    }
}

async fn contacts(ctx: &Ctx, command: Contacts) -> anyhow::Result<()> {
    let mut client = ContactServiceClient::new(ctx.channel(&ctx.global.deal_service).await?);
    match command {
        Contacts::Erase(Person {
            external_id,
            email,
            phone,
        }) => {
            let receipt = client
                .erase_contact(ctx.request(pb::EraseContactRequest {
                    external_id,
                    email,
                    phone,
                }))
                .await?
                .into_inner();
            let first = receipt
                .first_erased_at
                .map(|t| t.to_string())
                .unwrap_or_default();
            ctx.print(
                json!({
                    "receipt_id": receipt.receipt_id,
                    "first_erased_at": first,
                    "erased": receipt.erased.iter().map(|p| json!({"place": p.place, "count": p.count})).collect::<Vec<_>>(),
                    "deals_erased_in_total": receipt.deals_erased_in_total,
                }),
                || {
                    let places: Vec<String> = receipt
                        .erased
                        .iter()
                        .map(|p| format!("{} {}", p.place, p.count))
                        .collect();
                    let deals_now = receipt
                        .erased
                        .iter()
                        .find(|p| p.place == "deal_service.deals")
                        .map_or(0, |p| p.count);
                    format!(
                        "receipt {} (first erased {first}): {deals_now} deals erased now, {} in all; erased now: {}",
                        receipt.receipt_id,
                        receipt.deals_erased_in_total,
                        places.join(", ")
                    )
                },
            );
        }
        Contacts::Export(Person {
            external_id,
            email,
            phone,
        }) => {
            let export = client
                .export_contact(ctx.request(pb::ExportContactRequest {
                    external_id,
                    email,
                    phone,
                }))
                .await?
                .into_inner();
            // A document for the person, whatever the output mode.
            let document = json!({
                "exported_at": export.exported_at.map(|t| t.to_string()).unwrap_or_default(),
                "deals": export.deals.iter().map(|item| json!({
                    "deal": item.deal.as_ref().map(deal_json),
                    "history": item.history.iter().map(|e| json!({
                        "at": e.at.map(|t| t.to_string()).unwrap_or_default(),
                        "actor": e.actor_id,
                        "action": pb::HistoryAction::try_from(e.action)
                            .map(|a| a.as_str_name())
                            .unwrap_or("HISTORY_ACTION_UNSPECIFIED"),
                        "from": e.from,
                        "to": e.to,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            output::emit(&format!("{document:#}"));
        }
    }
    Ok(())
}

fn token(account: &str, user: &str, perms: &[String], ttl: u64) -> anyhow::Result<()> {
    let permissions = perms
        .iter()
        .map(|p| {
            p.parse::<Permission>()
                .map_err(|()| usage!("unknown permission {p:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let secret = std::env::var("SALESPLAN_JWT_HS256_SECRET")
        .unwrap_or_else(|_| AuthConfig::DEV_SECRET.into());
    let token = TokenIssuer::hs256(secret.as_bytes()).issue(
        &Actor::new(account, user, permissions),
        Duration::from_secs(ttl),
    )?;
    output::emit(&token);
    Ok(())
}

fn distribution(kind: &str, prefer_related: bool) -> anyhow::Result<pb::Distribution> {
    use pb::distribution::{Mode, Strategy};
    let (mode, strategy) = match kind {
        "manual" => (Mode::Manual, Strategy::Unspecified),
        "random" => (Mode::Auto, Strategy::Random),
        "round-robin" => (Mode::Auto, Strategy::RoundRobin),
        "least-open" => (Mode::Auto, Strategy::LeastOpenDeals),
        other => {
            return Err(usage!(
                "--distribution: {other:?} is not manual, random, round-robin or least-open"
            ));
        }
    };
    Ok(pb::Distribution {
        mode: mode as i32,
        prefer_related,
        keep_related_when_unavailable: false,
        response_deadline_seconds: 0,
        max_reassignments: 0,
        strategy: strategy as i32,
    })
}

async fn plans(ctx: &Ctx, command: Plans) -> anyhow::Result<()> {
    let mut client = ctx.plans().await?;
    let plan = match command {
        Plans::Create(new) => {
            client
                .create_plan(ctx.request(plan_request(new)?))
                .await?
                .into_inner()
                .plan
        }
        Plans::Distribution { plan, distribution } => {
            client
                .update_plan(ctx.request(pb::UpdatePlanRequest {
                    plan_id: plan,
                    distribution: Some(distribution_of(&distribution)?),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .plan
        }
        Plans::List { archived } => return list_plans(ctx, &client, archived).await,
        Plans::Show { plan } => {
            client
                .get_plan(ctx.request(pb::GetPlanRequest {
                    plan_id: plan,
                    with_availability: false,
                }))
                .await?
                .into_inner()
                .plan
        }
        Plans::Managers { plan, managers } => {
            client
                .set_plan_managers(ctx.request(pb::SetPlanManagersRequest {
                    plan_id: plan,
                    members: members(&managers)?,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .plan
        }
        Plans::AddStage {
            plan,
            name,
            color,
            position,
        } => {
            client
                .add_stage(ctx.request(pb::AddStageRequest {
                    plan_id: plan,
                    name,
                    color,
                    position,
                }))
                .await?
                .into_inner()
                .plan
        }
        Plans::Reasons {
            plan,
            require,
            reasons,
        } => set_reasons(ctx, &mut client, plan, require, reasons).await?,
        Plans::Archive { plan } => {
            client
                .archive_plan(ctx.request(pb::ArchivePlanRequest { plan_id: plan }))
                .await?
                .into_inner()
                .plan
        }
        Plans::Unarchive { plan } => {
            client
                .unarchive_plan(ctx.request(pb::UnarchivePlanRequest { plan_id: plan }))
                .await?
                .into_inner()
                .plan
        }
    };
    let plan = plan.context("the server returned no plan")?;
    ctx.print(plan_json(&plan), || plan_text(&plan));
    Ok(())
}

async fn list_plans(
    ctx: &Ctx,
    client: &PlanServiceClient<Channel>,
    archived: bool,
) -> anyhow::Result<()> {
    let plans = every_page(|page_token| {
        let (mut client, request) = (
            client.clone(),
            ctx.request(pb::ListPlansRequest {
                include_archived: archived,
                page_size: 50,
                page_token,
            }),
        );
        async move {
            let page = client.list_plans(request).await?.into_inner();
            Ok((page.plans, page.next_page_token))
        }
    })
    .await?;
    ctx.print(
        json!(plans.iter().map(plan_json).collect::<Vec<_>>()),
        || {
            let rows: Vec<Vec<String>> = plans
                .iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        p.name.clone(),
                        p.manager_ids.len().to_string(),
                        if p.archived {
                            "archived".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            table(&["id", "name", "managers", ""], &rows)
        },
    );
    Ok(())
}

/// Sets the plan's loss reasons by name: a name it has keeps its reason's id.
async fn set_reasons(
    ctx: &Ctx,
    client: &mut PlanServiceClient<Channel>,
    plan: String,
    require: bool,
    reasons: Vec<String>,
) -> anyhow::Result<Option<pb::Plan>> {
    let current = client
        .get_plan(ctx.request(pb::GetPlanRequest {
            plan_id: plan.clone(),
            with_availability: false,
        }))
        .await?
        .into_inner()
        .plan
        .and_then(|p| p.loss_reasons)
        .unwrap_or_default()
        .reasons;
    let inputs = reasons
        .into_iter()
        .map(|name| pb::LossReasonInput {
            id: current
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.id.clone())
                .unwrap_or_default(),
            name,
        })
        .collect();
    Ok(client
        .set_loss_reasons(ctx.request(pb::SetLossReasonsRequest {
            plan_id: plan,
            require_reason: require,
            reasons: inputs,
        }))
        .await?
        .into_inner()
        .plan)
}

fn plan_request(new: NewPlan) -> anyhow::Result<pb::CreatePlanRequest> {
    Ok(pb::CreatePlanRequest {
        name: new.name,
        chat_label: new.label,
        average_amount: Some(pb::Money {
            amount_minor: new.amount,
            currency: new.currency,
        }),
        distribution: Some(distribution_of(&new.distribution)?),
        members: members(&new.managers)?,
        ..Default::default()
    })
}

fn distribution_of(args: &crate::args::DistributionArgs) -> anyhow::Result<pb::Distribution> {
    Ok(pb::Distribution {
        keep_related_when_unavailable: args.keep_related,
        response_deadline_seconds: args.response_deadline,
        max_reassignments: args.max_reassignments,
        ..distribution(&args.distribution, args.prefer_related)?
    })
}

/// `--manager id`, `id:weight` or `id:weight:limit` (0: no limit), in turn order.
fn members(managers: &[String]) -> anyhow::Result<Vec<pb::PlanMember>> {
    managers.iter().map(|m| member(m)).collect()
}

/// A manager id may hold colons itself: only numbers after the last one or two are its
/// weight (and limit of open deals). A number too big to be one is refused, not taken
/// as part of the id (`a:99999999999` would make a manager nobody meant).
fn member(text: &str) -> anyhow::Result<pb::PlanMember> {
    let split = |s: &str| -> anyhow::Result<Option<(String, i32)>> {
        let Some((rest, n)) = s.rsplit_once(':') else {
            return Ok(None);
        };
        let digits = n.strip_prefix('-').unwrap_or(n);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let n = n
            .parse()
            .map_err(|_| usage!("--manager {text:?}: {n} is out of range"))?;
        Ok(Some((rest.to_owned(), n)))
    };
    let (manager_id, weight, max_open_deals) = match split(text)? {
        Some((rest, limit)) => match split(&rest)? {
            Some((id, weight)) => (id, weight, limit),
            None => (rest, limit, 0),
        },
        None => (text.to_owned(), 1, 0),
    };
    Ok(pb::PlanMember {
        manager_id,
        weight,
        max_open_deals,
    })
}

fn deal_request(new: NewDeal) -> pb::CreateDealRequest {
    pb::CreateDealRequest {
        plan_id: new.plan,
        title: new.title.unwrap_or_default(),
        contact: Some(pb::Contact {
            external_id: new.external_id.unwrap_or_default(),
            name: new.name.unwrap_or_default(),
            email: new.email.unwrap_or_default(),
            phone: new.phone.unwrap_or_default(),
        }),
        manager_id: new.manager,
        idempotency_key: new
            .key
            .unwrap_or_else(|| salesplan_platform::ids::new_id().to_string()),
        ..Default::default()
    }
}

fn filter(f: Filter) -> anyhow::Result<pb::DealFilter> {
    let statuses = f
        .statuses
        .iter()
        .map(|s| match s.as_str() {
            "open" => Ok(pb::DealStatus::Open as i32),
            "won" => Ok(pb::DealStatus::Won as i32),
            "lost" => Ok(pb::DealStatus::Lost as i32),
            other => Err(usage!("--status: {other:?} is not open, won or lost")),
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(pb::DealFilter {
        plan_id: f.plan.unwrap_or_default(),
        stage_ids: f.stages,
        manager_ids: f.managers,
        unassigned: f.unassigned,
        waiting: f.waiting,
        statuses,
        search: f.search.unwrap_or_default(),
        ..Default::default()
    })
}

async fn current(
    client: &mut DealServiceClient<Channel>,
    ctx: &Ctx,
    deal: &str,
) -> anyhow::Result<pb::Deal> {
    client
        .get_deal(ctx.request(pb::GetDealRequest {
            deal_id: deal.to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .deal
        .context("the server returned no deal")
}

async fn deals(ctx: &Ctx, command: Deals) -> anyhow::Result<()> {
    let mut client = ctx.deals().await?;
    let deal = match command {
        Deals::Create(new) => {
            client
                .create_deal(ctx.request(deal_request(new)))
                .await?
                .into_inner()
                .deal
        }
        Deals::List {
            filter: f,
            limit,
            fresh_as,
        } => return list_deals(ctx, &mut client, filter(f)?, limit, fresh_as).await,
        Deals::Board {
            board_plan,
            filter: f,
            cards,
            fresh_as,
        } => return board(ctx, &mut client, board_plan, filter(f)?, cards, fresh_as).await,
        Deals::Show { deal } => Some(current(&mut client, ctx, &deal).await?),
        Deals::Move {
            deal,
            stage,
            reason,
        } => {
            let now = current(&mut client, ctx, &deal).await?;
            client
                .move_deal(ctx.request(pb::MoveDealRequest {
                    deal_id: deal,
                    expected_version: now.version,
                    stage_id: stage,
                    loss_reason_id: reason,
                }))
                .await?
                .into_inner()
                .deal
        }
        Deals::Assign { deal, manager } => {
            let now = current(&mut client, ctx, &deal).await?;
            client
                .assign_deal(ctx.request(pb::AssignDealRequest {
                    deal_id: deal,
                    expected_version: now.version,
                    manager_id: manager,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .deal
        }
        Deals::Reopen { deal } => {
            let now = current(&mut client, ctx, &deal).await?;
            client
                .reopen_deal(ctx.request(pb::ReopenDealRequest {
                    deal_id: deal,
                    expected_version: now.version,
                }))
                .await?
                .into_inner()
                .deal
        }
        // Without reading the deal first: a manager needs no `deals:read` to accept.
        Deals::Accept { deal } => {
            client
                .accept_deal(ctx.request(pb::AcceptDealRequest {
                    deal_id: deal,
                    expected_version: 0,
                }))
                .await?
                .into_inner()
                .deal
        }
        Deals::Transfer { from, to, plan } => {
            return transfer(ctx, &mut client, from, to, plan).await;
        }
        Deals::History { deal } => return history(ctx, &client, deal).await,
        Deals::Explain { deal } => return explain(ctx, deal).await,
        Deals::Watch {
            plan,
            stages,
            manager,
            snapshot,
            resume,
            count,
        } => {
            let request = pb::WatchDealsRequest {
                plan_id: plan,
                stage_ids: stages,
                manager_id: manager,
                resume_token: resume.unwrap_or_default(),
                start_with_snapshot: snapshot,
                ..Default::default()
            };
            return watch(ctx, &mut client, request, count).await;
        }
    };
    let deal = deal.context("the server returned no deal")?;
    ctx.print(deal_json(&deal), || table(&DEAL_HEADER, &[deal_row(&deal)]));
    Ok(())
}

/// Prints a watch's messages as they come: the board, then a line per change with its
/// resume token; the status it ends with is the command's error.
async fn watch(
    ctx: &Ctx,
    client: &mut DealServiceClient<Channel>,
    request: pb::WatchDealsRequest,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use pb::watch_deals_response::Item;
    let mut stream = client.watch_deals(ctx.request(request)).await?.into_inner();
    let mut changes = 0;
    while count.is_none_or(|n| changes < n) {
        let Some(message) = stream.message().await? else {
            return Ok(());
        };
        let token = message.resume_token.clone();
        match message.item {
            Some(Item::Snapshot(board)) => ctx.print(
                json!({"snapshot": output::board_json(&board), "resume_token": token}),
                || format!("{}\n(resume token {token})", output::board_text(&board)),
            ),
            Some(Item::Change(change)) => {
                changes += 1;
                let kind = pb::ChangeKind::try_from(change.kind)
                    .unwrap_or_default()
                    .short_name();
                let deal = change.deal.unwrap_or_default();
                ctx.print(
                    json!({"kind": kind, "deal": deal_json(&deal), "previous_stage_id": change.previous_stage_id, "previous_manager_id": change.previous_manager_id, "actor_id": change.actor_id, "resume_token": token}),
                    || {
                        let row = deal_row(&deal).join("  ");
                        format!("{kind:<9} {row}  by {} (resume token {token})", change.actor_id)
                    },
                );
            }
            None => ctx.print(json!({"checkpoint": true, "resume_token": token}), || {
                format!("(watching; resume token {token})")
            }),
        }
    }
    Ok(())
}

async fn list_deals(
    ctx: &Ctx,
    client: &mut DealServiceClient<Channel>,
    filter: pb::DealFilter,
    limit: i32,
    fresh_as: String,
) -> anyhow::Result<()> {
    let page = client
        .list_deals(ctx.request(pb::ListDealsRequest {
            filter: Some(filter),
            sort: None,
            page_size: limit,
            page_token: String::new(),
            min_consistency_token: fresh_as,
        }))
        .await?
        .into_inner();
    ctx.print(
        json!({"deals": page.deals.iter().map(deal_json).collect::<Vec<_>>(), "total_count": page.total_count, "next_page_token": page.next_page_token}),
        || {
            let rows: Vec<Vec<String>> = page.deals.iter().map(deal_row).collect();
            let totals: Vec<String> = page.total_amounts.iter().map(output::total).collect();
            format!("{}\n{} deals, {}", table(&DEAL_HEADER, &rows), page.total_count, totals.join(" + "))
        },
    );
    Ok(())
}

async fn board(
    ctx: &Ctx,
    client: &mut DealServiceClient<Channel>,
    plan: String,
    filter: pb::DealFilter,
    cards: i32,
    fresh_as: String,
) -> anyhow::Result<()> {
    let board = client
        .get_board(ctx.request(pb::GetBoardRequest {
            plan_id: plan,
            filter: Some(filter),
            sort: None,
            cards_per_stage: cards,
            min_consistency_token: fresh_as,
        }))
        .await?
        .into_inner();
    ctx.print(output::board_json(&board), || output::board_text(&board));
    Ok(())
}

async fn transfer(
    ctx: &Ctx,
    client: &mut DealServiceClient<Channel>,
    from: String,
    to: String,
    plan: Option<String>,
) -> anyhow::Result<()> {
    let result = client
        .transfer_deals(ctx.request(pb::TransferDealsRequest {
            from_manager_id: from,
            to_manager_id: to,
            filter: Some(pb::DealFilter {
                plan_id: plan.unwrap_or_default(),
                ..Default::default()
            }),
        }))
        .await?
        .into_inner();
    ctx.print(
        json!({"changed": result.changed, "failures": result.failures.iter().map(|f| json!({"deal_id": f.deal_id, "reason": f.reason})).collect::<Vec<_>>()}),
        || {
            let mut out = format!("{} deals transferred", result.changed);
            for f in &result.failures {
                out.push_str(&format!("\n  {}: {}", f.deal_id, f.reason));
            }
            out
        },
    );
    Ok(())
}

async fn history(
    ctx: &Ctx,
    client: &DealServiceClient<Channel>,
    deal: String,
) -> anyhow::Result<()> {
    let entries = every_page(|page_token| {
        let (mut client, request) = (
            client.clone(),
            ctx.request(pb::GetDealHistoryRequest {
                deal_id: deal.clone(),
                page_size: 500,
                page_token,
            }),
        );
        async move {
            let page = client.get_deal_history(request).await?.into_inner();
            Ok((page.entries, page.next_page_token))
        }
    })
    .await?;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                crate::output::time_text(e.at.as_ref()).unwrap_or_default(),
                e.actor_id.clone(),
                pb::HistoryAction::try_from(e.action)
                    .map(|a| {
                        a.as_str_name()
                            .trim_start_matches("HISTORY_ACTION_")
                            .to_lowercase()
                    })
                    .unwrap_or_default(),
                e.from.clone(),
                e.to.clone(),
                e.note.clone(),
            ]
        })
        .collect();
    ctx.print(
        json!(entries.iter().map(|e| json!({"id": e.id, "actor_id": e.actor_id, "action": e.action, "from": e.from, "to": e.to, "loss_reason_id": e.loss_reason_id, "note": e.note})).collect::<Vec<_>>()),
        || table(&["at", "who", "action", "from", "to", "note"], &rows),
    );
    Ok(())
}

async fn intake(ctx: &Ctx, command: Intake) -> anyhow::Result<()> {
    let client = || async {
        anyhow::Ok(IntakeServiceClient::new(
            ctx.channel(&ctx.global.intake).await?,
        ))
    };
    match command {
        Intake::Rejections { plan, limit } => return rejections(ctx, plan, limit).await,
        Intake::Add {
            plan,
            run,
            name,
            email,
            phone,
            external_id,
        } => {
            let response = client()
                .await?
                .add_to_sales_plan(ctx.request(pb::AddToSalesPlanRequest {
                    lead: Some(pb::Lead {
                        plan_id: plan,
                        run_id: run,
                        contact: Some(pb::Contact {
                            external_id: external_id.unwrap_or_default(),
                            name: name.unwrap_or_default(),
                            email: email.unwrap_or_default(),
                            phone: phone.unwrap_or_default(),
                        }),
                        ..Default::default()
                    }),
                }))
                .await?
                .into_inner();
            ctx.print(
                json!({"intake_id": response.intake_id, "duplicate": !response.accepted_now,
                       "consistency_token": response.consistency_token}),
                || {
                    format!(
                        "{} {} (read its deal with --fresh-as {})",
                        if response.accepted_now {
                            "accepted"
                        } else {
                            "duplicate"
                        },
                        response.intake_id,
                        response.consistency_token
                    )
                },
            );
        }
        Intake::Bulk {
            plan,
            file,
            job,
            manager,
        } => return bulk_add(ctx, client().await?, plan, &file, job, manager).await,
    }
    Ok(())
}

/// Adds the contacts of a CSV file in chunks of 1,000, showing progress; then the count of
/// each outcome and every rejected row with its reason.
async fn bulk_add(
    ctx: &Ctx,
    mut client: IntakeServiceClient<Channel>,
    plan: String,
    file: &std::path::Path,
    job: Option<String>,
    manager: Option<String>,
) -> anyhow::Result<()> {
    let contacts = read_csv(file)?;
    let job = job.unwrap_or_else(|| {
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let total = contacts.len();
    let chunks: Vec<pb::AddAudienceRequest> = contacts
        .chunks(1_000)
        .map(|c| pb::AddAudienceRequest {
            plan_id: plan.clone(),
            job_id: job.clone(),
            assign_to_manager_id: manager.clone(),
            contacts: c.to_vec(),
        })
        .collect();
    let mut responses = client
        .add_audience(ctx.request(futures::stream::iter(chunks)))
        .await?
        .into_inner();
    let (mut done, mut accepted, mut duplicates) = (0, 0, 0);
    let mut rejected = Vec::new();
    while let Some(response) = responses.next().await {
        for result in response?.results {
            match pb::ContactOutcome::try_from(result.outcome) {
                Ok(pb::ContactOutcome::Accepted) => accepted += 1,
                Ok(pb::ContactOutcome::Duplicate) => duplicates += 1,
                _ => rejected.push((done + 1, result.reason)),
            }
            done += 1;
        }
        if !ctx.global.json {
            progress(done, total);
        }
    }
    if !ctx.global.json {
        eprintln!();
    }
    ctx.print(
        json!({"accepted": accepted, "duplicate": duplicates, "rejected": rejected.iter().map(|(line, reason)| json!({"row": line, "reason": reason})).collect::<Vec<_>>()}),
        || {
            let mut out = format!("{accepted} accepted, {duplicates} duplicates, {} rejected", rejected.len());
            for (row, reason) in &rejected {
                out.push_str(&format!("\n  row {row}: {reason}"));
            }
            out
        },
    );
    Ok(())
}

fn progress(done: usize, total: usize) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    eprint!(
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
}

fn read_csv(path: &std::path::Path) -> anyhow::Result<Vec<pb::AudienceContact>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|err| usage!("cannot read {}: {err}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (ext, name, email, phone) = (
        column("external_id"),
        column("name"),
        column("email"),
        column("phone"),
    );
    if ext.is_none() && email.is_none() && phone.is_none() {
        return Err(usage!(
            "{}: the header needs external_id, email or phone",
            path.display()
        ));
    }
    let mut contacts = Vec::new();
    for record in reader.records() {
        let record = record?;
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).unwrap_or("").to_owned();
        contacts.push(pb::AudienceContact {
            contact: Some(pb::Contact {
                external_id: get(ext),
                name: get(name),
                email: get(email),
                phone: get(phone),
            }),
            ..Default::default()
        });
    }
    Ok(contacts)
}

async fn reports(ctx: &Ctx, command: Reports) -> anyhow::Result<()> {
    let mut client = ReportServiceClient::new(ctx.channel(&ctx.global.reporting).await?);
    let (by, details, plans, period, fresh_as) = match command {
        Reports::LossReasons {
            by,
            details,
            plans,
            period,
            fresh_as,
        } => (by, details, plans, period.range()?, fresh_as),
        Reports::ResponseTimes {
            plans,
            managers,
            period,
            fresh_as,
        } => {
            let period = period.range()?;
            return response_times(ctx, &mut client, (plans, managers), period, fresh_as).await;
        }
        Reports::Pipeline { plan, fresh_as } => {
            return pipeline(ctx, &mut client, plan, fresh_as).await;
        }
    };
    let group_by = match by.as_str() {
        "plan" => pb::ReportGrouping::Plan,
        "manager" => pb::ReportGrouping::Manager,
        other => return Err(usage!("--by: {other:?} is not plan or manager")),
    };
    let report = client
        .loss_reasons(ctx.request(pb::LossReasonsRequest {
            group_by: group_by as i32,
            with_details: details,
            plan_ids: plans,
            period,
            min_consistency_token: fresh_as,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let as_of = report.as_of.clone().unwrap_or_default();
    ctx.print(
        json!({"rows": report.rows.iter().map(output::report_json).collect::<Vec<_>>(), "totals": report.totals.as_ref().map(output::report_json), "as_of": {"consistency_token": as_of.consistency_token}}),
        || {
            let mut rows = Vec::new();
            for row in &report.rows {
                output::report_rows(row, "", &mut rows);
            }
            if let Some(totals) = &report.totals {
                output::report_rows(totals, "", &mut rows);
            }
            format!(
                "{}\n(as of consistency token {})",
                table(&["", "won", "lost", "won %", "lost %", "reasons of loss"], &rows),
                as_of.consistency_token
            )
        },
    );
    Ok(())
}

async fn response_times(
    ctx: &Ctx,
    client: &mut ReportServiceClient<tonic::transport::Channel>,
    (plan_ids, manager_ids): (Vec<String>, Vec<String>),
    period: Option<pb::TimeRange>,
    fresh_as: String,
) -> anyhow::Result<()> {
    let report = client
        .response_times(ctx.request(pb::ResponseTimesRequest {
            plan_ids,
            manager_ids,
            period,
            min_consistency_token: fresh_as,
        }))
        .await?
        .into_inner();
    let seconds = |s: Option<f64>| s.map(|s| format!("{s:.0}")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.manager_id.clone(),
                r.plan_name.clone(),
                r.assigned.to_string(),
                r.accepted.to_string(),
                seconds(r.median_seconds),
                seconds(r.p90_seconds),
                r.deadlines_missed.to_string(),
            ]
        })
        .collect();
    ctx.print(
        json!({"rows": report.rows.iter().map(|r| json!({"manager_id": r.manager_id, "plan_id": r.plan_id, "plan_name": r.plan_name, "assigned": r.assigned, "accepted": r.accepted, "median_seconds": r.median_seconds, "p90_seconds": r.p90_seconds, "deadlines_missed": r.deadlines_missed})).collect::<Vec<_>>()}),
        || {
            table(
                &["manager", "plan", "assigned", "accepted", "median s", "p90 s", "missed"],
                &rows,
            )
        },
    );
    Ok(())
}

async fn pipeline(
    ctx: &Ctx,
    client: &mut ReportServiceClient<tonic::transport::Channel>,
    plan_id: Option<String>,
    fresh_as: String,
) -> anyhow::Result<()> {
    let summary = client
        .pipeline_summary(ctx.request(pb::PipelineSummaryRequest {
            plan_id,
            min_consistency_token: fresh_as,
        }))
        .await?
        .into_inner();
    let manager = |m: &pb::ManagerTotal| {
        m.manager_id
            .clone()
            .unwrap_or_else(|| "(unassigned)".into())
    };
    let managers: Vec<Vec<String>> = summary
        .managers
        .iter()
        .map(|m| {
            let counts = [m.open, m.won, m.lost, m.waiting].map(|n| n.to_string());
            [vec![m.plan_id.clone(), manager(m)], counts.to_vec()].concat()
        })
        .collect();
    let stages: Vec<Vec<String>> = summary
        .stages
        .iter()
        .map(|s| {
            let amount = format!("{} {}", s.exact_amount_minor, s.currency);
            vec![
                s.plan_id.clone(),
                s.stage_id.clone(),
                s.deals.to_string(),
                amount,
            ]
        })
        .collect();
    let as_of = summary.as_of.clone().unwrap_or_default();
    ctx.print(
        json!({
            "managers": summary.managers.iter().map(|m| json!({"plan_id": m.plan_id, "manager_id": m.manager_id, "open": m.open, "won": m.won, "lost": m.lost, "waiting": m.waiting})).collect::<Vec<_>>(),
            "stages": summary.stages.iter().map(|s| json!({"plan_id": s.plan_id, "stage_id": s.stage_id, "deals": s.deals, "amount_minor": s.exact_amount_minor, "currency": s.currency})).collect::<Vec<_>>(),
            "total_deals": summary.total_deals,
            "as_of": {"consistency_token": as_of.consistency_token},
        }),
        || {
            format!(
                "{}\n{}\n{} deals (as of consistency token {})",
                table(&["plan", "manager", "open", "won", "lost", "waiting"], &managers),
                table(&["plan", "stage", "deals", "amount (minor units)"], &stages),
                summary.total_deals,
                as_of.consistency_token
            )
        },
    );
    Ok(())
}

async fn outbox(ctx: &Ctx, command: Outbox) -> anyhow::Result<()> {
    let mut client = OutboxServiceClient::new(ctx.channel(&ctx.global.deal_service).await?);
    match command {
        Outbox::Parked {
            account,
            limit,
            after,
        } => {
            let page = client
                .list_parked_events(ctx.request(pb::ListParkedEventsRequest {
                    account_id: account,
                    page_size: limit,
                    after_id: after,
                }))
                .await?
                .into_inner();
            ctx.print(
                json!({
                    "events": page.events.iter().map(|e| json!({
                        "id": e.id, "account_id": e.account_id, "subject": e.subject,
                        "message_id": e.message_id, "payload_bytes": e.payload_bytes,
                        "reason": e.reason,
                    })).collect::<Vec<_>>(),
                    "next_after_id": page.next_after_id,
                }),
                || {
                    let rows: Vec<Vec<String>> = page
                        .events
                        .iter()
                        .map(|e| {
                            vec![
                                e.id.to_string(),
                                e.account_id.clone(),
                                e.subject.clone(),
                                e.payload_bytes.to_string(),
                                e.reason.clone(),
                            ]
                        })
                        .collect();
                    table(&["id", "account", "subject", "bytes", "reason"], &rows)
                },
            );
        }
        Outbox::Replay { ids } => {
            let replayed = client
                .replay_parked_events(ctx.request(pb::ReplayParkedEventsRequest { ids }))
                .await?
                .into_inner()
                .replayed;
            ctx.print(json!({ "replayed": replayed }), || {
                format!("{replayed} events back in the outbox")
            });
        }
    }
    Ok(())
}

async fn explain(ctx: &Ctx, deal_id: String) -> anyhow::Result<()> {
    let mut client = DistributorServiceClient::new(ctx.channel(&ctx.global.distributor).await?);
    let answer = client
        .explain_assignment(ctx.request(pb::ExplainAssignmentRequest { deal_id }))
        .await?
        .into_inner();
    let a = answer
        .assignment
        .context("the server returned no decision")?;
    let mut document = decision_json(&a);
    document["earlier"] = answer.earlier.iter().map(decision_json).collect();
    ctx.print(document, || {
        let mut out = String::new();
        for earlier in &answer.earlier {
            out.push_str(&format!("earlier, {}\n", decision_table(earlier)));
        }
        out.push_str(&decision_table(&a));
        out
    });
    Ok(())
}

fn decision_json(a: &pb::Assignment) -> serde_json::Value {
    let time = |t: &Option<prost_types::Timestamp>| output::time_json(t.as_ref());
    json!({
        "deal_id": a.deal_id, "plan_id": a.plan_id, "plan_version": a.plan_version,
        "mode": a.mode, "strategy": a.strategy, "manager_id": a.manager_id,
        "reason": a.reason, "decided_at": time(&a.decided_at),
        "related_manager_id": a.related_manager_id,
        "candidates": a.candidates.iter().map(|c| json!({
            "manager_id": c.manager_id, "open_deals": c.open_deals, "chosen": c.chosen,
            "note": c.note,
        })).collect::<Vec<_>>(),
        "missed_deadlines": a.missed_deadlines.iter().map(|m| json!({
            "manager_id": m.manager_id, "assigned_at": time(&m.assigned_at),
            "due_at": time(&m.due_at),
        })).collect::<Vec<_>>(),
    })
}

/// One decision: who got the deal and why, then every candidate.
fn decision_table(a: &pb::Assignment) -> String {
    let manager = a.manager_id.as_deref().unwrap_or("(none: waits)");
    let decided = output::time_text(a.decided_at.as_ref()).unwrap_or_default();
    let mut out = format!("{decided} {manager}: {}\n", a.reason);
    let rows: Vec<Vec<String>> = a
        .candidates
        .iter()
        .map(|c| {
            let chosen = if c.chosen { "✓" } else { "" };
            vec![
                c.manager_id.clone(),
                chosen.into(),
                c.open_deals.to_string(),
                c.note.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["candidate", "chosen", "open", "why"], &rows));
    out
}

async fn rejections(ctx: &Ctx, plan: Option<String>, limit: i32) -> anyhow::Result<()> {
    let mut client = DistributorServiceClient::new(ctx.channel(&ctx.global.distributor).await?);
    let page = client
        .list_intake_rejections(ctx.request(pb::ListIntakeRejectionsRequest {
            plan_id: plan.unwrap_or_default(),
            page_size: limit,
            page_token: String::new(),
        }))
        .await?
        .into_inner();
    ctx.print(
        json!({
            "rejections": page.rejections.iter().map(|r| json!({
                "intake_id": r.intake_id, "plan_id": r.plan_id, "source": r.source,
                "run_id": r.run_id, "code": r.code, "reason": r.reason,
            })).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }),
        || {
            let rows: Vec<Vec<String>> = page
                .rejections
                .iter()
                .map(|r| {
                    vec![
                        r.intake_id.clone(),
                        r.source.clone(),
                        r.run_id.clone(),
                        r.code.clone(),
                        r.reason.clone(),
                    ]
                })
                .collect();
            table(&["intake id", "source", "run", "code", "reason"], &rows)
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::member;

    #[test]
    fn a_member_is_an_id_with_an_optional_weight_and_limit() {
        let parts = |text: &str| {
            let m = member(text).expect("a member");
            (m.manager_id, m.weight, m.max_open_deals)
        };
        assert_eq!(parts("ann"), ("ann".into(), 1, 0));
        assert_eq!(parts("ann:2"), ("ann".into(), 2, 0));
        assert_eq!(parts("ann:2:10"), ("ann".into(), 2, 10));
        assert_eq!(parts("crm:ann:2:10"), ("crm:ann".into(), 2, 10));
        assert_eq!(parts("crm:ann"), ("crm:ann".into(), 1, 0));
        // Out of range for the service to refuse (it names the field and the bounds).
        assert_eq!(parts("ann:-1"), ("ann".into(), -1, 0));
        // Too big to be a number at all: refused here, not made part of the id.
        for text in ["a:99999999999", "a:1:99999999999", "a:99999999999:1"] {
            let err = member(text).expect_err(text);
            assert!(err.is::<crate::args::Usage>(), "{text}: exit 4");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
    }
}
