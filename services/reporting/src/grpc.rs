//! ReportService: reports answered from the read model.

use salesplan_platform::{ApiError, auth, ids::parse_id};
use salesplan_proto::v1::{self as pb, report_service_server::ReportService};
use sqlx::{PgPool, Row};
use tonic::{Request, Response, Status};
use uuid::Uuid;

#[derive(Clone)]
pub struct Reports {
    pool: PgPool,
}

impl Reports {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn pipeline_summary(
        &self,
        account_id: &str,
        plan_id: Option<Uuid>,
    ) -> Result<pb::PipelineSummaryResponse, ApiError> {
        let stages = sqlx::query(
            "SELECT plan_id, stage_id, count(*) AS deals, coalesce(sum(amount_minor), 0)::bigint AS amount
             FROM deals WHERE account_id = $1 AND ($2::uuid IS NULL OR plan_id = $2)
             GROUP BY plan_id, stage_id ORDER BY plan_id, stage_id",
        )
        .bind(account_id)
        .bind(plan_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(pb::StageTotal {
                plan_id: r.try_get::<Uuid, _>("plan_id")?.to_string(),
                stage_id: r.try_get::<Uuid, _>("stage_id")?.to_string(),
                deals: r.try_get("deals")?,
                amount_minor: r.try_get("amount")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let managers = sqlx::query(
            "SELECT plan_id, manager_id,
                    count(*) FILTER (WHERE status = 'open') AS open,
                    count(*) FILTER (WHERE status = 'won') AS won,
                    count(*) FILTER (WHERE status = 'lost') AS lost
             FROM deals WHERE account_id = $1 AND ($2::uuid IS NULL OR plan_id = $2)
             GROUP BY plan_id, manager_id ORDER BY plan_id, manager_id NULLS FIRST",
        )
        .bind(account_id)
        .bind(plan_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(pb::ManagerTotal {
                plan_id: r.try_get::<Uuid, _>("plan_id")?.to_string(),
                manager_id: r.try_get("manager_id")?,
                open: r.try_get("open")?,
                won: r.try_get("won")?,
                lost: r.try_get("lost")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let total_deals = stages.iter().map(|s| s.deals).sum();
        Ok(pb::PipelineSummaryResponse {
            stages,
            managers,
            total_deals,
        })
    }
}

#[tonic::async_trait]
impl ReportService for Reports {
    async fn pipeline_summary(
        &self,
        request: Request<pb::PipelineSummaryRequest>,
    ) -> Result<Response<pb::PipelineSummaryResponse>, Status> {
        let actor = auth::actor(&request)?;
        let plan_id = request
            .get_ref()
            .plan_id
            .as_deref()
            .map(|p| parse_id("plan_id", p))
            .transpose()?;
        let summary = Reports::pipeline_summary(self, &actor.account_id, plan_id).await?;
        Ok(Response::new(summary))
    }
}
