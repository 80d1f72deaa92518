//! Any bytes as the requests deal-service converts at its edge: converted, or refused with
//! a field — never a panic.
#![no_main]

use deal_service::{
    convert,
    domain::{deal::NewDeal, plan::PlanDraft},
};
use prost::Message;
use salesplan_proto::v1 as pb;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::CreatePlanRequest::decode(data)
        && let Err(err) = PlanDraft::try_from(request)
    {
        assert!(err.field().is_some(), "{err}");
    }
    if let Ok(request) = pb::CreateDealRequest::decode(data)
        && let Err(err) = NewDeal::try_from(request)
    {
        assert!(err.field().is_some(), "{err}");
    }
    if let Ok(filter) = pb::DealFilter::decode(data)
        && let Err(err) = convert::query_from(Some(filter))
    {
        assert!(err.field().is_some(), "{err}");
    }
});
