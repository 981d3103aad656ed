//! etcd's `/health`: a read-only check (it never writes a key, unlike the old script's health check).
//! 3.3 and 3.4 answer `{"health":"true"}`, 3.5 adds a `"reason"`.

use serde::Deserialize;

use super::{ClientError, Endpoint};

#[derive(Deserialize)]
struct Health {
    health: String,
}

/// Whether etcd reports itself healthy; an unreachable or unhealthy etcd is `Ok(false)` only when it
/// answered, and an error when it could not be reached.
pub async fn check(endpoint: &Endpoint) -> Result<bool, ClientError> {
    let health: Health = endpoint.get_json("/health").await?;
    Ok(health.health == "true")
}
