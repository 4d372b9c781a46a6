//! Downloads of backups: streamed from backup storage (never held in memory), whole or one
//! byte range (`Range`, 206; an unsatisfiable range is a 416 problem), with their size, SHA-256
//! (as `ETag` and `x-backup-sha256`) and a file name. A tenant's member downloads with a token,
//! or asks for a signed link that downloads without one until it expires (`links`).
//!
//! Links always name this API, even when backups are kept on S3, rather than handing out the
//! store's own presigned URL: the S3 endpoint is the agents' (often a private address, or a
//! certificate from a private CA the tenant's machine does not trust), a presigned URL shows the
//! bucket, the endpoint and the access key id, it outlives the deletion of the backup's row
//! (until the object goes) and it cannot be checked against the tenant's access. Through the
//! API a link keeps working with `Range`, and stops the moment the backup is deleted.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, DurationRound, Utc};
use pgplane_core::backup_link::{BackupLink, CreateBackupLink, DEFAULT_LINK_SECS, MAX_LINK_SECS};
use pgplane_core::ids::{BackupId, DatabaseId};
use pgplane_core::model::TenantRole;
use pgplane_core::Error;
use pgplane_store::backup_downloads::BackupDownload;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{require_role, Auth};
use crate::error::{problem_response, ApiError, ApiResult, Problem};
use crate::extract::{Json, Path, Query};
use crate::links::LinkRefusal;
use crate::openapi::{Errors, PublicErrors};
use crate::range::{self, RangeAsk};
use crate::{AppState, Downloads};

/// The header that carries the backup's SHA-256 (lowercase hex), as `sha256sum` prints it.
pub const SHA256_HEADER: &str = "x-backup-sha256";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(backup_download))
        .routes(routes!(backup_link_create))
        .routes(routes!(backup_link_download))
}

/// Downloads a backup (members): the `pg_dump -Fc` archive (restore it with `pg_restore`),
/// streamed. Send `Range: bytes=…` for one part (206; resume with `curl -C -`). Only a `done`
/// backup downloads (409 otherwise).
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/backups/{backup_id}/download", tag = "backups",
    security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path), RangeHeaders),
    responses(
        (status = 200, description = "The whole backup", body = Vec<u8>, content_type = "application/octet-stream",
            headers(("content-length" = u64), ("etag" = String), ("x-backup-sha256" = String, description = "SHA-256 of the whole backup, hex"),
                ("content-disposition" = String), ("accept-ranges" = String))),
        (status = 206, description = "The range asked for", body = Vec<u8>, content_type = "application/octet-stream",
            headers(("content-range" = String), ("content-length" = u64), ("etag" = String), ("x-backup-sha256" = String))),
        (status = 416, description = "The range asked for is outside the backup; `Content-Range: bytes */<size>`",
            body = Problem, content_type = "application/problem+json"),
        Errors
    )
)]
async fn backup_download(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((database, backup)): Path<(DatabaseId, BackupId)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_role(state.store.database_get(&actor, database).await?.role, TenantRole::Member)?;
    serve(&state, database, backup, &headers).await
}

/// Makes a link that downloads a backup without a token (members): for `curl -o` on another
/// machine, or a browser. It is valid for `expires_in` seconds (15 minutes by default, at most
/// a day), takes `Range` too, and stops working when the backup is deleted. Anyone holding it
/// can download the backup.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/backups/{backup_id}/link", tag = "backups",
    security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path)), request_body = CreateBackupLink,
    responses((status = 200, body = BackupLink), Errors)
)]
async fn backup_link_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((database, backup)): Path<(DatabaseId, BackupId)>,
    headers: HeaderMap,
    Json(input): Json<CreateBackupLink>,
) -> ApiResult<Json<BackupLink>> {
    require_role(state.store.database_get(&actor, database).await?.role, TenantRole::Member)?;
    let secs = input.expires_in.unwrap_or(DEFAULT_LINK_SECS);
    if !(1..=MAX_LINK_SECS).contains(&secs) {
        return Err(Error::invalid(
            "expires_in",
            "out_of_range",
            format!("a link lives from 1 to {MAX_LINK_SECS} seconds (a day)"),
        )
        .into());
    }
    downloadable(&state.store.backup_download(database, backup).await?.ok_or(Error::not_found("backup"))?)?;
    let downloads = downloads(&state)?;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).map_err(Error::internal)?;
    let expires_at = now + Duration::seconds(secs.into());
    let signature = downloads.links.sign(database, backup, expires_at);
    let base = match &downloads.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).ok_or_else(|| {
                Error::bad_request("send a Host header: the link names the address you reached the API at")
            })?;
            format!("http://{host}")
        }
    };
    let url =
        format!("{base}/v1/backup-links/{database}/{backup}?expires={}&signature={signature}", expires_at.timestamp());
    Ok(Json(BackupLink { url, expires_at, expires_in: secs }))
}

/// What a signed link carries besides the ids.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LinkQuery {
    /// When the link expires (Unix seconds).
    expires: Option<i64>,
    /// The link's signature (hex).
    signature: Option<String>,
}

