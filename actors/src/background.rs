//! CPU-heavy work (Parquet encoding of flushes, compaction merges) on threads of its own at a
//! lower scheduling priority, so it never blocks an actix arbiter and yields the cores to
//! ingest when both want them.

/// Runs `job` on a new thread named `name` at nice +10 and returns a receiver for its result.
/// Encoding and merging compete with ingest for the same cores, and an acknowledgement waiting
/// behind them is what users feel; when the memtable budget fills, ingest pauses and the
/// background work gets the CPU.
pub fn spawn_niced<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(job());
        })?;
    Ok(rx)
}

#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours; `who = 0` names
    // the calling thread, since Linux keeps a nice value per thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!("cannot lower the priority of a background thread");
    }
}
