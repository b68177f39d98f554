//! What [`Store::watch`](super::Store::watch) hands out: a stream of event batches,
//! the same type for every store.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use super::{Kv, StoreError};

/// One change under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written; `mod_revision` is the revision of this write.
    Put(Kv),
    /// The key was deleted at `mod_revision`.
    Delete { key: String, mod_revision: i64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The new value; `None` for a delete.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            WatchEvent::Put(kv) => Some(&kv.value),
            WatchEvent::Delete { .. } => None,
        }
    }

    /// The store revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events of one or more whole revisions, in revision order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchBatch {
    pub events: Vec<WatchEvent>,
}

impl WatchBatch {
    /// The revision of the last event (0 for an empty batch): the watch is complete
    /// up to it.
    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(0, WatchEvent::revision)
    }
}

/// Stops a store's background task when the watch is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// A running watch: a stream of batches, ending after an error item (see
/// [`Store::watch`](super::Store::watch)).
pub struct Watch {
    stream: BatchStream,
    restarts: Arc<AtomicU64>,
    _task: Option<AbortOnDrop>,
}

impl Watch {
    /// A watch over `stream`; `task` (fed by the stream) is aborted on drop;
    /// `restarts` counts how often the store had to re-open it.
    pub(crate) fn new(
        stream: BatchStream,
        restarts: Arc<AtomicU64>,
        task: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self {
            stream,
            restarts,
            _task: task.map(AbortOnDrop),
        }
    }

    /// The next batch; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        self.stream.next().await
    }

    /// How many times the store re-opened the watch (on another member, after an
    /// interruption) without the consumer noticing anything but a delay.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

impl Stream for Watch {
    type Item = Result<WatchBatch, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("restarts", &self.restarts())
            .finish_non_exhaustive()
    }
}
