//! What pgplane's two HTTP servers share, the public API (`pgplane-api`) and the scheduler's
//! agent API: the one mapping from `pgplane_core::Error` to problem+json (`error`), and
//! extractors whose rejections are problems too (`extract`). Nothing here knows a route.

pub mod error;
pub mod extract;

/// Largest accepted request body, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
