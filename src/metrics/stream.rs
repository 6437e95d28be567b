//! What a stage records of streamed answers ([`TokenStream`](crate::stream::TokenStream)s):
//! time to first token, inter-token latency, tokens per second, and how streams ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::collector::{LatencySnapshot, Stage};
use super::histogram::{BOUNDS, Histogram, Merged};
use crate::stream::{Chunk, StreamEnd, Watch};
use crate::stripe::Stripe;

/// A stage's stream counters: no lock, no allocation after creation.
#[derive(Default)]
pub(crate) struct StreamStats {
    first_token: Histogram,
    inter_token: Histogram,
    /// Recorded in thousandths of a token per second, in the histogram's microsecond slots.
    tokens_per_second: Histogram,
    finished: AtomicU64,
    failed: AtomicU64,
    stalled: AtomicU64,
    cancelled: AtomicU64,
}

fn micros(d: Duration) -> u64 {
    super::collector::micros(d).max(1)
}

impl StreamStats {
    /// A stream started after `first_token`: records it and returns what watches the rest.
    pub(crate) fn started(stage: &Arc<Stage>, first_token: Duration, now: Instant) -> StreamWatch {
        stage
            .streams()
            .first_token
            .record(micros(first_token), Stripe::SHARER);
        StreamWatch {
            stage: stage.clone(),
            first: now,
            last: now,
            tokens: 0,
            chunks: 0,
        }
    }

    pub(crate) fn snapshot(&self) -> StreamSnapshot {
        let merged = |h: &Histogram| {
            let mut merged = Merged::default();
            h.merge_into(&mut merged);
            merged
        };
        StreamSnapshot {
            first_token: LatencySnapshot::of(&merged(&self.first_token)),
            inter_token: LatencySnapshot::of(&merged(&self.inter_token)),
            tokens_per_second: RateSnapshot::of(&merged(&self.tokens_per_second)),
            finished: self.finished.load(Relaxed),
            failed: self.failed.load(Relaxed),
            stalled: self.stalled.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
        }
    }
}

/// Watches one started stream for the metrics layer.
pub(crate) struct StreamWatch {
    stage: Arc<Stage>,
    /// When the first chunk was here (the call answered).
    first: Instant,
    last: Instant,
    /// Tokens handed on after the first chunk.
    tokens: u64,
    chunks: u64,
}

impl Watch for StreamWatch {
    fn chunk(&mut self, chunk: &Chunk) {
        self.chunks += 1;
        // The first chunk came with the answer: its wait is the time to first token.
        if self.chunks == 1 {
            return;
        }
        let now = Instant::now();
        self.stage.streams().inter_token.record(
            micros(now.saturating_duration_since(self.last)),
            Stripe::SHARER,
        );
        self.last = now;
        self.tokens += u64::from(chunk.tokens);
    }

    fn end(self: Box<Self>, end: StreamEnd) {
        let stats = self.stage.streams();
        let counter = match end {
            StreamEnd::Finished { .. } => &stats.finished,
            StreamEnd::Failed { stalled: true, .. } => &stats.stalled,
            StreamEnd::Failed { .. } => &stats.failed,
            StreamEnd::Cancelled { .. } => &stats.cancelled,
        };
        counter.fetch_add(1, Relaxed);
        let span = self.last.saturating_duration_since(self.first);
        if matches!(end, StreamEnd::Finished { .. }) && self.tokens > 0 && !span.is_zero() {
            let rate = self.tokens as f64 / span.as_secs_f64();
            stats
                .tokens_per_second
                .record((rate * 1_000.0) as u64, Stripe::SHARER);
        }
    }
}

/// What a stage saw of streamed answers, in a [`StageSnapshot`](super::StageSnapshot).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StreamSnapshot {
    /// Time from the call to the first chunk, of the streams that started.
    pub first_token: LatencySnapshot,
    /// Time between two chunks handed on (as the consumer pulled them).
    pub inter_token: LatencySnapshot,
    /// Tokens per second after the first chunk, of the streams that finished with more than
    /// one chunk.
    pub tokens_per_second: RateSnapshot,
    /// Streams the model finished.
    pub finished: u64,
    /// Streams that failed after they started (the model died mid-answer).
    pub failed: u64,
    /// Streams cut by a stall timeout.
    pub stalled: u64,
    /// Streams dropped before they ended (the caller hung up).
    pub cancelled: u64,
}

/// A distribution of rates (tokens per second), within 3.2 %.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RateSnapshot {
    /// Streams measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 10th percentile (the slow streams).
    pub p10: f64,
    /// Highest.
    pub max: f64,
    /// All rates added up.
    pub sum: f64,
    /// Streams at most each bucket's upper bound (cumulative), for the bounds 1, 2.5, 5,
    /// 10, 25, 50, 100, 150, 250, 500, 1 000, 2 500, 5 000, 10 000, 30 000, 60 000 and
    /// 120 000 tokens per second; `count` is the `+Inf` bucket.
    pub buckets: Vec<(f64, u64)>,
}

impl RateSnapshot {
    fn of(merged: &Merged) -> Self {
        let rate = |d: Duration| d.as_micros() as f64 / 1_000.0;
        let mut total = 0;
        RateSnapshot {
            count: merged.count,
            p50: rate(merged.quantile(0.5)),
            p10: rate(merged.quantile(0.1)),
            max: rate(merged.max),
            sum: rate(merged.sum),
            buckets: BOUNDS
                .iter()
                .zip(&merged.buckets())
                .map(|(bound, n)| {
                    total += n;
                    (*bound as f64 / 1_000.0, total)
                })
                .collect(),
        }
    }
}
