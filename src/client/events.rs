//! `GET /v1/events`: commit events over server-sent events, reconnecting where the stream
//! broke.

use std::io::{BufRead, BufReader};

use super::types::{CommitEvent, CommitKind, Problem};
use super::{Client, ClientError, Request};

/// Which commit events to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this table's events (default: every table of the tenant).
    pub table: Option<String>,
    /// Only these kinds (default: all).
    pub kinds: Vec<CommitKind>,
    /// Start after this event id (`{catalog_version}:{index}`, or a catalog version; `"0"`
    /// replays everything). Default: from the next commit on.
    pub after: Option<String>,
}

impl EventFilter {
    /// Every event of the tenant from the next commit on.
    pub fn new() -> EventFilter {
        EventFilter::default()
    }

    /// Only `table`'s events.
    pub fn table(mut self, table: impl Into<String>) -> EventFilter {
        self.table = Some(table.into());
        self
    }

    /// Only events of these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = CommitKind>) -> EventFilter {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Only events after `id`.
    pub fn after(mut self, id: impl Into<String>) -> EventFilter {
        self.after = Some(id.into());
        self
    }
}

/// The commit events of [`Client::events`]: an endless iterator. It reconnects (with
/// `Last-Event-ID`, so nothing is missed or repeated) when the stream breaks, up to the
/// client's retry limit in a row, and ends after yielding an error it cannot get past (a
/// refused credential, a server gone for good). An `Err` for an error the server announced in
/// the stream is followed by a reconnection on the next call.
pub struct Events {
    client: Client,
    agent: ureq::Agent,
    filter: EventFilter,
    reader: Option<Box<dyn BufRead + Send>>,
    /// A line read while connecting that belongs to the first message.
    pending: Option<String>,
    last_id: Option<String>,
    failures: u32,
    done: bool,
    line: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("url", &self.client.url())
            .field("filter", &self.filter)
            .field("last_id", &self.last_id)
            .field("connected", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

/// One server-sent message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Message {
    id: Option<String>,
    event: String,
    data: Option<String>,
}

impl Events {
    pub(super) fn open(client: Client, filter: EventFilter) -> Result<Events, ClientError> {
        let agent = client.stream_agent();
        let mut events = Events {
            client,
            agent,
            filter,
            reader: None,
            pending: None,
            last_id: None,
            failures: 0,
            done: false,
            line: String::new(),
        };
        events.connect()?;
        Ok(events)
    }

    /// The id of the last event seen: where a new stream would resume.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn url(&self) -> String {
        format!("{}/v1/events", self.client.url())
    }

    /// Connects and waits for the server's first line (it subscribes before sending it).
    fn connect(&mut self) -> Result<(), ClientError> {
        let mut req =
            Request::new("GET", "/v1/events".to_string()).header("Accept", "text/event-stream");
        if let Some(t) = &self.filter.table {
            req = req.query("table", t.clone());
        }
        if !self.filter.kinds.is_empty() {
            let kinds: Vec<&str> = self.filter.kinds.iter().map(|k| k.as_str()).collect();
            req = req.query("kinds", kinds.join(","));
        }
        match (&self.last_id, &self.filter.after) {
            (Some(id), _) => req = req.header("Last-Event-ID", id.clone()),
            (None, Some(after)) => req = req.query("after", after.clone()),
            (None, None) => {}
        }
        let resp = self.client.call_stream(&self.agent, &req)?;
        let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(resp.into_reader()));
        let url = self.url();
        let io = |source| ClientError::Io {
            url: url.clone(),
            source,
        };
        let mut first = String::new();
        reader.read_line(&mut first).map_err(io)?;
        if first.starts_with(':') {
            // The greeting comment, then the blank line that ends it.
            let mut blank = String::new();
            reader.read_line(&mut blank).map_err(io)?;
            if !blank.trim().is_empty() {
                self.pending = Some(blank);
            }
        } else if !first.is_empty() {
            self.pending = Some(first);
        }
        self.reader = Some(reader);
        Ok(())
    }

    /// The next message; `None` at the end of the stream.
    fn read_message(&mut self) -> std::io::Result<Option<Message>> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut msg = Message::default();
        let mut any = false;
        loop {
            self.line.clear();
            match self.pending.take() {
                Some(p) => self.line = p,
                None => {
                    if reader.read_line(&mut self.line)? == 0 {
                        // A message cut by the end of the stream is dropped, as the
                        // protocol says.
                        return Ok(None);
                    }
                }
            }
            let line = self.line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if any {
                    return Ok(Some(msg));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => msg.id = Some(value.to_string()),
                "event" => msg.event = value.to_string(),
                "data" => match &mut msg.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => msg.data = Some(value.to_string()),
                },
                _ => continue,
            }
            any = true;
        }
    }
}

