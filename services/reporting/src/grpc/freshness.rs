//! What a report reflects, and waiting until it includes what a token stands for.

use salesplan_platform::{
    ApiError,
    consistency::{self, Token, Wanted},
};
use salesplan_proto::v1 as pb;
use sqlx::PgPool;

use crate::{
    domain::progress::{Freshness, Horizons},
    store,
};

/// What an answer reflects, on the wire.
pub fn to_proto(freshness: Freshness) -> pb::Freshness {
    let ts = salesplan_proto::time::timestamp;
    pb::Freshness {
        consistency_token: Token::of_horizon(freshness.horizon.max(1)).to_string(),
        published_at: freshness.published_at.map(ts),
        applied_at: freshness.applied_at.map(ts),
    }
}

/// The freshness to answer with: at once without a token, else once the model includes
/// what the token stands for (at most `wait`; UNAVAILABLE after that): a write, or the
/// deals of accepted leads in `account_id`.
pub async fn at_least(
    pool: &PgPool,
    horizons: &Horizons,
    account_id: &str,
    wanted: Option<Wanted>,
    wait: std::time::Duration,
) -> Result<Freshness, ApiError> {
    match wanted {
        None => Ok(store::progress::freshness(pool, horizons).await?),
        Some(Wanted::Write(token)) => {
            consistency::wait_until(&token, wait, || async {
                let now = store::progress::freshness(pool, horizons).await?;
                Ok(token.covered_by(now.horizon).then_some(now))
            })
            .await
        }
        Some(Wanted::Leads(leads)) => {
            consistency::wait_until(&leads, wait, || async {
                if store::progress::leads_applied(pool, account_id, &leads).await? {
                    Ok(Some(store::progress::freshness(pool, horizons).await?))
                } else {
                    Ok(None)
                }
            })
            .await
        }
    }
}
