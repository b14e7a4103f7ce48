//! Following the catalog log: every commit after a resume point, turned into commit events,
//! from the durable log itself, so nothing committed is ever missed, whatever a process did in
//! between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alluvium_actors::catalog::actor::CommitNotice;
use alluvium_actors::catalog::{CatalogState, checkpoint, log};
use alluvium_actors::storage::Storage;
use alluvium_nats::CommitEvent;
use tokio::sync::broadcast;

use crate::PipelineError;

use super::events::derive;

/// A position in the event sequence: events with a greater `(catalog_version, index)` come
/// after it.
pub type EventPos = (u64, usize);

/// The position of an event.
pub fn pos_of(e: &CommitEvent) -> EventPos {
    CommitEvent::parse_id(&e.id).unwrap_or((e.catalog_version, 0))
}

/// Reads commits one by one after a catalog version, keeping the catalog state they apply to
/// (compaction events describe the files they remove from it).
#[derive(Debug)]
pub struct EventFeed {
    storage: Storage,
    lake_id: Arc<str>,
    state: CatalogState,
}

impl EventFeed {
    /// A feed of lake `lake_id` whose next commit is `after + 1`.
    pub async fn open(
        storage: Storage,
        lake_id: Arc<str>,
        after: u64,
    ) -> Result<EventFeed, PipelineError> {
        let state = checkpoint::load_at(&storage, after)
            .await
            .map_err(|e| PipelineError::Unavailable(format!("commit events: {e}")))?;
        Ok(EventFeed {
            storage,
            lake_id,
            state,
        })
    }

    /// The catalog version read so far.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The events of the next commit, or `None` when there is no next commit yet.
    pub async fn next_commit(&mut self) -> Result<Option<Vec<CommitEvent>>, PipelineError> {
        let version = self.state.version + 1;
        let Some(record) = log::read_commit(&self.storage, version)
            .await
            .map_err(|e| PipelineError::Unavailable(format!("commit events: {e}")))?
        else {
            return Ok(None);
        };
        let next = self.state.apply(version, &record.actions).map_err(|e| {
            PipelineError::Unavailable(format!("commit {version} does not apply: {e}"))
        })?;
        let events = derive(&self.lake_id, &self.state, &next, &record);
        self.state = next;
        Ok(Some(events))
    }
}

/// Live commit events of a node: one task follows the catalog and broadcasts each event once;
/// [`EventHub::subscribe`] joins the log and the broadcast into one gap-free stream from any
/// resume point.
#[derive(Debug, Clone)]
pub struct EventHub {
    storage: Storage,
    lake_id: Arc<str>,
    tx: broadcast::Sender<Arc<CommitEvent>>,
    /// Catalog version whose events have all been broadcast.
    head: Arc<AtomicU64>,
}

/// How often the log is read without a notice (for commits of other processes).
const LOG_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Events a subscriber may fall behind by before it re-reads the log.
const BROADCAST_BACKLOG: usize = 4096;

impl EventHub {
    /// Starts following the catalog from `version` (events of later commits are broadcast),
    /// woken by the catalog's commit notices. Runs on the current arbiter.
    pub fn start(
        storage: Storage,
        lake_id: &str,
        version: u64,
        mut notices: broadcast::Receiver<Arc<CommitNotice>>,
    ) -> EventHub {
        let (tx, _) = broadcast::channel(BROADCAST_BACKLOG);
        let lake_id: Arc<str> = Arc::from(lake_id);
        let hub = EventHub {
            storage: storage.clone(),
            lake_id: lake_id.clone(),
            tx: tx.clone(),
            head: Arc::new(AtomicU64::new(version)),
        };
        let head = hub.head.clone();
        actix::spawn(async move {
            let mut feed = None;
            loop {
                // A notice (or a lag) of this process's commits, or now and then a look for
                // commits made elsewhere: read whatever the log has now.
                let woke = tokio::time::timeout(LOG_POLL, notices.recv()).await;
                if let Ok(Err(broadcast::error::RecvError::Closed)) = woke {
                    return;
                }
                if feed.is_none() {
                    let at = head.load(Ordering::Acquire);
                    match EventFeed::open(storage.clone(), lake_id.clone(), at).await {
                        Ok(f) => feed = Some(f),
                        Err(e) => {
                            tracing::warn!(error = %e, "commit event feed cannot start; retrying");
                            continue;
                        }
                    }
                }
                let Some(f) = feed.as_mut() else { continue };
                loop {
                    match f.next_commit().await {
                        Ok(Some(events)) => {
                            for e in events {
                                let _ = tx.send(Arc::new(e));
                            }
                            head.store(f.version(), Ordering::Release);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading commit events failed; retrying");
                            feed = None;
                            break;
                        }
                    }
                }
            }
        });
        hub
    }

    /// The lake's id.
    pub fn lake_id(&self) -> &str {
        &self.lake_id
    }

    /// The catalog version whose events have all been broadcast.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every event after `after` (`None`: only events from now on), in order, without gaps or
    /// repeats, then live ones as they commit. Events older than the broadcast backlog are
    /// read back from the catalog log, so a subscriber can resume from any point.
    pub fn subscribe(
        &self,
        after: Option<EventPos>,
    ) -> impl futures::Stream<Item = Result<Arc<CommitEvent>, PipelineError>> + use<> {
        let hub = self.clone();
        let (out, rx) = tokio::sync::mpsc::channel(256);
        let start = after.unwrap_or((self.head(), usize::MAX));
        // On the runtime of the caller (an HTTP worker, the notifier): the stream lives as long
        // as its receiver.
        tokio::task::spawn_local(async move {
            if let Err(e) = hub.pump(start, &out).await {
                let _ = out.send(Err(e)).await;
            }
        });
        tokio_stream_from(rx)
    }

    async fn pump(
        &self,
        mut last: EventPos,
        out: &tokio::sync::mpsc::Sender<Result<Arc<CommitEvent>, PipelineError>>,
    ) -> Result<(), PipelineError> {
        loop {
            // Subscribe first, then read the log to its end: a commit the log did not have yet
            // is broadcast after this subscription, and positions filter what both deliver.
            let mut live = self.tx.subscribe();
            let mut feed = EventFeed::open(
                self.storage.clone(),
                self.lake_id.clone(),
                last.0.saturating_sub(1),
            )
            .await?;
            while let Some(events) = feed.next_commit().await? {
                for e in events {
                    if pos_of(&e) > last {
                        last = pos_of(&e);
                        if out.send(Ok(Arc::new(e))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            last = last.max((feed.version(), usize::MAX));
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    // The subscriber went away: stop, even if no commit comes.
                    () = out.closed() => return Ok(()),
                };
                match received {
                    Ok(e) => {
                        if pos_of(&e) > last {
                            last = pos_of(&e);
                            if out.send(Ok(e)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // Fell behind the broadcast: re-read the gap from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

fn tokio_stream_from<T: 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
