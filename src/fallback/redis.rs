//! [`RedisStore`]: last-good answers shared by every replica through Redis.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cache::{BoxFuture, CacheError, CacheStore, CacheWrite, Cached};

/// A [`CacheStore`] in Redis (feature `redis`), so several replicas share last-good answers:
/// what replica A cached, replica B can serve when its model fails.
///
/// Answers are stored as JSON with the wall-clock time they were stored (replicas share no
/// monotonic clock), under `"{prefix}{key}"` with Redis's own expiry (`SET … PX ttl`). The
/// connection is a [`ConnectionManager`], which reconnects by itself, with short timeouts (1 s
/// to connect, 500 ms to answer); a store error never reaches a caller (the fallback layer
/// logs it and moves on).
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_inference::fallback::CacheError> {
/// use tower_inference::fallback::RedisStore;
/// use tower_inference::Served;
///
/// let store: RedisStore<Served<String>> =
///     RedisStore::connect("redis://127.0.0.1:6379/", "answers:").await?;
/// # Ok(()) }
/// ```
pub struct RedisStore<V> {
    conn: ConnectionManager,
    prefix: String,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for RedisStore<V> {
    fn clone(&self) -> Self {
        RedisStore {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for RedisStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored<V> {
    stored_ms: u64,
    value: V,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<V> RedisStore<V> {
    /// Connects to Redis at `url` (e.g. `redis://127.0.0.1:6379/`), keeping answers under
    /// keys that start with `prefix`.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::new(e.to_string()))?;
        // A cache must never hold a request up: short timeouts, and few reconnection tries.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| CacheError::new(e.to_string()))?;
        Ok(RedisStore {
            conn,
            prefix: prefix.into(),
            _value: PhantomData,
        })
    }
}

impl<V> CacheStore<V> for RedisStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn get(&self, key: &str) -> BoxFuture<Result<Option<Cached<V>>, CacheError>> {
        let mut conn = self.conn.clone();
        let key = format!("{}{key}", self.prefix);
        Box::pin(async move {
            let raw: Option<String> = conn
                .get(&key)
                .await
                .map_err(|e| CacheError::new(e.to_string()))?;
            let Some(raw) = raw else { return Ok(None) };
            let stored: Stored<V> =
                serde_json::from_str(&raw).map_err(|e| CacheError::new(e.to_string()))?;
            let age = Duration::from_millis(now_ms().saturating_sub(stored.stored_ms));
            Ok(Some(Cached {
                value: stored.value,
                age,
            }))
        })
    }

    fn put(&self, key: String, value: V, ttl: Duration) -> CacheWrite {
        let body = match serde_json::to_string(&Stored {
            stored_ms: now_ms(),
            value,
        }) {
            Ok(body) => body,
            Err(e) => return CacheWrite::Done(Err(CacheError::new(e.to_string()))),
        };
        let mut conn = self.conn.clone();
        let key = format!("{}{key}", self.prefix);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        CacheWrite::Pending(Box::pin(async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(body)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| CacheError::new(e.to_string()))
        }))
    }
}
