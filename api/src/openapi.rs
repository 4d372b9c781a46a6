//! The OpenAPI 3.1 document, generated from the handlers. `openapi/pgplane.json` is its
//! checked-in copy; a test fails when the two differ.

use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::{Problem, PROBLEM_JSON};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pgplane",
        description = "Managed PostgreSQL control plane. Exchange an API token for an access token at \
            `POST /v1/auth/token`, then send it as `Authorization: Bearer <token>`. Errors are \
            `application/problem+json`. Lists are paginated with `limit` and `cursor`. POST requests \
            accept an `Idempotency-Key` header.",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(Problem)),
    tags(
        (name = "system", description = "Liveness and readiness"),
        (name = "auth", description = "Access tokens, the caller, API tokens"),
        (name = "plans", description = "The plan catalog and PostgreSQL versions"),
        (name = "users", description = "Users (platform operators)"),
        (name = "tenants", description = "Tenants and their members"),
        (name = "apps", description = "Apps and their addons"),
        (name = "databases", description = "Databases, their settings and operations"),
        (name = "billing", description = "Plan periods for the billing service"),
        (name = "jobs", description = "The job queue (operators)"),
        (name = "agents", description = "Node agents and what their hosts can do (operators)"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The generated document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::routes::router().split_for_parts().1
}

/// The error answers every authenticated endpoint may give.
pub struct Errors;

impl IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        [
            ("400", "Malformed request"),
            ("401", "Missing or invalid access token"),
            ("403", "The caller's role does not allow this"),
            ("404", "No such resource, or it belongs to another tenant"),
            ("409", "Conflicts with the resource's current state"),
            ("422", "Invalid input; `errors` lists the fields"),
            ("429", "Rate limit exceeded; see Retry-After"),
        ]
        .into_iter()
        .map(|(code, description)| {
            let response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
                .build();
            (code.to_string(), RefOr::T(response))
        })
        .collect()
    }
}
