//! The OpenAPI 3.1 document, generated from the handlers. `openapi/pgplane.json` is its
//! checked-in copy; a test fails when the two differ.

use std::collections::BTreeMap;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::Type;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder};
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
        (name = "backups", description = "Logical backups of a database: take, list, download, delete, quota, restore"),
        (name = "billing", description = "Plan periods for the billing service"),
        (name = "jobs", description = "The job queue (operators)"),
        (name = "agents", description = "Node agents and what their hosts can do (operators)"),
        (name = "timers", description = "What a clock starts: retention sweeps, daily backups (operators)"),
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
    let mut doc = crate::routes::router().split_for_parts().1;
    finish(&mut doc);
    doc
}

/// What the generated document needs after the routes made it (the served one and `openapi()`
/// alike).
pub(crate) fn finish(doc: &mut utoipa::openapi::OpenApi) {
    close_variants(doc, &["RestoreRequest"]);
}

/// Says of each variant of these tagged enums that it takes no other field: their Rust types
/// refuse unknown fields (`deny_unknown_fields`), which utoipa says of structs but not of an
/// enum's variants, so a client reading the document would send what the API refuses.
fn close_variants(doc: &mut utoipa::openapi::OpenApi, names: &[&str]) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    let Some(components) = doc.components.as_mut() else { return };
    for name in names {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(*name) {
            for item in one_of.items.iter_mut() {
                if let RefOr::T(Schema::Object(object)) = item {
                    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// Declares a set of problem+json answers, for `responses(…)` of `#[utoipa::path]`.
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident: $($code:literal),+) => {
        $(#[$doc])*
        pub struct $name;
        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
                problems(&[$($code),+])
            }
        }
    };
}

error_set!(
    /// What an endpoint that takes an access token may answer besides success: anything a
    /// caller can get wrong (input, credentials, role, state, rate).
    Errors: 400, 401, 403, 404, 409, 422, 429
);
error_set!(
    /// Public reads of the catalog: bad query, unknown item, rate limit (when a token is sent).
    PublicErrors: 400, 404, 422, 429
);
error_set!(
    /// Endpoints that cannot fail on input: only a caller who sends a token over its rate limit
    /// is refused.
    RateLimited: 429
);

/// Declares 413 where it can happen: on operations that read a request body (those that take
/// one, and every POST: the Idempotency-Key middleware reads theirs). Bodies are limited to
/// `BODY_LIMIT`.
pub(crate) fn declare_body_limit(doc: &mut utoipa::openapi::OpenApi) {
    let Some(too_large) = problems(&[413]).remove("413") else { return };
    for item in doc.paths.paths.values_mut() {
        let post = item.post.iter_mut();
        let others = [&mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten();
        for op in post.chain(others.filter(|op| op.request_body.is_some())) {
            op.responses.responses.insert("413".into(), too_large.clone());
        }
    }
}

fn problems(codes: &[u16]) -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
    codes
        .iter()
        .map(|code| {
            let description = match code {
                400 => "Malformed request",
                401 => "Missing or invalid access token",
                403 => "The caller's role does not allow this",
                404 => "No such resource, or it belongs to another tenant",
                409 => "Conflicts with the resource's current state",
                422 => "Invalid input; `errors` lists the fields",
                413 => "The request body is larger than 64 KiB",
                429 => "Rate limit exceeded; see Retry-After",
                _ => "Error",
            };
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build());
            if *code == 429 {
                let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
                response = response.header(
                    "retry-after",
                    HeaderBuilder::new().schema(seconds).description(Some("Seconds to wait before retrying")).build(),
                );
            }
            let response = response.build();
            (code.to_string(), RefOr::T(response))
        })
        .collect()
}
