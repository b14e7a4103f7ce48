//! How `alluvium send` moves batches: one thread reads and cuts them, `--parallel` workers send
//! them, and one acknowledges them in order, advancing the checkpoint over the acknowledged
//! prefix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::ProgressBar;

use super::super::checkpoint::Checkpoint;
use super::super::input::{Position, RowReader};
use crate::client::{BatchAck, Client, ClientError, Payload};

/// A batch ready to send.
struct Job {
    index: u64,
    body: Vec<u8>,
    /// The input line of each row.
    lines: Vec<u64>,
    /// The position after its last row.
    end: Position,
}

/// A batch's outcome.
struct Done {
    index: u64,
    rows: u64,
    end: Position,
    result: anyhow::Result<BatchAck>,
}

/// What a run needs.
pub(super) struct Plan {
    pub(super) client: Client,
    pub(super) table: String,
    pub(super) key_prefix: String,
    pub(super) label: String,
    pub(super) parallel: usize,
    pub(super) batch_rows: usize,
    pub(super) batch_bytes: usize,
    pub(super) checkpoint: Option<PathBuf>,
    /// Progress printed as lines, when stderr is not a terminal.
    pub(super) progress_lines: Option<ProgressLines>,
}

/// How often a progress line is printed when stderr is not a terminal.
pub(super) const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress as a line on stderr every [`PROGRESS_LINE_EVERY`], for logs and pipes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProgressLines {
    pub(super) size: Option<u64>,
    pub(super) start_byte: u64,
    pub(super) last: Instant,
}

impl ProgressLines {
    /// A line if one is due: position, rows, rates of this run and the time left.
    fn due(&mut self, byte: u64, rows: u64, run_rows: u64, elapsed: Duration) -> Option<String> {
        if self.last.elapsed() < PROGRESS_LINE_EVERY {
            return None;
        }
        self.last = Instant::now();
        let secs = elapsed.as_secs_f64().max(1e-3);
        let bytes_per_s = byte.saturating_sub(self.start_byte) as f64 / secs;
        let mut line = format!("{:.1} MB", byte as f64 / 1e6);
        if let Some(size) = self.size.filter(|s| *s > 0) {
            line.push_str(&format!(
                " of {:.1} MB ({:.1}%)",
                size as f64 / 1e6,
                byte as f64 * 100.0 / size as f64
            ));
        }
        line.push_str(&format!(
            ", {rows} rows; {:.0} rows/s, {:.1} MB/s",
            run_rows as f64 / secs,
            bytes_per_s / 1e6
        ));
        if let Some(size) = self.size
            && bytes_per_s > 0.0
        {
            let left = size.saturating_sub(byte) as f64 / bytes_per_s;
            line.push_str(&format!(", eta {left:.0} s"));
        }
        Some(line)
    }
}

/// What a run did.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) rows: u64,
    pub(super) duplicate_rows: u64,
    pub(super) batches: u64,
    pub(super) duplicate_batches: u64,
    pub(super) retries: u64,
    pub(super) wire_bytes: u64,
    /// The end of the acknowledged prefix.
    pub(super) position: Position,
    pub(super) error: Option<anyhow::Error>,
}

impl Plan {
    /// Reads batches on this thread, sends them on `parallel` threads, acknowledges them in
    /// order on another, and stops at the first failure (after the batches in flight).
    pub(super) fn run(
        &self,
        reader: &mut dyn RowReader,
        cp: Checkpoint,
        progress: &ProgressBar,
    ) -> Outcome {
        let stop = AtomicBool::new(false);
        let (job_tx, job_rx) = sync_channel::<Job>(self.parallel);
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = channel::<Done>();
        let first_batch = cp.next_batch;
        std::thread::scope(|s| {
            for _ in 0..self.parallel {
                let done_tx = done_tx.clone();
                let (job_rx, stop) = (&job_rx, &stop);
                s.spawn(move || self.worker(job_rx, done_tx, stop));
            }
            drop(done_tx);
            let acker = s.spawn(|| self.acknowledge(done_rx, cp, progress, &stop));
            let (read_error, batches) = self.read(reader, first_batch, &job_tx, &stop);
            drop(job_tx);
            let mut outcome = acker.join().unwrap_or_else(|_| Outcome {
                error: Some(anyhow!("the acknowledging thread panicked")),
                ..Default::default()
            });
            // A read error comes first: the batches after it were never made.
            if let Some(e) = read_error {
                outcome.error = Some(e.context(self.stopped_at(&outcome)));
            } else if outcome.error.is_none() && outcome.batches < batches - first_batch {
                outcome.error = Some(anyhow!("not every batch was acknowledged"));
            }
            outcome
        })
    }

    fn stopped_at(&self, o: &Outcome) -> String {
        format!(
            "{} is stored up to line {} (byte {}); a rerun resumes there",
            self.label, o.position.line, o.position.byte
        )
    }

