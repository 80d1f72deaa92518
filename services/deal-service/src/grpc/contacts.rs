//! ContactService: a person's data in the caller's account (docs/privacy.md).

use std::collections::HashMap;

use salesplan_platform::{ApiError, Permission, auth, error::AllChecks as _, grpc, validate};
use salesplan_proto::v1::{self as pb, contact_service_server::ContactService};
use tonic::{Request, Response, Status};

use super::Api;
use crate::{convert, store::Identity};

/// The longest identifier taken (the contact fields' own limits are shorter).
const MAX_IDENTIFIER: usize = 320;

/// Trimmed, bounded, and without control or deceiving characters (as every stored text).
fn identifier(field: &'static str, value: String) -> Result<String, ApiError> {
    validate::text(field, &value, MAX_IDENTIFIER)
}

/// Who the request names, as deals keep it; at least one identifier.
fn identity(external_id: String, email: String, phone: String) -> Result<Identity, ApiError> {
    let (external_id, email, phone) = (
        identifier("external_id", external_id),
        identifier("email", email),
        identifier("phone", phone),
    )
        .all()?;
    let identity = Identity {
        external_id,
        email: email.to_lowercase(),
        phone_digits: validate::digits(&phone),
    };
    if identity.external_id.is_empty()
        && identity.email.is_empty()
        && identity.phone_digits.is_empty()
    {
        return Err(ApiError::invalid(
            "external_id",
            "name the person: external_id, email or phone (with digits)",
        ));
    }
    Ok(identity)
}

#[tonic::async_trait]
impl ContactService for Api {
    async fn erase_contact(
        &self,
        request: Request<pb::EraseContactRequest>,
    ) -> Result<Response<pb::EraseContactResponse>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::ContactsErase)?;
        let _permit = self.bulk.admit(&actor.account_id)?;
        let bearer = bearer(&request)?;
        let req = request.into_inner();
        let identity = identity(req.external_id, req.email, req.phone)?;
        let erasure = self
            .store
            .erase_contact(&actor.account_id, &actor.user_id, &identity)
            .await?;
        // After the deals: a failure here answers UNAVAILABLE, and the repeat (same receipt)
        // finds the deals done and deletes what is left.
        let deleted = crate::events::lanes::delete_person(
            &self.bus,
            &self.contact_keys,
            &actor.account_id,
            &erasure.known,
        )
        .await
        .map_err(|err| ApiError::Unavailable(format!("erasing the person's messages: {err:#}")))?;
        // Last, when no lead of the person is left to decide: the distributor forgets every
        // relation of theirs, also one no deal told it of.
        let forgotten = self.forget(erasure.known.clone(), &bearer).await?;
        tracing::info!(
            actor = %actor.user_id,
            receipt = %erasure.receipt_id,
            deals = erasure.deals_now,
            ?deleted,
            "contact erased"
        );
        let place = |place: &str, count: i64| pb::ErasedPlace {
            place: place.into(),
            count,
        };
        Ok(Response::new(pb::EraseContactResponse {
            receipt_id: erasure.receipt_id.to_string(),
            first_erased_at: Some(convert::timestamp(erasure.first_at)),
            erased: vec![
                place("deal_service.deals", erasure.deals_now),
                place("SALESPLAN_INTAKE", deleted.intake),
                place("SALESPLAN_BULK", deleted.bulk),
                place("SALESPLAN_DEAD_LETTERS", deleted.dead_letters),
                place("distributor.contact_managers", forgotten),
            ],
            deals_erased_in_total: erasure.deals_in_total,
        }))
    }

    async fn export_contact(
        &self,
        request: Request<pb::ExportContactRequest>,
    ) -> Result<Response<pb::ExportContactResponse>, Status> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let bearer = bearer(&request)?;
        let req = request.into_inner();
        let identity = identity(req.external_id, req.email, req.phone)?;
        let exported = self
            .store
            .export_contact(&actor.account_id, &identity)
            .await?;
        let deal_ids: Vec<String> = exported.iter().map(|(d, _)| d.id.to_string()).collect();
        let mut decisions = self.decisions(deal_ids, &bearer).await?;
        tracing::info!(actor = %actor.user_id, deals = exported.len(), "contact exported");
        Ok(Response::new(pb::ExportContactResponse {
            exported_at: Some(convert::timestamp(time::OffsetDateTime::now_utc())),
            deals: exported
                .into_iter()
                .map(|(deal, history)| pb::ExportedDeal {
                    assignment: decisions.remove(&deal.id.to_string()),
                    deal: Some((&deal).into()),
                    history: history
                        .into_iter()
                        .map(super::deals::history_entry)
                        .collect(),
                })
                .collect(),
        }))
    }
}

/// How long an export waits for the distributor's decisions.
const DECISIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The caller's own token: the distributor is asked on their behalf, so it answers with
/// nothing the caller could not read there (the same account, `deals:read`).
fn bearer<T>(request: &Request<T>) -> Result<String, ApiError> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(auth::bearer_token)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::internal("an authorised call without its bearer token"))
}

impl super::Api {
    /// Asks the distributor, on the caller's behalf, to forget the relations of `keys`.
    async fn forget(&self, keys: Vec<String>, bearer: &str) -> Result<i64, ApiError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut distributor = self.distributor.clone();
        let request = || {
            let mut request =
                grpc::between_services(pb::ForgetContactsRequest { contact_keys: keys }, bearer);
            request.set_timeout(DECISIONS_WAIT);
            request
        };
        let answer = grpc::call(
            "salesplan.v1.DistributorService",
            "ForgetContacts",
            request,
            |r| distributor.forget_contacts(r),
        )
        .await
        .map_err(|status| {
            ApiError::Unavailable(format!(
                "the distributor forgetting the person: {} ({})",
                status.message(),
                status.code()
            ))
        })?;
        Ok(answer.into_inner().forgotten)
    }

    /// The distributor's decisions of the deals, by deal id. A deal created directly has
    /// none; a distributor that does not answer makes the export UNAVAILABLE rather than
    /// silently incomplete.
    async fn decisions(
        &self,
        deal_ids: Vec<String>,
        bearer: &str,
    ) -> Result<HashMap<String, pb::Assignment>, ApiError> {
        if deal_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut distributor = self.distributor.clone();
        let request = || {
            let mut request =
                grpc::between_services(pb::ExplainAssignmentsRequest { deal_ids }, bearer);
            request.set_timeout(DECISIONS_WAIT);
            request
        };
        let answer = grpc::call(
            "salesplan.v1.DistributorService",
            "ExplainAssignments",
            request,
            |r| distributor.explain_assignments(r),
        )
        .await
        .map_err(|status| {
            ApiError::Unavailable(format!(
                "the distributor's decisions of the deals: {} ({})",
                status.message(),
                status.code()
            ))
        })?;
        Ok(answer
            .into_inner()
            .assignments
            .into_iter()
            .map(|a| (a.deal_id.clone(), a))
            .collect())
    }
}
