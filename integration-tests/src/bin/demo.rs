//! The scripted tunnel run of `just demo`: against the four running services, creates
//! three plans, sends leads through the real webhook (with some retried webhooks), waits
//! until reporting has counted every deal, and prints who got what and where it stands.
//! Then a fourth plan shows weights and limits: leads beyond every member's limit wait,
//! and one is assigned as soon as a deal closes. Then it closes and reopens deals and
//! reads the loss report as of its last change (its consistency token), by manager and by
//! plan, and checks that the two agree.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use clap::Parser;
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, consistency::Token, grpc::outgoing,
};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient,
    manager_service_client::ManagerServiceClient, plan_service_client::PlanServiceClient,
    report_service_client::ReportServiceClient,
};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    webhook: String,
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    deal_service: String,
    #[arg(long, default_value = "http://127.0.0.1:50054")]
    reporting: String,
    /// Leads of the round-robin plan (the manual plan gets a sixth of it).
    #[arg(long, default_value_t = 36)]
    leads: usize,
    #[arg(long, default_value = "demo")]
    account: String,
    /// Where to write the plan id and the consistency token of the last change
    /// (`PLAN=…`, `FRESH_AS=…`), for the salesplanctl part of the demo.
    #[arg(long)]
    last_run: Option<std::path::PathBuf>,
}

const MANAGERS: [&str; 3] = ["anna", "boris", "chen"];

/// The demo's three plans.
struct Plans {
    round_robin: pb::Plan,
    returning: pb::Plan,
    manual: pb::Plan,
}

impl Plans {
    fn all(&self) -> [&pb::Plan; 3] {
        [&self.round_robin, &self.returning, &self.manual]
    }
}

/// What the demo talks to, and as whom.
struct Demo {
    args: Args,
    issuer: TokenIssuer,
    admin: String,
    viewer: String,
    plans: PlanServiceClient<Channel>,
    reports: ReportServiceClient<Channel>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let demo = Demo::connect(Args::parse()).await?;
    let plans = demo.create_plans().await?;
    let (sent, expected) = demo.send_leads(&plans).await?;
    let summary = demo.counted(&plans, expected).await?;
    for plan in plans.all() {
        print_plan(plan, &summary);
    }
    demo.show_returning(&plans.returning).await?;
    println!(
        "Every accepted lead is exactly one deal: {expected} deals for {sent} accepted leads."
    );
    demo.show_limits().await?;
    demo.show_deadline().await?;
    // A board of the plan, live: opened before the head of sales works its deals.
    let board = demo.watch(&plans.round_robin).await?;
    let worked = demo.work_deals(&plans.round_robin).await?;
    show_watched(board, worked.changes).await?;
    demo.read_reports(&plans.round_robin, worked).await
}

/// The deals the demo closed, and the consistency token of its last change.
struct Worked {
    won: i64,
    lost: i64,
    last_change: Token,
    /// Changes made (each a deal change a watcher of the plan gets).
    changes: usize,
}