/// Downloads a backup through a signed link, without a token (see `POST …/link`): the same
/// answers as `…/download`, `Range` included. An altered, foreign or expired link is refused
/// (403); the link of a deleted backup finds nothing (404).
#[utoipa::path(
    get, path = "/v1/backup-links/{database_id}/{backup_id}", tag = "backups",
    params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path), LinkQuery, RangeHeaders),
    responses(
        (status = 200, description = "The whole backup", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 403, description = "The link is not signed, altered, foreign or expired",
            body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range asked for is outside the backup",
            body = Problem, content_type = "application/problem+json"),
        PublicErrors
    )
)]
async fn backup_link_download(
    State(state): State<AppState>,
    Path((database, backup)): Path<(DatabaseId, BackupId)>,
    Query(link): Query<LinkQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (Some(expires), Some(signature)) = (link.expires, link.signature) else {
        return Err(
            Error::forbidden("this link is not signed: ask for one with POST …/backups/{backup_id}/link").into()
        );
    };
    match downloads(&state)?.links.verify(database, backup, expires, &signature, Utc::now()) {
        Ok(()) => {}
        Err(LinkRefusal::BadSignature) => {
            return Err(Error::forbidden("this link is not valid: it was altered, or made for another backup").into())
        }
        Err(LinkRefusal::Expired) => {
            let at = chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default();
            return Err(Error::forbidden(format!("this link expired at {at}; ask for a new one")).into());
        }
    }
    serve(&state, database, backup, &headers).await
}

/// The request headers a download reads.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Documents the headers; `serve` reads them from the request.
struct RangeHeaders {
    /// One byte range, `bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<suffix length>`
    /// (several ranges, or another unit, answer the whole backup).
    #[param(rename = "range")]
    range: Option<String>,
    /// Serve the range only while the backup's `ETag` is this one.
    #[param(rename = "if-range")]
    if_range: Option<String>,
}

fn downloads(state: &AppState) -> Result<&Downloads, Error> {
    // An API started without `--backup-storage`: the tenant can only tell the operators.
    state.downloads.as_deref().ok_or_else(|| {
        Error::conflict(
            "backups_not_configured",
            "this platform keeps no backup storage, so backups cannot be downloaded; tell its operators",
        )
    })
}

/// Refuses a backup that has nothing to download yet (or ever).
fn downloadable(backup: &BackupDownload) -> Result<(), Error> {
    match backup.status.as_str() {
        "done" => Ok(()),
        "error" => Err(Error::conflict("backup_failed", "this backup failed: it has nothing to download")),
        status => Err(Error::conflict(
            "backup_not_done",
            format!("this backup is {status}: it downloads once it is done (see its status)"),
        )),
    }
}

/// The file name a download suggests: `<database>-<UTC start, YYYYMMDDTHHMMSSZ>.dump`.
fn file_name(backup: &BackupDownload) -> String {
    let name: String = backup
        .database_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{name}-{}.dump", backup.started_at.format("%Y%m%dT%H%M%SZ"))
}

/// Answers a download of `backup` of `database` (the caller's access is checked).
async fn serve(state: &AppState, database: DatabaseId, backup: BackupId, headers: &HeaderMap) -> ApiResult<Response> {
    let found = state.store.backup_download(database, backup).await?.ok_or(Error::not_found("backup"))?;
    downloadable(&found)?;
    let storage = &downloads(state)?.storage;
    let (Some(size), Some(sha256)) = (found.size_bytes, found.sha256.as_deref()) else {
        return Err(Error::internal(format!("backup {backup} is done without a size or SHA-256")).into());
    };
    let size = u64::try_from(size).map_err(Error::internal)?;
    let etag = format!("\"{sha256}\"");
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let part = match range::ask(header_str(header::RANGE), header_str(header::IF_RANGE), &etag, size) {
        RangeAsk::Whole => None,
        RangeAsk::Part(part) => Some(part),
        RangeAsk::Unsatisfiable => return Ok(unsatisfiable(size)),
    };
    let read = storage.read(&found.object_key, part.clone()).await.map_err(|e| Error::internal(format!("{e:#}")))?;
    let Some(read) = read else {
        // Deleted while this request started, or lost from storage: either way, gone.
        tracing::warn!(%database, %backup, key = found.object_key, "a done backup has no object in storage");
        return Err(Error::not_found("backup").into());
    };
    if read.size != size {
        return Err(Error::internal(format!(
            "backup {backup}: the stored object has {} bytes, its row says {size}",
            read.size
        ))
        .into());
    }
    let served = read.range.end - read.range.start;
    let mut res = Response::new(Body::from_stream(read.stream));
    let h = res.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).map_err(Error::internal);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(served));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(etag)?);
    h.insert(SHA256_HEADER, value(sha256.to_string())?);
    h.insert(header::CONTENT_DISPOSITION, value(format!("attachment; filename=\"{}\"", file_name(&found)))?);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    if part.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let range = format!("bytes {}-{}/{size}", read.range.start, read.range.end - 1);
        res.headers_mut().insert(header::CONTENT_RANGE, value(range)?);
    }
    Ok(res)
}

/// 416 problem+json with `Content-Range: bytes */<size>`.
fn unsatisfiable(size: u64) -> Response {
    let message = format!("the range is outside the backup, which has {size} bytes");
    let problem = Problem {
        kind: "urn:pgplane:problem:range-not-satisfiable".into(),
        title: "Range not satisfiable".into(),
        status: StatusCode::RANGE_NOT_SATISFIABLE.as_u16(),
        ..ApiError(Error::bad_request(message)).to_problem()
    };
    let mut res = problem_response(&problem);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    res.into_response()
}