    /// Cuts the input into batches; returns a read error and one past the last batch index.
    fn read(
        &self,
        reader: &mut dyn RowReader,
        mut index: u64,
        jobs: &SyncSender<Job>,
        stop: &AtomicBool,
    ) -> (Option<anyhow::Error>, u64) {
        let mut body = Vec::with_capacity(self.batch_bytes + (64 << 10));
        let mut lines = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return (None, index);
            }
            let row = reader.next_row(&mut body);
            let end = match row {
                Ok(Some(line)) => {
                    body.push(b'\n');
                    lines.push(line);
                    lines.len() >= self.batch_rows || body.len() >= self.batch_bytes
                }
                Ok(None) => {
                    if lines.is_empty() {
                        return (None, index);
                    }
                    true
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return (Some(e), index);
                }
            };
            if end {
                let last = matches!(row, Ok(None));
                let job = Job {
                    index,
                    body: std::mem::replace(
                        &mut body,
                        Vec::with_capacity(self.batch_bytes + (64 << 10)),
                    ),
                    lines: std::mem::take(&mut lines),
                    end: reader.position(),
                };
                index += 1;
                if jobs.send(job).is_err() || last {
                    return (None, index);
                }
            }
        }
    }

    fn worker(
        &self,
        jobs: &Mutex<Receiver<Job>>,
        done: std::sync::mpsc::Sender<Done>,
        stop: &AtomicBool,
    ) {
        loop {
            let job = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(poisoned) => poisoned.into_inner().recv(),
            };
            let Ok(job) = job else { return };
            if stop.load(Ordering::Relaxed) {
                // Not sent: the checkpoint does not move past it, a rerun sends it.
                continue;
            }
            let key = format!("{}-{}", self.key_prefix, job.index);
            let result = self
                .client
                .send_batch_with_key(&self.table, Payload::Ndjson(&job.body), &key)
                .map_err(|e| self.refused(e, &job));
            let done_msg = Done {
                index: job.index,
                rows: job.lines.len() as u64,
                end: job.end,
                result,
            };
            if done.send(done_msg).is_err() {
                return;
            }
        }
    }

    /// The error of a failed batch, pointing at the input lines.
    fn refused(&self, e: ClientError, job: &Job) -> anyhow::Error {
        let first = job.lines.first().copied().unwrap_or(0);
        let last = job.lines.last().copied().unwrap_or(0);
        let mut msg = format!(
            "batch {} (lines {first}-{last} of {}) failed",
            job.index, self.label
        );
        if let Some(n) = e.detail().and_then(body_line)
            && let Some(line) = n.checked_sub(1).and_then(|i| job.lines.get(i))
        {
            msg.push_str(&format!(
                "; the event at fault is on line {line} of {}",
                self.label
            ));
        }
        if e.code() == Some("idempotency_key_reused") {
            msg.push_str(
                "; the server holds other rows under this batch's key: the file, the table's \
                 schema (for CSV) or the options differ from the send that stored it",
            );
        }
        anyhow::Error::new(e).context(msg)
    }

    /// Receives outcomes, advances the acknowledged prefix and its checkpoint.
    fn acknowledge(
        &self,
        done: Receiver<Done>,
        mut cp: Checkpoint,
        progress: &ProgressBar,
        stop: &AtomicBool,
    ) -> Outcome {
        let mut out = Outcome {
            position: cp.position,
            ..Default::default()
        };
        let mut pending: BTreeMap<u64, (u64, Position)> = BTreeMap::new();
        let mut failed: Option<(u64, anyhow::Error)> = None;
        let start = Instant::now();
        let mut lines = self.progress_lines;
        for d in done {
            match d.result {
                Ok(ack) => {
                    out.batches += 1;
                    out.rows += ack.rows;
                    out.retries += u64::from(ack.retries);
                    out.wire_bytes += ack.wire_bytes;
                    if ack.ack.duplicate {
                        out.duplicate_batches += 1;
                        out.duplicate_rows += ack.rows;
                    }
                    pending.insert(d.index, (d.rows, d.end));
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    if failed.as_ref().is_none_or(|(i, _)| d.index < *i) {
                        failed = Some((d.index, e));
                    }
                    continue;
                }
            }
            let mut advanced = false;
            while let Some((rows, end)) = pending.remove(&cp.next_batch) {
                cp.next_batch += 1;
                cp.rows += rows;
                cp.position = end;
                advanced = true;
            }
            if !advanced {
                continue;
            }
            out.position = cp.position;
            if let Some(path) = &self.checkpoint
                && let Err(e) = cp.store(path)
            {
                stop.store(true, Ordering::Relaxed);
                failed.get_or_insert((u64::MAX, e));
            }
            progress.set_position(cp.position.byte);
            let rate = out.rows as f64 / start.elapsed().as_secs_f64().max(1e-3);
            progress.set_message(format!("{} rows, {rate:.0} rows/s", cp.rows));
            if let Some(lines) = &mut lines
                && let Some(line) = lines.due(cp.position.byte, cp.rows, out.rows, start.elapsed())
            {
                eprintln!("{line}");
            }
        }
        match failed {
            Some((_, e)) => out.error = Some(e.context(self.stopped_at(&out))),
            None if !stop.load(Ordering::Relaxed) => {
                cp.complete = true;
                if let Some(path) = &self.checkpoint
                    && let Err(e) = cp.store(path)
                {
                    out.error = Some(e);
                }
            }
            None => {}
        }
        out
    }
}

/// The line of the batch body a server error points at: `row 3 (line 4)` or `at line 4`.
fn body_line(detail: &str) -> Option<usize> {
    for marker in ["(line ", "at line "] {
        if let Some(i) = detail.find(marker) {
            let digits: String = detail[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_point_at_body_lines() {
        assert_eq!(
            body_line("row 3 (line 4): field \"id\": expected int64"),
            Some(4)
        );
        assert_eq!(
            body_line("malformed JSON at line 12 column 3: EOF"),
            Some(12)
        );
        assert_eq!(body_line("row 1, field \"id\": expected int64"), None);
    }
}