impl Demo {
    async fn connect(args: Args) -> anyhow::Result<Self> {
        let issuer = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes());
        let mut demo = Self {
            plans: PlanServiceClient::new(connect(&args.deal_service).await?),
            reports: ReportServiceClient::new(connect(&args.reporting).await?),
            args,
            issuer,
            admin: String::new(),
            viewer: String::new(),
        };
        demo.admin = demo.token("demo-admin", &[Permission::PlansAdmin])?;
        demo.viewer = demo.token(
            "demo-viewer",
            &[
                salesplan_platform::Permission::DealsRead,
                salesplan_platform::Permission::ReportsRead,
            ],
        )?;
        Ok(demo)
    }

    fn token(&self, user: &str, perms: &[Permission]) -> anyhow::Result<String> {
        Ok(self.issuer.issue(
            &Actor::new(&self.args.account, user, perms.iter().copied()),
            Duration::from_secs(3600),
        )?)
    }

    async fn create_plan(
        &self,
        name: &str,
        (mode, strategy): (pb::distribution::Mode, pb::distribution::Strategy),
        prefer_related: bool,
        members: Vec<pb::PlanMember>,
    ) -> anyhow::Result<pb::Plan> {
        let manager_ids = if members.is_empty() {
            MANAGERS.iter().map(|m| (*m).to_owned()).collect()
        } else {
            Vec::new()
        };
        let request = pb::CreatePlanRequest {
            name: name.into(),
            average_amount: Some(pb::Money {
                amount_minor: 12_000,
                currency: "USD".into(),
            }),
            chat_label: name.split(' ').next().unwrap_or("DEMO").to_uppercase(),
            distribution: Some(pb::Distribution {
                mode: mode as i32,
                prefer_related,
                keep_related_when_unavailable: false,
                response_deadline_seconds: 0,
                max_reassignments: 0,
                strategy: strategy as i32,
            }),
            manager_ids,
            members,
        };
        self.plans
            .clone()
            .create_plan(outgoing(request, &self.admin))
            .await?
            .into_inner()
            .plan
            .context("CreatePlan returned no plan")
    }

    async fn create_plans(&self) -> anyhow::Result<Plans> {
        use pb::distribution::{Mode, Strategy};
        Ok(Plans {
            round_robin: self
                .create_plan(
                    "Inbound leads",
                    (Mode::Auto, Strategy::RoundRobin),
                    false,
                    vec![],
                )
                .await?,
            returning: self
                .create_plan(
                    "Returning customers",
                    (Mode::Auto, Strategy::LeastOpenDeals),
                    true,
                    vec![],
                )
                .await?,
            manual: self
                .create_plan(
                    "Partner referrals",
                    (Mode::Manual, Strategy::Unspecified),
                    false,
                    vec![],
                )
                .await?,
        })
    }

    /// Sends the leads through the webhook, every fifth twice (a funnel's retry); answers
    /// the leads accepted and the deals to expect.
    async fn send_leads(&self, plans: &Plans) -> anyhow::Result<(usize, i64)> {
        let funnel = self.token("demo-funnel", &[Permission::IntakeWrite])?;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/tunnel-actions/add-to-sales-plan", self.args.webhook);
        let leads = self.args.leads;
        let counts = [leads, (leads / 3).max(2), (leads / 6).max(1)];
        let run = time_tag().to_string();
        let (mut sent, mut duplicates) = (0, 0);
        for (plan, count) in plans.all().into_iter().zip(counts) {
            for i in 0..count {
                // In "Returning customers" every contact comes back once: its second deal
                // must go to the manager of its first.
                let returning = plan.id == plans.returning.id;
                let contact = if returning { i % (count / 2).max(1) } else { i };
                let body = lead(plan, &run, i, contact);
                let deliveries = if i % 5 == 0 { 2 } else { 1 };
                for _ in 0..deliveries {
                    let response = http
                        .post(&url)
                        .bearer_auth(&funnel)
                        .json(&body)
                        .send()
                        .await?;
                    let status = response.status();
                    let reply: serde_json::Value = response.json().await?;
                    anyhow::ensure!(status == 202, "webhook answered {status}: {reply}");
                    if reply["duplicate"] == true {
                        duplicates += 1;
                    } else {
                        sent += 1;
                    }
                }
            }
        }
        println!(
            "Scripted tunnel run: {sent} leads accepted through POST {url}, {duplicates} retried webhooks answered as duplicates\n"
        );
        Ok((sent, counts.iter().sum::<usize>() as i64))
    }

    /// The pipeline summary once reporting counts `expected` deals in the demo's plans
    /// (at most 60 s).
    async fn counted(
        &self,
        plans: &Plans,
        expected: i64,
    ) -> anyhow::Result<pb::PipelineSummaryResponse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let ours = plans.all().map(|p| p.id.clone());
        loop {
            let summary = self
                .reports
                .clone()
                .pipeline_summary(outgoing(
                    pb::PipelineSummaryRequest::default(),
                    &self.viewer,
                ))
                .await?
                .into_inner();
            let counted: i64 = summary
                .stages
                .iter()
                .filter(|s| ours.contains(&s.plan_id))
                .map(|s| s.deals)
                .sum();
            if counted == expected {
                return Ok(summary);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "reporting counted {counted} of {expected} deals after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn deals_of(&self, plan: &pb::Plan) -> anyhow::Result<Vec<pb::Deal>> {
        integration_tests::api::all_deals(
            connect(&self.args.deal_service).await?,
            &self.viewer,
            pb::DealFilter {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
        )
        .await
    }

    /// How many returning contacts got the manager they already knew.
    async fn show_returning(&self, plan: &pb::Plan) -> anyhow::Result<()> {
        let mut managers_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for deal in self.deals_of(plan).await? {
            let contact = deal.contact.map(|c| c.external_id).unwrap_or_default();
            managers_of
                .entry(contact)
                .or_default()
                .push(deal.manager_id.unwrap_or_default());
        }
        let kept = managers_of
            .values()
            .filter(|m| m.len() > 1 && m.windows(2).all(|w| w[0] == w[1]))
            .count();
        let returned = managers_of.values().filter(|m| m.len() > 1).count();
        println!(
            "Returning customers: {kept} of {returned} contacts who came back got the manager they already knew."
        );
        Ok(())
    }

    /// Weights, limits and availability: anna (weight 2, at most 6 open) and boris
    /// (weight 1, at most 3) share eleven leads 2:1 by weight — the first six, before any
    /// limit binds, 4 and 2, interleaved — until both are full; the last two wait. carl
    /// (weight 1) has a day off today in his time zone and gets none. Boris wins a deal:
    /// the oldest waiting deal goes to him, by itself.
    async fn show_limits(&self) -> anyhow::Result<()> {
        use pb::distribution::{Mode, Strategy};
        const LEADS: usize = 11;
        let member = |id: &str, weight, max_open_deals| pb::PlanMember {
            manager_id: id.into(),
            weight,
            max_open_deals,
        };
        let plan = self
            .create_plan(
                "Priority leads",
                (Mode::Auto, Strategy::RoundRobin),
                false,
                vec![
                    member("anna", 2, 6),
                    member("boris", 1, 3),
                    member("carl", 1, 0),
                ],
            )
            .await?;
        let carl = self.day_off("carl", "Asia/Tokyo").await?;
        let funnel = self.token("demo-funnel", &[Permission::IntakeWrite])?;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/tunnel-actions/add-to-sales-plan", self.args.webhook);
        let run = format!("limits-{}", time_tag());
        for i in 0..LEADS {
            let status = http
                .post(&url)
                .bearer_auth(&funnel)
                .json(&lead(&plan, &run, i, i))
                .send()
                .await?
                .status();
            anyhow::ensure!(status == 202, "webhook answered {status}");
        }
        let deals = self
            .until(&plan, "11 deals", |d| (d.len() == LEADS).then_some(d))
            .await?;
        let per_manager = |deals: &[pb::Deal]| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for d in deals {
                let who = match (&d.manager_id, &d.waiting_since) {
                    (Some(m), _) => m.clone(),
                    (None, Some(_)) => "(waiting)".into(),
                    (None, None) => "(unassigned)".into(),
                };
                *counts.entry(who).or_default() += 1;
            }
            counts
        };
        // The leads came one at a time: in their order, the first six (no limit reached
        // yet) show the weights alone.
        let mut in_order: Vec<(usize, &str)> = deals
            .iter()
            .filter_map(|d| {
                let contact = d.contact.as_ref()?.external_id.rsplit('-').next()?;
                Some((
                    contact.parse().ok()?,
                    d.manager_id.as_deref().unwrap_or("-"),
                ))
            })
            .collect();
        in_order.sort();
        let first: Vec<&str> = in_order.iter().take(6).map(|(_, m)| *m).collect();
        println!(
            "\nPlan \"Priority leads\" (AUTO, round robin; anna weight 2 at most 6 open, boris weight 1 at most 3, carl weight 1): {LEADS} leads → {:?}; the first six, before any limit: {}",
            per_manager(&deals),
            first.join(" ")
        );
        println!(
            "carl is unavailable ({} in {}, available from {}): passed over",
            carl.unavailable_because,
            carl.schedule
                .as_ref()
                .map(|s| s.time_zone.as_str())
                .unwrap_or("?"),
            carl.available_from
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into())
        );
        let boris = self.token("boris", &[])?;
        let of_boris = deals
            .iter()
            .find(|d| d.manager_id.as_deref() == Some("boris"))
            .context("boris has no deal")?;
        let oldest = deals
            .iter()
            .filter(|d| d.waiting_since.is_some())
            .min_by_key(|d| d.created_at.as_ref().map(|t| (t.seconds, t.nanos)))
            .context("no deal waits")?
            .id
            .clone();
        let won = plan
            .stages
            .iter()
            .find(|s| s.kind == pb::StageKind::Won as i32)
            .context("no WON stage")?;
        let started = tokio::time::Instant::now();
        DealServiceClient::new(connect(&self.args.deal_service).await?)
            .move_deal(outgoing(
                pb::MoveDealRequest {
                    deal_id: of_boris.id.clone(),
                    expected_version: of_boris.version,
                    stage_id: won.id.clone(),
                    loss_reason_id: None,
                },
                &boris,
            ))
            .await?;
        let deals = self
            .until(&plan, "the oldest waiting deal assigned", |d| {
                let oldest = d.iter().find(|x| x.id == oldest)?;
                (oldest.manager_id.as_deref() == Some("boris")).then_some(d)
            })
            .await?;
        println!(
            "boris won a deal: the oldest waiting deal went to him {} ms later, by itself → {:?}",
            started.elapsed().as_millis(),
            per_manager(&deals)
        );
        Ok(())
    }

    /// A response deadline: in "Hot leads" (anna and boris, 3 seconds to accept, one
    /// reassignment), boris accepts his lead at once; anna does not, and hers goes to boris
    /// by itself, the reason in its history.
    async fn show_deadline(&self) -> anyhow::Result<()> {
        use pb::distribution::{Mode, Strategy};
        let member = |id: &str| pb::PlanMember {
            manager_id: id.into(),
            weight: 1,
            max_open_deals: 0,
        };
        let request = pb::CreatePlanRequest {
            name: "Hot leads".into(),
            average_amount: Some(pb::Money {
                amount_minor: 30_000,
                currency: "USD".into(),
            }),
            chat_label: "HOT".into(),
            distribution: Some(pb::Distribution {
                mode: Mode::Auto as i32,
                strategy: Strategy::RoundRobin as i32,
                response_deadline_seconds: 3,
                max_reassignments: 1,
                ..Default::default()
            }),
            manager_ids: Vec::new(),
            members: vec![member("anna"), member("boris")],
        };
        let plan = self
            .plans
            .clone()
            .create_plan(outgoing(request, &self.admin))
            .await?
            .into_inner()
            .plan
            .context("CreatePlan returned no plan")?;
        let funnel = self.token("demo-funnel", &[Permission::IntakeWrite])?;
        let url = format!("{}/v1/tunnel-actions/add-to-sales-plan", self.args.webhook);
        let run = format!("hot-{}", time_tag());
        for i in 0..2 {
            let status = reqwest::Client::new()
                .post(&url)
                .bearer_auth(&funnel)
                .json(&lead(&plan, &run, i, 100 + i))
                .send()
                .await?
                .status();
            anyhow::ensure!(status == 202, "webhook answered {status}");
        }
        let deals = self
            .until(&plan, "2 deals", |d| (d.len() == 2).then_some(d))
            .await?;
        let of = |m: &str| deals.iter().find(|d| d.manager_id.as_deref() == Some(m));
        let (annas, boris_own) = (
            of("anna").context("anna has no deal")?.clone(),
            of("boris").context("boris has no deal")?.clone(),
        );
        let mut deal_service = DealServiceClient::new(connect(&self.args.deal_service).await?);
        let boris = self.token("boris", &[])?;
        deal_service
            .accept_deal(outgoing(
                pb::AcceptDealRequest {
                    deal_id: boris_own.id.clone(),
                    expected_version: boris_own.version,
                },
                &boris,
            ))
            .await?;
        self.until(&plan, "anna's deal reassigned", |d| {
            let deal = d.iter().find(|x| x.id == annas.id)?;
            (deal.manager_id.as_deref() == Some("boris")).then_some(())
        })
        .await?;
        let history = deal_service
            .get_deal_history(outgoing(
                pb::GetDealHistoryRequest {
                    deal_id: annas.id.clone(),
                    ..Default::default()
                },
                &self.viewer,
            ))
            .await?
            .into_inner()
            .entries;
        let why = history
            .iter()
            .rev()
            .find(|e| !e.note.is_empty())
            .map(|e| e.note.clone())
            .unwrap_or_default();
        println!(
            "\nPlan \"Hot leads\" (AUTO, round robin; anna and boris; 3 s to accept, one reassignment): boris accepted his lead at once; anna did not accept hers, and it went to boris by itself: \"{why}\""
        );
        Ok(())
    }

    /// Gives `manager` a day off today (yesterday to tomorrow, in `time_zone`), as an
    /// administrator; the availability as deal-service answers it.
    async fn day_off(
        &self,
        manager: &str,
        time_zone: &str,
    ) -> anyhow::Result<pb::ManagerAvailability> {
        let today = time::OffsetDateTime::now_utc().date();
        let schedule = pb::Schedule {
            time_zone: time_zone.into(),
            week: Vec::new(),
            days_off: vec![pb::DaysOff {
                first: (today - time::Duration::days(1)).to_string(),
                last: (today + time::Duration::days(1)).to_string(),
            }],
        };
        ManagerServiceClient::new(connect(&self.args.deal_service).await?)
            .set_schedule(outgoing(
                pb::SetScheduleRequest {
                    manager_id: manager.into(),
                    schedule: Some(schedule),
                },
                &self.admin,
            ))
            .await?
            .into_inner()
            .availability
            .context("SetSchedule returned no availability")
    }

    /// The plan's deals once `ready` says they are as awaited (at most 30 s).
    async fn until<T>(
        &self,
        plan: &pb::Plan,
        what: &str,
        ready: impl Fn(Vec<pb::Deal>) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(done) = ready(self.deals_of(plan).await?) {
                return Ok(done);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The plan's loss reasons (required), and its won and lost stages.
    async fn loss_setup(
        &self,
        plan: &pb::Plan,
    ) -> anyhow::Result<(Vec<pb::LossReason>, String, String)> {
        let plan = self
            .plans
            .clone()
            .set_loss_reasons(outgoing(
                pb::SetLossReasonsRequest {
                    plan_id: plan.id.clone(),
                    require_reason: true,
                    reasons: ["Too expensive", "Chose a competitor", "No answer"]
                        .map(|name| pb::LossReasonInput {
                            id: String::new(),
                            name: name.into(),
                        })
                        .to_vec(),
                },
                &self.admin,
            ))
            .await?
            .into_inner()
            .plan
            .context("SetLossReasons returned no plan")?;
        let stage_of = |kind: pb::StageKind| {
            plan.stages
                .iter()
                .find(|s| s.kind == kind as i32)
                .map(|s| s.id.clone())
                .unwrap_or_default()
        };
        let (won, lost) = (stage_of(pb::StageKind::Won), stage_of(pb::StageKind::Lost));
        Ok((plan.loss_reasons.unwrap_or_default().reasons, won, lost))
    }

    /// Managers work the plan: some deals won, some lost with a reason, one lost deal
    /// reopened by a head of sales.
    async fn work_deals(&self, plan: &pb::Plan) -> anyhow::Result<Worked> {
        let boss = self.token(
            "demo-head-of-sales",
            &[Permission::DealsEditAll, Permission::DealsBulkEdit],
        )?;
        let (reasons, won, lost) = self.loss_setup(plan).await?;
        let mut deals_api = DealServiceClient::new(connect(&self.args.deal_service).await?);
        let (mut won_count, mut lost_count) = (0, 0);
        let mut reopen_me = None;
        // The consistency token of the newest change made.
        let mut last_change = None;
        for (i, deal) in self.deals_of(plan).await?.iter().enumerate() {
            let (stage, reason) = match i % 4 {
                0 => (&won, None),
                1 | 2 => (&lost, Some(reasons[(i / 2) % reasons.len()].id.clone())),
                _ => continue,
            };
            let request = pb::MoveDealRequest {
                deal_id: deal.id.clone(),
                expected_version: deal.version,
                stage_id: stage.clone(),
                loss_reason_id: reason.clone(),
            };
            let moved = deals_api.move_deal(outgoing(request, &boss)).await?;
            last_change = newer(last_change, integration_tests::api::write_token(&moved)?);
            let moved = moved
                .into_inner()
                .deal
                .context("MoveDeal returned no deal")?;
            if reason.is_some() {
                lost_count += 1;
                reopen_me.get_or_insert(moved);
            } else {
                won_count += 1;
            }
        }
        let deal = reopen_me.context("no deal was lost")?;
        let request = pb::ReopenDealRequest {
            deal_id: deal.id.clone(),
            expected_version: deal.version,
        };
        let reopened = deals_api.reopen_deal(outgoing(request, &boss)).await?;
        last_change = newer(last_change, integration_tests::api::write_token(&reopened)?);
        println!(
            "\nClosed {won_count} deals as won and {lost_count} as lost with a reason; reopened one lost deal."
        );
        Ok(Worked {
            won: won_count,
            lost: lost_count - 1,
            last_change: last_change.context("no change was made")?,
            changes: (won_count + lost_count + 1) as usize,
        })
    }

    /// A watch of `plan`'s deal changes (WatchDeals), open when this returns.
    async fn watch(
        &self,
        plan: &pb::Plan,
    ) -> anyhow::Result<tonic::Streaming<pb::WatchDealsResponse>> {
        let request = pb::WatchDealsRequest {
            plan_id: plan.id.clone(),
            ..Default::default()
        };
        Ok(
            DealServiceClient::new(connect(&self.args.deal_service).await?)
                .watch_deals(outgoing(request, &self.viewer))
                .await?
                .into_inner(),
        )
    }

    /// The loss report of `plan` as of the last change, by manager and by plan: it must
    /// show what was done, and the two must agree.
    async fn read_reports(&self, plan: &pb::Plan, worked: Worked) -> anyhow::Result<()> {
        // Read as of the last change: no polling, the report includes it or is refused.
        let fresh_as = worked.last_change.to_string();
        let read = |group_by: pb::ReportGrouping| {
            let request = pb::LossReasonsRequest {
                group_by: group_by as i32,
                with_details: true,
                plan_ids: vec![plan.id.clone()],
                min_consistency_token: fresh_as.clone(),
                ..Default::default()
            };
            let mut reports = self.reports.clone();
            async move {
                let response = reports
                    .loss_reasons(outgoing(request, &self.viewer))
                    .await?;
                anyhow::Ok(response.into_inner())
            }
        };
        let by_manager = read(pb::ReportGrouping::Manager).await?;
        let by_plan = read(pb::ReportGrouping::Plan).await?;
        let (won, lost, _) = totals(&by_manager);
        anyhow::ensure!(
            (won, lost) == (worked.won, worked.lost),
            "the report as of the last change shows {won} won and {lost} lost, not {} and {}",
            worked.won,
            worked.lost
        );
        anyhow::ensure!(
            totals(&by_manager) == totals(&by_plan),
            "the two reports as of the same change disagree: {:?} by manager, {:?} by plan",
            totals(&by_manager),
            totals(&by_plan)
        );
        print_report(&plan.name, &by_manager);
        println!(
            "\nBoth reports read as of the last change (consistency token {fresh_as}) and agree."
        );
        if let Some(path) = &self.args.last_run {
            std::fs::write(path, format!("PLAN={}\nFRESH_AS={fresh_as}\n", plan.id))?;
        }
        Ok(())
    }
}

/// A report's totals: won, lost, and the count of each reason.
/// The `expected` changes a board's watch got while the deals were worked: by kind, and
/// the first few as they came.
async fn show_watched(
    mut board: tonic::Streaming<pb::WatchDealsResponse>,
    expected: usize,
) -> anyhow::Result<()> {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut first = Vec::new();
    while kinds.values().sum::<usize>() < expected {
        let message = tokio::time::timeout(Duration::from_secs(10), board.message())
            .await
            .context("the board's watch got no change within 10 s")??
            .context("the board's watch ended")?;
        let Some(pb::watch_deals_response::Item::Change(change)) = message.item else {
            continue;
        };
        let kind = pb::ChangeKind::try_from(change.kind)
            .unwrap_or_default()
            .short_name();
        let deal = change.deal.unwrap_or_default();
        if first.len() < 3 {
            let contact = deal.contact.map(|c| c.name).unwrap_or_default();
            first.push(format!(
                "  {kind} {contact} (version {}) by {}",
                deal.version, change.actor_id
            ));
        }
        *kinds.entry(kind).or_default() += 1;
    }
    println!(
        "A board watching the plan (WatchDeals) saw every change live: {kinds:?}; the first:\n{}",
        first.join("\n")
    );
    Ok(())
}

fn totals(report: &pb::LossReasonsResponse) -> (i64, i64, BTreeMap<String, i64>) {
    let t = report.totals.clone().unwrap_or_default();
    let reasons = t
        .reasons
        .iter()
        .map(|x| (x.name.clone(), x.count))
        .collect();
    (t.won, t.lost, reasons)
}

/// The webhook body of lead `i` of `plan`, from contact number `contact`.
fn lead(plan: &pb::Plan, run: &str, i: usize, contact: usize) -> serde_json::Value {
    json!({
        "plan_id": plan.id,
        "tunnel_id": "demo-funnel",
        "block_id": "add-to-sales-plan",
        "run_id": format!("{run}-{}-{i}", plan.chat_label),
        "contact": {
            "external_id": format!("tg-{run}-{}-{contact}", plan.chat_label),
            "name": format!("Contact {i}"),
            "phone": format!("+1 555 01{:02}", i % 100),
        },
    })
}

fn newer(a: Option<Token>, b: Token) -> Option<Token> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn print_report(plan: &str, report: &pb::LossReasonsResponse) {
    println!("\nReport \"By reasons for refusal\", plan \"{plan}\", by manager with plans");
    println!(
        "  {:<22}{:>5}{:>6}{:>8}{:>8}  reasons of loss",
        "", "won", "lost", "won %", "lost %"
    );
    let line = |indent: &str, row: &pb::ReportRow| {
        let reasons: Vec<String> = row
            .reasons
            .iter()
            .map(|r| format!("{} {} ({:.1}%)", r.name, r.count, r.percent_of_lost))
            .collect();
        println!(
            "  {:<22}{:>5}{:>6}{:>8.1}{:>8.1}  {}",
            format!("{indent}{}", row.name),
            row.won,
            row.lost,
            row.won_percent,
            row.lost_percent,
            reasons.join(", ")
        );
    };
    for row in &report.rows {
        line("", row);
        for detail in &row.details {
            line("  ", detail);
        }
    }
    if let Some(totals) = &report.totals {
        line("", totals);
    }
}

fn time_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
    for _ in 0..300 {
        if let Ok(channel) = endpoint.connect().await {
            return Ok(channel);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{url} did not come up within 60 s")
}

fn print_plan(plan: &pb::Plan, summary: &pb::PipelineSummaryResponse) {
    use pb::distribution::{Mode, Strategy};
    let mode = match plan.distribution.as_ref() {
        Some(d) if d.mode == Mode::Auto as i32 => {
            let strategy = match Strategy::try_from(d.strategy) {
                Ok(Strategy::Random) => "random",
                Ok(Strategy::LeastOpenDeals) => "fewest open deals",
                _ => "round robin",
            };
            let related = if d.prefer_related {
                "related manager first, then "
            } else {
                ""
            };
            format!("AUTO, {related}{strategy}")
        }
        _ => "MANUAL".to_owned(),
    };
    println!("Plan \"{}\" ({mode})", plan.name);
    println!("  {:<14}{:>6}{:>6}{:>6}", "manager", "open", "won", "lost");
    let mut managers: BTreeMap<String, &pb::ManagerTotal> = BTreeMap::new();
    for m in summary.managers.iter().filter(|m| m.plan_id == plan.id) {
        managers.insert(
            m.manager_id
                .clone()
                .unwrap_or_else(|| "(unassigned)".into()),
            m,
        );
    }
    for (name, m) in managers {
        println!("  {name:<14}{:>6}{:>6}{:>6}", m.open, m.won, m.lost);
    }
    println!("  {:<14}{:>6}{:>14}", "stage", "deals", "amount");
    for stage in &plan.stages {
        let total = summary
            .stages
            .iter()
            .find(|s| s.plan_id == plan.id && s.stage_id == stage.id);
        let (deals, amount) = total.map(|t| (t.deals, t.amount_minor)).unwrap_or((0, 0));
        let currency = plan
            .average_amount
            .as_ref()
            .map(|m| m.currency.as_str())
            .unwrap_or("");
        println!(
            "  {:<14}{:>6}{:>10}.{:02} {currency}",
            stage.name,
            deals,
            amount / 100,
            amount % 100
        );
    }
    println!();
}
