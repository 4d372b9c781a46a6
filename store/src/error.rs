//! Maps sqlx errors to the domain error: known constraints become 409/422 with a client
//! message; connection trouble becomes 503; anything else is internal (logged by the API).

use pgplane_core::Error;

/// Constraint name → (conflict code, client message).
const CONSTRAINTS: &[(&str, &str, &str)] = &[
    ("users_email_key", "email_taken", "a user with this email already exists"),
    ("apps_tenant_name_key", "name_taken", "this tenant already has an app with this name"),
    ("databases_tenant_name_key", "name_taken", "this tenant already has a database with this name"),
    ("operations_one_active", "operation_in_progress", "another operation on this database is in progress"),
    ("memberships_pkey", "already_member", "this user is already a member of the tenant"),
    ("databases_exposure_needs_tls", "force_tls_required", "internet exposure requires force TLS"),
];

pub fn db_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) => {
            if let Some(name) = db.constraint() {
                if let Some((_, code, message)) = CONSTRAINTS.iter().find(|(n, _, _)| *n == name) {
                    return Error::conflict(code, *message);
                }
            }
            // Class 22 (data exception): input PostgreSQL cannot store, such as a NUL character.
            // Well-formed JSON that fits the schema can carry one, so this is invalid input
            // (422), not a malformed request.
            if db.code().is_some_and(|c| c.starts_with("22")) {
                return Error::invalid(
                    "body",
                    "unstorable",
                    "the input contains characters or values that cannot be stored (such as a NUL character)",
                );
            }
            Error::internal(e)
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Error::Unavailable(e.to_string()),
        _ => Error::internal(e),
    }
}
