//! Where last-good answers are kept: the [`CacheStore`] trait and the in-memory store.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

/// A boxed future, as the stores return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A stored answer and how old it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<V> {
    /// The answer.
    pub value: V,
    /// Time since it was stored.
    pub age: Duration,
}

/// A cache store failed. The message is for logs; callers never see it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cache store error: {message}")]
pub struct CacheError {
    message: String,
}

impl CacheError {
    /// A store error with a message for logs.
    pub fn new(message: impl Into<String>) -> Self {
        CacheError {
            message: message.into(),
        }
    }
}

/// The result of a cache write: done at once (an in-memory store), or still to run (a network
/// store), in which case the fallback layer runs it on a task of its own so the response is
/// never held up.
pub enum CacheWrite {
    /// The write has completed.
    Done(Result<(), CacheError>),
    /// The write still has to run.
    Pending(BoxFuture<Result<(), CacheError>>),
}

impl fmt::Debug for CacheWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheWrite::Done(result) => f.debug_tuple("Done").field(result).finish(),
            CacheWrite::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where a cache tier keeps last-good answers, by key.
///
/// Implemented by [`MemoryStore`] and (feature `redis`) `RedisStore`. A store decides its own
/// expiry policy within `ttl`; `get` must not return an answer older than the `ttl` it was
/// stored with.
pub trait CacheStore<V>: Send + Sync + 'static {
    /// The answer stored under `key`, if there is a fresh one.
    fn get(&self, key: &str) -> BoxFuture<Result<Option<Cached<V>>, CacheError>>;

    /// Stores `value` under `key` for `ttl`.
    fn put(&self, key: String, value: V, ttl: Duration) -> CacheWrite;
}

/// An in-memory [`CacheStore`], bounded in entries, built on [`quick_cache`]'s concurrent
/// cache (lock-sharded, with CLOCK-Pro eviction).
///
/// Entries expire after their `ttl`, measured on `tokio::time` (so tests on paused time see
/// exact expiry; an expired entry is dropped when next read), and when `max_entries` is
/// reached the coldest entries go first, so memory stays bounded whatever keys arrive.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use tower_inference::fallback::{CacheStore, MemoryStore};
///
/// let store = MemoryStore::new(1_000);
/// let _ = store.put("greeting".into(), "hello".to_string(), Duration::from_secs(60));
/// tokio::time::advance(Duration::from_secs(5)).await;
/// let hit = store.get("greeting").await.unwrap().unwrap();
/// assert_eq!((hit.value.as_str(), hit.age), ("hello", Duration::from_secs(5)));
/// # }
/// ```
pub struct MemoryStore<V> {
    entries: quick_cache::sync::Cache<String, Entry<V>>,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    stored: Instant,
    ttl: Duration,
}

impl<V: Clone + Send + Sync + 'static> MemoryStore<V> {
    /// A store that keeps at most `max_entries` answers (at least 1).
    pub fn new(max_entries: usize) -> Self {
        MemoryStore {
            entries: quick_cache::sync::Cache::new(crate::setting::at_least(
                "memory_store.max_entries",
                max_entries,
                1,
            )),
        }
    }

    /// Answers stored now (expired ones may linger until read or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Clone> fmt::Debug for MemoryStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> CacheStore<V> for MemoryStore<V> {
    fn get(&self, key: &str) -> BoxFuture<Result<Option<Cached<V>>, CacheError>> {
        let hit = self.entries.get(key).and_then(|entry| {
            let age = entry.stored.elapsed();
            if age < entry.ttl {
                Some(Cached {
                    value: entry.value,
                    age,
                })
            } else {
                self.entries.remove(key);
                None
            }
        });
        Box::pin(std::future::ready(Ok(hit)))
    }

    fn put(&self, key: String, value: V, ttl: Duration) -> CacheWrite {
        self.entries.insert(
            key,
            Entry {
                value,
                stored: Instant::now(),
                ttl,
            },
        );
        CacheWrite::Done(Ok(()))
    }
}