impl Iterator for Events {
    type Item = Result<CommitEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.reader.is_none()
                && let Err(e) = self.connect()
            {
                // Transient failures were already retried.
                self.done = true;
                return Some(Err(e));
            }
            let read = self.read_message();
            match read {
                Ok(Some(msg)) => {
                    if let Some(id) = msg.id.filter(|i| !i.is_empty()) {
                        self.last_id = Some(id);
                    }
                    let Some(data) = msg.data else { continue };
                    if msg.event == "error" {
                        // The server ends the stream after an error; resume on the next call.
                        self.reader = None;
                        let p: Problem = serde_json::from_str(&data).unwrap_or(Problem {
                            status: 0,
                            code: String::new(),
                            detail: data.clone(),
                            title: String::new(),
                        });
                        return Some(Err(ClientError::Server {
                            status: if p.status == 0 { 503 } else { p.status },
                            code: if p.code.is_empty() {
                                "unavailable".into()
                            } else {
                                p.code
                            },
                            detail: p.detail,
                            retry_after: None,
                        }));
                    }
                    self.failures = 0;
                    return Some(serde_json::from_str(&data).map_err(|source| {
                        ClientError::Decode {
                            url: self.url(),
                            source,
                        }
                    }));
                }
                Ok(None) | Err(_) => {
                    self.reader = None;
                    self.pending = None;
                    if self.failures >= self.client.max_retries() {
                        self.done = true;
                        let source = match read {
                            Err(e) => e,
                            _ => std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the event stream ended",
                            ),
                        };
                        return Some(Err(ClientError::Io {
                            url: self.url(),
                            source,
                        }));
                    }
                    std::thread::sleep(self.client.retry_wait(self.failures));
                    self.failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn events_over(text: &str) -> Events {
        let client = Client::new("http://127.0.0.1:9", "k").unwrap();
        Events {
            agent: client.stream_agent(),
            client,
            filter: EventFilter::new(),
            reader: Some(Box::new(std::io::Cursor::new(text.as_bytes().to_vec()))),
            pending: None,
            last_id: None,
            failures: 0,
            done: false,
            line: String::new(),
        }
    }

    #[test]
    fn parses_messages_comments_and_multiline_data() {
        let mut ev = events_over(
            ": keep-alive\n\nid: 3:0\nevent: flushed\ndata: {\"a\":\ndata: 1}\n\n: x\nid:4:1\r\ndata:z\r\n\r\nid: 5:0\ndata: cut",
        );
        let m = ev.read_message().unwrap().unwrap();
        assert_eq!(m.id.as_deref(), Some("3:0"));
        assert_eq!(m.event, "flushed");
        assert_eq!(m.data.as_deref(), Some("{\"a\":\n1}"));
        let m = ev.read_message().unwrap().unwrap();
        assert_eq!(m.id.as_deref(), Some("4:1"));
        assert_eq!(m.data.as_deref(), Some("z"));
        // The last message is cut by the end of the stream: dropped.
        assert_eq!(ev.read_message().unwrap(), None);
    }

    #[test]
    fn an_error_event_is_the_servers_problem() {
        let mut ev = events_over(
            "event: error\ndata: {\"type\":\"urn:alluvium:problem:catalog_unavailable\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"gone\",\"code\":\"catalog_unavailable\"}\n\n",
        );
        let e = ev.next().unwrap().unwrap_err();
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.code(), Some("catalog_unavailable"));
        assert_eq!(e.detail(), Some("gone"));
    }
}
