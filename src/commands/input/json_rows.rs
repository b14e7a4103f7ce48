//! NDJSON and JSON-array rows.

use std::io::{BufRead, Read};

use anyhow::{Context as _, anyhow, bail};

use super::{Position, RowReader};

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_json_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_json_ws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_json_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// NDJSON: one row per non-blank line.
#[derive(Debug)]
pub struct NdjsonReader<R> {
    inner: R,
    pos: Position,
    line: Vec<u8>,
}

impl<R: BufRead> NdjsonReader<R> {
    /// Reads `inner`, which is at `pos`.
    pub fn new(inner: R, pos: Position) -> Self {
        NdjsonReader {
            inner,
            pos,
            line: Vec::new(),
        }
    }
}

impl<R: BufRead> RowReader for NdjsonReader<R> {
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>> {
        loop {
            self.line.clear();
            let n = self
                .inner
                .read_until(b'\n', &mut self.line)
                .with_context(|| format!("reading line {}", self.pos.line + 1))?;
            if n == 0 {
                return Ok(None);
            }
            self.pos.byte += n as u64;
            let number = self.pos.line + 1;
            if self.line.last() == Some(&b'\n') {
                self.pos.line += 1;
            }
            let row = trim_json_ws(&self.line);
            if row.is_empty() {
                continue;
            }
            self.pos.record += 1;
            out.extend_from_slice(row);
            return Ok(Some(number));
        }
    }

    fn position(&self) -> Position {
        self.pos
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before the `[`.
    Start,
    /// Right after the `[`.
    First,
    /// After an element.
    AfterValue,
    /// After a `,`.
    AfterComma,
    /// After the `]`.
    Done,
}

/// A JSON array, element by element. Each element is copied as it is, its line breaks (JSON
/// whitespace) turned into spaces so that it fits on one NDJSON line.
#[derive(Debug)]
pub struct JsonArrayReader<R> {
    inner: R,
    buf: Vec<u8>,
    at: usize,
    len: usize,
    pos: Position,
    state: ArrayState,
}

impl<R: Read> JsonArrayReader<R> {
    /// Reads `inner`, which is at `pos`: the start of the input, or the position after an
    /// element that an earlier reader returned.
    pub fn new(inner: R, pos: Position) -> Self {
        JsonArrayReader {
            inner,
            buf: vec![0; 1 << 20],
            at: 0,
            len: 0,
            pos,
            state: if pos.byte == 0 {
                ArrayState::Start
            } else {
                ArrayState::AfterValue
            },
        }
    }

    fn peek(&mut self) -> anyhow::Result<Option<u8>> {
        if self.at == self.len {
            self.len = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("reading line {}", self.pos.line + 1));
                    }
                }
            };
            self.at = 0;
            if self.len == 0 {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.at]))
    }

    fn bump(&mut self, b: u8) {
        self.at += 1;
        self.pos.byte += 1;
        if b == b'\n' {
            self.pos.line += 1;
        }
    }

    fn skip_ws(&mut self) -> anyhow::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b) if is_json_ws(b) => self.bump(b),
                other => return Ok(other),
            }
        }
    }

    /// Copies one element to `out`.
    fn element(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let line = self.pos.line + 1;
        let start = out.len();
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let unclosed = || anyhow!("line {line}: the element starting here is not closed");
        loop {
            let Some(b) = self.peek()? else {
                if depth == 0 && !in_string {
                    return Ok(());
                }
                return Err(unclosed());
            };
            if in_string {
                self.bump(b);
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                } else if b == b'\n' || b == b'\r' {
                    bail!(
                        "line {}: a line break inside a string is not valid JSON (write it as \\n)",
                        self.pos.line
                    );
                }
                out.push(b);
            } else {
                match b {
                    b',' | b']' if depth == 0 => return Ok(()),
                    b if depth == 0 && is_json_ws(b) && out.len() > start => return Ok(()),
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1).ok_or_else(|| {
                            anyhow!("line {}: unbalanced {:?}", self.pos.line + 1, char::from(b))
                        })?;
                    }
                    _ => {}
                }
                self.bump(b);
                out.push(if b == b'\n' || b == b'\r' { b' ' } else { b });
                if depth == 0 && matches!(b, b'}' | b']') {
                    return Ok(());
                }
            }
        }
    }
}

impl<R: Read> RowReader for JsonArrayReader<R> {
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>> {
        loop {
            let b = self.skip_ws()?;
            let line = self.pos.line + 1;
            match (self.state, b) {
                (ArrayState::Start, None) => return Ok(None),
                (ArrayState::Start, Some(b'[')) => {
                    self.bump(b'[');
                    self.state = ArrayState::First;
                }
                (ArrayState::Start, Some(_)) => {
                    bail!(
                        "line {line}: a JSON array must start with '[' (use --format ndjson for one object per line)"
                    )
                }
                (ArrayState::First | ArrayState::AfterValue, Some(b']')) => {
                    self.bump(b']');
                    self.state = ArrayState::Done;
                }
                (ArrayState::AfterValue, Some(b',')) => {
                    self.bump(b',');
                    self.state = ArrayState::AfterComma;
                }
                (ArrayState::AfterValue, Some(c)) => {
                    bail!(
                        "line {line}: expected ',' or ']' after an element, found {:?}",
                        char::from(c)
                    )
                }
                (ArrayState::AfterComma, Some(b']')) => {
                    bail!("line {line}: a ',' before ']' (trailing commas are not JSON)")
                }
                (ArrayState::First | ArrayState::AfterComma, Some(_)) => {
                    let start = out.len();
                    self.element(out)?;
                    if out.len() == start {
                        bail!("line {line}: expected an element");
                    }
                    self.pos.record += 1;
                    self.state = ArrayState::AfterValue;
                    return Ok(Some(line));
                }
                (ArrayState::First | ArrayState::AfterValue | ArrayState::AfterComma, None) => {
                    bail!("line {line}: the input ends before the array is closed with ']'")
                }
                (ArrayState::Done, None) => return Ok(None),
                (ArrayState::Done, Some(_)) => {
                    bail!("line {line}: data after the end of the array")
                }
            }
        }
    }

    fn position(&self) -> Position {
        self.pos
    }
}
