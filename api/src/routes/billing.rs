//! What the billing service reads: every plan period of every tenant in a time window.

use axum::extract::State;
use chrono::{DateTime, Utc};
use pgplane_core::model::{BillingPeriodPage, PlatformRole};
use pgplane_core::page::PageParams;
use pgplane_core::Error;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{require_platform, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(billing_periods))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Window {
    /// Start of the window (inclusive), RFC 3339 UTC.
    from: DateTime<Utc>,
    /// End of the window (exclusive), RFC 3339 UTC; after `from` (else 422).
    to: DateTime<Utc>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = pgplane_core::page::cursor_schema)]
    cursor: Option<String>,
}

/// Lists the addon plan periods that overlap `[from, to)` (billing service, operators).
#[utoipa::path(
    get, path = "/v1/billing/periods", tag = "billing", security(("bearer" = [])), params(Window),
    responses((status = 200, body = BillingPeriodPage), Errors)
)]
async fn billing_periods(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(w): Query<Window>,
) -> ApiResult<Json<BillingPeriodPage>> {
    require_platform(&actor, PlatformRole::Billing)?;
    if w.to <= w.from {
        return Err(Error::invalid("to", "out_of_range", "must be after from").into());
    }
    let page = PageParams { limit: w.limit, cursor: w.cursor }.validate()?;
    Ok(Json(BillingPeriodPage::new(state.store.billing_periods(w.from, w.to, &page).await?)))
}
